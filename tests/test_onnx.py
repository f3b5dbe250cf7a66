"""ONNX import: torchvision-style ResNet-18 and MobileNetV2 exported with torch.onnx.export and
quantized by ONNX Runtime (QDQ, per-channel weights) run on the simulator bit for bit like mlusim's
own reference and within one quantization step of ONNX Runtime; QOperator-format and float models;
every op the importer claims; unsupported ops listed together; the CLI."""
from __future__ import annotations

import warnings
from fractions import Fraction

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
torch = pytest.importorskip("torch")

from onnx import TensorProto, helper  # noqa: E402
from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static  # noqa: E402

import torch_mlu.models as zoo_torch  # noqa: E402
from mlusim.cli import main  # noqa: E402
from mlusim.compiler import compile_graph, compile_onnx, from_onnx, from_torch  # noqa: E402
from mlusim.compiler.reference import run_float, run_quant  # noqa: E402
from mlusim.errors import CompileError  # noqa: E402
from mlusim.isa.semantics.vector import fused_multiply_add  # noqa: E402
from mlusim.sim import simulate  # noqa: E402

RES = 32


@pytest.fixture(autouse=True)
def _seeded_torch():
    """Every network here is built with torch's default initialisation: seed it so that a failure
    is repeatable (unseeded, the worst error of one test varied from 19 to 58 steps run to run)."""
    torch.manual_seed(0)


def export(net, path, res=RES, opset=13):
    x = torch.rand(1, 3, res, res)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(net.eval(), (x,), str(path), dynamo=False, opset_version=opset, input_names=["input"],
                          output_names=["output"])
    return str(path)


class Images(CalibrationDataReader):
    def __init__(self, shape, count=4, lo=0.0, hi=1.0):
        self.it = iter([{"input": np.random.default_rng(i).uniform(lo, hi, shape).astype(np.float32)}
                        for i in range(count)])

    def get_next(self):
        return next(self.it, None)


