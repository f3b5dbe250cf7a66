"""Training on the simulated MLU: each backward kernel's integer arithmetic is exact against a numpy
reference; gradients stay within stated bounds of float autograd; a short training run tracks
float PyTorch; checkpoints round-trip; the per-step report adds up."""
from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
import torch.nn.functional as F  # noqa: E402

import torch_mlu  # noqa: E402,F401
import torch_mlu.core.mlu_model as ct  # noqa: E402
import torch_mlu.core.mlu_quantize as mq  # noqa: E402
from torch_mlu import models  # noqa: E402
from torch_mlu.core import adaptive_training as training  # noqa: E402
from torch_mlu.core.state import TRAINING  # noqa: E402

from mlusim.compiler import training_programs as K  # noqa: E402
from mlusim.compiler.reference import _conv_i  # noqa: E402
from mlusim.config import load_config  # noqa: E402
from mlusim.sim import simulate  # noqa: E402

CFG = load_config("mlu270")


@pytest.fixture(autouse=True)
def _fresh():
    torch.set_grad_enabled(True)
    ct.set_cnml_enabled(False)          # the training path, as Cambricon's training scripts select it
    TRAINING.sites.clear()
    TRAINING.history.clear()
    TRAINING.step.clear()
    TRAINING.fallbacks.clear()
    ct.set_core_number(1)
    yield
    training.disable(TRAINING)
    ct.set_cnml_enabled(True)


def q(x, pos, bits):
    lim = K.QMAX[bits]
    return np.clip(np.rint(x.astype(np.float64) * 2.0 ** -pos), -lim - 1, lim).astype(np.int64)


def f32(acc, pos, bits=8):
    """The MAC array's float output: int8 sums wrap at 32 bits, int16 sums are exact."""
    kept = acc if bits == 16 else ((acc + 2**31) % 2**32) - 2**31
    return (kept.astype(np.float64) * 2.0 ** pos).astype(np.float32)


def nchw_to_nhwc(a):
    return np.ascontiguousarray(a.transpose(0, 2, 3, 1))


@pytest.mark.parametrize("bits", [8, 16])
def test_conv_forward_is_exact(bits, rng):
    x = rng.standard_normal((3, 2, 7, 7)).astype(np.float32)
    w = rng.standard_normal((4, 2, 3, 3)).astype(np.float32)
    b = rng.standard_normal(4).astype(np.float32)
    # at 16 bits, positive operands near the int16 range: sums pass 2**31 and stay exact
    px, pw = (-4, -6) if bits == 8 else (-14, -14)
    if bits == 16:
        x, w = np.abs(x) + 0.5, np.abs(w) + 0.5
    prog = K.conv_fwd(CFG, 3, 2, 7, 7, 4, 3, 3, 1, px, pw, bits, True)
    got = simulate(prog, CFG, cores=2, inputs={"x": x, "w": w, "bias": b}).outputs["y"]
    acc = _conv_i(q(x, px, bits), q(w, pw, bits), (1, 1), (1, 1, 1, 1), (1, 1), 1)
    assert bits == 8 or np.abs(acc).max() >= 2**31
    ref = f32(acc, px + pw, bits) + b.reshape(1, -1, 1, 1)
    assert np.array_equal(got, ref.astype(np.float32))


@pytest.mark.parametrize("pad", [0, 1])
def test_conv_backward_input_is_exact(pad, rng):
    n, ci, h, co, k = 2, 3, 6, 5, 3
    ho = h + 2 * pad - k + 1
    g = rng.standard_normal((n, co, ho, ho)).astype(np.float32)
    w = rng.standard_normal((co, ci, k, k)).astype(np.float32)
    pg, pw = -5, -6
    prog = K.conv_bwd_input(CFG, n, ci, h, h, co, k, k, pad, pg, pw, 8)
    got = simulate(prog, CFG, cores=1, inputs={"dy": g, "w": w}).outputs["dx"]
    wt = np.flip(q(w, pw, 8), axis=(2, 3)).transpose(1, 0, 2, 3)          # transposed, flipped kernel
    qp = k - 1 - pad
    ref = f32(_conv_i(q(g, pg, 8), wt, (1, 1), (qp, qp, qp, qp), (1, 1), 1), pg + pw)
    assert np.array_equal(got, ref)


