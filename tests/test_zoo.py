"""The calibration networks of the zoo (compiler/zoo_classify.py, zoo_detect.py): each built as its
published definition says (parameter counts and multiply-accumulates against the published
figures), bit-exact on the simulated device against the quantized reference, and close to the
float model."""
from __future__ import annotations

import numpy as np
import pytest

from mlusim.compiler import zoo
from mlusim.compiler.driver import compile_model
from mlusim.compiler.reference import dequantize, run_float, run_quant
from mlusim.sim import simulate

# (resolution, batch) small enough for CI; bench/ runs the full-size ones
CASES = {"alexnet_bn": (67, 2), "squeezenet1_0": (48, 2), "squeezenet1_1": (48, 2), "resnext50_32x4d": (32, 1)}

# published sizes at the default resolution: (parameters in millions incl. batch-norm scale and
# shift, GMAC). AlexNet_cvgj: 60.97 M weights + 11.4 K of batch norm; torchvision's model table for
# SqueezeNet (1.25 M / 1.24 M) and ResNeXt-50 32x4d (25.03 M, 4.23 GFLOPS as multiply-adds) at 224;
# SqueezeNet's MACs at 227 from the layer shapes (its paper gives none).
PUBLISHED = {"alexnet_bn": (60.98, 0.724), "squeezenet1_0": (1.248, 0.833), "squeezenet1_1": (1.235, 0.388),
             "resnext50_32x4d": (25.03, 4.23)}


@pytest.fixture(scope="module", params=list(CASES))
def compiled(request):
    name = request.param
    res, batch = CASES[name]
    c = compile_model(name, batch=batch, resolution=res, tasks=4)
    x = np.random.default_rng(11).uniform(0, 1, c.graph.input.shape).astype(np.float32)
    return name, c, x


def _pre_softmax(g, name: str) -> str:
    n = g.node(name)
    return n.inputs[0] if n.op in ("softmax", "log_softmax") else name


def test_bit_exact_against_the_reference(compiled):
    name, c, x = compiled
    ref = run_quant(c.graph, x)["__output__"]
    out = simulate(c.program, cores=4, inputs={"input": x}).outputs["output"]
    assert out.shape == ref.shape and np.array_equal(out.view(np.uint32), ref.view(np.uint32)), name


def test_close_to_the_float_model(compiled):
    """The logits (before any softmax, which saturates on random weights and would hide errors):
    worst element error under 10% of the range (8-bit steps compounded over up to 50 layers; we
    measure 1.5-3% at full size, up to 6% at these small sizes) and correlation above 0.99."""
    name, c, x = compiled
    g = c.graph
    logit = _pre_softmax(g, g.output)
    q = run_quant(g, x)[logit]
    node = g.node(logit)
    got = dequantize(q, node.q["scale"], node.q.get("zp", 0))
    want = run_float(g, x)[logit]
    assert np.abs(got - want).max() / np.abs(want).max() < 0.1, name
    assert np.corrcoef(got.ravel(), want.ravel())[0, 1] > 0.99, name


@pytest.mark.parametrize("name", list(PUBLISHED))
def test_definitions_match_published_sizes(name):
    g = zoo.build(name)
    params, gmac = PUBLISHED[name]
    assert g.parameter_count() / 1e6 == pytest.approx(params, rel=0.01)
    assert g.macs() / 1e9 == pytest.approx(gmac, rel=0.01)


def test_caffe_pools_round_up():
    """SqueezeNet 1.1 at 227: 113 -> 56 -> 28 -> 14 with Caffe's ceil mode (floor gives 27 and 13)."""
    g = zoo.build("squeezenet1_1")
    assert [n.shape[2] for n in g.nodes if n.op == "maxpool"] == [56, 28, 14]
