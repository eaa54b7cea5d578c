"""Helpers the benchmarks share (bench/ scripts run as `python bench/NAME.py`, so this imports as `common`)."""

from __future__ import annotations

import time
from collections.abc import Callable

import torch


def warm_then_time(fn: Callable[[], object], repeats: int) -> list[float]:
    """Seconds of each of `repeats` calls of `fn`, after one warm-up call (first-call allocations, caches)."""
    fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return times


def matmul_peak(dtype: torch.dtype, n: int = 2048, reps: int = 5) -> float:
    """FLOP/s of a square n×n matmul in `dtype` on this machine (best of `reps`, after one warm-up)."""
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    return 2 * n ** 3 / min(warm_then_time(lambda: a @ b, reps))
