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

import functools
import math
import warnings

import numpy as np
import torch

from mlusim.compiler import training_programs as K
from mlusim.errors import MlusimError, ShimError
from torch_mlu.core import device, training_ops
from torch_mlu.core.state import DeviceSettings, TrainState
from torch_mlu.core.training_sim import TrainCtx, host_array, mlu_tensor, sym_pad

aten = torch.ops.aten
HOST_FREE = {"aten.t.default", "aten.view.default", "aten.detach.default", "aten._to_copy.default",
             "aten.copy_.default", "aten.new_empty.default", "aten.ones_like.default", "aten.clone.default",
             "aten.zeros_like.default", "aten._unsafe_view.default", "aten.empty_like.default",
             "aten.zero_.default", "aten.fill_.Scalar", "aten.bernoulli_.float", "aten.div_.Scalar",
             "aten.lift_fresh.default", "aten.alias.default", "aten.expand.default"}


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


def quantize_pair(train: TrainState, site: str, a: np.ndarray, b: np.ndarray, k: int) -> tuple[int, int, int]:
    """(storage bits, position of a, position of b) for a MAC op on a and b; widens a site to 16
    bits when its 8-bit quantization error exceeds the quantify rate."""
    bits = [train.sites.setdefault(f"{site}.a", train.bitwidth), train.sites.setdefault(f"{site}.b", train.bitwidth)]
    bits = [min(x, 16) for x in bits]
    qa, qb = budget(bits[0], bits[1], k)
    pa, pb = position(a, qa), position(b, qb)
    for i, (x, q, p) in enumerate(((a, qa, pa), (b, qb, pb))):
        if bits[i] == 8 and x.size:
            deq = np.clip(np.rint(x.astype(np.float64) * 2.0 ** -p), -q, q) * 2.0 ** p
            norm = float(np.linalg.norm(x))
            if norm > 0 and float(np.linalg.norm(x - deq)) / norm > train.quantify_rate:
                train.sites[f"{site}.{'ab'[i]}"] = 16
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


def passes(train: TrainState, site: str, a: np.ndarray, b: np.ndarray, k: int):
    """The MAC passes for an op on a and b: [(bits, a_part, pos_a, b_part, pos_b)]. One pass, unless an
    operand's site is 31-bit: then both operands are split into digits small enough that a k-long
    reduction of two digits cannot overflow the int32 accumulator, and every pair of digits is one
    int16 pass (9 passes at typical k); the caller adds their float results in order."""
    wide = (train.sites.setdefault(f"{site}.a", train.bitwidth) == 31) | \
        (train.sites.setdefault(f"{site}.b", train.bitwidth) == 31)
    if not wide:
        bits, pa, pb = quantize_pair(train, site, a, b, k)
        return [(bits, a, pa, b, pb)]
    B = max(2, min(15, int((31 - math.log2(max(k, 1))) / 2) + 1))
    return [(16, ap, pa, bp, pb) for ap, pa in digits(a, B) for bp, pb in digits(b, B)]


def summed(ctx: TrainCtx, outputs: list[np.ndarray], phase: str) -> np.ndarray:
    """Add the passes' float32 results in order, on the vector unit."""
    if len(outputs) == 1:
        return outputs[0]
    names = [f"p{i}" for i in range(len(outputs))]

    def body(s, buf, n, deps, sc):
        last = s.emit("vadd", deps, dt="f32", dst=buf["sum"], a=buf[names[0]], b=buf[names[1]], n=n)
        for nm in names[2:]:
            last = s.emit("vadd", [last], dt="f32", dst=buf["sum"], a=buf["sum"], b=buf[nm], n=n)
        return last

    flat = {nm: o.reshape(-1) for nm, o in zip(names, outputs)}
    prog = K.eltwise(ctx.cfg, "sum_passes", outputs[0].size, names, ["sum"], body)
    return ctx.run(prog, flat, phase)["sum"].reshape(outputs[0].shape)


