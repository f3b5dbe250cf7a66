#!/usr/bin/env python3
"""Engine speed: simulated instructions and cycles per wall second, on a 16-core synthetic program
and on compiled zoo networks.

Synthetic: each of 16 tasks runs a double-buffered loop (load a tile, vector ops and a small conv
on it, store the result) with register-relative addresses, so the issue stage, tokens, DMA fabric
and units are all exercised. Zoo: the networks as `mlusim run NAME --batch B --cores N` compiles
them (through the compile cache, so a second run of this script skips compiling), simulated with
and without numerics; each line also gives what numpy's float32 GEMM needs for the network's MACs,
measured beside it (bench/blas_limit.py), and the ratio.
Run: python bench/engine_speed.py [--steps N] [--zoo resnet50:16:16,resnet50:1:16] [--no-cache]
"""
from __future__ import annotations

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")     # as the mlusim CLI runs (before numpy loads)

import argparse  # noqa: E402
import time  # noqa: E402

from blas_limit import blas_seconds  # noqa: E402
from mlusim.config import load_config  # noqa: E402
from mlusim.isa.encoding import Instr  # noqa: E402
from mlusim.program import Kernel, Program, TensorDecl, allocate  # noqa: E402
from mlusim.sim import simulate  # noqa: E402

TILE = 8 * 8 * 64


def build(steps: int, tasks: int = 16) -> Program:
    t = [TensorDecl("x", "input", "i8", (tasks * steps * TILE,), -1),
         TensorDecl("w", "const", "i8", (64 * 64,), -1),
         TensorDecl("y", "output", "i8", (tasks * steps * TILE,), -1)]
    import numpy as np

    t[1].data = np.ones(64 * 64, np.int8)
    allocate(t)
    x, w, y = t
    I = Instr.make
    s = [I("rdsr", rd=1, sr="taskid"), I("muli", rd=2, rs1=1, imm=steps * TILE),     # r2: my offset
         I("li", rd=3, imm=0), I("li", rd=4, imm=steps), I("li", rd=5, imm=0),          # r3: i, r5: buf
         I("dma", dir="g2w", dst=0, src=w.addr, size=4096)]
    loop = len(s)
    s += [
        I("dma", dir="g2n", dst=(5, 0), src=(2, x.addr), size=TILE, sig="cp"),
        I("conv", dt="i8", odt="i32", dst=0x10000, src=(5, 0), wgt=0, n=1, hi=8, wi=8, ci=64, co=64,
          kh=1, kw=1, wait="ld"),
        I("vrelu", dt="i32", dst=0x10000, src=0x10000, n=TILE),
        I("vcast", sdt="i32", ddt="i8", dst=(5, 0x20000), src=0x10000, n=TILE, sig="st"),
        I("dma", dir="n2g", dst=(2, y.addr), src=(5, 0x20000), size=TILE, wait="cp"),
        I("addi", rd=2, rs1=2, imm=TILE), I("addi", rd=3, rs1=3, imm=1),
        I("li", rd=6, imm=TILE), I("sub", rd=5, rs1=6, rs2=5),                            # flip buffer
        I("blt", rs1=3, rs2=4, target=loop - (len(s) + 9)),
    ]
    return Program([Kernel("synthetic", "block", tasks, [s])], t)


def zoo(spec: str, cfg, cache: bool) -> None:
    """One zoo network, NAME:BATCH:CORES: compile (or load from the cache), then simulate."""
    from mlusim.programs import BuildOptions, compile_cached

    name, batch, cores = spec.split(":")
    t0 = time.perf_counter()
    prog, _ = compile_cached(name, cfg, int(cores), BuildOptions(batch=int(batch), cache=cache))
    tc = time.perf_counter() - t0
    macs = prog.meta["macs"]
    for timing_only in (True, False):
        t0 = time.perf_counter()
        res = simulate(prog, cfg, cores=int(cores), timing_only=timing_only)
        wall = time.perf_counter() - t0
        blas = blas_seconds(macs)
        mode = "timing-only" if timing_only else "numerics"
        print(f"{name + ' b' + batch + ' c' + cores:22} {mode:12} {res.instructions:>12,} {res.cycles:>12,.0f} "
              f"{wall:>8.2f} {res.instructions / wall:>10,.0f} {res.cycles / wall:>12,.0f} {tc:>9.2f} "
              f"{blas:>7.2f} {(tc + wall) / blas:>7.1f}", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--steps", type=int, default=400)
    ap.add_argument("--zoo", default="resnet50:16:16,resnet50:1:16,mobilenetv2:16:16",
                    help="zoo networks as NAME:BATCH:CORES, comma separated ('' for none)")
    ap.add_argument("--no-cache", action="store_true", help="compile the zoo networks afresh")
    args = ap.parse_args()
    cfg = load_config("mlu270")
    prog = build(args.steps)
    print(f"{'program':22} {'mode':12} {'instructions':>12} {'cycles':>12} {'wall s':>8} {'instr/s':>10} "
          f"{'cycles/s':>12} {'compile s':>9} {'BLAS s':>7} {'x BLAS':>7}")
    for timing_only in (True, False):
        t0 = time.perf_counter()
        res = simulate(prog, cfg, cores=16, timing_only=timing_only)
        wall = time.perf_counter() - t0
        mode = "timing-only" if timing_only else "numerics"
        print(f"{'synthetic':22} {mode:12} {res.instructions:>12,} {res.cycles:>12,.0f} {wall:>8.2f} "
              f"{res.instructions / wall:>10,.0f} {res.cycles / wall:>12,.0f}", flush=True)
    for spec in filter(None, args.zoo.split(",")):
        zoo(spec, cfg, not args.no_cache)


if __name__ == "__main__":
    main()
