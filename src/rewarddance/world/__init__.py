"""ShapeWorld: a visual world whose truth can be checked (scenes, prompts, renderer, checker, data).

Example:
    >>> from rewarddance.world import check
    >>> check  # check(image, prompt) -> CheckResult(passed, score, constraints, ...)  # doctest: +ELLIPSIS
    <function check at ...>
"""

from .check import CheckResult, Detection, check, detect
from .render import Style, render
from .scene import CATEGORIES, COLOURS, SHAPES, Obj, Scene, Spec, parse_prompt, random_spec, sample_scene

__all__ = ["CATEGORIES", "COLOURS", "SHAPES", "CheckResult", "Detection", "Obj", "Scene", "Spec", "Style",
           "check", "detect", "parse_prompt", "random_spec", "render", "sample_scene"]
