#!/usr/bin/env python3
"""End-to-end experiment on the bundled MLU270 config: core scaling 1-16 and a DRAM-bandwidth sweep.

Writes tables (CSV with units, JSON that `mlusim plot` reads) and figures (PNG + SVG) to
examples/scaling/results/. Run from anywhere:  python examples/scaling/run_experiment.py [--jobs N]
Needs matplotlib (pip install -e '.[plot]'). Everything it does is one call of the Python API in
mlusim.experiments / mlusim.sweep / mlusim.plot; see docs/experiments.md.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
MODEL = "resnet50"       # a zoo name, or "convnet" for the hand-written demo in convnet.py
CONFIG = "mlu270"
CORES = [1, 2, 4, 8, 16]
DRAM_GBPS = [25.6, 51.2, 102.4, 204.8, 409.6]
SWEEP_CORES = [1, 4, 16]
FIGS = ["png", "svg"]    # the committed results keep these two; `mlusim plot` also writes PDF


def program_spec(tmp: Path) -> str:
    """A spec for mlusim.experiments.resolve_program: a model name, or the demo saved as .mlu."""
    if MODEL != "convnet":
        return MODEL
    sys.path.insert(0, str(HERE))
    from convnet import build

    from mlusim import mlufile

    path = tmp / "convnet.mlu"
    mlufile.save(build(), path)
    return str(path)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--jobs", type=int, default=None, help="local processes for the sweep (default: one per CPU)")
    ap.add_argument("--out", default=str(HERE / "results"))
    args = ap.parse_args()

    from mlusim.experiments import LAYER_COLUMNS, flatten_layers, scaling, scaling_document, write_csv, write_json
    from mlusim.plot import plot_roofline, plot_speedup, plot_sweep
    from mlusim.report import render_scaling, render_sweep
    from mlusim.sweep import columns, sweep, sweep_document

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        spec = program_spec(Path(tmp))
        name = MODEL

        # 1. Scaling: the same program on 1..16 cores, one row per core count, per layer too.
        runs: dict[int, dict] = {}
        rows = scaling(spec, CONFIG, CORES, per_layer=True, on_run=lambda _res, s: runs.__setitem__(s["cores"], s))
        batch = runs[CORES[0]]["program"].get("batch", 1)
        print(render_scaling(rows, f"{name} on {CONFIG}, batch {batch}", per_layer=True))
        write_csv(rows, out / "scaling.csv")
        write_csv(flatten_layers(rows), out / "scaling_layers.csv", LAYER_COLUMNS)
        for s in runs.values():
            s.pop("wall_seconds")    # the one non-deterministic figure; keep committed files stable
        write_json(scaling_document(name, CONFIG, batch, rows, list(runs.values())), out / "scaling.json")
        plot_speedup(rows, out / "speedup", f"{name}, batch {batch}, on {CONFIG}: speedup vs cores", formats=FIGS)
        for n in (1, CORES[-1]):
            plot_roofline(runs[n], out / f"roofline_{n}core{'s' if n > 1 else ''}",
                          f"{name} on {CONFIG}, {n} core(s): each layer", formats=FIGS)

        # 2. Hardware experiment: DRAM bandwidth x cores, points in parallel.
        params = {"dram.bandwidth_gbps": DRAM_GBPS}
        sw = sweep(spec, CONFIG, params, SWEEP_CORES, jobs=args.jobs)
        print(render_sweep(sw, list(params), f"{name} on {CONFIG}: DRAM bandwidth sweep"))
        write_csv(sw, out / "dram_sweep.csv", columns(list(params)))
        write_json(sweep_document(name, CONFIG, params, SWEEP_CORES, sw), out / "dram_sweep.json")
        plot_sweep(sw, "dram.bandwidth_gbps", "throughput_ips", out / "dram_sweep_throughput",
                   title=f"{name} on {CONFIG}: throughput vs DRAM bandwidth", formats=FIGS)
        plot_sweep(sw, "dram.bandwidth_gbps", "mac_utilization", out / "dram_sweep_mac_util",
                   title=f"{name} on {CONFIG}: MAC utilization vs DRAM bandwidth", formats=FIGS)
    print(f"wrote tables and figures to {out}/")
    return 0


if __name__ == "__main__":
    sys.exit(main())
