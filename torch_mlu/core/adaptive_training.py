"""Training on the simulated MLU: aten ops of an adaptive-quantized model run as simulator programs.

`adaptive_quantize(model, steps_per_epoch, bitwidth)` turns this on. Then, on mlu tensors, the
forward and backward of convolution and matmul run on the MAC array with operands quantized to a
power-of-two scale (Cambricon's fix position) chosen from each tensor's range; each (op, operand)
site starts at `bitwidth` and widens to 16 bits when its relative quantization error exceeds the
quantify rate. ReLU, max pool, dropout, log_softmax and nll_loss and their backward passes, bias
gradients and the SGD update run in float32 on the vector unit. Everything else (views, RNG for
dropout masks, one-hot targets) stays on the host and is counted in the report.
"""
from __future__ import annotations

import math
import warnings
from collections import Counter
from dataclasses import dataclass, field

import numpy as np
import torch

from mlusim.compiler import training_programs as K
from mlusim.errors import MlusimError, ShimError

aten = torch.ops.aten
HOST_FREE = {"aten.t.default", "aten.view.default", "aten.detach.default", "aten._to_copy.default",
             "aten.copy_.default", "aten.new_empty.default", "aten.ones_like.default", "aten.clone.default",
             "aten.zeros_like.default", "aten._unsafe_view.default", "aten.empty_like.default",
             "aten.zero_.default", "aten.fill_.Scalar", "aten.bernoulli_.float", "aten.div_.Scalar",
             "aten.lift_fresh.default", "aten.alias.default", "aten.expand.default"}


@dataclass
class TrainState:
    enabled: bool = False
    bitwidth: int = 8
    quantify_rate: float = 0.01
    steps_per_epoch: int = 0
    sites: dict = field(default_factory=dict)            # site -> bits
    step: dict = field(default_factory=lambda: Counter())
    history: list = field(default_factory=list)
    host_ops: Counter = field(default_factory=Counter)
    fallbacks: dict = field(default_factory=dict)          # op -> why the simulator could not run it
    warned: set = field(default_factory=set)


STATE = TrainState()


# ---- quantization ---------------------------------------------------------------------------------------
def position(x: np.ndarray, qmax: int) -> int:
    """Smallest power-of-two scale that fits |x| into qmax: value = q * 2**pos."""
    amax = float(np.max(np.abs(x))) if x.size else 0.0
    if not math.isfinite(amax):
        raise ShimError("non-finite values reached a quantized MLU op (diverging training?)")
    return math.ceil(math.log2(amax / qmax)) if amax > 0 else 0


def budget(bits_a: int, bits_b: int, k: int) -> tuple[int, int]:
    """Largest magnitudes for two operands of a k-long reduction: 8-bit operands use 127 (the int8
    path's 32-bit accumulator holds 133,000 full-range products), 16-bit ones the whole int16 range,
    since the MAC array keeps int16 sums exact (docs/numerics.md)."""
    if bits_a == bits_b == 8 and k * 127 * 127 >= 2**31:
        raise ShimError(f"an 8-bit reduction of {k} products could overflow the int32 accumulator")
    return (127 if bits_a == 8 else 32767), (127 if bits_b == 8 else 32767)


def quantize_pair(site: str, a: np.ndarray, b: np.ndarray, k: int) -> tuple[int, int, int]:
    """(storage bits, position of a, position of b) for a MAC op on a and b; widens a site to 16
    bits when its 8-bit quantization error exceeds the quantify rate."""
    bits = [STATE.sites.setdefault(f"{site}.a", STATE.bitwidth), STATE.sites.setdefault(f"{site}.b", STATE.bitwidth)]
    bits = [min(x, 16) for x in bits]
    qa, qb = budget(bits[0], bits[1], k)
    pa, pb = position(a, qa), position(b, qb)
    for i, (x, q, p) in enumerate(((a, qa, pa), (b, qb, pb))):
        if bits[i] == 8 and x.size:
            deq = np.clip(np.rint(x.astype(np.float64) * 2.0 ** -p), -q, q) * 2.0 ** p
            norm = float(np.linalg.norm(x))
            if norm > 0 and float(np.linalg.norm(x - deq)) / norm > STATE.quantify_rate:
                STATE.sites[f"{site}.{'ab'[i]}"] = 16
    return max(bits), pa, pb