def test_conv_backward_weight_is_exact(rng):
    n, ci, h, co, k, pad = 3, 2, 6, 4, 3, 1
    x = rng.standard_normal((n, ci, h, h)).astype(np.float32)
    g = rng.standard_normal((n, co, h, h)).astype(np.float32)
    px, pg = -5, -5
    prog = K.conv_bwd_weight(CFG, n, ci, h, h, co, k, k, pad, px, pg, 8)
    got = simulate(prog, CFG, cores=2, inputs={"x": x, "dy": g}).outputs["dw"]
    xq = np.pad(q(x, px, 8), ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    gq = q(g, pg, 8)
    acc = np.zeros((co, ci, k, k), np.float32)
    for img in range(n):            # one task per image here; images added in order, tasks in order
        part = np.zeros((co, ci, k, k), np.int64)
        for i in range(k):
            for j in range(k):
                part[:, :, i, j] = np.einsum("ohw,chw->oc", gq[img], xq[img, :, i:i + h, j:j + h])
        acc = (acc + f32(part, px + pg)).astype(np.float32)
    assert np.array_equal(got, acc)


@pytest.mark.parametrize("m,k,n,a_t,b_t", [(5, 40, 7, False, False), (6, 33, 9, True, True), (4, 2600, 3, False, True)])
def test_matmul_is_exact_including_chunked_reductions(m, k, n, a_t, b_t, rng):
    A = rng.standard_normal((m, k)).astype(np.float32)
    B = rng.standard_normal((n, k)).astype(np.float32)
    pa, pb = -5, -5
    prog = K.qmatmul(CFG, "mm", m, k, n, a_t, b_t, pa, pb, 8, bias=False)
    feeds = {"a": np.ascontiguousarray(A.T) if a_t else A, "b": np.ascontiguousarray(B.T) if b_t else B}
    got = simulate(prog, CFG, cores=2, inputs=feeds).outputs["c"]
    ref = np.zeros((m, n), np.float32)
    for k0 in range(0, k, 2048):        # 2048-long chunks, each rounded to float32, added in order
        part = q(A[:, k0:k0 + 2048], pa, 8) @ q(B[:, k0:k0 + 2048], pb, 8).T
        ref = (ref + f32(part, pa + pb)).astype(np.float32) if k0 else f32(part, pa + pb)
    assert np.array_equal(got, ref)


def _grads(bits, seed=0, rate=0.01):
    """One step of the MNIST net on the MLU and on the CPU (dropout off so both see the same net)."""
    torch.manual_seed(seed)
    net = models.MnistNet().train()
    net.dropout1.p = net.dropout2.p = 0.0
    ref = models.MnistNet().train()
    ref.load_state_dict(net.state_dict())
    ref.dropout1.p = ref.dropout2.p = 0.0
    x, y = torch.rand(4, 1, 28, 28), torch.randint(0, 10, (4,))
    m = mq.adaptive_quantize(net, steps_per_epoch=1, bitwidth=bits, quantify_rate=rate).to(ct.mlu_device())
    F.nll_loss(m(x.to(ct.mlu_device())), y.to(ct.mlu_device())).backward()
    F.nll_loss(ref(x), y).backward()
    return {n: (p.grad.cpu(), dict(ref.named_parameters())[n].grad) for n, p in m.named_parameters()}


@pytest.mark.parametrize("bits,bound", [(8, 0.40), (16, 0.05), (31, 1e-5)])
def test_gradients_within_bounds_of_float_autograd(bits, bound):
    """Relative L2 error of every parameter gradient. Per element the error is one quantization step
    (1/127 of the range at 8 bits, 1/32767 at 16 (int16 sums are exact), 2**-30 at 31 bits, whose
    digits run as several int16 passes); reductions over thousands of terms that nearly cancel (conv
    weight gradients) amplify it, hence the bounds."""
    for name, (g, r) in _grads(bits).items():
        assert float((g - r).norm() / r.norm()) < bound, name
    assert not TRAINING.fallbacks


def test_31_bit_operands_run_as_several_int16_passes():
    _grads(31)
    steps = TRAINING.step
    assert steps["forward_kernels"] >= 4 * 4 + 8      # 4 MAC ops, each >= 4 digit-pair passes, + 8 others


def test_adaptive_widening_follows_the_quantify_rate():
    _grads(8, rate=1e-9)
    assert set(TRAINING.sites.values()) == {16}       # everything loses more than 1e-9 at 8 bits
    TRAINING.sites.clear()
    _grads(8, rate=10.0)
    assert set(TRAINING.sites.values()) == {8}


def test_short_training_run_tracks_float_pytorch_and_reports_cycles(tmp_path):
    from torch.utils.data import DataLoader

    from torch_mlu.data import digits

    def run(device):
        torch.manual_seed(0)
        net = models.MnistNet()
        train = DataLoader(digits(True), batch_size=64, shuffle=True)
        test = DataLoader(digits(False), batch_size=128)
        if device == "mlu":
            net = mq.adaptive_quantize(net, steps_per_epoch=len(train), bitwidth=8).to(ct.mlu_device())
        opt = torch.optim.SGD(net.parameters(), 0.1, momentum=0.5)
        if device == "mlu":
            opt = ct.to(opt, torch.device("mlu"))
        dev = ct.mlu_device() if device == "mlu" else torch.device("cpu")
        for _ in range(3):
            net.train()
            for img, lab in train:
                opt.zero_grad()
                F.nll_loss(net(img.to(dev)), lab.to(dev)).backward()
                opt.step()
        net.eval()
        correct = 0
        with torch.no_grad():
            for img, lab in test:
                correct += (net(img.to(dev)).argmax(1).cpu() == lab).sum().item()
        return correct / len(test.dataset), net, opt

    acc_cpu, _, _ = run("cpu")
    acc_mlu, net, opt = run("mlu")
    # three epochs (the full 10-epoch comparison is examples/training): both learn, and the
    # quantized run stays within 3 points of the float one
    assert acc_cpu > 0.85 and abs(acc_mlu - acc_cpu) < 0.03, (acc_cpu, acc_mlu)
    steps = ct.get_training_report()
    assert len(steps) == 3 * -(-len(digits(True)) // 64)
    for s in steps:
        assert s["forward"] > 0 and s["backward"] > s["forward"] / 2 and s["update"] > 0
        assert s["forward_kernels"] == 12 and s["update_kernels"] == 8
    # checkpoint round trip: state_dict, optimizer state (momentum buffers on the mlu) and epoch
    torch.save({"state_dict": net.state_dict(), "optimizer": opt.state_dict(), "epoch": 1}, tmp_path / "model.pth")
    ck = torch.load(tmp_path / "model.pth", weights_only=True)
    assert ck["epoch"] == 1
    fresh = models.MnistNet()
    fresh.load_state_dict({k: v.cpu() for k, v in ck["state_dict"].items()})
    for k, v in net.state_dict().items():
        assert torch.equal(fresh.state_dict()[k], v.cpu())
    bufs = [s["momentum_buffer"] for s in ck["optimizer"]["state"].values()]
    assert bufs and all(b.device.type == "mlu" for b in bufs)
