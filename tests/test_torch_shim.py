"""The torch_mlu shim: the seed's inference script runs unchanged; layer-by-layer, fused and offline
executions agree bit for bit; zoo networks written in torch equal the compiler path; the mlu
device behaves like a real accelerator's."""
from __future__ import annotations

import io
import re
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")   # the torch extra; installed by the test extra in CI
import torch_mlu  # noqa: E402,F401
import torch_mlu.core.mlu_model as ct  # noqa: E402
import torch_mlu.core.mlu_quantize as mq  # noqa: E402
from torch_mlu import models  # noqa: E402

from mlusim import mlufile  # noqa: E402
from mlusim.compiler.driver import compile_graph, compile_model  # noqa: E402
from mlusim.compiler.frontend_torch import from_torch  # noqa: E402
from mlusim.errors import MlusimError, ShimError  # noqa: E402
from mlusim.sim import simulate  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SEED_SCRIPT = ROOT / "tests" / "data" / "seed_mnist_inference.py"
SEED_DOC = ROOT.parent / "shared" / "seed" / "000_f0cf2a9ed98732bd.txt"


@pytest.fixture(autouse=True)
def _settings():
    grad = torch.is_grad_enabled()
    ct.set_core_number(1)
    ct.set_core_version("MLU270")
    ct.set_strict(False)
    yield
    ct.set_core_number(1)
    ct.save_as_cambricon(None)
    torch.set_grad_enabled(grad)      # the seed scripts switch grad off globally


def test_vendored_seed_script_is_the_documents():
    """The copy under tests/data is the seed document's code block, byte for byte (its hash was taken
    from the document; where the document sits beside the checkout, it is compared directly)."""
    import hashlib

    assert hashlib.sha256(SEED_SCRIPT.read_bytes()).hexdigest() == "f7466fc12b67cc374d2311ee052ff8d82db8977fbe9d53e49d1049f432901ef6"
    if SEED_DOC.exists():
        doc = SEED_DOC.read_text(encoding="utf-8")
        block = doc[doc.index("```python", doc.index("以下为模型推理完整代码")) + 9:]
        assert SEED_SCRIPT.read_text(encoding="utf-8").strip() == block[:block.index("```")].strip()