# ---- convolution ------------------------------------------------------------------------------------------
def conv(ctx: TrainCtx, func, args, kwargs):
    x, w, b, stride, padding, dilation, transposed, _op, groups = args
    pad = sym_pad(padding)
    if transposed or groups != 1 or set(stride) != {1} or set(dilation) != {1} or pad is None or x.dim() != 4:
        return NotImplemented
    xn, wn = host_array(x), host_array(w)
    co, ci, kh, kw = wn.shape
    kk = ci * kh * kw
    outs = []
    for i, (bits, xa, px, wb, pw) in enumerate(passes(ctx.train, f"conv{tuple(wn.shape)}.fwd", xn, wn, kk)):
        bias = b is not None and i == 0                       # the bias goes in once
        prog = K.conv_fwd(ctx.cfg, xn.shape[0], ci, xn.shape[2], xn.shape[3], co, kh, kw, pad, px, pw, bits, bias)
        feeds = {"x": xa, "w": wb}
        if bias:
            feeds["bias"] = host_array(b)
        outs.append(ctx.run(prog, feeds, "forward")["y"])
    return mlu_tensor(summed(ctx, outs, "forward"))


def conv_backward(ctx: TrainCtx, func, args, kwargs):
    g, x, w, bias_sizes, stride, padding, dilation, transposed, _op, groups, mask = args
    pad = sym_pad(padding)
    if transposed or groups != 1 or set(stride) != {1} or set(dilation) != {1} or pad is None:
        return NotImplemented
    cfg = ctx.cfg
    gn, xn, wn = host_array(g), host_array(x), host_array(w)
    n, ci, h, wd = xn.shape
    co, _, kh, kw = wn.shape
    outs = [None, None, None]
    if mask[0]:
        parts = []
        for bits, ga, pg, wb, pw in passes(ctx.train, f"conv{tuple(wn.shape)}.dx", gn, wn, kh * kw * co):
            prog = K.conv_bwd_input(cfg, n, ci, h, wd, co, kh, kw, pad, pg, pw, bits)
            parts.append(ctx.run(prog, {"dy": ga, "w": wb}, "backward")["dx"])
        outs[0] = mlu_tensor(summed(ctx, parts, "backward"))
    if mask[1]:
        P = gn.shape[2] * gn.shape[3]
        parts = []
        for bits, xa, px, gb, pg in passes(ctx.train, f"conv{tuple(wn.shape)}.dw", xn, gn, P):
            prog = K.conv_bwd_weight(cfg, n, ci, h, wd, co, kh, kw, pad, px, pg, bits)
            parts.append(ctx.run(prog, {"x": xa, "dy": gb}, "backward")["dw"])
        outs[1] = mlu_tensor(summed(ctx, parts, "backward"))
    if mask[2]:
        outs[2] = mlu_tensor(channel_sums(ctx, gn))
    return tuple(outs)


def channel_sums(ctx: TrainCtx, g: np.ndarray) -> np.ndarray:
    """sum of g [N, C, H, W] over N, H and W (a conv's bias gradient)."""
    n, c = g.shape[:2]
    hw = int(np.prod(g.shape[2:])) if g.ndim > 2 else 1
    return ctx.run(K.channel_sums(ctx.cfg, n, c, hw), {"g": g.reshape(n, c, hw)}, "backward")["s"]


# ---- matmul ----------------------------------------------------------------------------------------------
def _operand(t: torch.Tensor, want_rows_first: bool):
    """(array as stored, transposed flag): the layout the tensor actually has in memory."""
    if t.is_contiguous():
        return host_array(t), not want_rows_first
    if t.t().is_contiguous():
        return host_array(t.t()), want_rows_first
    return host_array(t.contiguous()), not want_rows_first


def _mm(ctx: TrainCtx, a, bmat, bias, phase):
    m, k = a.shape
    n = bmat.shape[1]
    A, a_t = _operand(a, True)                 # want A as [m, k]
    B, b_t = _operand(bmat.t(), True)          # want B^T as [n, k]
    outs = []
    for i, (bits, Ap, pa, Bp, pb) in enumerate(passes(ctx.train, f"mm{(m, k, n)}", A, B, min(k, 2048))):
        with_bias = bias is not None and i == 0
        prog = K.qmatmul(ctx.cfg, "matmul", m, k, n, a_t, b_t, pa, pb, bits, with_bias)
        feeds = {"a": Ap, "b": Bp}
        if with_bias:
            feeds["bias"] = host_array(bias)
        outs.append(ctx.run(prog, feeds, phase)["c"])
    return mlu_tensor(summed(ctx, outs, phase), (m, n))


