"""The reward model facade: score / compare / rank / reward_fn / explain over a judge.

`RewardModel` is what users hold: it checks arguments against the checkpoint's layout,
loads media, builds contexts, batches (shared-prefix fast path where the family allows it)
and turns rewards into comparisons and rankings. The differentiable core it calls is a
`Judge` (judge.py), or a `ClipJudge` (clip.py) for the dual-encoder baseline.

Example:
    >>> import rewarddance as rd
    >>> rm = rd.load("qwen2_vl-tiny")                                  # doctest: +SKIP
    >>> rm.score(["a red circle"], ["img.png"])                         # doctest: +SKIP
    [0.49...]
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from ..context import LAYOUTS, Context, Task, build_context, get_task
from ..media import MediaError, broadcast, load_image, load_media
from .checkpoint import (CheckpointConfig, CheckpointError, read_checkpoint_config, weights_file_digest,
                         write_checkpoint_config)
from .fast import LayoutMismatchError, PrefixScorer, content_key
from .judge import Judge

logger = logging.getLogger(__name__)


def load_judge(path: str | os.PathLike, config: CheckpointConfig, *, device: str = "cpu",
               dtype: torch.dtype = torch.float32) -> torch.nn.Module:
    """The judge a checkpoint's objective scores with: a generative or value-head `Judge`, or a `ClipJudge`."""
    if config.objective == "clip-bt":
        from .clip import ClipJudge

        return ClipJudge.from_pretrained(path, device=device, dtype=dtype)
    adapter_of = None
    if config.adapter_of:
        from .presets import parse_preset_name, preset_path

        base = Path(config.adapter_of)
        adapter_of = base if base.is_absolute() else Path(path) / base
        if not adapter_of.exists() and parse_preset_name(config.adapter_of):
            adapter_of = preset_path(config.adapter_of)
        if config.adapter_base_digest and weights_file_digest(adapter_of) != config.adapter_base_digest:
            raise CheckpointError(f"{path}: this LoRA adapter was trained on a base whose weight files differ "
                                  f"from those now at {adapter_of}; load it with the base it was trained on, "
                                  f"or retrain it")
    return Judge.from_pretrained(path, device=device, dtype=dtype, normalize=config.normalize,
                                 padding_side=config.padding_side, value_head=config.objective == "regressive-bt",
                                 adapter_of=adapter_of)


def win_matrix_from_scores(score: Callable[..., list[float]], layout: str, prompt: str, images: Sequence[Any], *,
                           task: str | None = None, condition: Any = None) -> torch.Tensor:
    """n×n tensor of P(image i better than image j) (diagonal 0.5) from a judge's `score` (a
    `RewardModel`'s or a `RewardClient`'s, same signature) of the given `layout`.

    Pairwise: every ordered pair is judged (image j as reference, image i as candidate) in ONE
    `score` call and the two orders of a pair are averaged, so position bias cancels. Pointwise:
    Bradley-Terry on the n rewards (see `RewardModel.pair_probability`).
    """
    n = len(images)
    if n < 2:
        return torch.full((n, n), 0.5, dtype=torch.float64)
    if layout == "pointwise":
        r = torch.tensor(score(prompt, list(images), task=task, conditions=condition),
                         dtype=torch.float64).clamp(1e-9, 1 - 1e-9)
        return torch.sigmoid(torch.logit(r)[:, None] - torch.logit(r)[None, :])
    pairs = [(i, j) for i in range(n) for j in range(n) if i != j]
    p = score(prompt, [images[i] for i, _ in pairs], references=[images[j] for _, j in pairs], task=task,
              conditions=condition)
    beats = torch.full((n, n), 0.5, dtype=torch.float64)
    for (i, j), pij in zip(pairs, p):
        beats[i, j] = pij
    return (beats + 1.0 - beats.T) / 2.0


