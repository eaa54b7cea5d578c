"""The generative reward model: r = P("yes") at the answer position of a VLM.

One forward pass of the backbone, the hidden state at the last real position of each
sequence, and only the "yes"/"no" rows of the LM head (the full-vocabulary softmax is an
option). Works for any image-text-to-text model transformers loads from a directory.

Example:
    >>> import rewarddance as rd
    >>> rm = rd.load("qwen2_vl-tiny")                                  # doctest: +SKIP
    >>> rm.score(["a red circle"], ["img.png"])                         # doctest: +SKIP
    [0.49...]
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from transformers import AutoModelForImageTextToText, AutoProcessor

from ..context import LAYOUTS, Context, build_context, get_task
from ..media import MediaError, broadcast, load_image, load_media
from .fast import PrefixScorer, content_key

CONFIG_NAME = "rewarddance.json"
NORMALIZATIONS = ("yes_no", "vocab")


def resolve_answer_ids(processor: Any, word: str) -> list[int]:
    """Token ids the model may answer `word` with; the first is the one training targets.

    The primary id is found by rendering the chat template with and without the answer,
    so it is exactly the token that follows the generation prompt (with or without a
    leading space, as the family's template makes it). Capitalised and space-prefixed
    variants that are single tokens are added.
    """
    tok = processor.tokenizer
    user = [{"role": "user", "content": [{"type": "text", "text": "Q"}]}]
    answer = [{"role": "assistant", "content": [{"type": "text", "text": word}]}]
    prompt_ids = tok.encode(processor.apply_chat_template(user, add_generation_prompt=True, tokenize=False),
                            add_special_tokens=False)
    full_ids = tok.encode(processor.apply_chat_template(user + answer, tokenize=False), add_special_tokens=False)
    if full_ids[: len(prompt_ids)] != prompt_ids or len(full_ids) <= len(prompt_ids):
        raise ValueError("the chat template's generation prompt is not a prefix of the rendered answer; "
                         "cannot locate the answer token")
    first = full_ids[len(prompt_ids)]
    if tok.decode([first]).strip() != word:
        raise ValueError(f"the tokenizer splits the answer {word!r} into several tokens "
                         f"(first is {tok.decode([first])!r}); a generative reward needs it as one token")
    ids = [first]
    for form in (word, " " + word, word.capitalize(), " " + word.capitalize()):
        enc = tok.encode(form, add_special_tokens=False)
        if len(enc) == 1 and enc[0] not in ids:
            ids.append(enc[0])
    return ids


def _last_positions(attention_mask: torch.Tensor) -> torch.Tensor:
    """Index of the last real token of each row, for left or right padding."""
    length = attention_mask.shape[1]
    return length - 1 - attention_mask.flip(1).int().argmax(1)


class RewardModel:
    """A VLM judge whose reward is P("yes").

    `layout`: "pointwise" (prompt + candidate) or "pairwise" (prompt + reference as image 1
    + candidate as image 2: r = P(candidate beats reference)). `normalize`: "yes_no"
    (softmax over the answer tokens, default) or "vocab" (full-vocabulary softmax).
    `fast`: shared-prefix scoring where the family allows it (models/fast.py); `compile`:
    torch.compile the language model (slow first call, faster after).
    """

    def __init__(self, model: torch.nn.Module, processor: Any, *, layout: str = "pointwise",
                 task: str = "t2i-alignment", normalize: str = "yes_no", num_frames: int = 4,
                 padding_side: str = "left", fast: bool = True, compile: bool = False) -> None:
        if layout not in LAYOUTS:
            raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
        if normalize not in NORMALIZATIONS:
            raise ValueError(f"normalize must be one of {NORMALIZATIONS}, got {normalize!r}")
        self.model, self.processor = model, processor
        self.layout, self.task, self.normalize = layout, task, normalize
        self.num_frames, self.padding_side = num_frames, padding_side
        self.yes_ids = resolve_answer_ids(processor, "yes")
        self.no_ids = resolve_answer_ids(processor, "no")
        # shared-prefix KV cache + vision-feature reuse where the family allows it (see fast.py)
        self.prefix_scorer = PrefixScorer(self) if fast and PrefixScorer.supports(model) else None
        if compile:  # measured 1.5x on this CPU after a ~2-minute first call: worth it for long RL runs
            inner = model.model
            name = "language_model" if hasattr(inner, "language_model") else "text_model"
            setattr(inner, name, torch.compile(getattr(inner, name), dynamic=True))

    # ------------------------------------------------------------------ loading
    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, *, device: str = "cpu", dtype: torch.dtype | None = None,
                        **overrides: Any) -> "RewardModel":
        """Load a checkpoint directory (model + processor [+ rewarddance.json])."""
        path = Path(path)
        if not (path / "config.json").exists():
            raise FileNotFoundError(f"{path}: no config.json; not a model directory")
        meta = json.loads((path / CONFIG_NAME).read_text()) if (path / CONFIG_NAME).exists() else {}
        meta.update(overrides)
        model = AutoModelForImageTextToText.from_pretrained(
            path, dtype=dtype or torch.float32, attn_implementation="sdpa").to(device).eval()
        processor = AutoProcessor.from_pretrained(path)
        return cls(model, processor, **meta)

    def save_pretrained(self, path: str | os.PathLike) -> None:
        path = Path(path)
        self.model.save_pretrained(path)
        self.processor.save_pretrained(path)
        (path / CONFIG_NAME).write_text(json.dumps(self.metadata(), indent=2) + "\n")

    def metadata(self) -> dict[str, Any]:
        return {"layout": self.layout, "task": self.task, "normalize": self.normalize,
                "num_frames": self.num_frames, "padding_side": self.padding_side}

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    # ------------------------------------------------------------------ core
    def encode(self, contexts: Sequence[Context], *, add_generation_prompt: bool = True) -> dict[str, torch.Tensor]:
        """Render contexts with the chat template and run the processor; tensors on the model's device."""
        texts = [self.processor.apply_chat_template(c.messages, add_generation_prompt=add_generation_prompt,
                                                    tokenize=False) for c in contexts]
        batch = self.processor(text=texts, images=[c.images for c in contexts], padding=True,
                               padding_side=self.padding_side, do_rescale=False, return_tensors="pt")
        out = {}
        for k, v in batch.items():
            v = v.to(self.device)
            out[k] = v.to(self.dtype) if v.is_floating_point() else v
        return out

    def answer_logits(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        """B×2 log-scores (yes, no) at each sequence's answer position, from one forward pass."""
        hidden = self.model.model(**inputs, use_cache=False).last_hidden_state
        rows = torch.arange(hidden.shape[0], device=hidden.device)
        return self.head_scores(hidden[rows, _last_positions(inputs["attention_mask"])])

    def head_scores(self, h: torch.Tensor) -> torch.Tensor:
        """B×2 log-scores (yes, no) from final hidden states B×H: only the answer rows of the LM head."""
        head = self.model.get_output_embeddings()
        n_yes = len(self.yes_ids)
        if self.normalize == "yes_no":
            ids = torch.tensor(self.yes_ids + self.no_ids, device=h.device)
            logits = h @ head.weight[ids].T
            if getattr(head, "bias", None) is not None:
                logits = logits + head.bias[ids]
        else:
            logits = torch.log_softmax(head(h).float(), dim=-1)[:, self.yes_ids + self.no_ids]
        logits = logits.float()
        return torch.stack([logits[:, :n_yes].logsumexp(1), logits[:, n_yes:].logsumexp(1)], dim=1)

    def rewards(self, contexts: Sequence[Context]) -> torch.Tensor:
        """P(yes) for each context (differentiable; wrap in torch.no_grad() when scoring)."""
        return self.reward_from_scores(self.answer_logits(self.encode(contexts)))

    def reward_from_scores(self, lp: torch.Tensor) -> torch.Tensor:
        """P(yes) from B×2 (yes, no) log-scores."""
        if self.normalize == "yes_no":
            return torch.sigmoid(lp[:, 0] - lp[:, 1])
        return lp[:, 0].exp()

    def load_items(self, prompts: Sequence[str] | str, candidates: Sequence[Any], *, references: Any = None,
                   conditions: Any = None, task: str | None = None) -> tuple[Any, list[tuple]]:
        """Check the arguments against this checkpoint's layout and load the media:
        (task, [(prompt, candidate, reference or None, condition or None), ...])."""
        task_obj = get_task(task or self.task)
        n = len(candidates)
        prompts = broadcast(prompts, n, "prompts")
        if self.layout == "pairwise" and references is None:
            raise ValueError("this is a pairwise reward model: pass references=... (the reference is image 1, "
                             "the candidate image 2) or use rm.compare(prompt, a, b)")
        if self.layout == "pointwise" and references is not None:
            raise ValueError("this is a pointwise reward model; it takes no references (use a pairwise checkpoint)")
        refs = broadcast(references, n, "references") if references is not None else [None] * n
        if task_obj.needs_condition and conditions is None:
            raise ValueError(f"task {task_obj.name!r} needs conditions=... (the image the video starts from)")
        conds = broadcast(conditions, n, "conditions") if conditions is not None else [None] * n
        video, frames = task_obj.is_video, self.num_frames
        items = [(p, load_media(c, video=video, num_frames=frames),
                  None if r is None else load_media(r, video=video, num_frames=frames),
                  None if k is None else load_image(k))
                 for p, c, r, k in zip(prompts, candidates, refs, conds)]
        return task_obj, items

    def contexts(self, prompts: Sequence[str] | str, candidates: Sequence[Any], *, references: Any = None,
                 conditions: Any = None, task: str | None = None) -> list[Context]:
        """Load media and build one context per candidate, in this checkpoint's layout."""
        task_obj, items = self.load_items(prompts, candidates, references=references, conditions=conditions,
                                          task=task)
        return [self._context(task_obj, item) for item in items]

    def _context(self, task_obj: Any, item: tuple) -> Context:
        prompt, candidate, reference, condition = item
        return build_context(task_obj, self.layout, prompt, candidate, reference=reference, condition=condition)

    def score_items(self, task_obj: Any, items: list[tuple], batch_size: int = 16) -> list[float]:
        """Rewards for items from `load_items` (call under torch.inference_mode()): shared-prefix
        groups where possible, else length-sorted plain batches."""
        out: list[float | None] = [None] * len(items)
        plain: list[int] = []
        if self.prefix_scorer is not None and not task_obj.is_video:
            by_prompt: dict[str, dict[bytes | None, list[int]]] = {}
            for i, (p, c, r, k) in enumerate(items):
                if k is not None:
                    plain.append(i)
                else:
                    by_prompt.setdefault(p, {}).setdefault(None if r is None else content_key(r), []).append(i)
            for p, by_ref in by_prompt.items():
                groups = [(items[idx[0]][2], [items[i][1] for i in idx]) for idx in by_ref.values()]
                try:
                    rewards = self.prefix_scorer.rewards(task_obj, p, groups, batch_size)
                except ValueError:  # e.g. images of different sizes: no common token layout
                    plain += [i for idx in by_ref.values() for i in idx]
                    continue
                for idx, r in zip(by_ref.values(), rewards):
                    for i, v in zip(idx, r.tolist()):
                        out[i] = v
        else:
            plain = list(range(len(items)))
        # length-aware batching: similar lengths together, so padding wastes little
        plain.sort(key=lambda i: (len(items[i][0]), items[i][1].ndim))
        for j in range(0, len(plain), batch_size):
            idx = plain[j:j + batch_size]
            for i, v in zip(idx, self.rewards([self._context(task_obj, items[i]) for i in idx]).tolist()):
                out[i] = v
        return out  # type: ignore[return-value]

    # ------------------------------------------------------------------ public API
    def score(self, prompts: Sequence[str] | str, images: Sequence[Any] | Any, *, references: Any = None,
              task: str | None = None, conditions: Any = None, batch_size: int = 16) -> list[float]:
        """Reward P(yes) in (0, 1) for each image (or video). One prompt broadcasts over all images.

        Pairwise checkpoints need `references` (one, or one per image): r = P(image beats reference).
        """
        images = list(images) if isinstance(images, (list, tuple)) else [images]
        task_obj, items = self.load_items(prompts, images, references=references, conditions=conditions, task=task)
        with torch.inference_mode():
            return self.score_items(task_obj, items, batch_size)

    def pair_candidates(self, image_a: Any, image_b: Any, symmetric: bool = True) -> tuple[list, list | None]:
        """(candidates, references) whose rewards `pair_probability` turns into P(A better than B).

        Pointwise: both images. Pairwise: A as image 2 against B as image 1, and the swap when symmetric.
        """
        if self.layout == "pointwise":
            return [image_a, image_b], None
        return ([image_a, image_b], [image_b, image_a]) if symmetric else ([image_a], [image_b])

    def pair_probability(self, rewards: Sequence[float]) -> float:
        """P(A better than B) from the rewards of `pair_candidates` (in its order).

        Pairwise: the judge saw B as image 1 and A as image 2; with the swapped question too
        (symmetric), P(A>B) and 1 - P(B>A) are averaged, cancelling position bias.
        Pointwise: Bradley-Terry on the two rewards, sigmoid(logit r_a - logit r_b).
        """
        if self.layout == "pointwise":
            ra, rb = torch.tensor(list(rewards), dtype=torch.float64).clamp(1e-9, 1 - 1e-9)
            return torch.sigmoid(torch.logit(ra) - torch.logit(rb)).item()
        return (rewards[0] + 1.0 - rewards[1]) / 2.0 if len(rewards) == 2 else rewards[0]

    def compare(self, prompt: str, image_a: Any, image_b: Any, *, task: str | None = None,
                symmetric: bool = True, condition: Any = None) -> float:
        """P(image_a better than image_b); see `pair_probability` for how each layout answers."""
        cands, refs = self.pair_candidates(image_a, image_b, symmetric)
        return self.pair_probability(self.score(prompt, cands, references=refs, task=task, conditions=condition))

    def rank(self, prompt: str, images: Sequence[Any], *, task: str | None = None, condition: Any = None) -> list[int]:
        """Indices of `images`, best first (pointwise: by reward; pairwise: by total win probability)."""
        n = len(images)
        if self.layout == "pointwise" or n < 2:
            wins = torch.tensor(self.score(prompt, list(images), task=task, conditions=condition)) if n else None
        else:
            pairs = [(i, j) for i in range(n) for j in range(n) if i != j]
            p = self.score(prompt, [images[i] for i, _ in pairs], references=[images[j] for _, j in pairs],
                           task=task, conditions=condition)
            wins = torch.zeros(n)
            for (i, j), pij in zip(pairs, p):  # both orders of each pair: position bias cancels
                wins[i] += pij
                wins[j] += 1.0 - pij
        return [] if n == 0 else torch.argsort(wins, descending=True, stable=True).tolist()

    def reward_fn(self, task: str | None = None) -> Callable[..., torch.Tensor]:
        """A differentiable reward for ReFL: fn(images, prompts, references=None) -> tensor of shape B.

        `images`: float B×3×H×W (or B×T×3×H×W video) in [0, 1]; gradients flow back to them
        through the family's own torch image processor and the backbone.
        """
        def fn(images: torch.Tensor, prompts: Sequence[str] | str, references: Any = None,
               conditions: Any = None) -> torch.Tensor:
            if not isinstance(images, torch.Tensor) or images.ndim not in (4, 5):
                raise MediaError("reward_fn: images must be a float tensor B×3×H×W or B×T×3×H×W in [0, 1]")
            refs = list(references) if isinstance(references, torch.Tensor) else references
            ctxs = self.contexts(prompts, list(images), references=refs, conditions=conditions, task=task)
            return self.rewards(ctxs)
        return fn
