#!/usr/bin/env python3
"""Quality of the generated code: every zoo model on the MLU270 config at 1, 4 and 16 cores.

For each model, batch and core count (the model is compiled for that core count, as Cambricon's
offline models are, with cluster fusion where the compiler's cost model takes it, as `mlusim run
NAME` does; `--no-cluster-fusion` gives layer-at-a-time code): simulated cycles, latency, throughput, MAC utilization, DRAM traffic against
the model's minimum (weights + input + output bytes), and wall seconds of compile and simulation
(timing only; the numerics are checked separately below, at batch 1).

Then the targets of issue 3:
  * the large ResNet-50 convolutions' MAC utilization on one core,
  * ResNet-50 batch 16 on 16 cores against its roofline bound max(compute, minimum traffic), and
    against the DRAM floor of any layer-at-a-time schedule (every layer's inputs, weights and
    output moved once),
  * simulator speed (issue 21), every wall time beside what numpy's float32 GEMM needs for the
    same MACs measured in the same run (bench/blas_limit.py; the ratio is the figure): ResNet-50
    batch 16 on 16 cores end to end, compile + simulate, with numerics (target 3x) and timing only
    (target 2x; compiled from shapes alone, as `mlusim run --timing-only` does), its compile alone
    (target 1 s; the shape-only compile beside it) and from the compile cache; ResNet-50 batch 1 on
    16 cores with numerics (target 1 s), cycles identical either way and the output bit-exact
    against the quantized reference.

Run: python bench/models.py [--models resnet50,mobilenetv2] [--batches 1,16] [--cores 1,4,16]
"""
from __future__ import annotations

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")     # as the mlusim CLI runs (before numpy loads)

import argparse  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
from blas_limit import blas_seconds, threads  # noqa: E402

from mlusim.compile_cache import CompileCache  # noqa: E402
from mlusim.compiler.driver import compile_model  # noqa: E402
from mlusim.compiler.reference import run_quant  # noqa: E402
from mlusim.config import load_config  # noqa: E402
from mlusim.report import roofline_bounds, summarize  # noqa: E402
from mlusim.sim import forks_numerics, simulate  # noqa: E402

ALL = ["mnist", "lenet5", "resnet18", "resnet50", "mobilenetv2", "vgg16"]


def table(models, batches, cores_list, cfg, fuse: bool) -> None:
    print(f"{'model':12} {'batch':>5} {'cores':>5} {'cycles':>12} {'ms':>9} {'img/s':>9} {'MAC util':>8} "
          f"{'DRAM MiB':>9} {'min MiB':>8} {'x min':>6} {'segs':>4} {'compile s':>9} {'sim s':>6} {'x BLAS':>6}")
    for m in models:
        for b in batches:
            for n in cores_list:
                t0 = time.perf_counter()
                c = compile_model(m, batch=b, config=cfg, tasks=n, cluster_fusion=fuse)
                tc = time.perf_counter() - t0
                segs = sum(k.meta.get("op") == "segment" for k in c.program.kernels)
                t0 = time.perf_counter()
                res = simulate(c.program, cfg, cores=n, timing_only=True)
                ts = time.perf_counter() - t0
                s = summarize(res)
                mn = c.program.meta["min_traffic_bytes"]
                print(f"{m:12} {b:>5} {n:>5} {res.cycles:>12,.0f} {s['latency_ms']:>9.3f} "
                      f"{b / res.seconds:>9,.0f} {100 * s['mac_utilization']:>7.1f}% "
                      f"{res.dram_bytes / 2**20:>9.1f} {mn / 2**20:>8.1f} {res.dram_bytes / mn:>6.2f} "
                      f"{segs:>4} {tc:>9.2f} {ts:>6.2f} {(tc + ts) / blas_seconds(c.program.meta['macs']):>6.1f}",
                      flush=True)


def big_convs_one_core(cfg) -> None:
    order = None
    for batch in (1, 16):
        c = compile_model("resnet50", batch=batch, config=cfg, tasks=1, cluster_fusion=False)
        s = summarize(simulate(c.program, cfg, cores=1, timing_only=True))
        convs = {k["name"]: k for k in s["kernels"] if k["meta"].get("op") == "conv2d"}
        order = order or sorted(convs, key=lambda n: -convs[n]["macs"])[:10]
        print(f"\nResNet-50 batch {batch}, one core: the 10 convolutions with the most MACs")
        for name in order:
            k = convs[name]
            print(f"  {name:20} {k['macs'] / 1e6:8.1f} MMAC {k['cycles']:>11,.0f} cycles  MAC util "
                  f"{100 * k['mac_utilization']:5.1f}%  bound {k['bound']}  ({k['meta'].get('tiling', '')})")


