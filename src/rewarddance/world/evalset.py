"""Balanced sets of images that satisfy or violate their prompt, for measuring the checker.

Example:
    >>> import numpy as np
    >>> from rewarddance.world.evalset import balanced_cases
    >>> cases = balanced_cases(np.random.default_rng(0), 4)
    >>> [c.expected for c in cases]
    [True, False, True, False]
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

from .check import check
from .defects import CONTENT_DEFECTS, apply_content_defect, apply_quality_defect
from .render import ID_BACKGROUNDS, OOD_BACKGROUNDS, Style, render
from .scene import CATEGORIES, random_spec, sample_scene


@dataclass
class Case:
    image: Image.Image
    prompt: str
    expected: bool  # does the image satisfy the prompt?
    category: str
    kind: str  # "clean" or the content defect that broke it


def balanced_cases(rng: np.random.Generator, n: int, *, size: int = 64, style: Style = Style(),
                   quality_defect: str | None = None, severity: float = 1.0) -> list[Case]:
    """n cases alternating positive / negative; negatives carry a random applicable content defect."""
    backgrounds = OOD_BACKGROUNDS if style.outlined else ID_BACKGROUNDS
    cases: list[Case] = []
    while len(cases) < n:
        category = CATEGORIES[int(rng.integers(len(CATEGORIES)))]
        spec = random_spec(rng, category)
        bg = backgrounds[int(rng.integers(len(backgrounds)))]
        scene = sample_scene(rng, spec, background=bg, rotation=style.max_rotation)
        kind = "clean"
        if len(cases) % 2 == 1:
            for k in rng.permutation(CONTENT_DEFECTS):
                broken = apply_content_defect(rng, scene, spec, str(k))
                if broken is not None:
                    scene, kind = broken, str(k)
                    break
        img = render(scene, size, style)
        if quality_defect:
            img = apply_quality_defect(img, quality_defect, severity, rng)
        cases.append(Case(img, spec.prompt(), kind == "clean", category, kind))
    return cases


def checker_metrics(cases: list[Case]) -> dict[str, float]:
    """Accuracy, precision and recall of check(...).passed against the cases' truth."""
    pred = np.array([check(c.image, c.prompt, quality=False).passed for c in cases])
    truth = np.array([c.expected for c in cases])
    tp = int((pred & truth).sum())
    return {"n": len(cases), "accuracy": float((pred == truth).mean()),
            "precision": tp / max(int(pred.sum()), 1), "recall": tp / max(int(truth.sum()), 1)}
