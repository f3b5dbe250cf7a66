"""Accuracy of the torch shim against the float torch module: a small net with batch norm, a
residual add, a depthwise conv and a squeeze-and-excitation gate (its sigmoid and channel multiply
run on the host), quantized int8 and int16, per-tensor and per-channel, run on the
simulated MLU on 1 and 4 cores.

Calibrated on the evaluated batch, so only rounding is left: int16 within 1% of the output range
(measured 0.003%), int16 at least as accurate as int8, int8 within 2% (measured 0.5-0.7%: 8-bit
steps through 8 requantized tensors, with about 3x margin).
"""
from __future__ import annotations

import warnings

import pytest

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402

import torch_mlu  # noqa: E402,F401
import torch_mlu.core.mlu_model as ct  # noqa: E402
import torch_mlu.core.mlu_quantize as mq  # noqa: E402


class Block(nn.Module):
    """conv-BN-ReLU stem, a depthwise-separable residual block, an SE gate, a classifier."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU())
        self.dw = nn.Sequential(nn.Conv2d(16, 16, 3, padding=1, groups=16, bias=False), nn.BatchNorm2d(16),
                                nn.ReLU6(), nn.Conv2d(16, 16, 1, bias=False), nn.BatchNorm2d(16))
        self.se = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(16, 4, 1), nn.ReLU(), nn.Conv2d(4, 16, 1),
                                nn.Sigmoid())
        self.fc = nn.Linear(16, 10)

    def forward(self, x):
        x = self.stem(x)
        x = torch.relu(x + self.dw(x))
        x = x * self.se(x)
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))


def _net():
    torch.manual_seed(4)
    net = Block()
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):       # statistics a trained net would have
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.2, 0.2)
    return net.eval()


@pytest.mark.parametrize("per_channel", [False, True], ids=["per_tensor", "per_channel"])
def test_shim_output_close_to_the_float_module(per_channel):
    torch.set_grad_enabled(False)
    x = torch.rand((2, 3, 12, 12), generator=torch.Generator().manual_seed(1))
    flt = _net()(x)
    err = {}
    try:
        for dtype in ("int8", "int16"):
            q = mq.quantize_dynamic_mlu(_net(), {"per_channel": per_channel, "firstconv": False}, dtype=dtype,
                                        gen_quant=True)
            q(x)
            outs = []
            for cores in (1, 4):
                ct.set_core_number(cores)
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")        # the SE multiply runs on the host, and says so
                    outs.append(q.to(ct.mlu_device())(x.to(ct.mlu_device())).cpu())
            assert torch.equal(outs[0], outs[1]), dtype
            err[dtype] = float((outs[0] - flt).abs().max() / flt.abs().max())
    finally:
        ct.set_core_number(1)
        torch.set_grad_enabled(True)
    assert err["int16"] < 0.01, err
    assert err["int16"] <= err["int8"] < 0.02, err