class RewardModel:
    """A judge whose reward is P("yes") (or sigma(v) for the value-head and CLIP baselines).

    `config.layout`: "pointwise" (prompt + candidate) or "pairwise" (prompt + reference as
    image 1 + candidate as image 2: r = P(candidate beats reference)). `fast`: shared-prefix
    scoring where the family allows it (models/fast.py; `prefix_scorer.scored` and `.fallbacks`
    count the items it scored and those it left to the plain path); `compile`: torch.compile the
    language model (slow first call, faster after).
    """

    def __init__(self, judge: torch.nn.Module, config: CheckpointConfig | None = None, *, fast: bool = True,
                 compile: bool = False) -> None:
        self.judge = judge
        self.config = config or CheckpointConfig()
        if self.layout not in LAYOUTS:
            raise ValueError(f"layout must be one of {LAYOUTS}, got {self.layout!r}")
        # shared-prefix KV cache + vision-feature reuse where the family allows it (see fast.py)
        self.prefix_scorer = PrefixScorer(judge) if fast and isinstance(judge, Judge) and PrefixScorer.supports(
            judge) else None
        if compile:  # measured 1.5x on this CPU after a ~2-minute first call: worth it for long RL runs
            inner = judge.backbone.model
            name = "language_model" if hasattr(inner, "language_model") else "text_model"
            setattr(inner, name, torch.compile(getattr(inner, name), dynamic=True))

    # ------------------------------------------------------------------ loading
    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, *, device: str = "cpu", dtype: torch.dtype | None = None,
                        fast: bool = True, compile: bool = False, **overrides: Any) -> "RewardModel":
        """Load a checkpoint directory (model + processor [+ rewarddance.json]); `overrides`
        replace checkpoint settings (layout, task, normalize, num_frames, padding_side)."""
        path = Path(path)
        if not (path / "config.json").exists() and not (path / "adapter_config.json").exists():
            raise FileNotFoundError(f"{path}: no config.json; not a model directory")
        config = read_checkpoint_config(path).replace(**overrides)
        judge = load_judge(path, config, device=device, dtype=dtype or torch.float32)
        return cls(judge, config, fast=fast, compile=compile)

    def save_pretrained(self, path: str | os.PathLike, *, merge_adapter: bool = True) -> None:
        """Write the judge and rewarddance.json (LoRA: merged weights, or the adapter alone)."""
        path = Path(path)
        self.judge.save_pretrained(path, merge_adapter=merge_adapter)
        config = self.config
        if merge_adapter:  # full weights now: no base model to apply an adapter to
            config = config.replace(adapter_of=None)
        if isinstance(self.judge, Judge):  # the judge's own settings are the ones it scores with
            config = config.replace(answer_ids={"yes": self.judge.yes_ids, "no": self.judge.no_ids},
                                    normalize=self.judge.normalize, padding_side=self.judge.padding_side)
        write_checkpoint_config(path, config)

    # ------------------------------------------------------------------ settings
    @property
    def layout(self) -> str:
        return self.config.layout

    @property
    def task(self) -> str:
        return self.config.task

    @property
    def num_frames(self) -> int:
        return self.config.num_frames

    @property
    def model(self) -> torch.nn.Module:
        """The Hugging Face model (through any peft / DDP wrapper)."""
        return self.judge.backbone

    @property
    def processor(self) -> Any:
        return self.judge.processor

    @property
    def device(self) -> torch.device:
        return self.judge.device

    @property
    def dtype(self) -> torch.dtype:
        return self.judge.dtype

    def load_items(self, prompts: Sequence[str] | str, candidates: Sequence[Any], *, references: Any = None,
                   conditions: Any = None, task: str | None = None) -> tuple[Task, list[tuple]]:
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

    def score_items(self, task_obj: Task, items: list[tuple], batch_size: int = 16) -> list[float]:
        """Rewards for items from `load_items` (call under torch.inference_mode()): shared-prefix
        groups where possible, else length-sorted plain batches."""
        out: list[float | None] = [None] * len(items)
        plain: list[int] = []
        if self.prefix_scorer is not None and not task_obj.is_video:
            plain = [i for i, item in enumerate(items) if item[3] is not None]  # condition images: plain
            plain += self._score_prefix(task_obj, items, [i for i, item in enumerate(items) if item[3] is None],
                                        batch_size, out)
        else:
            plain = list(range(len(items)))
        # length-aware batching: similar lengths together, so padding wastes little
        plain.sort(key=lambda i: (len(items[i][0]), items[i][1].ndim))
        for j in range(0, len(plain), batch_size):
            idx = plain[j:j + batch_size]
            for i, v in zip(idx, self.judge.rewards([self._context(task_obj, items[i]) for i in idx]).tolist()):
                out[i] = v
        return out  # type: ignore[return-value]

    def _score_prefix(self, task_obj: Any, items: list[tuple], idx: list[int], batch_size: int,
                      out: list) -> list[int]:
        """Score items `idx` on the shared-prefix path into `out`, grouped by prompt and by the token
        layouts of reference and candidate, then by reference; returns the items left for the plain path."""
        scorer = self.prefix_scorer
        cand = dict(zip(idx, scorer.encode_images([items[i][1] for i in idx], batch_size)))
        with_ref = [i for i in idx if items[i][2] is not None]
        ref = dict(zip(with_ref, scorer.encode_images([items[i][2] for i in with_ref], batch_size)))
        groups: dict[tuple, dict[bytes | None, list[int]]] = {}
        for i in idx:
            r = ref.get(i)
            key = (items[i][0], None if r is None else r.layout, cand[i].layout)
            groups.setdefault(key, {}).setdefault(None if r is None else r.key, []).append(i)
        left: list[int] = []
        for (prompt, _, _), by_ref in groups.items():
            first = next(iter(by_ref.values()))[0]
            try:
                rewards = scorer.rewards(task_obj, self.layout, prompt, (items[first][1], items[first][2]),
                                         [(ref.get(g[0]), [cand[i] for i in g]) for g in by_ref.values()],
                                         batch_size)
            except LayoutMismatchError as err:
                fell = [i for g in by_ref.values() for i in g]
                if scorer.fallbacks == 0:  # once per model: the plain path is correct, only slower
                    logger.warning("shared-prefix scoring fell back to the plain path for %d item(s): %s",
                                   len(fell), err)
                scorer.fallbacks += len(fell)
                left += fell
                continue
            for g, r in zip(by_ref.values(), rewards):
                for i, v in zip(g, r.tolist()):
                    out[i] = v
        return left

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

    def win_matrix(self, prompt: str, images: Sequence[Any], *, task: str | None = None,
                   condition: Any = None, batch_size: int = 16) -> torch.Tensor:
        """n×n tensor of P(image i better than image j) (diagonal 0.5); see `win_matrix_from_scores`."""
        return win_matrix_from_scores(lambda *a, **kw: self.score(*a, **kw, batch_size=batch_size), self.layout,
                                      prompt, images, task=task, condition=condition)

    def rank(self, prompt: str, images: Sequence[Any], *, task: str | None = None, condition: Any = None) -> list[int]:
        """Indices of `images`, best first (pointwise: by reward; pairwise: by total win probability)."""
        n = len(images)
        if n == 0:
            return []
        if self.layout == "pointwise" or n < 2:
            wins = torch.tensor(self.score(prompt, list(images), task=task, conditions=condition))
        else:
            wins = self.win_matrix(prompt, images, task=task, condition=condition).sum(dim=1)
        return torch.argsort(wins, descending=True, stable=True).tolist()

    def reward_fn(self, task: str | None = None, *, raw: bool = False,
                  checkpointing: bool = False) -> Callable[..., torch.Tensor]:
        """A differentiable reward for ReFL: fn(images, prompts, references=None) -> tensor of shape B.

        `images`: float B×3×H×W (or B×T×3×H×W video) in [0, 1]; gradients flow back to them
        through the family's own torch image processor and the backbone. `raw=True` returns the
        reward's logit instead (the value v of a value-head judge, logit P(yes) of a generative one).

        With the fast path (the default for the six tested families, images without condition
        frames), candidates that share a prompt and reference are scored against that prefix's
        cached keys/values and only their own tokens are differentiated (`PrefixScorer.
        differentiable_scores`); the values and gradients equal the plain path's (tested).
        `checkpointing=True` recomputes the judge's layer activations in the backward pass instead of
        keeping them (`Judge.layer_checkpointing`: less memory, one more forward); it scores through the
        plain path, since checkpointed layers cannot extend the prefix's KV cache.

            >>> fn = rd.load("qwen2_5_vl-tiny-shapeworld").reward_fn()       # doctest: +SKIP
            >>> x = torch.rand(2, 3, 32, 32, requires_grad=True)               # doctest: +SKIP
            >>> fn(x, "a red circle").sum().backward()                          # doctest: +SKIP
        """
        def fn(images: torch.Tensor, prompts: Sequence[str] | str, references: Any = None,
               conditions: Any = None) -> torch.Tensor:
            if not isinstance(images, torch.Tensor) or images.ndim not in (4, 5):
                raise MediaError("reward_fn: images must be a float tensor B×3×H×W or B×T×3×H×W in [0, 1]")
            refs = list(references) if isinstance(references, torch.Tensor) else references
            task_obj, items = self.load_items(prompts, list(images), references=refs, conditions=conditions, task=task)
            if checkpointing:
                with self.judge.layer_checkpointing():
                    scores = self._differentiable_scores(task_obj, items, prefix=False)
            else:
                scores = self._differentiable_scores(task_obj, items)
            if raw:
                return scores[:, 0] - scores[:, 1]
            return self.judge.reward_from_scores(scores)
        return fn

    def _differentiable_scores(self, task_obj: Any, items: list[tuple], prefix: bool = True) -> torch.Tensor:
        """B×2 answer scores of `items` (from `load_items`) with gradients: shared-prefix groups where
        possible (and `prefix`), the plain path for the rest."""
        rows: list[torch.Tensor | None] = [None] * len(items)
        plain = list(range(len(items)))
        scorer = self.prefix_scorer
        if prefix and scorer is not None and not task_obj.is_video:
            plain = [i for i, item in enumerate(items) if item[3] is not None]  # condition images: plain
            groups: dict[tuple, list[int]] = {}
            for i, (prompt, _, reference, condition) in enumerate(items):
                if condition is None:
                    key = (prompt, None if reference is None else (reference.shape, content_key(reference)))
                    groups.setdefault(key, []).append(i)
            for idx in groups.values():
                prompt, _, reference, _ = items[idx[0]]
                try:
                    scores = scorer.differentiable_scores(task_obj, self.layout, prompt,
                                                          torch.stack([items[i][1] for i in idx]), reference)
                except LayoutMismatchError as err:
                    if scorer.fallbacks == 0:
                        logger.warning("differentiable shared-prefix scoring fell back to the plain path for %d "
                                       "item(s): %s", len(idx), err)
                    scorer.fallbacks += len(idx)
                    plain += idx
                    continue
                for i, row in zip(idx, scores):
                    rows[i] = row
        if plain:
            plain.sort()
            scores = self.judge.answer_logits(self.judge.encode([self._context(task_obj, items[i]) for i in plain]))
            for i, row in zip(plain, scores):
                rows[i] = row
        return torch.stack(rows)  # type: ignore[arg-type]

    def explain(self, prompt: str, image: Any, *, reference: Any = None, condition: Any = None,
                task: str | None = None, max_new_tokens: int = 64) -> tuple[float, str]:
        """(P(yes), rationale): the judgment from one forward pass, then the reason generated
        greedily after the judgment token (meaningful for judges trained with CoT rationales).

            >>> rm = rd.load("qwen2_5_vl-small-shapeworld")                # doctest: +SKIP
            >>> rm.explain("a red circle", "a.png")                        # doctest: +SKIP
            (0.93, 'the image shows a red circle ...')
        """
        if not isinstance(self.judge, Judge):
            raise ValueError(f"a {self.config.objective} judge writes no text: explain needs a generative judge")
        ctx = self.contexts(prompt, [image], references=None if reference is None else [reference],
                            conditions=condition, task=task)[0]
        p, judgment, text = self.judge.explain(ctx, max_new_tokens=max_new_tokens)
        return p, text
