"""Accuracy against the float model: every zoo model, int8 and int16, per-tensor and per-channel
weights, simulated on 1 and 4 cores.

A reference that shares a bug with the simulator proves nothing (int16 once wrapped in both), so
the simulated output is compared with `run_float`, the float model itself. Scales are calibrated on
the evaluated batch, so no activation clips and what is left is the rounding of the integer
pipeline: half a step of each tensor's scale (1/254 of its range at int8, 1/65534 at int16) per
layer, compounded over the depth. Bounds:
  * int16: within 1% of the output range (the issue's bound for logits; measured 0.0000-0.0011,
    MobileNetV2's 13-bit depthwise weights the largest);
  * int16 at least as accurate as int8 for the same model and weights;
  * int8: the measured error (0.009-0.106 at these sizes) with about 1.5x margin; MobileNetV2 is
    worst (17 depthwise layers with 9-term sums, ReLU6 clamps and 10 residual adds, each
    requantizing to 8 bits).
Top-1 agrees with the float model wherever the float model's top-2 gap is more than twice the
worst error (random-weight models can have near ties no rounding should be blamed for).
"""
from __future__ import annotations

import numpy as np
import pytest

from mlusim.compiler.driver import compile_graph
from mlusim.compiler.reference import program_outputs, run_float, run_quant
from mlusim.compiler.zoo import ZOO, build
from mlusim.sim import simulate

RES = {"mnist": 28, "lenet5": 28, "resnet18": 32, "resnet50": 32, "mobilenetv2": 32, "vgg16": 32}
INT8_BOUND = {"mnist": 0.015, "lenet5": 0.06, "resnet18": 0.06, "resnet50": 0.09, "mobilenetv2": 0.16,
              "vgg16": 0.075}

def rel_err(out: np.ndarray, ref: np.ndarray) -> float:
    return float(np.abs(out - ref).max() / np.abs(ref).max())


@pytest.fixture(scope="module", params=list(RES))
def model(request):
    g = build(request.param, batch=2, resolution=RES[request.param])
    x = np.random.default_rng(7).uniform(0, 1, g.input.shape).astype(np.float32)
    return request.param, g, x


@pytest.mark.parametrize("per_channel", [False, True], ids=["per_tensor", "per_channel"])
def test_simulated_output_close_to_float(model, per_channel):
    name, g, x = model
    errs = {}
    for dtype in ("int8", "int16"):
        c = compile_graph(g, samples=[x], dtype=dtype, per_channel=per_channel, tasks=4, cluster_fusion=False)
        flt = run_float(c.graph, x)[c.graph.output]
        ref = run_quant(c.graph, x)["__output__"]
        for cores in (1, 4):
            out = simulate(c.program, cores=cores, inputs={"input": x}).outputs["output"]
            assert np.array_equal(out, ref), (name, dtype, cores)
        top2 = np.sort(flt, axis=1)[:, -2:]
        clear = top2[:, 1] - top2[:, 0] > 2 * np.abs(ref - flt).max()   # no error this size can flip it
        assert (ref.argmax(1) == flt.argmax(1))[clear].all(), (name, dtype)
        errs[dtype] = rel_err(ref, flt)
    assert errs["int16"] < 0.01, errs
    assert errs["int16"] <= errs["int8"], errs
    assert errs["int8"] < INT8_BOUND[name], errs


# the rest of the zoo at its smallest resolution: int16 within 1% and no worse than int8, the int16
# program simulated bit-equal to the reference (int8 programs of these are pinned by test_golden).
# alexnet_bn's int16 conv4 (1.3 MB of weights, more than WRAM) runs with its groups split between
# blocks (kernels/conv.py sliced()).
OTHERS = [n for n in ZOO if n not in RES]


@pytest.mark.parametrize("name", OTHERS)
def test_int16_close_to_float_on_the_rest_of_the_zoo(name):
    g = build(name, batch=1, resolution=max(32, ZOO[name].min_resolution))
    x = np.random.default_rng(7).uniform(0, 1, g.input.shape).astype(np.float32)
    errs = {}
    for dtype in ("int8", "int16"):
        c = compile_graph(g, samples=[x], dtype=dtype, per_channel=True, tasks=4, cluster_fusion=False)
        fv = run_float(c.graph, x)
        refs = program_outputs(c.graph, run_quant(c.graph, x))
        flts = [fv[o] for o in [c.graph.output] + list(c.graph.extra_outputs)]
        errs[dtype] = max(rel_err(r, f.reshape(r.shape)) for r, f in zip(refs.values(), flts))
    outs = simulate(c.program, cores=4, inputs={"input": x}).outputs
    assert all(np.array_equal(outs[k], r.reshape(outs[k].shape)) for k, r in refs.items()), name
    assert errs["int16"] < 0.01 and errs["int16"] <= errs["int8"], errs