def digits(x: np.ndarray, B: int) -> list[tuple[np.ndarray, int]]:
    """A 31-bit quantization of x as balanced base-2**B digits, each an exactly representable float
    array with its own position: x ~= q * 2**pos with q = sum d_i * 2**(B*i), |d_i| <= 2**(B-1)."""
    pos = position(x, 2**30 - 1)
    q = np.clip(np.rint(x.astype(np.float64) * 2.0 ** -pos), -(2**30 - 1), 2**30 - 1).astype(np.int64)
    out, i = [], 0
    while True:
        d = q - np.rint(q / 2.0**B).astype(np.int64) * 2**B
        out.append(((d.astype(np.float64) * 2.0 ** (pos + B * i)).astype(np.float32), pos + B * i))
        q = (q - d) >> B
        i += 1
        if not q.any():
            return out


def passes(site: str, a: np.ndarray, b: np.ndarray, k: int):
    """The MAC passes for an op on a and b: [(bits, a_part, pos_a, b_part, pos_b)]. One pass, unless an
    operand's site is 31-bit: then both operands are split into digits small enough that a k-long
    reduction of two digits cannot overflow the int32 accumulator, and every pair of digits is one
    int16 pass (9 passes at typical k); the caller adds their float results in order."""
    wide = (STATE.sites.setdefault(f"{site}.a", STATE.bitwidth) == 31) | \
        (STATE.sites.setdefault(f"{site}.b", STATE.bitwidth) == 31)
    if not wide:
        bits, pa, pb = quantize_pair(site, a, b, k)
        return [(bits, a, pa, b, pb)]
    B = max(2, min(15, int((31 - math.log2(max(k, 1))) / 2) + 1))
    return [(16, ap, pa, bp, pb) for ap, pa in digits(a, B) for bp, pb in digits(b, B)]


def summed(outputs: list[np.ndarray], phase: str) -> np.ndarray:
    """Add the passes' float32 results in order, on the vector unit."""
    if len(outputs) == 1:
        return outputs[0]
    cfg, _ = _cfg_cores()
    names = [f"p{i}" for i in range(len(outputs))]

    def body(s, buf, n, deps, sc):
        last = s.emit("vadd", deps, dt="f32", dst=buf["sum"], a=buf[names[0]], b=buf[names[1]], n=n)
        for nm in names[2:]:
            last = s.emit("vadd", [last], dt="f32", dst=buf["sum"], a=buf["sum"], b=buf[nm], n=n)
        return last

    flat = {nm: o.reshape(-1) for nm, o in zip(names, outputs)}
    prog = K.eltwise(cfg, "sum_passes", outputs[0].size, names, ["sum"], body)
    return run(prog, flat, phase)["sum"].reshape(outputs[0].shape)


def _cfg_cores():
    from torch_mlu.core.mlu_model import _STATE

    return _STATE.config(), _STATE.core_number


def run(program, inputs: dict, phase: str) -> dict:
    from mlusim.sim import simulate

    cfg, cores = _cfg_cores()
    res = simulate(program, cfg, cores=cores, inputs=inputs)
    STATE.step[phase] += res.cycles
    STATE.step[f"{phase}_kernels"] += len(program.kernels)
    return res.outputs


def _np(t) -> np.ndarray:
    from torch_mlu.core.device import cpu_of

    return np.ascontiguousarray(cpu_of(t).detach().float().numpy())


def _mlu(a: np.ndarray, shape=None) -> torch.Tensor:
    from torch_mlu.core.device import MluTensor

    t = torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))
    return MluTensor(t.reshape(shape) if shape is not None else t)


