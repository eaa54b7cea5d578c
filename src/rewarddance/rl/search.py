"""Inference-time scaling with a judge: Best-of-N and search over paths (method.md §5).

Both spend judge calls to pick better samples from a fixed generator, no training:

- `best_of_n`: N samples from N seeds, each scored once; the best is kept. N judge calls
  (a pairwise judge scoring against the prompt's reference; `win_counts` in
  evaluate.references picks by all-pairs comparisons instead, at N(N−1) calls).
- `search_over_paths` (Ma et al. 2025, "Inference-time scaling for diffusion models beyond
  scaling denoising steps"): N trajectories from N noises; at every `every`-th step each path's
  predicted clean image is scored, the best N/branches paths survive, and each survivor is
  extended into `branches` paths: itself, and branches−1 copies whose predicted clean image is
  re-noised `back` steps up (fresh noise from their own seeds) and sampled on from there. At the
  end the N finished images are scored and the best is returned. N judge calls per checkpoint,
  plus N at the end.

A score function is `score(images N×3×H×W in [0, 1], prompt) -> N` (no gradients): a pointwise
reward, or a pairwise judge's P(image beats the prompt's reference). Every draw is seeded, so a
search is reproducible. Results carry their cost: judge calls and generator evaluations (NFE),
to compare methods at equal compute.

Example (any Generator and score function):
    >>> res = best_of_n(gen, "two red circles", seeds=range(8), score=score)        # doctest: +SKIP
    >>> res.image.shape, res.judge_calls                                            # doctest: +SKIP
    (torch.Size([3, 32, 32]), 8)
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import torch
from torch import Tensor

from ..generators import Generator

ScoreFn = Callable[[Tensor, str], Tensor]


@dataclass
class SearchResult:
    image: Tensor          # 3×H×W in [0, 1]: the pick
    score: float           # its score
    images: Tensor         # N×3×H×W: the final candidates (Best-of-N: every sample)
    scores: Tensor         # N: their scores
    judge_calls: int       # images scored, all checkpoints included
    nfe: int               # generator velocity evaluations (one per sample per step; CFG counts once)
    trace: list[dict] = field(default_factory=list)  # search: per checkpoint, its step, scores and survivors


def _scores(score: ScoreFn, images: Tensor, prompt: str) -> Tensor:
    s = torch.as_tensor(score(images, prompt), dtype=torch.float64).flatten().cpu()
    if s.numel() != images.shape[0]:
        raise ValueError(f"score returned {s.numel()} values for {images.shape[0]} images")
    return s


@torch.no_grad()
def best_of_n(gen: Generator, prompt: str, seeds: Iterable[int], score: ScoreFn, *, num_steps: int = 20,
              guidance_scale: float = 3.0) -> SearchResult:
    """One sample per seed; the highest-scoring one wins (ties: the first)."""
    seeds = list(seeds)
    images = gen.sample([prompt] * len(seeds), seeds=seeds, num_steps=num_steps, guidance_scale=guidance_scale).images
    s = _scores(score, images, prompt)
    best = int(torch.argmax(s))
    return SearchResult(images[best], float(s[best]), images, s, len(seeds), len(seeds) * num_steps)


@torch.no_grad()
def search_over_paths(gen: Generator, prompt: str, score: ScoreFn, *, paths: int = 8, branches: int = 2,
                      every: int = 5, back: int = 2, num_steps: int = 20, guidance_scale: float = 3.0,
                      seed: int = 0) -> SearchResult:
    """Search over `paths` sampling trajectories (see the module docstring). `paths` must be a multiple
    of `branches`; checkpoints are the steps every, 2·every, ... below num_steps; `back` (< every) is
    how many steps up the schedule a branch is re-noised. Seeds: path i starts from seed·10⁶ + i;
    the branch noise at a checkpoint comes from seeds drawn after those, so all of it is reproducible."""
    if paths < 1 or branches < 1 or paths % branches:
        raise ValueError(f"paths ({paths}) must be a positive multiple of branches ({branches})")
    if not 0 <= back < every:
        raise ValueError(f"back ({back}) must be in [0, every={every})")
    sig = gen.sigmas(num_steps)
    cond = gen.encode_prompts([prompt] * paths)
    uncond = gen.encode_prompts([""]) if guidance_scale != 1.0 else None
    base = seed * 1_000_000
    x = gen.initial_noise([base + i for i in range(paths)], num_steps)
    k, calls, nfe, next_seed = 0, 0, 0, base + paths
    trace: list[dict] = []

    def run(x: Tensor, start: int, stop: int) -> Tensor:
        nonlocal nfe
        for j in range(start, stop):
            x = gen.step(x, j, cond, guidance_scale, num_steps, uncond).prev_sample
        nfe += paths * (stop - start)
        return x

    for checkpoint in range(every, num_steps, every):
        x = run(x, k, checkpoint)
        v = gen.velocity(x, sig[checkpoint], cond, guidance_scale, uncond)
        nfe += paths
        x0 = gen.predict_clean(x, sig[checkpoint], v)
        s = _scores(score, gen.to_images(x0), prompt)
        calls += paths
        keep = torch.argsort(s, descending=True, stable=True)[: paths // branches]
        trace.append({"step": checkpoint, "scores": s, "kept": keep.tolist()})
        children, starts = [], []
        for i in keep.tolist():
            children.append(x[i])  # the survivor itself, at the checkpoint
            for _ in range(branches - 1):  # branches re-noised `back` steps up the schedule
                children.append(gen.renoise(x0[i:i + 1], sig[checkpoint - back], [next_seed])[0])
                next_seed += 1
            starts += [checkpoint] + [checkpoint - back] * (branches - 1)
        x = torch.stack(children)
        # bring the re-noised branches back to the checkpoint, so every path continues from one step
        if back:
            branched = torch.tensor([st != checkpoint for st in starts])
            y = x[branched]
            for j in range(checkpoint - back, checkpoint):
                y = gen.step(y, j, cond[: len(y)], guidance_scale, num_steps, uncond).prev_sample
            nfe += len(y) * back
            x[branched] = y
        k = checkpoint
    x = run(x, k, num_steps)
    images = gen.to_images(x)
    s = _scores(score, images, prompt)
    calls += paths
    best = int(torch.argmax(s))
    return SearchResult(images[best], float(s[best]), images, s, calls, nfe, trace)
