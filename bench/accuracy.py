"""Relative max error of every zoo model's simulated output against the float model.

    python bench/accuracy.py [--sim] [--calibrated] [model ...]   # model x dtype x per_channel

The error is max|out - float| / max|float| over a batch of 2 inputs uniform in [0, 1) at the
resolutions the tests use. Without --sim the quantized reference stands for the simulator (the
tests prove them bit-identical); with --sim every program is simulated on 1 core. By default the
scales come from the compiler's stand-in calibration data (other random images, so clipping adds
to the error, equally for int8 and int16); --calibrated calibrates on the evaluated batch, which
leaves only the rounding error of the integer pipeline.
"""
from __future__ import annotations

import os
import sys

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import numpy as np  # noqa: E402

from mlusim.compiler.driver import compile_graph  # noqa: E402
from mlusim.compiler.zoo import build  # noqa: E402
from mlusim.errors import MlusimError  # noqa: E402
from mlusim.compiler.reference import run_float, run_quant  # noqa: E402

from mlusim.compiler.zoo import ZOO  # noqa: E402

RES = {name: max(32, e.min_resolution) for name, e in ZOO.items()} | {"mnist": 28, "lenet5": 28}


def rel_err(name: str, dtype: str, per_channel: bool, sim: bool, calibrated: bool) -> tuple[float, bool]:
    g = build(name, batch=2, resolution=RES[name])
    x = np.random.default_rng(7).uniform(0, 1, g.input.shape).astype(np.float32)
    c = compile_graph(g, samples=[x] if calibrated else None, dtype=dtype, per_channel=per_channel,
                      cluster_fusion=False)
    flt = run_float(c.graph, x)[c.graph.output]
    if sim:
        from mlusim.sim import simulate
        out = simulate(c.program, cores=1, inputs={"input": x}).outputs["output"]
    else:
        out = run_quant(c.graph, x)["__output__"]
    return float(np.abs(out - flt).max() / np.abs(flt).max()), bool((out.argmax(1) == flt.argmax(1)).all())


def main(argv: list[str]) -> None:
    sim = "--sim" in argv
    calibrated = "--calibrated" in argv
    names = [a for a in argv if not a.startswith("--")] or list(RES)
    print("| model | dtype | per_channel | rel max err | top-1 agrees |")
    print("|---|---|---|---|---|")
    for name in names:
        for dtype in ("int8", "int16"):
            for pc in (False, True):
                try:
                    e, top = rel_err(name, dtype, pc, sim, calibrated)
                except MlusimError as err:
                    print(f"| {name} | {dtype} | {pc} | {err} | |", flush=True)
                    continue
                print(f"| {name} | {dtype} | {pc} | {e:.4f} | {top} |", flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