def _sym_pad(p) -> int | None:
    p = list(p)
    return p[0] if len(set(p)) == 1 else None


# ---- convolution ------------------------------------------------------------------------------------------
def conv(func, args, kwargs):
    x, w, b, stride, padding, dilation, transposed, _op, groups = args
    pad = _sym_pad(padding)
    if transposed or groups != 1 or set(stride) != {1} or set(dilation) != {1} or pad is None or x.dim() != 4:
        return NotImplemented
    cfg, _ = _cfg_cores()
    xn, wn = _np(x), _np(w)
    co, ci, kh, kw = wn.shape
    kk = ci * kh * kw
    outs = []
    for i, (bits, xa, px, wb, pw) in enumerate(passes(f"conv{tuple(wn.shape)}.fwd", xn, wn, kk)):
        bias = b is not None and i == 0                       # the bias goes in once
        prog = K.conv_fwd(cfg, xn.shape[0], ci, xn.shape[2], xn.shape[3], co, kh, kw, pad, px, pw, bits, bias)
        feeds = {"x": xa, "w": wb}
        if bias:
            feeds["bias"] = _np(b)
        outs.append(run(prog, feeds, "forward")["y"])
    return _mlu(summed(outs, "forward"))


def conv_backward(func, args, kwargs):
    g, x, w, bias_sizes, stride, padding, dilation, transposed, _op, groups, mask = args
    pad = _sym_pad(padding)
    if transposed or groups != 1 or set(stride) != {1} or set(dilation) != {1} or pad is None:
        return NotImplemented
    cfg, _ = _cfg_cores()
    gn, xn, wn = _np(g), _np(x), _np(w)
    n, ci, h, wd = xn.shape
    co, _, kh, kw = wn.shape
    outs = [None, None, None]
    if mask[0]:
        parts = []
        for bits, ga, pg, wb, pw in passes(f"conv{tuple(wn.shape)}.dx", gn, wn, kh * kw * co):
            prog = K.conv_bwd_input(cfg, n, ci, h, wd, co, kh, kw, pad, pg, pw, bits)
            parts.append(run(prog, {"dy": ga, "w": wb}, "backward")["dx"])
        outs[0] = _mlu(summed(parts, "backward"))
    if mask[1]:
        P = gn.shape[2] * gn.shape[3]
        parts = []
        for bits, xa, px, gb, pg in passes(f"conv{tuple(wn.shape)}.dw", xn, gn, P):
            prog = K.conv_bwd_weight(cfg, n, ci, h, wd, co, kh, kw, pad, px, pg, bits)
            parts.append(run(prog, {"x": xa, "dy": gb}, "backward")["dw"])
        outs[1] = _mlu(summed(parts, "backward"))
    if mask[2]:
        outs[2] = _mlu(channel_sums(cfg, gn))
    return tuple(outs)


def channel_sums(cfg, g: np.ndarray) -> np.ndarray:
    """sum of g [N, C, H, W] over N, H and W (a conv's bias gradient)."""
    n, c = g.shape[:2]
    hw = int(np.prod(g.shape[2:])) if g.ndim > 2 else 1
    return run(K.channel_sums(cfg, n, c, hw), {"g": g.reshape(n, c, hw)}, "backward")["s"]


# ---- matmul ----------------------------------------------------------------------------------------------
def _operand(t: torch.Tensor, want_rows_first: bool):
    """(array as stored, transposed flag): the layout the tensor actually has in memory."""
    if t.is_contiguous():
        return _np(t), not want_rows_first
    if t.t().is_contiguous():
        return _np(t.t()), want_rows_first
    return _np(t.contiguous()), not want_rows_first


