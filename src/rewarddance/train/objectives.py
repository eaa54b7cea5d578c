"""Training objectives: pure functions `(scores, batch) -> (loss, metrics)`.

`scores.logit` is each sequence's reward logit (logit P(yes) = l_yes - l_no for a generative
judge, the value v for a value head, the scaled cosine for CLIP); `scores.lm_nll` the mean
next-token loss of each sequence's target text (CoT rationales, pretraining answers) where
`scores.lm_mask` says it has one. Each term is a mean over sequences or pairs (never over the
tokens of the whole batch). With `den` (from `term_counts` of the whole global batch, divided by
the number of ranks) each term is a sum over this micro-batch divided by it instead: summed over
micro-batches and averaged over data-parallel ranks, that is exactly the global batch's mean,
however unevenly ties, rationales or pointwise rows fall on the ranks.

Example:
    >>> import torch
    >>> from rewarddance.data.training import Batch
    >>> s = Scores(torch.tensor([2.0, -2.0]), torch.zeros(2), torch.zeros(2, dtype=torch.bool))
    >>> b = Batch([Sequence(None, None, "yes", 1.0), Sequence(None, None, "no", 0.0)], [], 1)
    >>> loss, metrics = generative_pairwise(s, b)
    >>> round(loss.item(), 3), metrics["accuracy"]
    (0.127, 1.0)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

from ..data.training import Batch, Sequence  # noqa: F401  (Sequence: the doctest's)


@dataclass
class Scores:
    logit: torch.Tensor  # N: reward logit per sequence
    lm_nll: torch.Tensor  # N: mean target-token NLL per sequence (0 where none)
    lm_mask: torch.Tensor  # N bool: which sequences have a target text


def _judgment_targets(batch: Batch, ties: str, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """(index, target P(yes)) of sequences with a judgment target; ties (0.5) dropped unless ties='soft'."""
    idx = [i for i, s in enumerate(batch.sequences) if s.p_yes is not None and (ties == "soft" or s.p_yes != 0.5)]
    target = [batch.sequences[i].p_yes for i in idx]
    return torch.tensor(idx, dtype=torch.long, device=device), torch.tensor(target, device=device)


def _pairs(batch: Batch, ties: str, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    keep = [(i, j, p) for i, j, p in batch.pairs if ties == "soft" or p != 0.5]
    if not keep:
        empty = torch.zeros(0, dtype=torch.long, device=device)
        return empty, empty, torch.zeros(0, device=device)
    i, j, p = zip(*keep)
    return (torch.tensor(i, device=device), torch.tensor(j, device=device), torch.tensor(p, device=device))


def _reduce(x: torch.Tensor, like: torch.Tensor, den: float | None) -> torch.Tensor:
    """Mean of `x`, or its sum over `den`; zero with a graph when empty (DDP needs every rank to backprop)."""
    if not x.numel():
        return like.sum() * 0.0
    return x.mean() if den is None else x.sum() / max(den, 1e-9)


def term_counts(batch: Batch, ties: str = "drop") -> dict[str, int]:
    """How many items each loss term averages over in `batch` (add them up over a global batch)."""
    in_pair = {k for i, j, _ in batch.pairs for k in (i, j)}
    seqs = batch.sequences
    return {"judgment": sum(s.p_yes is not None and (ties == "soft" or s.p_yes != 0.5) for s in seqs),
            "judgment_sure": sum(s.p_yes is not None and s.p_yes != 0.5 for s in seqs),
            "pairs": sum(ties == "soft" or p != 0.5 for _, _, p in batch.pairs),
            "single": sum(k not in in_pair and s.p_yes is not None for k, s in enumerate(seqs)),
            "lm": sum(s.target is not None for s in seqs)}


def _den(den: dict[str, float] | None, key: str) -> float | None:
    return None if den is None else den[key]


def _lm_loss(scores: Scores, den: float | None = None) -> torch.Tensor:
    return _reduce(scores.lm_nll[scores.lm_mask], scores.logit, den)


def _accuracy(logit: torch.Tensor, target: torch.Tensor) -> float:
    sure = target != 0.5
    if not sure.any():
        return float("nan")
    return ((logit[sure] > 0) == (target[sure] > 0.5)).float().mean().item()


def generative_pairwise(scores: Scores, batch: Batch, *, ties: str = "drop", cot_weight: float = 1.0,
                        den: dict[str, float] | None = None) -> tuple[torch.Tensor, dict[str, float]]:
    """Cross-entropy on the judgment token ("is image 2 better?" -> yes/no), both orders of each pair,
    plus `cot_weight` x the rationale's next-token loss."""
    idx, target = _judgment_targets(batch, ties, scores.logit.device)
    logit = scores.logit[idx]
    ce = _reduce(F.binary_cross_entropy_with_logits(logit, target, reduction="none"), scores.logit,
                 _den(den, "judgment"))
    lm = _lm_loss(scores, _den(den, "lm"))
    loss = ce + cot_weight * lm
    return loss, {"loss": loss.item(), "judgment_loss": ce.item(), "cot_loss": lm.item(),
                  "accuracy": _accuracy(logit.detach(), target)}