def quantize(src, dst, shape, fmt=QuantFormat.QDQ, lo=0.0, hi=1.0):
    quantize_static(src, str(dst), Images(shape, lo=lo, hi=hi), quant_format=fmt, per_channel=True,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
    return str(dst)


def ort_run(path, x):
    """ONNX Runtime's answer with exact integer arithmetic. On x86 CPUs without VNNI (SSE4.1, AVX2,
    AVX512F) its fast u8s8 GEMM (VPMADDUBSW) adds pairs of uint8 x int8 products in saturating
    int16, so QLinearConv/QGemm/QLinearMatMul go wrong by tens of output steps once weights leave
    [-64, 63] (per-channel int8 weights always reach +-127); the answer then depends on the host
    CPU. session.x64quantprecision (ONNX Runtime PR #12088) switches those to u8u8 on such CPUs."""
    so = ort.SessionOptions()
    so.log_severity_level = 3
    so.add_session_config_entry("session.x64quantprecision", "1")
    return ort.InferenceSession(path, so, providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]


def agreement(path, c, images, cores=4, lo=0.0, hi=1.0):
    """(exact share, max |difference| in output steps) against ONNX Runtime over seeded images,
    checking the simulator against the reference bit for bit on the way."""
    step = c.graph.node(c.graph.output).q["scale"]
    diffs = []
    for seed in range(images):
        x = np.random.default_rng(100 + seed).uniform(lo, hi, c.graph.input.shape).astype(np.float32)
        out = simulate(c.program, cores=cores, inputs={"input": x}).outputs["output"]
        ref = run_quant(c.graph, x)["__output__"]
        assert np.array_equal(out.view(np.uint32), ref.view(np.uint32)), f"{path}: simulator != reference"
        diffs.append(np.abs(out.astype(np.float64) - ort_run(path, x)) / step)
    d = np.concatenate([v.ravel() for v in diffs])
    return float(np.mean(d < 1e-3)), float(d.max())


@pytest.fixture(scope="module", params=["resnet18", "mobilenetv2"])
def qdq_model(request, tmp_path_factory):
    d = tmp_path_factory.mktemp(request.param)
    f = export(zoo_torch.build(request.param, resolution=RES), d / "float.onnx")
    return request.param, quantize(f, d / "qdq.onnx", (1, 3, RES, RES))


def test_qdq_cnn_matches_onnx_runtime(qdq_model):
    """The acceptance check: every element within one output step of ONNX Runtime (measured: all
    equal, on this machine's x86 kernels), and the simulator equal to the reference."""
    name, path = qdq_model
    c = compile_onnx(path, cluster_fusion=False)
    assert c.notes == []                                     # fully quantized by the model: no calibration
    exact, worst = agreement(path, c, images=2)
    assert worst <= 1.0 + 1e-6, f"{name}: {worst:.2f} steps from ONNX Runtime"
    assert exact >= 0.99, f"{name}: only {exact:.2%} of outputs equal ONNX Runtime's"


def test_qdq_keeps_the_models_quantization(qdq_model):
    name, path = qdq_model
    m = onnx.load(path)
    g = from_onnx(m)
    inits = {i.name: onnx.numpy_helper.to_array(i) for i in m.graph.initializer}
    weights = {inits[n.input[0]].tobytes(): inits[n.input[1]] for n in m.graph.node
               if n.op_type == "DequantizeLinear" and n.input[0] in inits and inits[n.input[0]].ndim == 4}
    convs = [n for n in g.nodes if n.op == "conv2d"]
    assert len(convs) == len(weights)
    for conv in convs:                                                                  # the model's int8 weights
        assert np.allclose(conv.params["w_scale"], weights[conv.params["qweight"].tobytes()])
    assert g.input.attrs["quant"]["dtype"] == "uint8"
    c = compile_onnx(path, cluster_fusion=False)
    zps = {n.q["zp"] for n in c.graph.nodes if "model" in n.q}
    assert -128 in zps and len(zps) > 2                     # uint8 zero point 0, and asymmetric tensors
    assert not any("add" in n.fused for n in c.graph.nodes)  # the model rounds conv outputs before adds


def test_qoperator_format_and_core_counts(tmp_path):
    """QLinearConv / QLinearAdd / QGemm (ONNX Runtime's operator format) of the same ResNet-18."""
    f = export(zoo_torch.build("resnet18", resolution=RES), tmp_path / "f.onnx")
    q = quantize(f, tmp_path / "qop.onnx", (1, 3, RES, RES), fmt=QuantFormat.QOperator)
    ops = {n.op_type for n in onnx.load(q).graph.node}
    assert {"QLinearConv", "QLinearAdd"} <= ops
    c = compile_onnx(q, cluster_fusion=False)
    exact, worst = agreement(q, c, images=1, cores=3)
    assert worst <= 1.0 + 1e-6 and exact >= 0.99
    x = np.random.default_rng(5).uniform(0, 1, c.graph.input.shape).astype(np.float32)
    outs = [simulate(c.program, cores=n, inputs={"input": x}).outputs["output"] for n in (1, 16)]
    assert np.array_equal(outs[0], outs[1])


def test_qlinear_matmul(tmp_path):
    """MatMul quantized in operator format: QLinearMatMul after a Reshape from a constant shape."""
    rng = np.random.default_rng(0)
    n = helper.make_node
    init = {"w": rng.standard_normal((64, 10)).astype(np.float32) * 0.2, "shape": np.array([1, 64], np.int64)}
    graph = helper.make_graph(
        [n("Reshape", ["input", "shape"], ["flat"]), n("MatMul", ["flat", "w"], ["mm"]), n("Relu", ["mm"], ["y"])],
        "mm", [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 4, 4, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 10])],
        [onnx.numpy_helper.from_array(v, k) for k, v in init.items()])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), tmp_path / "mm.onnx")
    q = quantize(str(tmp_path / "mm.onnx"), tmp_path / "mmq.onnx", (1, 4, 4, 4), fmt=QuantFormat.QOperator)
    assert "QLinearMatMul" in {x.op_type for x in onnx.load(q).graph.node}
    c = compile_onnx(q, cluster_fusion=False)
    assert [n.op for n in c.graph.nodes] == ["input", "flatten", "linear"]
    exact, worst = agreement(q, c, images=3, cores=2)
    assert worst <= 1.0 + 1e-6 and exact >= 0.99


