"""torch.jit.trace of a quantized MLU model: the trace carries its compiled program, so
torch.jit.save / torch.jit.load in a new process give the same outputs and cycles bit for bit."""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest

torch = pytest.importorskip("torch")
import torch.nn as nn  # noqa: E402

import torch_mlu  # noqa: E402,F401
import torch_mlu.core.mlu_model as ct  # noqa: E402
import torch_mlu.core.mlu_quantize as mq  # noqa: E402

from mlusim.errors import ShimError  # noqa: E402


class _Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.fc = nn.Linear(8 * 4 * 4, 10)

    def forward(self, x):
        y = nn.functional.max_pool2d(torch.relu(self.bn(self.conv(x))), 2)
        return self.fc(torch.flatten(y, 1))


class _TwoHeads(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 6, 3, padding=1)
        self.head1 = nn.Conv2d(6, 4, 1)
        self.head2 = nn.Conv2d(6, 2, 1)

    def forward(self, x):
        y = torch.relu(self.stem(x))
        return self.head1(y), self.head2(y)


@pytest.fixture(autouse=True)
def _settings():
    grad = torch.is_grad_enabled()
    torch.set_grad_enabled(False)
    ct.set_core_number(1)
    yield
    ct.set_core_number(1)
    torch.set_grad_enabled(grad)


def _quantized(net, x, cores):
    torch.manual_seed(0)
    q = mq.quantize_dynamic_mlu(net.eval(), {"per_channel": True, "mean": [0.5] * 3, "std": [0.25] * 3},
                                dtype="int8", gen_quant=True)
    q(x)
    ct.set_core_number(cores)
    return q.to(ct.mlu_device())


LOADER = textwrap.dedent("""
    import json, sys
    import numpy as np, torch
    import torch_mlu
    import torch_mlu.core.mlu_model as ct
    torch.set_grad_enabled(False)
    out = {}
    for name in sys.argv[2:]:
        m = torch.jit.load(f"{sys.argv[1]}/{name}.pt")
        x = torch.from_numpy(np.load(f"{sys.argv[1]}/{name}_x.npy")).to(ct.mlu_device())
        y = m(x)
        ys = list(y) if isinstance(y, tuple) else [y]
        for i, t in enumerate(ys):
            np.save(f"{sys.argv[1]}/{name}_y{i}_loaded.npy", t.cpu().numpy())
        params = {k: (str(p.device), p.cpu().numpy().tolist()) for k, p in m.named_parameters()}
        torch.jit.save(m, f"{sys.argv[1]}/{name}_resaved.pt")      # a loaded trace saves again
        again = torch.jit.load(f"{sys.argv[1]}/{name}_resaved.pt")(x)
        again = list(again) if isinstance(again, tuple) else [again]
        out[name] = {"cycles": ct.get_last_report().cycles, "mode": ct.get_last_report().mode,
                     "params": params, "again_equal": all(torch.equal(a.cpu(), b.cpu()) for a, b in zip(again, ys))}
    print(json.dumps(out))
""")


def test_saved_trace_runs_bit_for_bit_in_a_new_process(tmp_path):
    """Two models (one output; two outputs, on 4 cores): the new process's outputs equal this
    one's bit for bit, its report has the same cycles, the parameters come back on the mlu with
    their values, and the loaded trace saves and runs again."""
    cases = {"net": (_Net(), (2, 3, 8, 8), 1), "heads": (_TwoHeads(), (2, 3, 8, 8), 4)}
    expect = {}
    for name, (net, shape, cores) in cases.items():
        x = torch.rand(shape, generator=torch.Generator().manual_seed(7))
        m = _quantized(net, x, cores)
        xm = x.to(ct.mlu_device())
        traced = torch.jit.trace(m, xm, check_trace=False)
        ys = traced(xm)
        ys = list(ys) if isinstance(ys, tuple) else [ys]
        eager = m(xm)
        eager = list(eager) if isinstance(eager, tuple) else [eager]
        assert all(torch.equal(a.cpu(), b.cpu()) for a, b in zip(ys, eager))
        traced(xm)
        expect[name] = (ct.get_last_report().cycles, [y.cpu().numpy() for y in ys],
                        {k: p.cpu().numpy() for k, p in m.named_parameters()})
        torch.jit.save(traced, str(tmp_path / f"{name}.pt"))
        np.save(tmp_path / f"{name}_x.npy", x.numpy())
    (tmp_path / "load.py").write_text(LOADER)
    res = subprocess.run([sys.executable, str(tmp_path / "load.py"), str(tmp_path), *cases], capture_output=True,
                         text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-2000:]
    got = json.loads(res.stdout.strip().splitlines()[-1])
    for name, (cycles, ys, params) in expect.items():
        assert got[name]["mode"] == "fused" and got[name]["cycles"] == cycles
        for i, y in enumerate(ys):
            loaded = np.load(tmp_path / f"{name}_y{i}_loaded.npy")
            assert loaded.dtype == y.dtype and np.array_equal(loaded, y)
        assert set(got[name]["params"]) == set(params)
        for k, (dev, vals) in got[name]["params"].items():
            assert dev == "mlu:0" and np.array_equal(np.asarray(vals, np.float32), params[k])
        assert got[name]["again_equal"]


def test_loading_with_map_location_cpu_keeps_the_program(tmp_path):
    """map_location='cpu' puts the parameters on the host; the traced op still runs the program."""
    x = torch.rand((1, 3, 8, 8), generator=torch.Generator().manual_seed(1))
    m = _quantized(_Net(), x, 1)
    xm = x.to(ct.mlu_device())
    traced = torch.jit.trace(m, xm, check_trace=False)
    y = traced(xm).cpu()
    torch.jit.save(traced, str(tmp_path / "m.pt"))
    loaded = torch.jit.load(str(tmp_path / "m.pt"), map_location="cpu")
    assert {p.device.type for p in loaded.parameters()} == {"cpu"}
    assert torch.equal(loaded(xm).cpu(), y)
    with pytest.raises(RuntimeError, match="ShimError: mlusim::run_program runs on mlu tensors"):
        loaded(x)        # the TorchScript interpreter reports the op's error as a RuntimeError


def test_tracing_a_model_with_host_ops_is_one_clear_error():
    """One traced program cannot contain host ops: the trace stops and says to run eagerly."""
    class WithGelu(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3)

        def forward(self, x):
            return nn.functional.gelu(self.conv(x))

    x = torch.rand((1, 3, 8, 8), generator=torch.Generator().manual_seed(2))
    m = mq.quantize_dynamic_mlu(WithGelu(), {"firstconv": False}, gen_quant=True)
    m(x)
    m = m.to(ct.mlu_device())
    with pytest.raises(ShimError, match="call the model directly"):
        torch.jit.trace(m, x.to(ct.mlu_device()), check_trace=False)