def roofline(cfg) -> None:
    for fuse in (False, True):
        c = compile_model("resnet50", batch=16, config=cfg, tasks=16, cluster_fusion=fuse)
        s = summarize(simulate(c.program, cfg, cores=16, timing_only=True))
        b = roofline_bounds(s)
        print(f"\nResNet-50 batch 16 on 16 cores, {'cluster fusion' if fuse else 'layer at a time'}: "
              f"{s['cycles']:,.0f} cycles; roofline bound {b['roofline']:,.0f} (compute {b['compute']:,.0f}, "
              f"minimum traffic {b['min_traffic']:,.0f}); ratio {s['cycles'] / b['roofline']:.2f}x")
        print(f"  layer-at-a-time DRAM floor {b['layer_bytes'] / 2**20:,.1f} MiB = {b['layer_traffic']:,.0f} cycles "
              f"({b['layer_traffic'] / b['roofline']:.2f}x the roofline); this run moved "
              f"{s['dram_bus_bytes'] / 2**20:,.1f} MiB ({s['dram_bus_bytes'] / b['layer_bytes']:.2f}x the floor) and "
              f"took {s['cycles'] / b['layer_traffic']:.2f}x the floor's time")
        for k in s["kernels"]:
            if k["meta"].get("op") == "segment":
                print(f"    {k['name']:36} {k['cycles']:>10,.0f} cycles  MAC util {100 * k['mac_utilization']:5.1f}%  "
                      f"DRAM {k['dram_bus_bytes'] / 2**20:6.1f} MiB  ({k['meta']['tiling']})")


def timed(f):
    t0 = time.perf_counter()
    out = f()
    return out, time.perf_counter() - t0


def fresh_compile_seconds(config: str, batch: int, cores: int, shape_only: bool) -> float:
    """Wall seconds of compiling ResNet-50 as the first compile of a new process (what `mlusim run
    resnet50 --timing-only` pays: the tilers' plan memos start empty), compiler imported first."""
    code = ("import time; from mlusim.compiler.driver import compile_model; t = time.perf_counter(); "
            f"compile_model('resnet50', batch={batch}, config={config!r}, tasks={cores}, cluster_fusion=True, "
            f"shape_only={shape_only}); print(time.perf_counter() - t)")
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True)
    return float(out.stdout.split()[-1])


def mode(program) -> str:
    """Where simulate's numerics ran by default for `program` (cores/datapath.py)."""
    return "numerics in a forked child" if forks_numerics(None, program) else "numerics in the engine's thread"


def same_outputs(a, b) -> bool:
    return a.cycles == b.cycles and a.outputs.keys() == b.outputs.keys() and \
        all(np.array_equal(a.outputs[k], b.outputs[k]) for k in a.outputs)


