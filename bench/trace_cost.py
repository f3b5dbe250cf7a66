#!/usr/bin/env python3
"""What tracing costs: simulation wall time with and without `trace=True`, the time to write the
trace, its size, and how many slices partly overlap the slice before on their track (Chrome and
Perfetto tracks must nest; a partial overlap draws wrongly).

The untraced and traced runs alternate (`--repeat` pairs); the ratio is the median over the pairs
of traced / untraced, in wall and in CPU seconds (on a machine other jobs share, a pair's two runs
see about the same load, and CPU time is the steadier).
Run: python bench/trace_cost.py [--zoo resnet50:16:16] [--repeat 2] [--out /tmp/trace.json.gz]
"""
from __future__ import annotations

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")     # as the mlusim CLI runs (before numpy loads)

import argparse  # noqa: E402
import gzip  # noqa: E402
import json  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402

from mlusim.config import load_config  # noqa: E402
from mlusim.sim import simulate  # noqa: E402
from mlusim.trace import write_trace  # noqa: E402


def partial_overlaps(events: list[dict]) -> int:
    """Complete ("X") events that start inside the slice before them on their (pid, tid) track
    and end after it: Chrome/Perfetto draw those wrongly. Times compared in integer nanoseconds."""
    tracks: dict = {}
    for e in events:
        if e.get("ph") == "X":
            t0 = round(e["ts"] * 1000)
            tracks.setdefault((e["pid"], e["tid"]), []).append((t0, -(t0 + round(e["dur"] * 1000))))
    bad = 0
    for spans in tracks.values():
        spans.sort()
        stack: list[int] = []
        for t0, neg_end in spans:
            end = -neg_end
            while stack and stack[-1] <= t0:
                stack.pop()
            if stack and end > stack[-1]:
                bad += 1
            stack.append(end)
    return bad


def load(path: str) -> dict:
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rt", encoding="utf-8") as f:
        return json.load(f)


def main() -> None:
    from mlusim.programs import BuildOptions, compile_cached

    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--zoo", default="resnet50:16:16", help="NAME:BATCH:CORES")
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--out", default="/tmp/mlusim_trace_cost.json")
    args = ap.parse_args()
    cfg = load_config("mlu270")
    name, batch, cores = args.zoo.split(":")
    prog, _ = compile_cached(name, cfg, int(cores), BuildOptions(batch=int(batch)))
    plain, traced, res = [], [], None
    for _ in range(args.repeat):
        plain.append(timed(lambda: simulate(prog, cfg, cores=int(cores), timing_only=True)))
        traced.append(timed(lambda: simulate(prog, cfg, cores=int(cores), timing_only=True, trace=True)))
    res = simulate(prog, cfg, cores=int(cores), timing_only=True, trace=True)
    wt = timed(lambda: write_trace(res, args.out))
    size = os.path.getsize(args.out)
    events = load(args.out)["traceEvents"]
    print(f"{args.zoo}: {res.instructions:,} instructions, {len(res.trace):,} records")
    for i, clock in enumerate(("wall", "cpu")):
        p, t = statistics.median(x[i] for x in plain), statistics.median(x[i] for x in traced)
        sim = statistics.median(b[i] / a[i] for a, b in zip(plain, traced))
        whole = statistics.median((b[i] + wt[i]) / a[i] for a, b in zip(plain, traced))
        print(f"{clock}: sim untraced {p:.2f} s, traced {t:.2f} s (medians); traced / untraced x{sim:.2f}; "
              f"write {wt[i]:.2f} s; traced + write x{whole:.2f}")
    print(f"{len(events):,} events, {size / 1e6:.1f} MB ({args.out}); {partial_overlaps(events):,} partial overlaps")


def timed(fn) -> tuple[float, float]:
    """(wall, CPU) seconds of fn(): on a shared machine the process's CPU time is the steadier."""
    w, c = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - w, time.process_time() - c


if __name__ == "__main__":
    main()
