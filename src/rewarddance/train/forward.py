"""One training forward: sequences -> `Scores` (reward logit, target-text NLL), through the wrapped judge.

A generative judge reads its judgment where it will at reward time: the position that
predicts the first token after the generation prompt. With a target text (CoT rationale,
pretraining answer) the sequence continues with it, and only those positions go through
the full LM head; without one, the sequence ends at the generation prompt, exactly as in
scoring, and only the yes/no rows of the head are computed. `module` is the judge as the
accelerator prepared it (DDP-wrapped when data-parallel); `judge` the bare one.

Example:
    >>> scores = sequence_scores(judge, judge, batch.sequences)                  # doctest: +SKIP
"""

from __future__ import annotations

from typing import Sequence as Seq

import torch
import torch.nn.functional as F

from ..data.training import Sequence
from ..models.clip import ClipJudge
from ..models.judge import Judge
from .objectives import Scores


class TargetAlignmentError(ValueError):
    """The tokenised target does not start where the template says (a tokenizer merges across the boundary)."""


def _target_texts(judge: Judge, seqs: Seq[Sequence]) -> tuple[list[str], list[str]]:
    """(full texts, target suffixes): the generation prompt followed by each target as the chat template
    renders an assistant turn ("" where a sequence has no target text)."""
    texts, suffixes = [], []
    for s in seqs:
        prompt = judge.render(s.context)
        if s.target is None:
            texts.append(prompt)
            suffixes.append("")
            continue
        full = judge.processor.apply_chat_template(
            s.context.messages + [{"role": "assistant", "content": [{"type": "text", "text": s.target}]}],
            tokenize=False)
        if not full.startswith(prompt):
            raise TargetAlignmentError("the chat template's generation prompt is not a prefix of the rendered "
                                       "answer; cannot place the training target")
        texts.append(full)
        suffixes.append(full[len(prompt):])
    return texts, suffixes


def _judgment_offset(tok, target: str | None, suffix: str, judgment: str) -> int:
    """Tokens of the suffix before its judgment token (0 when the target starts with it)."""
    if not suffix or target.startswith(judgment):
        return 0
    idx = suffix.rfind(judgment)
    if idx < 0:
        raise TargetAlignmentError(f"the target {target[:40]!r} does not contain its judgment {judgment!r}")
    if idx > 0 and suffix[idx - 1] == " ":  # " yes" is one token
        idx -= 1
    return len(tok.encode(suffix[:idx], add_special_tokens=False))


def encode_targets(judge: Judge, seqs: Seq[Sequence]) -> tuple[dict, torch.Tensor, tuple | None, list[int]]:
    """(inputs, answer positions, target-token positions (rows, cols) or None, the sequence of each
    target position): sequences continue with their target texts; right padding."""
    tok = judge.processor.tokenizer
    texts, suffixes = _target_texts(judge, seqs)
    inputs = judge.encode([s.context for s in seqs], texts=texts, padding_side="right")
    ids, lengths = inputs["input_ids"], inputs["attention_mask"].sum(1).tolist()
    answer_pos, lm_rows, lm_cols = [], [], []
    for row, (s, suffix, length) in enumerate(zip(seqs, suffixes, lengths)):
        n_suffix = len(tok.encode(suffix, add_special_tokens=False)) if suffix else 0
        start = length - n_suffix  # first target token
        judged_at = None
        if s.judgment is not None:
            judged_at = start + _judgment_offset(tok, s.target, suffix, s.judgment) - 1  # predicts the judgment
            allowed = judge.yes_ids if s.judgment == "yes" else judge.no_ids
            if suffix and ids[row, judged_at + 1].item() not in allowed:
                raise TargetAlignmentError(f"the judgment token of target {s.target[:40]!r} is not where the "
                                           "template puts it")
        answer_pos.append(length - 1 if judged_at is None else judged_at)
        for t in range(start - 1, length - 1):  # predict every target token but the judgment itself
            if t != judged_at:
                lm_rows.append(row)
                lm_cols.append(t)
    positions = torch.tensor(answer_pos, device=ids.device)
    lm = (torch.tensor(lm_rows, device=ids.device), torch.tensor(lm_cols, device=ids.device)) if lm_rows else None
    return inputs, positions, lm, lm_rows


def sequence_scores(module: torch.nn.Module, judge: Judge | ClipJudge, seqs: Seq[Sequence]) -> Scores:
    """Reward logits (and target-text NLLs) of `seqs`, differentiable, from one forward of `module`."""
    if isinstance(judge, ClipJudge):
        logit = module(judge.encode([s.context for s in seqs]))
        logit = logit[:, 0] - logit[:, 1]
        zeros = torch.zeros_like(logit)
        return Scores(logit, zeros, zeros.bool())
    inputs, positions, lm, owner = encode_targets(judge, seqs)
    scores, lm_logits = module(inputs, answer_positions=positions, lm_positions=lm)
    logit = scores[:, 0] - scores[:, 1]
    n = len(seqs)
    nll = torch.zeros(n, device=logit.device)
    mask = torch.zeros(n, dtype=torch.bool, device=logit.device)
    if lm is not None:
        ids = inputs["input_ids"]
        token_nll = F.cross_entropy(lm_logits.float(), ids[lm[0], lm[1] + 1], reduction="none")
        rows = torch.tensor(owner, device=logit.device)
        counts = torch.zeros(n, device=logit.device).index_add_(0, rows, torch.ones_like(token_nll))
        nll = torch.zeros(n, device=logit.device).index_add(0, rows, token_nll) / counts.clamp(min=1)
        mask = counts > 0
    return Scores(logit, nll, mask)


@torch.no_grad()
def target_exact_match(judge: Judge, seqs: Seq[Sequence]) -> list[bool]:
    """Whether greedy decoding reproduces each sequence's whole target (every target token is the argmax
    given the ones before it, which is what greedy generation would write)."""
    inputs, positions, lm, owner = encode_targets(judge, seqs)
    if lm is None:
        return [True] * len(seqs)
    _, lm_logits = judge(inputs, answer_positions=positions, lm_positions=lm)
    right = lm_logits.argmax(-1) == inputs["input_ids"][lm[0], lm[1] + 1]
    ok = [True] * len(seqs)
    for row, r in zip(owner, right.tolist()):
        ok[row] = ok[row] and r
    return ok