def test_seed_inference_script_runs_unmodified(tmp_path):
    """Only the torchvision import goes (it is unused, and torchvision does not install beside this torch)."""
    src = SEED_SCRIPT.read_text(encoding="utf-8").replace("import torchvision.models as models\n", "")
    (tmp_path / "mnist.py").write_text(src, encoding="utf-8")
    r = subprocess.run([sys.executable, "mnist.py"], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    m = re.search(r"tensor\(\[\[(.*?)\]\]\)", r.stdout, re.S)
    assert m, r.stdout
    values = [float(v) for v in m.group(1).replace("\n", " ").split(",")]
    assert len(values) == 10 and all(v <= 0 for v in values)                     # log-probabilities
    assert abs(np.log(np.exp(values).sum())) < 1e-3
    assert (tmp_path / "test_quantization.pth").exists()


def seed_net():
    return models.MnistNet().eval()


def test_mlu_output_matches_the_cpu_model_within_int8_error():
    """Int8 per-tensor quantization of 4 layers: each step is 1/127 of the tensor's range, so the
    log-probabilities stay within 2% of their range and the prediction agrees."""
    torch.manual_seed(0)
    torch.set_grad_enabled(False)
    net = seed_net()
    x = torch.rand((4, 1, 28, 28))
    q = mq.quantize_dynamic_mlu(net, {"mean": [0], "std": [1 / 255], "firstconv": True}, dtype="int8", gen_quant=True)
    cpu = q(x)
    mlu = q.to(ct.mlu_device())(x.to(ct.mlu_device())).cpu()
    assert mlu.shape == cpu.shape
    assert (mlu - cpu).abs().max() < 0.02 * cpu.abs().max()
    assert torch.equal(mlu.argmax(1), cpu.argmax(1))


def test_layer_by_layer_fused_and_offline_agree_bit_for_bit(tmp_path, monkeypatch, capsys):
    torch.manual_seed(1)
    torch.set_grad_enabled(False)
    x = torch.rand((2, 1, 28, 28))
    q = mq.quantize_dynamic_mlu(seed_net(), {"per_channel": True}, dtype="int8", gen_quant=True)
    q(x)
    m, xm = q.to(ct.mlu_device()), x.to(ct.mlu_device())
    eager = m(xm)
    rep = ct.get_last_report()
    assert rep.mode == "layer-by-layer" and rep.energy_j > 0
    df = rep.to_dataframe()            # pandas: a test extra
    assert list(df.index) == [op["name"] for op in rep.ops] and df["cycles"].sum() == pytest.approx(rep.cycles)
    monkeypatch.chdir(tmp_path)
    ct.save_as_cambricon("mnist_off")
    traced = torch.jit.trace(m, xm, check_trace=False)
    assert ct.get_last_report().mode == "fused"
    fused = traced(xm)
    assert torch.equal(eager.cpu(), fused.cpu())
    prog = mlufile.load(tmp_path / "mnist_off.mlu")
    offline = simulate(prog, cores=1, inputs={"input": x.numpy()}).outputs["output"]
    assert np.array_equal(offline, eager.cpu().numpy())
    np.save(tmp_path / "x.npy", x.numpy())
    from mlusim.cli import main

    assert main(["run", "mnist_off.mlu", "--cores", "1", "--input", "x.npy", "--output", "y.npy"]) == 0
    assert np.array_equal(np.load(tmp_path / "y.npy"), eager.cpu().numpy())


@pytest.mark.parametrize("name,res", [("mnist", 28), ("lenet5", 28), ("resnet18", 32), ("mobilenetv2", 32)])
def test_zoo_networks_in_torch_equal_the_compiler_path(name, res):
    torch.set_grad_enabled(False)
    ct.set_core_number(4)
    net = models.build(name, resolution=res)
    x = torch.rand((2, 1 if name in ("mnist", "lenet5") else 3, res, res), generator=torch.Generator().manual_seed(3))
    q = mq.quantize_dynamic_mlu(net, {"per_channel": True, "firstconv": False}, gen_quant=True)
    q(x)
    shim = q.to(ct.mlu_device())(x.to(ct.mlu_device())).cpu().numpy()
    zoo = compile_model(name, batch=2, resolution=res, samples=[x.numpy()], tasks=4, cluster_fusion=False)
    ref = simulate(zoo.program, cores=4, inputs={"input": x.numpy()}).outputs["output"]
    assert np.array_equal(shim, ref)


def test_report_and_core_number_scaling():
    torch.set_grad_enabled(False)
    x = torch.rand((1, 3, 32, 32), generator=torch.Generator().manual_seed(0))
    q = mq.quantize_dynamic_mlu(models.build("resnet18", resolution=32), {"firstconv": False}, gen_quant=True)
    q(x)
    m, xm = q.to(ct.mlu_device()), x.to(ct.mlu_device())
    cycles = {}
    for n in (1, 4):
        ct.set_core_number(n)
        torch.jit.trace(m, xm, check_trace=False)
        rep = ct.get_last_report()
        assert rep.cores == n and rep.config == "mlu270" and rep.ops and rep.latency_ms > 0
        assert rep.energy_j == pytest.approx(rep.summary["energy_j"]) and rep.power_w == pytest.approx(rep.summary["power_w"])
        cycles[n] = rep.cycles
        prog = q._mlu_compiled[next(k for k in q._mlu_compiled if k[-1] == n)].fused
        assert simulate(prog, cores=n, timing_only=True).cycles == rep.cycles     # what the scaling report runs
    assert cycles[4] < cycles[1]
    assert "cycles" in str(ct.get_last_report())


def test_device_behaves_like_an_accelerator():
    x = torch.arange(6, dtype=torch.float32).reshape(2, 3)
    m = x.to(ct.mlu_device())
    assert str(m.device) == "mlu:0" and m.is_mlu and torch.equal(m.cpu(), x)
    assert (m * 2).sum().item() == 30.0 and f"{m.sum():.1f}" == "15.0"
    assert "device='mlu:0'" in repr(m)
    buf = io.BytesIO()
    torch.save({"t": m}, buf)
    buf.seek(0)
    assert torch.load(buf, weights_only=True)["t"].device.type == "mlu"
    buf.seek(0)
    back = torch.load(buf, weights_only=True, map_location="cpu")["t"]
    assert back.device.type == "cpu" and torch.equal(back, x)
    with pytest.raises(RuntimeError, match="same device"):
        m + x
    with pytest.raises(TypeError, match="Tensor.cpu"):
        m.numpy()


def test_quantized_state_dict_round_trip_into_a_fresh_model(tmp_path):
    torch.set_grad_enabled(False)
    x = torch.rand((1, 1, 28, 28))
    net = seed_net()
    q = mq.quantize_dynamic_mlu(net, {"mean": [0], "std": [1 / 255]}, dtype="int8", gen_quant=True)
    q(x)
    torch.save(q.state_dict(), tmp_path / "q.pth")
    fresh = mq.quantize_dynamic_mlu(net, {"mean": [0], "std": [1 / 255]})
    fresh.load_state_dict(torch.load(tmp_path / "q.pth", weights_only=True))
    a = q.to(ct.mlu_device())(x.to(ct.mlu_device())).cpu()
    b = fresh.to(ct.mlu_device())(x.to(ct.mlu_device())).cpu()
    assert torch.equal(a, b)


SAVE_SCRIPT = """
import sys, numpy as np, torch
import torch_mlu, torch_mlu.core.mlu_model as ct, torch_mlu.core.mlu_quantize as mq
from torch_mlu import models
torch.set_grad_enabled(False)
x = torch.from_numpy(np.load("x.npy"))
if sys.argv[1] == "save":
    torch.manual_seed(5)
    q = mq.quantize_dynamic_mlu(models.MnistNet().eval(), {"mean": [30.0], "std": [70.0], "per_channel": True,
                                "data_scale": 0.9}, dtype="int16", gen_quant=True, mixed_layer={"fc2": "int8"})
    q(x * 255)
else:
    q = mq.quantize_dynamic_mlu(models.MnistNet().eval())          # the seed's step: no settings given
    q.load_state_dict(torch.load("q.pth", weights_only=True))
out = q.to(ct.mlu_device())(x.to(ct.mlu_device()) * 255).cpu().numpy()
if sys.argv[1] == "save":
    torch.save(q.state_dict(), "q.pth")
np.save(sys.argv[1] + ".npy", out)
"""


def test_quantized_state_dict_rebuilds_the_model_in_a_new_process(tmp_path):
    """The seed's two steps: quantize_dynamic_mlu(net) then load_state_dict, in a fresh process,
    reproduce the quantizing process's MLU output bit for bit: dtype, per_channel, mean/std,
    data_scale and mixed layers travel in the state_dict (its _extra_state)."""
    (tmp_path / "run.py").write_text(SAVE_SCRIPT)
    np.save(tmp_path / "x.npy", np.random.default_rng(0).uniform(0, 1, (2, 1, 28, 28)).astype(np.float32))
    for step in ("save", "load"):
        r = subprocess.run([sys.executable, "run.py", step], cwd=tmp_path, capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, r.stderr[-2000:]
    a, b = np.load(tmp_path / "save.npy"), np.load(tmp_path / "load.npy")
    assert a.view(np.uint32).tolist() == b.view(np.uint32).tolist()
    extra = torch.load(tmp_path / "q.pth", weights_only=True)["_extra_state"]
    assert extra["dtype"] == "int16" and extra["per_channel"] and extra["mean"] == [30.0]
    assert extra["mixed_layer"] == {"fc2": "int8"} and extra["data_scale"] == 0.9


def test_a_state_dict_without_the_settings_is_refused_unless_strict_is_off():
    torch.set_grad_enabled(False)
    q = mq.quantize_dynamic_mlu(seed_net(), {"per_channel": True}, dtype="int16", gen_quant=True)
    q(torch.rand((1, 1, 28, 28)))
    sd = q.state_dict()
    del sd["_extra_state"]
    fresh = mq.quantize_dynamic_mlu(seed_net())
    with pytest.raises(ShimError, match="has MLU calibration but not the settings"):
        fresh.load_state_dict(sd)
    fresh.load_state_dict(sd, strict=False)          # documented: the model's own settings are used
    assert fresh._mlu_dtype == "int8"


def test_data_scale_scales_every_layer_inputs_range_as_cambricon_does():
    """Cambricon's data_scale multiplies the calibrated range of each conv/linear input and, with
    per_channel, of each weight channel (its observers; docs/torch_mlu.md cites the code). On the
    seed's net: the input, conv1, conv2 (+pool) and fc1 feed layers, so 0.5 halves their scales;
    fc2's output feeds only log_softmax and keeps its scale; per-tensor weights keep theirs."""
    torch.set_grad_enabled(False)
    x = torch.rand((2, 1, 28, 28), generator=torch.Generator().manual_seed(2))
    net, outs, graphs = seed_net(), {}, {}
    for ds, pc in ((None, True), (1.0, True), (0.5, True), (1.0, False), (0.5, False)):
        spec = {"per_channel": pc, **({} if ds is None else {"data_scale": ds})}
        q = mq.quantize_dynamic_mlu(net, spec, gen_quant=True)
        q(x)
        outs[ds, pc] = q.to(ct.mlu_device())(x.to(ct.mlu_device())).cpu()
        graphs[ds, pc] = q._mlu_compiled[next(iter(q._mlu_compiled))].graph
    assert torch.equal(outs[None, True], outs[1.0, True]) and not torch.equal(outs[1.0, True], outs[0.5, True])
    one, half = graphs[1.0, True], graphs[0.5, True]
    for name in ("input", "conv1", "conv2", "fc1"):
        assert half.node(name).q["scale"] == pytest.approx(one.node(name).q["scale"] / 2), name
    assert half.node("fc2").q["scale"] == one.node("fc2").q["scale"]
    for name in ("conv1", "conv2", "fc1", "fc2"):
        assert np.allclose(half.node(name).q["w_scale"], one.node(name).q["w_scale"] / 2), name
        assert np.array_equal(graphs[0.5, False].node(name).q["w_scale"], graphs[1.0, False].node(name).q["w_scale"])
    with pytest.raises(ShimError, match="data_scale must be a positive number"):
        mq.quantize_dynamic_mlu(seed_net(), {"data_scale": 0})


def test_cnml_setting_selects_inference_or_training():
    torch.set_grad_enabled(False)
    q = mq.quantize_dynamic_mlu(seed_net(), gen_quant=True)
    q(torch.rand((1, 1, 28, 28)))
    with pytest.raises(ShimError, match="adaptive_quantize: training runs on Cambricon's CNNL path"):
        mq.adaptive_quantize(seed_net(), steps_per_epoch=1)
    try:
        ct.set_cnml_enabled(False)
        with pytest.raises(ShimError, match="quantized inference runs on Cambricon's CNML path"):
            q.to(ct.mlu_device())(torch.rand((1, 1, 28, 28)).to(ct.mlu_device()))
    finally:
        ct.set_cnml_enabled(True)


def test_a_float_model_on_the_mlu_is_refused_and_leaves_no_report():
    torch.set_grad_enabled(False)
    q = mq.quantize_dynamic_mlu(seed_net(), gen_quant=True)
    x = torch.rand((1, 1, 28, 28))
    q(x)
    q.to(ct.mlu_device())(x.to(ct.mlu_device()))
    assert ct.get_last_report() is not None
    with pytest.raises(ShimError, match="float model: the MLU runs quantized models; wrap the model with"):
        seed_net().to(ct.mlu_device())(x.to(ct.mlu_device()))
    assert ct.get_last_report() is None


def test_wrong_length_mean_is_one_clear_error():
    q = mq.quantize_dynamic_mlu(models.build("resnet18", resolution=32), {"mean": [0.5, 0.5], "std": [0.2]},
                                gen_quant=True)
    with pytest.raises(MlusimError, match="mean has 2 values but the input has 3 channels"):
        q(torch.rand((1, 3, 32, 32)))
    with pytest.raises(ShimError, match="mean has 2 values and std 3"):
        mq.quantize_dynamic_mlu(seed_net(), {"mean": [0.5, 0.5], "std": [0.2, 0.2, 0.2]})


class TwoInputs(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 4, 3)

    def forward(self, x, y):
        return self.conv(x) + self.conv(y)


class Upsampled(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv, self.head = torch.nn.Conv2d(3, 4, 3), torch.nn.Conv2d(4, 4, 1)

    def forward(self, x):
        y = self.conv(x)
        return self.head(torch.nn.functional.interpolate(y, size=(y.shape[2] * 2, y.shape[3] * 2)))


def test_a_two_input_model_is_one_clear_error():
    q = mq.quantize_dynamic_mlu(TwoInputs(), gen_quant=True)
    x = torch.rand((1, 3, 8, 8))
    with pytest.raises(MlusimError, match=r"forward takes 2 inputs \(x, y\); only single-input models"):
        q(x, x)


def test_interpolate_with_a_size_computed_from_shapes_runs_on_the_host():
    """The size is fixed for the traced input shape, so it becomes a constant of the host op."""
    torch.set_grad_enabled(False)
    net = Upsampled().eval()
    x = torch.rand((1, 3, 8, 8), generator=torch.Generator().manual_seed(0))
    q = mq.quantize_dynamic_mlu(net, {"firstconv": False}, dtype="int16", gen_quant=True)
    q(x)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = q.to(ct.mlu_device())(x.to(ct.mlu_device())).cpu()
    assert ct.get_last_report().host_ops == ["interpolate (interpolate)"]
    want = net(x)
    assert out.shape == (1, 4, 12, 12) and (out - want).abs().max() < 0.01 * want.abs().max()


class WithGelu(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 8, 3)
        self.fc = torch.nn.Linear(8 * 6 * 6, 4)

    def forward(self, x):
        return self.fc(torch.flatten(torch.nn.functional.gelu(self.conv(x)), 1))


def test_unsupported_ops_run_on_the_host_with_one_warning_or_fail_when_strict():
    torch.set_grad_enabled(False)
    torch.manual_seed(3)
    x = torch.rand((1, 3, 8, 8))
    net = WithGelu().eval()
    h = torch.flatten(torch.nn.functional.gelu(net.conv(x)), 1)
    # int8 rounding errors scale with the fc's terms, not its output (which may nearly cancel):
    # each factor is within 1/254 of its range (and h carries the conv's own rounding), so 2% of
    # sum |w| |h| bounds the error; 30 seeds measured at most 0.43%
    terms = (h.abs() @ net.fc.weight.abs().T + net.fc.bias.abs()).max()
    q = mq.quantize_dynamic_mlu(net, {"firstconv": False}, gen_quant=True)
    cpu = q(x)
    m = q.to(ct.mlu_device())
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        out = m(x.to(ct.mlu_device())).cpu()
    msgs = [str(i.message) for i in w if "ran on the host" in str(i.message)]
    assert len(msgs) == 1 and "gelu" in msgs[0]
    assert ct.get_last_report().host_ops and (out - cpu).abs().max() < 0.02 * terms
    ct.set_strict(True)
    with pytest.raises(ShimError, match="strict mode"):
        m(x.to(ct.mlu_device()))


def test_api_errors():
    with pytest.raises(ShimError, match="dtype must be"):
        mq.quantize_dynamic_mlu(seed_net(), dtype="int4")
    with pytest.raises(ShimError, match="unknown key"):
        mq.quantize_dynamic_mlu(seed_net(), {"scale": 3})
    with pytest.raises(ShimError, match="unknown core version"):
        ct.set_core_version("MLU100")
    with pytest.raises(ShimError, match="no calibration"):
        mq.quantize_dynamic_mlu(seed_net()).to(ct.mlu_device())(torch.rand(1, 1, 28, 28).to(ct.mlu_device()))


def test_from_torch_lists_all_unsupported_ops():
    from mlusim.errors import CompileError

    with pytest.raises(CompileError, match=r"1 unsupported op\(s\): gelu"):
        from_torch(WithGelu(), torch.rand(1, 3, 8, 8))
    g = from_torch(models.build("lenet5"), torch.rand(2, 1, 28, 28))
    c = compile_graph(g, samples=[np.random.default_rng(0).uniform(0, 1, (2, 1, 28, 28)).astype(np.float32)],
                      cluster_fusion=False)
    assert c.program.kernels


class _TwoHeads(torch.nn.Module):
    """A detector's shape in miniature: leaky ReLU trunk, a coarse head, and a fine head on the
    upsampled trunk concatenated with an earlier feature map (yolov3_tiny's route); two outputs."""

    def __init__(self):
        super().__init__()
        nn = torch.nn
        self.c1, self.c2 = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 16, 3, stride=2, padding=1)
        self.act, self.up = nn.LeakyReLU(0.1), nn.Upsample(scale_factor=2, mode="nearest")
        self.head1, self.head2 = nn.Conv2d(16, 6, 1), nn.Conv2d(24, 6, 1)

    def forward(self, x):
        a = self.act(self.c1(x))
        b = self.act(self.c2(a))
        return self.head1(b), self.head2(torch.cat([self.up(b), a], 1))


def test_multi_output_models_run_eager_fused_and_offline(tmp_path, monkeypatch):
    """A model returning two tensors gives two mlu tensors in every mode, bit-equal to each other
    and to the offline .mlu file's two named outputs, and within int8 error of the CPU model."""
    torch.manual_seed(2)
    torch.set_grad_enabled(False)
    net = _TwoHeads().eval()
    x = torch.rand((2, 3, 16, 16))
    q = mq.quantize_dynamic_mlu(net, {"per_channel": True}, dtype="int8", gen_quant=True)
    cpu = q(x)
    m, xm = q.to(ct.mlu_device()), x.to(ct.mlu_device())
    eager = m(xm)
    assert isinstance(eager, tuple) and [t.shape for t in eager] == [(2, 6, 8, 8), (2, 6, 16, 16)]
    monkeypatch.chdir(tmp_path)
    ct.save_as_cambricon("heads")
    fused = torch.jit.trace(m, xm, check_trace=False)(xm)
    prog = mlufile.load(tmp_path / "heads.mlu")
    offline = simulate(prog, cores=1, inputs={"input": x.numpy()}).outputs
    assert prog.meta["outputs"] == ["head1", "head2"]
    for k, (e, f, c) in enumerate(zip(eager, fused, cpu)):
        assert torch.equal(e.cpu(), f.cpu()) and np.array_equal(offline[f"head{k + 1}"], e.cpu().numpy())
        assert (e.cpu() - c).abs().max() < 0.05 * c.abs().max()