def speed(cfg, config: str) -> None:
    """Issue 21's targets, each wall time against the BLAS limit measured right beside it. A
    timing-only run compiles from shapes alone (no weights drawn, no calibration: compiler/driver.py,
    shape_only), as `mlusim run --timing-only` does: its end-to-end figure takes that compile, first
    in a fresh process, and the simulation of its program, whose cycles must be the full one's."""
    print(f"\nSimulator speed (wall seconds; BLAS: numpy float32 GEMM of the same MACs, OPENBLAS_NUM_THREADS="
          f"{threads()}, measured beside each figure)")
    c, tc = timed(lambda: compile_model("resnet50", batch=16, config=cfg, tasks=16, cluster_fusion=True))
    ts = fresh_compile_seconds(config, 16, 16, True)
    shaped = compile_model("resnet50", batch=16, config=cfg, tasks=16, cluster_fusion=True, shape_only=True)
    macs = c.program.meta["macs"]
    blas = blas_seconds(macs)
    exact, tn = timed(lambda: simulate(c.program, cfg, cores=16))
    inline, ti = timed(lambda: simulate(c.program, cfg, cores=16, numerics_process=False))
    fast, tt = timed(lambda: simulate(shaped.program, cfg, cores=16, timing_only=True))
    blas2 = blas_seconds(macs)
    print(f"ResNet-50 batch 16, 16 cores, {macs / 1e9:.1f} GMAC: BLAS {blas:.2f} s (again after: {blas2:.2f} s)")
    print(f"  compile                 {tc:7.2f} s  {tc / blas:6.1f}x BLAS   (target: under 1 s)")
    print(f"  compile, shape only     {ts:7.2f} s  {ts / blas:6.1f}x BLAS   (for timing only; first in a fresh process)")
    print(f"  simulate, numerics      {tn:7.2f} s  {tn / blas:6.1f}x BLAS   ({mode(c.program)})")
    print(f"  same, in one process    {ti:7.2f} s  {ti / blas:6.1f}x BLAS   (outputs "
          f"{'identical' if same_outputs(inline, exact) else 'DIFFERENT'})")
    print(f"  simulate, timing only   {tt:7.2f} s  {tt / blas:6.1f}x BLAS   (shape-only program; cycles "
          f"{exact.cycles:,.0f} vs {fast.cycles:,.0f}: {'same' if exact.cycles == fast.cycles else 'DIFFERENT'})")
    print(f"  end to end, numerics    {tc + tn:7.2f} s  {(tc + tn) / blas:6.1f}x BLAS   (target: 3x)")
    print(f"  end to end, timing only {ts + tt:7.2f} s  {(ts + tt) / blas:6.1f}x BLAS   (target: 2x; shape-only "
          f"compile)")
    with tempfile.TemporaryDirectory() as d:
        cache = CompileCache(Path(d), 1 << 40)
        cache.get({"bench": "resnet50 b16"}, lambda: ([c.program], {}))
        (hit,), _ = cache.get({"bench": "resnet50 b16"}, lambda: 1 / 0)
        _, tl = timed(lambda: cache.get({"bench": "resnet50 b16"}, lambda: 1 / 0))
        again, tn2 = timed(lambda: simulate(hit, cfg, cores=16))
        same = again.cycles == exact.cycles and same_outputs(again, exact)
        print(f"  from the compile cache: load {tl:.2f} s, end to end with numerics {tl + tn2:.2f} s = "
              f"{(tl + tn2) / blas:.1f}x BLAS (results {'identical' if same else 'DIFFERENT'})")
    del c, exact, inline, fast, shaped
    c, tc = timed(lambda: compile_model("resnet50", batch=1, config=cfg, tasks=16, cluster_fusion=True))
    x = np.random.default_rng(0).uniform(0, 1, c.graph.input.shape).astype(np.float32)
    full, tn = timed(lambda: simulate(c.program, cfg, cores=16, inputs={"input": x}))
    fast, tt = timed(lambda: simulate(c.program, cfg, cores=16, timing_only=True))
    blas = blas_seconds(c.program.meta["macs"])
    exact = np.array_equal(full.outputs["output"], run_quant(c.graph, x)["__output__"])
    print(f"ResNet-50 batch 1, 16 cores, {c.program.meta['macs'] / 1e9:.1f} GMAC: BLAS {blas:.2f} s; compile "
          f"{tc:.2f} s; simulate with numerics {tn:.2f} s ({mode(c.program)}; end to end {tc + tn:.2f} s = {(tc + tn) / blas:.1f}x BLAS; "
          f"target: under 1 s), timing only {tt:.2f} s; cycles {full.cycles:,.0f} vs {fast.cycles:,.0f} "
          f"({'same' if full.cycles == fast.cycles else 'DIFFERENT'}); output bit-exact vs reference: {exact}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default=",".join(ALL))
    ap.add_argument("--batches", default="1,16")
    ap.add_argument("--cores", default="1,4,16")
    ap.add_argument("--config", default="mlu270")
    ap.add_argument("--skip-table", action="store_true")
    ap.add_argument("--no-cluster-fusion", action="store_true", help="layer-at-a-time code in the table")
    ap.add_argument("--speed-only", action="store_true", help="only the simulator speed figures (issue 21)")
    args = ap.parse_args()
    cfg = load_config(args.config)
    if args.speed_only:
        speed(cfg, args.config)
        return
    if not args.skip_table:
        table(args.models.split(","), [int(b) for b in args.batches.split(",")],
              [int(n) for n in args.cores.split(",")], cfg, not args.no_cluster_fusion)
    big_convs_one_core(cfg)
    roofline(cfg)
    speed(cfg, args.config)


if __name__ == "__main__":
    main()
