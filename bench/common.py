"""Helpers the benchmarks share (bench/ scripts run as `python bench/NAME.py`, so this imports as `common`)."""

from __future__ import annotations

import time

import torch


def matmul_peak(dtype: torch.dtype, n: int = 2048, reps: int = 5) -> float:
    """FLOP/s of a square n×n matmul in `dtype` on this machine (best of `reps`, after one warm-up)."""
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    a @ b
    best = float("inf")
    for _ in range(reps):
        t = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t)
    return 2 * n ** 3 / best
