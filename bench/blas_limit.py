"""What this machine's BLAS needs for a given number of multiply-accumulates, measured now.

The benchmarks compare mlusim's wall time with the time numpy's float32 GEMM takes for the same
MACs, measured in the same process right beside it: on a shared machine the load changes from
minute to minute, and the ratio is the figure that means something. The GEMM runs with the same
thread setting as the simulator (the mlusim CLI and these scripts set OPENBLAS_NUM_THREADS=1
before numpy loads, unless the caller set it).
"""
from __future__ import annotations

import os
import time

import numpy as np

N = 1024       # square float32 GEMMs of N**3 MACs each


def threads() -> str:
    return os.environ.get("OPENBLAS_NUM_THREADS", "default")


def blas_seconds(macs: float, repeats: int = 2) -> float:
    """Wall seconds numpy needs for `macs` float32 multiply-accumulates in N x N GEMMs (the best
    of `repeats` timings, scaled to the exact count)."""
    a = np.ones((N, N), np.float32)
    b = np.ones((N, N), np.float32)
    a @ b                                       # warm up: threads, caches, page faults
    reps = max(1, round(macs / N**3))
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(reps):
            a @ b
        best = min(best, time.perf_counter() - t0)
    return best * macs / (reps * N**3)
