"""Generators: the interface the RL recipes use, and the ShapeWorld text-to-image flow-matching model.

    >>> import torch
    >>> from rewarddance.generators import ShapeWorldGenerator, pretrained_path
    >>> gen = ShapeWorldGenerator.from_pretrained(pretrained_path())  # the committed ShapeWorld weights
    >>> with torch.no_grad():
    ...     images = gen.sample(["a red circle above a blue square"], seeds=[0]).images  # 1×3×32×32 in [0, 1]

See docs/generators.md for the conventions (sigmas, states, seeds) and how ReFL, GRPO and
Best-of-N use them; `rewarddance generator pretrain` trains a ShapeWorld generator.
"""

from pathlib import Path

from .base import Generator, SampleOutput, StepOutput, seeded_noise
from .evaluation import GeneratorEvaluation, Metric, evaluate_generator, save_grid
from .shapeworld import LORA_TARGETS, ShapeWorldGenerator, ShapeWorldGeneratorConfig

PRETRAINED = "shapeworld-flow"


def pretrained_path(name: str = PRETRAINED) -> Path:
    """Directory of a generator shipped with the package (`pretrained/<name>`)."""
    path = Path(__file__).parent / "pretrained" / name
    if not (path / "generator.json").exists():
        raise FileNotFoundError(f"{path}: no pretrained generator {name!r} in this installation")
    return path


def generator_path(name_or_path: str | Path) -> Path:
    """`name_or_path` if it is a directory, else the directory of the shipped generator of that name."""
    path = Path(name_or_path)
    return path if path.exists() else pretrained_path(str(name_or_path))


__all__ = [
    "LORA_TARGETS",
    "PRETRAINED",
    "Generator",
    "GeneratorEvaluation",
    "Metric",
    "SampleOutput",
    "ShapeWorldGenerator",
    "ShapeWorldGeneratorConfig",
    "StepOutput",
    "evaluate_generator",
    "generator_path",
    "pretrained_path",
    "save_grid",
    "seeded_noise",
]