def _mm(a, bmat, bias, phase):
    cfg, _ = _cfg_cores()
    m, k = a.shape
    n = bmat.shape[1]
    A, a_t = _operand(a, True)                 # want A as [m, k]
    B, b_t = _operand(bmat.t(), True)          # want B^T as [n, k]
    outs = []
    for i, (bits, Ap, pa, Bp, pb) in enumerate(passes(f"mm{(m, k, n)}", A, B, min(k, 2048))):
        with_bias = bias is not None and i == 0
        prog = K.qmatmul(cfg, "matmul", m, k, n, a_t, b_t, pa, pb, bits, with_bias)
        feeds = {"a": Ap, "b": Bp}
        if with_bias:
            feeds["bias"] = _np(bias)
        outs.append(run(prog, feeds, phase)["c"])
    return _mlu(summed(outs, phase), (m, n))


def addmm(func, args, kwargs):
    bias, a, b = args
    if kwargs.get("beta", 1) != 1 or kwargs.get("alpha", 1) != 1 or bias.dim() != 1:
        return NotImplemented
    return _mm(a, b, bias, "forward")


def mm(func, args, kwargs):
    return _mm(args[0], args[1], None, "backward")


def sum_dim(func, args, kwargs):
    x, dims = args[0], list(args[1]) if len(args) > 1 else []
    if x.dim() != 2 or dims not in ([0], [-2]) or kwargs.get("dtype") is not None:
        return NotImplemented
    keep = args[2] if len(args) > 2 else kwargs.get("keepdim", False)
    cfg, _ = _cfg_cores()
    xn = _np(x)
    r, c = xn.shape

    def body(s, buf, deps, sc):
        tr = s.emit("vtrans", deps, dt="f32", dst=buf["t0"], src=buf["x"], rows=r, cols=c)
        return s.emit("vreduce", [tr], mode="sum", dt="f32", dst=buf["s"], src=buf["t0"], rows=c, cols=r)

    out = run(K.rows(cfg, "sum", r, c, {"x": (r * c,)}, {"s": (c,)}, body), {"x": xn.reshape(-1)}, "backward")["s"]
    return _mlu(out, (1, c) if keep else (c,))


# ---- switching it on ------------------------------------------------------------------------------------
def _wrap(name, fn):
    """Run an op on the simulator; if the simulator cannot (MlusimError), compute it on the host
    and say so once. Exceptions must not escape here: raised inside autograd's backward on the
    `mlu` device they abort the process, so strict mode defers its error to the optimizer step."""
    def handler(func, args, kwargs):
        if not STATE.enabled:
            return NotImplemented
        try:
            return fn(func, args, kwargs)
        except MlusimError as e:
            STATE.fallbacks[str(func)] = str(e)
            if len(STATE.fallbacks) == 1 or str(func) not in STATE.warned:
                STATE.warned.add(str(func))
                warnings.warn(f"mlusim: {func} ran on the host: {e}", stacklevel=2)
            return NotImplemented
    handler.__name__ = name
    return handler


def _count_host(func) -> None:
    if STATE.enabled and str(func) not in HOST_FREE:
        STATE.host_ops[str(func)] += 1


def enable(bitwidth: int, steps_per_epoch: int, quantify_rate: float = 0.01) -> None:
    from torch_mlu.core import device, training_ops

    if bitwidth not in (8, 16, 31):
        raise ShimError(f"adaptive_quantize: bitwidth must be 8, 16 or 31, got {bitwidth}")
    STATE.enabled, STATE.bitwidth, STATE.steps_per_epoch = True, bitwidth, steps_per_epoch
    STATE.quantify_rate = quantify_rate
    mine = globals()
    for op, fn in training_ops.handlers().items():
        device.OP_HANDLERS[op] = _wrap(str(op), mine[fn] if isinstance(fn, str) else fn)
    device.HOST_OP_HOOK = _count_host


def disable() -> None:
    STATE.enabled = False


def report() -> list[dict]:
    """Per optimizer step: simulated cycles of forward, backward and update, kernels, host ops."""
    return [dict(h) for h in STATE.history]
