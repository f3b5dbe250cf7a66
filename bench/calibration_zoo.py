#!/usr/bin/env python3
"""The MLU370 calibration networks at their published input sizes: bit-exact against the quantized
reference on the simulated device, and how far the int8 model is from the float one.

For each network (batch 1 unless --batch, 16 cores of --config, cluster fusion as `mlusim run NAME`):
simulated cycles and ms, whether every output equals `reference.run_quant` bit for bit, and per
output (the logits before a softmax) the worst element error relative to the output's range and the
correlation with `reference.run_float`. The CI tests (tests/test_zoo.py) check the same at small
sizes; this is the full-size evidence behind their tolerances.

Run: python bench/calibration_zoo.py [--models alexnet_bn,yolov3_tiny] [--batch 1] [--config mlu270]
"""
from __future__ import annotations

import argparse
import time

import numpy as np

from mlusim.compiler.driver import compile_model
from mlusim.compiler.reference import dequantize, program_outputs, run_float, run_quant
from mlusim.config import load_config
from mlusim.sim import simulate

ALL = ["alexnet_bn", "squeezenet1_0", "squeezenet1_1", "resnext50_32x4d", "se_resnet50", "mobilenetv3_large",
       "mobilenetv3_small", "yolov3_tiny", "mobilenet_ssd", "yolov3"]


def float_agreement(g, x) -> list[tuple[str, float, float]]:
    """(output, worst |int8 - float| / max |float|, correlation) per output, before any softmax."""
    ints, floats = run_quant(g, x), run_float(g, x)
    rows = []
    for out in g.outputs:
        node = g.node(out)
        if node.op in ("softmax", "log_softmax"):
            node = g.node(node.inputs[0])
        got = dequantize(ints[node.name], node.q["scale"], node.q.get("zp", 0))
        want = floats[node.name]
        rows.append((node.name, float(np.abs(got - want).max() / np.abs(want).max()),
                     float(np.corrcoef(got.ravel(), want.ravel())[0, 1])))
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default=",".join(ALL))
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--config", default="mlu270")
    args = ap.parse_args()
    cfg = load_config(args.config)
    print(f"{'model':18} {'cycles':>12} {'ms':>8} {'exact':>5}  {'output':24} {'rel err':>7} {'corr':>7}  wall s")
    for name in args.models.split(","):
        t0 = time.perf_counter()
        c = compile_model(name, batch=args.batch, config=cfg, cluster_fusion=True)
        x = np.random.default_rng(0).uniform(0, 1, c.graph.input.shape).astype(np.float32)
        res = simulate(c.program, cfg, inputs={"input": x})
        refs = program_outputs(c.graph, run_quant(c.graph, x))
        exact = all(np.array_equal(res.outputs[k].view(np.uint32), v.view(np.uint32)) for k, v in refs.items())
        for i, (out, rel, corr) in enumerate(float_agreement(c.graph, x)):
            head = f"{name:18} {res.cycles:>12,.0f} {res.seconds * 1e3:>8.3f} {str(exact):>5}" if i == 0 else " " * 46
            print(f"{head}  {out:24} {rel:>7.3f} {corr:>7.4f}  {time.perf_counter() - t0:.0f}" if i == 0 else
                  f"{head}  {out:24} {rel:>7.3f} {corr:>7.4f}")


if __name__ == "__main__":
    main()