def addmm(ctx: TrainCtx, func, args, kwargs):
    bias, a, b = args
    if kwargs.get("beta", 1) != 1 or kwargs.get("alpha", 1) != 1 or bias.dim() != 1:
        return NotImplemented
    return _mm(ctx, a, b, bias, "forward")


def mm(ctx: TrainCtx, func, args, kwargs):
    return _mm(ctx, args[0], args[1], None, "backward")


def sum_dim(ctx: TrainCtx, func, args, kwargs):
    x, dims = args[0], list(args[1]) if len(args) > 1 else []
    if x.dim() != 2 or dims not in ([0], [-2]) or kwargs.get("dtype") is not None:
        return NotImplemented
    keep = args[2] if len(args) > 2 else kwargs.get("keepdim", False)
    xn = host_array(x)
    r, c = xn.shape

    def body(s, buf, deps, sc):
        tr = s.emit("vtrans", deps, dt="f32", dst=buf["t0"], src=buf["x"], rows=r, cols=c)
        return s.emit("vreduce", [tr], mode="sum", dt="f32", dst=buf["s"], src=buf["t0"], rows=c, cols=r)

    prog = K.rows(ctx.cfg, "sum", r, c, {"x": (r * c,)}, {"s": (c,)}, body)
    out = ctx.run(prog, {"x": xn.reshape(-1)}, "backward")["s"]
    return mlu_tensor(out, (1, c) if keep else (c,))


# ---- switching it on ------------------------------------------------------------------------------------
def handlers() -> dict:
    """aten op -> kernel(ctx, func, args, kwargs): the MAC-array ones here, the vector ones in training_ops."""
    return {aten.convolution.default: conv, aten.convolution_backward.default: conv_backward,
            aten.addmm.default: addmm, aten.mm.default: mm, aten.sum.dim_IntList: sum_dim,
            **training_ops.handlers()}


def _wrap(ctx: TrainCtx, name, fn):
    """Run an op on the simulator; if the simulator cannot (MlusimError), compute it on the host
    and say so once. Exceptions must not escape here: raised inside autograd's backward on the
    `mlu` device they abort the process, so strict mode defers its error to the optimizer step."""
    train = ctx.train

    def handler(func, args, kwargs):
        if not train.enabled:
            return NotImplemented
        try:
            return fn(ctx, func, args, kwargs)
        except MlusimError as e:
            train.fallbacks[str(func)] = str(e)
            if len(train.fallbacks) == 1 or str(func) not in train.warned:
                train.warned.add(str(func))
                warnings.warn(f"mlusim: {func} ran on the host: {e}", stacklevel=2)
            return NotImplemented
    handler.__name__ = name
    return handler


def _count_host(train: TrainState, func) -> None:
    if train.enabled and str(func) not in HOST_FREE:
        train.host_ops[str(func)] += 1


def enable(settings: DeviceSettings, train: TrainState, bitwidth: int, steps_per_epoch: int,
           quantify_rate: float = 0.01) -> None:
    """Route training ops on mlu tensors to the simulator, under `settings`, accounting into `train`."""
    if bitwidth not in (8, 16, 31):
        raise ShimError(f"adaptive_quantize: bitwidth must be 8, 16 or 31, got {bitwidth}")
    train.enabled, train.bitwidth, train.steps_per_epoch = True, bitwidth, steps_per_epoch
    train.quantify_rate = quantify_rate
    ctx = TrainCtx(settings, train)
    for op, fn in handlers().items():
        device.OP_HANDLERS[op] = _wrap(ctx, str(op), fn)
    device.HOST_OP_HOOK = functools.partial(_count_host, train)


def disable(train: TrainState) -> None:
    train.enabled = False
