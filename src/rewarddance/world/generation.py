"""ShapeWorld as a text-to-image task: prompt sets, render batches and the checker as a ground-truth metric.

What the generator recipes wire from the world (rl/ and generators/ never import it; they take
prompts, data and metrics as arguments):

- `heldout_prompts`: the FIXED evaluation prompts (n per category, drawn once from a seed), never
  trained on; RL measures its ground-truth gain on them.
- `training_prompts`: a pool of distinct prompts for RL, disjoint from a held-out set.
- `render_batch`: renders of random prompts, a pure function of (seed, step): the generator's
  pretraining data, and ReFL's regularisation data.
- `checker_metric`: images + prompts -> (passed, score) per image, the checker with quality ignored.

Example:
    >>> heldout = heldout_prompts(["counting"], 2, seed=1234)
    >>> len(heldout["counting"])
    2
    >>> prompts, x0 = render_batch(seed=0, step=0, batch_size=2, image_size=32)
    >>> x0.shape, float(x0.min()) >= -1.0
    (torch.Size([2, 3, 32, 32]), True)
"""

from __future__ import annotations

from collections.abc import Collection, Sequence

import numpy as np
import torch

from .check import check
from .render import ID_BACKGROUNDS, render
from .scene import CATEGORIES, random_spec, sample_scene

#: The categories a generator finds hard and RL is measured on (single objects show nothing).
COMPOSITIONAL = ("two_object", "counting", "position", "color_attr")


def _check_categories(categories: Collection[str]) -> None:
    unknown = sorted(set(categories) - set(CATEGORIES))
    if unknown:
        raise ValueError(f"unknown ShapeWorld categories {unknown}; choose from {', '.join(CATEGORIES)}")


def heldout_prompts(categories: Sequence[str], n_per_category: int, seed: int) -> dict[str, list[str]]:
    """`n_per_category` distinct prompts per category, drawn from `seed`: a fixed evaluation set."""
    _check_categories(categories)
    rng = np.random.default_rng(seed)
    out: dict[str, list[str]] = {}
    for category in categories:
        prompts: list[str] = []
        for _ in range(100 * n_per_category):  # bounded: single_object has only 6 distinct prompts
            prompt = random_spec(rng, category).prompt()
            if prompt not in prompts:
                prompts.append(prompt)
            if len(prompts) == n_per_category:
                break
        else:
            raise ValueError(f"{category} has fewer than {n_per_category} distinct prompts")
        out[category] = prompts
    return out


def training_prompts(categories: Sequence[str], n: int, seed: int, excluded: Collection[str] = ()) -> list[str]:
    """`n` distinct prompts, categories drawn uniformly, none of them in `excluded`."""
    _check_categories(categories)
    rng = np.random.default_rng(seed)
    prompts: list[str] = []
    seen = set(excluded)
    for _ in range(1000 * n):
        prompt = random_spec(rng, categories[int(rng.integers(len(categories)))]).prompt()
        if prompt not in seen:
            seen.add(prompt)
            prompts.append(prompt)
            if len(prompts) == n:
                return prompts
    raise ValueError(f"fewer than {n} distinct prompts outside the excluded set in {list(categories)}")


def render_batch(seed: int, step: int, batch_size: int, image_size: int, *,
                 categories: Sequence[str] = CATEGORIES, excluded: Collection[str] = (),
                 caption_dropout: float = 0.0) -> tuple[list[str], torch.Tensor]:
    """The prompts and renders (B×3×H×W in [-1, 1]) of step `step`: a pure function of (seed, step).
    Prompts in `excluded` are redrawn; a share `caption_dropout` of the captions becomes ""."""
    _check_categories(categories)
    rng = np.random.default_rng([seed, step])
    prompts, images = [], []
    for _ in range(batch_size):
        while True:
            spec = random_spec(rng, categories[int(rng.integers(len(categories)))])
            if spec.prompt() not in excluded:
                break
        scene = sample_scene(rng, spec, background=ID_BACKGROUNDS[int(rng.integers(len(ID_BACKGROUNDS)))])
        images.append(np.asarray(render(scene, image_size)))
        prompts.append("" if rng.random() < caption_dropout else spec.prompt())
    x0 = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float() / 127.5 - 1
    return prompts, x0


def checker_metric(images: torch.Tensor, prompts: Sequence[str]) -> tuple[list[bool], list[float]]:
    """The ground truth for generated images (B×3×H×W in [0, 1]): whether each passes its prompt,
    and the fraction of its prompt's constraints that hold (image quality is not judged)."""
    results = [check(img, p, quality=False) for img, p in zip(images, prompts)]
    return [r.passed for r in results], [r.score for r in results]
