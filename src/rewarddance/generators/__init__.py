"""Generators: the interface the RL recipes use, and the ShapeWorld text-to-image flow-matching model.

    >>> import torch
    >>> from rewarddance.generators import ShapeWorldGenerator, pretrained_path
    >>> gen = ShapeWorldGenerator.from_pretrained(pretrained_path())  # the committed ShapeWorld weights
    >>> with torch.no_grad():
    ...     images = gen.sample(["a red circle above a blue square"], seeds=[0]).images  # 1×3×32×32 in [0, 1]

See docs/generators.md for the conventions (sigmas, states, seeds) and how ReFL, GRPO and
Best-of-N use them; `rewarddance generator pretrain` trains a ShapeWorld generator. Real
diffusers pipelines (SD3, Stable Diffusion, Wan text/image-to-video) are Generators through
the adapters in generators/pipelines.py; `load_generator(dir)` loads either kind.
"""

import json
from pathlib import Path
from typing import Any

from .base import Generator, SampleOutput, StepOutput, seeded_noise
from .evaluation import GeneratorEvaluation, Metric, evaluate_generator, save_grid
from .pipelines import (ADAPTERS, DiffusersGenerator, SD3Generator, StableDiffusionGenerator, WanGenerator,
                        WanImageToVideoGenerator)
from .shapeworld import CONFIG_NAME, LORA_TARGETS, ShapeWorldGenerator, ShapeWorldGeneratorConfig

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


def load_generator(path: str | Path, **options: Any) -> Generator:
    """The generator in directory `path`: a ShapeWorld generator (generator.json) or a diffusers pipeline
    (model_index.json; the adapter is chosen by its `_class_name`, `options` as `height`, `width`,
    `num_frames`, `max_sequence_length` go to it).

        >>> gen = load_generator("runs/my-sd3-pipeline", height=512, width=512)  # doctest: +SKIP
    """
    path = Path(path)
    if (path / CONFIG_NAME).exists():
        if options:
            raise ValueError(f"{path}: a ShapeWorld generator takes no options, got {sorted(options)}")
        return ShapeWorldGenerator.from_pretrained(path)
    index = path / "model_index.json"
    if not index.exists():
        raise FileNotFoundError(f"{path}: neither a ShapeWorld generator ({CONFIG_NAME}) nor a diffusers pipeline "
                                f"(model_index.json)")
    name = json.loads(index.read_text()).get("_class_name")
    if name not in ADAPTERS:
        raise ValueError(f"{path}: a {name}; supported pipelines: {', '.join(sorted(ADAPTERS))}")
    return ADAPTERS[name].from_pretrained(path, **options)


__all__ = [
    "ADAPTERS",
    "DiffusersGenerator",
    "LORA_TARGETS",
    "PRETRAINED",
    "Generator",
    "GeneratorEvaluation",
    "Metric",
    "SD3Generator",
    "SampleOutput",
    "ShapeWorldGenerator",
    "ShapeWorldGeneratorConfig",
    "StableDiffusionGenerator",
    "StepOutput",
    "WanGenerator",
    "WanImageToVideoGenerator",
    "evaluate_generator",
    "generator_path",
    "load_generator",
    "pretrained_path",
    "save_grid",
    "seeded_noise",
]
