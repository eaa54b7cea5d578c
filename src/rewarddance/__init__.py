"""rewarddance: generative reward models for image and video generation.

The reward is the probability a vision-language model gives to the answer "yes".

Example:
    >>> import rewarddance as rd
    >>> rm = rd.load("qwen2_vl-tiny")                     # doctest: +SKIP
    >>> rm.score("a red circle", ["a.png", "b.png"])       # doctest: +SKIP
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from .models.presets import parse_preset_name, preset_path
from .models.reward_model import RewardModel

__version__ = "0.1.0"
__all__ = ["RewardModel", "default_dtype", "load", "__version__"]


def default_dtype(device: str | torch.device = "cpu") -> torch.dtype:
    """The dtype `load` uses when none is given."""
    return torch.float32


def load(path_or_preset: str | os.PathLike, device: str = "cpu", dtype: torch.dtype | None = None,
         **overrides) -> RewardModel:
    """Load a reward model from a checkpoint directory, or a preset name such as "qwen2_5_vl-tiny"
    (built offline with random weights on first use and cached)."""
    path = Path(path_or_preset)
    if not path.exists() and parse_preset_name(str(path_or_preset)) is not None:
        path = preset_path(str(path_or_preset))
    return RewardModel.from_pretrained(path, device=device, dtype=dtype or default_dtype(device), **overrides)
