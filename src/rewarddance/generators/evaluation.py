"""Measuring a generator with a ground-truth metric on fixed prompts and seeds.

`evaluate_generator` samples every (prompt, seed) of a fixed set deterministically (ODE, the same
noise every time) and applies a metric callable `metric(images, prompts) -> (passed, score)` —
for ShapeWorld, `world.generation.checker_metric`; for a user's generator, any judge-independent
check. The pretraining and RL recipes report this number before and after training.

Example:
    >>> from rewarddance.generators import ShapeWorldGenerator, pretrained_path      # doctest: +SKIP
    >>> from rewarddance.world.generation import checker_metric, heldout_prompts      # doctest: +SKIP
    >>> gen = ShapeWorldGenerator.from_pretrained(pretrained_path())                  # doctest: +SKIP
    >>> ev = evaluate_generator(gen, heldout_prompts(["counting"], 4, 1234), range(2), checker_metric)  # doctest: +SKIP
    >>> ev.report["pass_rate"]                                                         # doctest: +SKIP
    0.25
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .base import Generator

#: metric(images B×3×H×W in [0, 1], prompts) -> (passed per image, score in [0, 1] per image)
Metric = Callable[[torch.Tensor, Sequence[str]], tuple[Sequence[bool], Sequence[float]]]


@dataclass
class GeneratorEvaluation:
    report: dict[str, float]     # pass_rate, score, n_images, and pass_rate_<category> / score_<category>
    images: torch.Tensor         # every sample, in (category, prompt, seed) order
    prompts: list[str]           # the prompt of each sample
    passed: list[bool]


@torch.no_grad()
def evaluate_generator(gen: Generator, prompts: Mapping[str, Sequence[str]], seeds: Iterable[int], metric: Metric, *,
                       num_steps: int = 20, guidance_scale: float = 3.0, batch_size: int = 64,
                       rows: Sequence[int] | None = None) -> GeneratorEvaluation:
    """Pass rate and mean score of `metric` over `prompts` (category -> prompts) x `seeds`, overall
    and per category. `rows` restricts sampling to those indices of the (category, prompt, seed)
    list (a data-parallel rank's share); the report then covers those rows only."""
    was_training = gen.training
    gen.eval()
    seeds = list(seeds)
    table = [(c, p, s) for c, ps in prompts.items() for p in ps for s in seeds]
    if rows is not None:
        table = [table[i] for i in rows]
    passed: list[bool] = []
    scores: list[float] = []
    images = []
    for i in range(0, len(table), batch_size):
        chunk = table[i:i + batch_size]
        out = gen.sample([p for _, p, _ in chunk], seeds=[s for *_, s in chunk], num_steps=num_steps,
                         guidance_scale=guidance_scale)
        ok, sc = metric(out.images, [p for _, p, _ in chunk])
        passed += [bool(v) for v in ok]
        scores += [float(v) for v in sc]
        images.append(out.images)
    gen.train(was_training)
    report: dict[str, float] = {"pass_rate": float(np.mean(passed)) if passed else float("nan"),
                                "score": float(np.mean(scores)) if scores else float("nan"), "n_images": len(table)}
    for category in prompts:
        idx = [i for i, (c, _, _) in enumerate(table) if c == category]
        if idx:
            report[f"pass_rate_{category}"] = float(np.mean([passed[i] for i in idx]))
            report[f"score_{category}"] = float(np.mean([scores[i] for i in idx]))
    return GeneratorEvaluation(report, torch.cat(images) if images else torch.zeros(0, *gen.image_shape),
                               [p for _, p, _ in table], passed)


def save_grid(images: torch.Tensor, path: str | Path, columns: int = 8) -> None:
    """A PNG grid of images (N×3×H×W in [0, 1]), `columns` wide, upscaled 2x."""
    from PIL import Image

    n, _, h, w = images.shape
    rows = math.ceil(n / columns)
    grid = torch.ones(3, rows * (h + 2), columns * (w + 2))
    for i, img in enumerate(images):
        r, c = divmod(i, columns)
        grid[:, r * (h + 2) + 1:r * (h + 2) + 1 + h, c * (w + 2) + 1:c * (w + 2) + 1 + w] = img
    arr = (grid.permute(1, 2, 0).numpy() * 255 + 0.5).astype(np.uint8)
    Image.fromarray(arr).resize((arr.shape[1] * 2, arr.shape[0] * 2), Image.Resampling.NEAREST).save(path)
