#!/usr/bin/env python3
"""Calibration: Cambricon's MLU270 GEMM tutorial kernels, rewritten in the mlusim ISA, against the
published timings (shared/mlu_reference.md section 5).

    published: 1 core (step 3, BLOCK)   84.49 ms      16 cores (step 4_1, UNION4)   13.06 ms

Both kernels are store-bound (small synchronous GDRAM stores), so they pin down the DMA start-up
and per-segment costs, not the MAC array. `--fit` re-derives dma.segment_cycles and
dram.latency_cycles from the two published times (the model is linear in them; dma.startup_cycles
is held at the reference's ~100-cycle guess), which is how configs/mlu270.yaml's values were set.

Run: python bench/gemm_tutorial.py [--fit] [--numerics]
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from mlusim.config import load_config
from mlusim.isa.asm import assemble_program
from mlusim.sim import simulate

HERE = Path(__file__).resolve().parent / "kernels"
CASES = [("gemm_conv_1core.s", 1, 84.49), ("gemm_parall_16core.s", 16, 13.06)]


def run_case(name: str, cores: int, overrides: list[str], numerics: bool = False):
    prog = assemble_program((HERE / name).read_text(), name)
    cfg = load_config("mlu270", overrides)
    inputs = None
    if numerics:
        rng = np.random.default_rng(0)
        inputs = {"a": rng.integers(-128, 128, (256, 256), dtype=np.int8),
                  "b": rng.integers(-128, 128, (327680, 256), dtype=np.int8)}
    t0 = time.perf_counter()
    res = simulate(prog, cfg, cores=cores, inputs=inputs, timing_only=not numerics)
    return res, time.perf_counter() - t0


def check_numerics(res, inputs_seed: int = 0) -> bool:
    rng = np.random.default_rng(inputs_seed)
    a = rng.integers(-128, 128, (256, 256), dtype=np.int8)
    b = rng.integers(-128, 128, (327680, 256), dtype=np.int8)
    c = res.outputs["c"]
    # the tutorial's WRAM reorder: within each 256-column block, column s*4 + j holds filter j*64 + s
    perm = np.array([j * 64 + s for s in range(64) for j in range(4)])
    cols = np.arange(0, 327680, 4096)      # spot-check 80 blocks spread over N
    for blk in cols:
        ref = (a.astype(np.int64) @ b[blk:blk + 256][perm].astype(np.int64).T).astype(np.float16)
        if not np.array_equal(c[:, blk:blk + 256], ref):
            return False
    return True


def fit() -> list[str]:
    """Solve for dma.segment_cycles and dram.latency_cycles that reproduce both published times."""
    base = {"dma.segment_cycles": 150, "dram.latency_cycles": 400}
    def times(p):
        ov = [f"{k}={v}" for k, v in p.items()]
        return np.array([run_case(n, c, ov)[0].seconds * 1e3 for n, c, _ in CASES])
    t0 = times(base)
    cols = []
    for k in base:
        p = dict(base)
        p[k] += 10
        cols.append((times(p) - t0) / 10)
    A = np.stack(cols, axis=1)
    target = np.array([ms for *_, ms in CASES])
    delta = np.linalg.solve(A, target - t0)
    fitted = {k: base[k] + d for k, d in zip(base, delta)}
    print("fitted (dma.startup_cycles held at its guess):", ", ".join(f"{k}={v:.1f}" for k, v in fitted.items()))
    return [f"{k}={round(v)}" for k, v in fitted.items()]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--fit", action="store_true", help="re-derive the DMA costs from the published times")
    ap.add_argument("--numerics", action="store_true", help="also run the numerics and spot-check C")
    args = ap.parse_args()
    overrides = fit() if args.fit else []
    cfg = load_config("mlu270", overrides)
    print(f"config mlu270: dma.startup_cycles={cfg.dma.startup_cycles} dma.segment_cycles={cfg.dma.segment_cycles} "
          f"dram.latency_cycles={cfg.dram.latency_cycles}")
    print(f"{'kernel':24} {'cores':>5} {'simulated ms':>13} {'published ms':>13} {'ratio':>6} "
          f"{'instructions':>12} {'wall s':>7}")
    for name, cores, ms in CASES:
        res, wall = run_case(name, cores, overrides, args.numerics)
        sim_ms = res.seconds * 1e3
        print(f"{name:24} {cores:>5} {sim_ms:>13.2f} {ms:>13.2f} {sim_ms / ms:>6.3f} {res.instructions:>12,} "
              f"{wall:>7.2f}" + ("" if not args.numerics else f"  numerics ok: {check_numerics(res)}"))


if __name__ == "__main__":
    main()