class Zoo(torch.nn.Module):
    """One of every op the importer claims beyond the CNNs above."""

    def __init__(self):
        super().__init__()
        self.c1 = torch.nn.Conv2d(3, 8, 3, stride=2, padding=1)
        self.bn = torch.nn.BatchNorm2d(8)
        self.c2 = torch.nn.Conv2d(8, 8, 3)                 # padding comes from F.pad
        self.c3 = torch.nn.Conv2d(8, 8, 1)
        self.fc = torch.nn.Linear(16 * 4 * 4, 10)
        with torch.no_grad():
            self.bn.running_mean.uniform_(-0.2, 0.2)
            self.bn.running_var.uniform_(0.5, 2.0)

    def forward(self, x):
        x = torch.nn.functional.hardswish(self.bn(self.c1(x)))
        a = torch.nn.functional.relu6(self.c2(torch.nn.functional.pad(x, (1, 1, 1, 1))))
        b = torch.sigmoid(self.c3(x))
        y = torch.nn.functional.avg_pool2d(torch.cat([a, b], 1), 2)
        y = torch.nn.functional.max_pool2d(y, 2)
        return torch.softmax(self.fc(torch.flatten(y, 1)), dim=1)


def test_float_model_with_every_op_and_calibration(tmp_path):
    torch.manual_seed(0)
    f = export(Zoo(), tmp_path / "zoo.onnx", opset=14)
    types = {n.op_type for n in onnx.load(f).graph.node}
    assert {"Pad", "HardSwish", "Sigmoid", "Concat", "AveragePool", "Clip", "Gemm", "Softmax"} <= types
    samples = np.random.default_rng(1).uniform(0, 1, (6, 3, RES, RES)).astype(np.float32)
    np.save(tmp_path / "cal.npy", samples)
    c = compile_onnx(f, calibrate=str(tmp_path / "cal.npy"), cluster_fusion=False)
    assert c.notes == []
    assert {"sigmoid", "hardswish", "concat", "avgpool"} <= {n.op for n in c.graph.nodes}
    assert any(n.op == "conv2d" and n.attrs["stride"] == (1, 1) and n.attrs["padding"] == (1, 1, 1, 1)
               for n in c.graph.nodes)                                                 # the Pad, folded
    x = samples[:1]
    out = simulate(c.program, cores=2, inputs={"input": x}).outputs["output"]
    assert np.array_equal(out, run_quant(c.graph, x)["__output__"])
    want = ort_run(f, x)
    assert np.allclose(run_float(c.graph, x)[c.graph.output], want, atol=1e-5)     # the import is the model
    assert np.abs(out - want).max() < 0.05 and out.argmax() == want.argmax()        # and int8 stays close
    notes = compile_onnx(f, cluster_fusion=False).notes
    assert notes and "random" in notes[0]           # no data: a warning