def _bradley_terry(scores: Scores, batch: Batch, ties: str, den: float | None
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    i, j, p = _pairs(batch, ties, scores.logit.device)
    diff = scores.logit[i] - scores.logit[j]
    return _reduce(F.binary_cross_entropy_with_logits(diff, p, reduction="none"), scores.logit, den), diff, p


def generative_pointwise(scores: Scores, batch: Batch, *, ties: str = "drop", ce_weight: float = 0.1,
                         den: dict[str, float] | None = None) -> tuple[torch.Tensor, dict[str, float]]:
    """Bradley-Terry on the two images' logit P(yes), plus `ce_weight` x cross-entropy (yes for the
    preferred image, no for the rejected one; pointwise rows: their label)."""
    bt, diff, p = _bradley_terry(scores, batch, ties, _den(den, "pairs"))
    idx, target = _judgment_targets(batch, "drop", scores.logit.device)
    ce = _reduce(F.binary_cross_entropy_with_logits(scores.logit[idx], target, reduction="none"), scores.logit,
                 _den(den, "judgment_sure"))
    loss = bt + ce_weight * ce
    acc = _accuracy(diff.detach(), p) if len(p) else _accuracy(scores.logit[idx].detach(), target)
    return loss, {"loss": loss.item(), "bt_loss": bt.item(), "judgment_loss": ce.item(), "accuracy": acc}


def bradley_terry(scores: Scores, batch: Batch, *, ties: str = "drop", den: dict[str, float] | None = None
                  ) -> tuple[torch.Tensor, dict[str, float]]:
    """Bradley-Terry on a scalar score (the value head's v, CLIP's scaled cosine); pointwise rows
    (sequences in no pair): binary cross-entropy on their label."""
    bt, diff, p = _bradley_terry(scores, batch, ties, _den(den, "pairs"))
    in_pair = {k for i, j, _ in batch.pairs for k in (i, j)}
    single = [k for k, s in enumerate(batch.sequences) if k not in in_pair and s.p_yes is not None]
    idx = torch.tensor(single, dtype=torch.long, device=scores.logit.device)
    target = torch.tensor([batch.sequences[k].p_yes for k in single], device=scores.logit.device)
    ce = _reduce(F.binary_cross_entropy_with_logits(scores.logit[idx], target, reduction="none"), scores.logit,
                 _den(den, "single"))
    loss = bt + ce
    acc = _accuracy(torch.cat([diff, scores.logit[idx]]).detach(), torch.cat([p, target]))
    return loss, {"loss": loss.item(), "accuracy": acc}


def next_token(scores: Scores, batch: Batch, *, den: dict[str, float] | None = None
               ) -> tuple[torch.Tensor, dict[str, float]]:
    """Pretraining: the mean next-token loss of each sequence's target (captions, answers)."""
    loss = _lm_loss(scores, _den(den, "lm"))
    return loss, {"loss": loss.item()}


OBJECTIVES: dict[str, Callable[..., tuple[torch.Tensor, dict[str, float]]]] = {
    "generative-pairwise": generative_pairwise,
    "generative-pointwise": generative_pointwise,
    "regressive-bt": bradley_terry,
    "clip-bt": bradley_terry,
    "next-token": next_token,
}
