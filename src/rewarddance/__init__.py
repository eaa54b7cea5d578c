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


DTYPE_ENV = "REWARDDANCE_DTYPE"


def _cpu_has_bf16_matmul() -> bool:
    """AVX512-BF16 or AMX: bf16 matmuls in hardware (elsewhere bf16 is emulated and slower than fp32)."""
    cpu = torch.cpu
    return bool(getattr(cpu, "_is_avx512_bf16_supported", lambda: False)()
                or getattr(cpu, "_is_amx_tile_supported", lambda: False)())


def default_dtype(device: str | torch.device = "cpu") -> torch.dtype:
    """The dtype `load` uses when none is given: bfloat16 on GPUs that support it and on CPUs with
    bf16 matmul, else float32; `$REWARDDANCE_DTYPE` (float32 | bfloat16 | float16) overrides.

    bf16 was measured on a trained ShapeWorld judge (docs/evaluation.md): held-out accuracy within
    one point of float32 (800 pairs), 97.8% of verdicts unchanged, |ΔP| ≤ 2.3e-3; 1.7x faster here.
    Equivalence checks pass `dtype=torch.float32` explicitly.

        >>> rd.default_dtype("cpu")    # doctest: +SKIP
        torch.bfloat16
    """
    name = os.environ.get(DTYPE_ENV)
    if name:
        if name not in ("float32", "bfloat16", "float16"):
            raise ValueError(f"${DTYPE_ENV}={name!r}: expected float32, bfloat16 or float16")
        return getattr(torch, name)
    device = torch.device(device)
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float32
    if device.type == "cpu":
        return torch.bfloat16 if _cpu_has_bf16_matmul() else torch.float32
    return torch.float32


def load(path_or_preset: str | os.PathLike, device: str = "cpu", dtype: torch.dtype | None = None,
         **overrides) -> RewardModel:
    """Load a reward model from a checkpoint directory, or a preset name such as "qwen2_5_vl-tiny"
    (built offline with random weights on first use and cached). `dtype` None: `default_dtype(device)`
    (bfloat16 where the hardware has bf16 matmul); pass `dtype=torch.float32` for float32."""
    path = Path(path_or_preset)
    if not path.exists() and parse_preset_name(str(path_or_preset)) is not None:
        path = preset_path(str(path_or_preset))
    return RewardModel.from_pretrained(path, device=device, dtype=dtype or default_dtype(device), **overrides)