def test_quantized_model_with_every_op(tmp_path):
    """The same network quantized by ONNX Runtime: QDQ around hardswish, sigmoid and a concat whose
    inputs have their own scales (a requant node converts one), softmax left in float."""
    torch.manual_seed(0)
    q = quantize(export(Zoo(), tmp_path / "zoo.onnx", opset=14), tmp_path / "zooq.onnx", (1, 3, RES, RES))
    c = compile_onnx(q, cluster_fusion=False)
    ops = [n.op for n in c.graph.nodes]
    assert c.notes == [] and "requant" in ops and {"sigmoid", "hardswish", "softmax"} <= set(ops)
    for seed in range(2):
        x = np.random.default_rng(seed).uniform(0, 1, (1, 3, RES, RES)).astype(np.float32)
        out = simulate(c.program, cores=2, inputs={"input": x}).outputs["output"]
        assert np.array_equal(out, run_quant(c.graph, x)["__output__"])
        assert np.abs(out - ort_run(q, x)).max() < 0.01                 # probabilities of ~0.1


def test_float_cnn_from_the_cli(tmp_path, capsys):
    f = export(zoo_torch.build("mobilenetv2", resolution=RES), tmp_path / "mnv2.onnx")
    np.save(tmp_path / "cal.npy", np.random.default_rng(2).uniform(0, 1, (4, 3, RES, RES)).astype(np.float32))
    out = tmp_path / "mnv2.mlu"
    assert main(["compile", f, "--calibrate", str(tmp_path / "cal.npy"), "--cores", "2", "-o", str(out)]) == 0
    assert out.exists() and "wrote" in capsys.readouterr().out
    x = np.random.default_rng(3).uniform(0, 1, (1, 3, RES, RES)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    assert main(["run", str(out), "--cores", "2", "--input", str(tmp_path / "x.npy"), "--output",
                 str(tmp_path / "y.npy")]) == 0
    y, want = np.load(tmp_path / "y.npy"), ort_run(f, x)
    assert np.abs(y - want).max() < 0.2 * np.abs(want).max() and np.corrcoef(y.ravel(), want.ravel())[0, 1] > 0.99
    assert main(["run", f, "--cores", "1"]) == 0                                      # .onnx compiles on the fly
    assert "random inputs" in capsys.readouterr().err
    assert main(["run", f, "--cores", "1", "--timing-only"]) == 0      # from shapes: nothing calibrated, no warning
    assert "random inputs" not in capsys.readouterr().err
    assert main(["compile", f, "--calibrate", str(tmp_path / "cal.npy"), "--cores", "2", "--timing-only",
                 "-o", str(tmp_path / "t.mlu")]) == 0
    assert "cal.npy: calibration samples not read" in capsys.readouterr().err     # said, not silently dropped
    assert main(["compile", f, "--model", "resnet18"]) == 2


def test_hand_built_graph_with_folding(tmp_path):
    """BatchNormalization after a conv, Identity / Dropout, a Transpose of a constant weight, a
    Reshape whose shape is computed from Shape -> Gather -> Concat, MatMul plus a bias Add, and
    LogSoftmax: imported, folded, and equal to ONNX Runtime in float."""
    rng = np.random.default_rng(0)
    init = {"w": rng.standard_normal((8, 3, 3, 3)).astype(np.float32) * 0.3,
            "g": rng.uniform(0.5, 1.5, 8).astype(np.float32), "b": rng.uniform(-0.1, 0.1, 8).astype(np.float32),
            "m": rng.uniform(-0.1, 0.1, 8).astype(np.float32), "v": rng.uniform(0.5, 1.5, 8).astype(np.float32),
            "wt": rng.standard_normal((5, 8)).astype(np.float32), "fb": rng.standard_normal(5).astype(np.float32),
            "zero": np.array([0], np.int64), "minus1": np.array([-1], np.int64)}
    n = helper.make_node
    nodes = [n("Conv", ["input", "w"], ["c"], pads=[1, 1, 1, 1]),
             n("BatchNormalization", ["c", "g", "b", "m", "v"], ["bn"], epsilon=1e-3),
             n("Identity", ["bn"], ["id"]), n("Relu", ["id"], ["r"]), n("Dropout", ["r"], ["d"]),
             n("GlobalAveragePool", ["d"], ["gap"]), n("Shape", ["gap"], ["shp"]),
             n("Gather", ["shp", "zero"], ["batch"], axis=0), n("Concat", ["batch", "minus1"], ["tshape"], axis=0),
             n("Reshape", ["gap", "tshape"], ["flat"]), n("Transpose", ["wt"], ["wT"], perm=[1, 0]),
             n("MatMul", ["flat", "wT"], ["mm"]), n("Add", ["mm", "fb"], ["logits"]),
             n("LogSoftmax", ["logits"], ["y"], axis=1)]
    graph = helper.make_graph(nodes, "hand", [helper.make_tensor_value_info("input", TensorProto.FLOAT, [2, 3, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                              [onnx.numpy_helper.from_array(v, k) for k, v in init.items()])
    path = str(tmp_path / "hand.onnx")
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), path)
    g = from_onnx(path)
    assert [n.op for n in g.nodes] == ["input", "conv2d", "batchnorm", "relu", "gap", "flatten", "linear",
                                       "log_softmax"]
    x = rng.uniform(0, 1, (2, 3, 8, 8)).astype(np.float32)
    assert np.allclose(run_float(g, x)[g.output], ort_run(path, x), atol=1e-5)
    c = compile_onnx(path, samples=[x], cluster_fusion=False)
    assert "batchnorm" in c.graph.node(c.graph.nodes[1].name).fused
    assert np.array_equal(simulate(c.program, cores=2, inputs={"input": x}).outputs["output"],
                          run_quant(c.graph, x)["__output__"])


def test_unsupported_ops_are_listed_together(tmp_path):
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    w = onnx.numpy_helper.from_array(np.ones((4, 3, 1, 1), np.float32), "w")
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], name="conv"),
             helper.make_node("Tanh", ["c"], ["t"], name="squash"),
             helper.make_node("Erf", ["t"], ["e"], name="gelu_part"),
             helper.make_node("Clip", ["e"], ["y"], name="clip", min=-1.0, max=1.0)]
    model = helper.make_model(helper.make_graph(nodes, "bad", [x], [y], [w]), opset_imports=[helper.make_opsetid("", 10)])
    with pytest.raises(CompileError) as e:
        from_onnx(model)
    msg = str(e.value)
    assert "3 unsupported op(s)" in msg
    for part in ("Tanh (node 'squash', opset 10)", "Erf (node 'gelu_part', opset 10)",
                 "Clip (node 'clip', opset 10): Clip to [-1, 1]"):
        assert part in msg
    onnx.save(model, tmp_path / "bad.onnx")
    assert main(["compile", str(tmp_path / "bad.onnx"), "-o", str(tmp_path / "bad.mlu")]) == 2
    (tmp_path / "junk.onnx").write_bytes(b"not a model")
    with pytest.raises(CompileError, match="not a valid ONNX model"):
        from_onnx(str(tmp_path / "junk.onnx"))


def test_asymmetric_input_pads_with_its_zero_point(tmp_path):
    """Inputs in [-0.5, 1.5] quantize with uint8 zero point 64: padded convs must read real zeros."""
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.Conv2d(8, 8, 3, padding=2, groups=8),
                              torch.nn.Flatten(), torch.nn.Linear(8 * 10 * 10, 4))
    f = export(net, tmp_path / "f.onnx", res=8)
    q = quantize(f, tmp_path / "q.onnx", (1, 3, 8, 8), lo=-0.5, hi=1.5)
    c = compile_onnx(q, cluster_fusion=False)
    assert c.graph.input.q["zp"] not in (0, -128)
    exact, worst = agreement(q, c, images=2, cores=2, lo=-0.5, hi=1.5)
    assert worst <= 1.0 + 1e-6 and exact >= 0.99


def test_asymmetric_grouped_conv_split_between_blocks_pads_with_its_zero_point(tmp_path):
    """A grouped conv whose weights exceed WRAM runs block by block, each tile holding only its
    groups' input channels (kernels/conv.py sliced()); with an asymmetric input its pads are built
    in NRAM around those channels. Same bits as the reference on 1 and 2 cores (the reference's
    agreement with ONNX Runtime on asymmetric inputs is the test above's business)."""
    from mlusim.config import load_config

    net = torch.nn.Sequential(torch.nn.Conv2d(3, 16, 3, padding=1), torch.nn.Conv2d(16, 32, 3, padding=1, groups=2),
                              torch.nn.Flatten(), torch.nn.Linear(32 * 8 * 8, 4))
    q = quantize(export(net, tmp_path / "f.onnx", res=8), tmp_path / "q.onnx", (1, 3, 8, 8), lo=-0.5, hi=1.5)
    c = compile_onnx(q, config=load_config("mlu270", ["core.wram_kib=2"]), cluster_fusion=False)  # weights 2304 B
    conv = [k for k in c.program.kernels if k.meta.get("op") == "conv2d"][1]
    assert "(groups split)" in conv.meta["tiling"], conv.meta["tiling"]
    assert c.graph.node(conv.name).q["in_zp"] != 0
    x = np.random.default_rng(100).uniform(-0.5, 1.5, c.graph.input.shape).astype(np.float32)
    ref = run_quant(c.graph, x)["__output__"]
    for cores in (1, 2):
        out = simulate(c.program, cores=cores, inputs={"input": x}).outputs["output"]
        assert np.array_equal(out.view(np.uint32), ref.view(np.uint32)), cores


def test_from_torch_is_exported():
    net = zoo_torch.build("lenet5")
    g = from_torch(net, torch.rand(1, 1, 28, 28))
    c = compile_graph(g, cluster_fusion=False)
    x = np.random.default_rng(0).uniform(0, 1, g.input.shape).astype(np.float32)
    assert np.array_equal(simulate(c.program, cores=2, inputs={"input": x}).outputs["output"],
                          run_quant(c.graph, x)["__output__"])


def _fma_exact(x, y, z, dt):
    v = Fraction(float(x)) * Fraction(float(y)) + Fraction(float(z))
    f = np.array(float(v), dt)
    cands = [f, np.nextafter(f, dt(np.inf)), np.nextafter(f, dt(-np.inf))]
    bits = {np.float32: np.uint32, np.float16: np.uint16}[dt]
    return min(cands, key=lambda c: (abs(Fraction(float(c)) - v), int(np.array(c, dt).view(bits)) & 1))


@pytest.mark.parametrize("dt,name,p,q,tiny", [(np.float32, "f32", 12, 12, 2.0 ** -40),
                                               (np.float16, "f16", 5, 6, 2.0 ** -20)])
def test_vfma_rounds_once(dt, name, p, q, tiny):
    """vfma against exact rational arithmetic. (1 + 2**-p)(1 + 3 * 2**-q) with p + q one more than
    the mantissa bits lies exactly on a midpoint of the result type, so a tiny addend decides the
    rounding, which a separate multiply and add (rounding twice) gets wrong."""
    rng = np.random.default_rng(0)
    x = [1 + 2.0 ** -p] * 2 + list(rng.integers(-255, 256, 300))
    y = [1 + 3 * 2.0 ** -q] * 2 + list(rng.uniform(-4, 4, 300))
    z = [tiny, -tiny] + list(rng.uniform(-300, 300, 300))
    xa, ya, za = (np.array(v, dt) for v in (x, y, z))
    got = fused_multiply_add(xa, ya, za, name)
    want = np.array([_fma_exact(a, b, c, dt) for a, b, c in zip(xa, ya, za)], dt)
    assert np.array_equal(got, want)
    assert got[0] != got[1]                                 # the addend's sign decided the midpoint
    split = ((xa * ya).astype(dt) + za).astype(dt)
    assert not np.array_equal(split, want)                  # a double rounding would be caught
