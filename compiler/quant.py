"""Quantization as Cambricon does it: symmetric int8/int16, scales calibrated from sample inputs;
or, for models that arrive already quantized (ONNX QDQ / QLinear*), the model's own scales and
zero points.

Every activation tensor gets a real scale s and a zero point zp (value = (q - zp) * s), recorded
also in Cambricon's form `position` and `cambricon_scale` (value = q * 2**position /
cambricon_scale, in [1, 2)). Calibrated tensors are symmetric (zp = 0). Weights are quantized per
output channel or per tensor; biases to int32 at s_in * s_w. Every real multiplier the integer
pipeline needs (s_in * s_w / s_out, average divisors, residual rescales) becomes an int32 `mult` and
a right `shift`: the vrequant instruction's parameters.

Imported quantization (`node.attrs["quant"] = {"scale", "zero_point", "dtype"}`, and
`params["qweight"/"w_scale"/"qbias"]` on conv/linear): activations live on the device as int8 in
every case. A uint8 tensor is stored as q - 128 with zero point zp - 128, which is the same set of
real values (value = (q - zp) * s either way), so the MAC array's signed int8 inputs can take it;
the conv/linear kernels absorb any nonzero input zero point exactly (see kernels/conv.py). Where
the model fixes a scale, multipliers are computed as ONNX Runtime does, in float32
(s_in * s_w / s_out), and represented exactly (a float32 mantissa fits the 31-bit multiplier).
"""
from __future__ import annotations

import math
import os
from contextlib import nullcontext
from typing import Any

import numpy as np

from mlusim.compiler.graph import Graph, Node
from mlusim.compiler.weights import Weight, even_cuts, row_blocks
from mlusim.errors import CompileError

QMAX = {"int8": 127, "int16": 32767}
ADD_BITS = 14          # residual add: both inputs rescaled to a common scale with 14-bit factors
ADD_BITS_FIXED = 20    # ... and with 20-bit factors for imported 8-bit models (|q - zp| <= 255)
MODEL_DTYPES = {"uint8": 128, "int8": 0}          # model dtype -> offset subtracted on the device
# output scale = input's (leaky ReLU's negative side only shrinks, upsampling copies)
PRESERVING = ("maxpool", "relu", "relu6", "flatten", "reshape", "dropout", "leaky_relu", "upsample")


def quantize_multiplier(m: float) -> tuple[int, int]:
    """Real m > 0 as (mult, shift) with m ~= mult * 2**-shift, mult < 2**31, 0 <= shift <= 62."""
    if not m > 0 or not math.isfinite(m):
        raise CompileError(f"cannot represent requantization multiplier {m!r}")
    e = math.floor(math.log2(m))
    shift = min(62, 30 - e)
    if shift < 0:
        shift = 0
    mult = int(round(m * 2.0**shift))
    if mult >= 2**31:
        if shift == 0:
            raise CompileError(f"requantization multiplier {m:g} is too large for int32")
        mult, shift = int(round(m * 2.0 ** (shift - 1))), shift - 1
    return max(mult, 1), shift


def cambricon_form(s: float) -> dict[str, Any]:
    """Cambricon's (position, scale): value = q * 2**position / scale, with scale in [1, 2)."""
    pos = math.ceil(math.log2(s)) if s > 0 else 0
    return {"position": pos, "cambricon_scale": 2.0**pos / s if s > 0 else 1.0}


def calibrate(g: Graph, samples: list[np.ndarray], use_avg: bool = False, progress=None) -> dict[str, float]:
    """Absolute maximum of every node's output over the samples (min/max method);
    `progress("calibrating", layers_done, layers_total)` as the float reference runs. Each
    activation is measured as it is made and dropped after its last use (reference.float_values).

    The float convolutions run on one BLAS thread whatever the host allows: OpenBLAS splits a
    product's sums differently with more threads, and the last bit of 38 of ResNet-50's 58 ranges
    (so its scales and program) then depended on the machine and OPENBLAS_NUM_THREADS. A second
    Python thread runs half of a sample's images instead (_sample_ranges: the same sums)."""
    from concurrent.futures import ThreadPoolExecutor

    from threadpoolctl import threadpool_limits

    pool = ThreadPoolExecutor(1, thread_name_prefix="mlusim-calibrate") if usable_cpus() > 1 else nullcontext()
    with threadpool_limits(limits=1, user_api="blas"), pool as beside:
        return _calibrate(g, samples, use_avg, progress, beside)


def usable_cpus() -> int:
    """The CPUs this process may run on (its affinity, as `taskset` or a container sets it). The
    compile works beside itself (the weight draw beside the planner, half of the calibration
    images beside the other half) only with two or more: on one, the halves wait for each other
    and the compile is slower than done in turn."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:          # not on Linux
        return os.cpu_count() or 1


def _calibrate(g: Graph, samples: list[np.ndarray], use_avg: bool, progress, beside=None) -> dict[str, float]:
    per: dict[str, list[float]] = {}
    total = len(g.nodes) * len(samples)
    clamped = {n.name for n in g.nodes if _clamped_at_zero(n)} - {n.name for n in g.nodes if not _clamped_at_zero(n)}
    for s, x in enumerate(samples):
        def step(k: int, base: int = s * len(g.nodes)) -> None:
            progress("calibrating", base + k, total)
        ranges = _sample_ranges(g, x, clamped, step if progress else None, beside)
        for name, r in ranges.items():
            per.setdefault(name, []).append(r)
    return {k: (float(np.mean(v)) if use_avg else max(v)) for k, v in per.items()}


def _sample_ranges(g: Graph, x: np.ndarray, clamped: set[str], on_node, beside) -> dict[str, float]:
    """One sample's range of each node, by name (a name given twice keeps its last value). With
    an executor `beside` and more than one image, the graph's first nodes (per_image_prefix) run
    on the later half of the images there while this thread runs the first half (numpy's BLAS
    and copies release the GIL, so a free second core does that half: ResNet-50 b16's two images
    0.35-0.40 -> 0.20-0.24 s); each range is the larger of the halves' (NaN if either is), and
    the rest of the graph runs on their values joined. Each image's values are the whole
    batch's, bit for bit."""
    from mlusim.compiler.reference import float_values, joined, per_image_prefix

    cut = per_image_prefix(g) if beside is not None and x.shape[0] > 1 else 0
    if not cut:
        return _ranges(float_values(g, x, on_node), clamped)
    half, live, later_live = x.shape[0] // 2, {}, {}
    later = beside.submit(lambda: _ranges(float_values(g, x[half:], stop=cut, live=later_live), clamped))
    try:
        ranges = _ranges(float_values(g, x[:half], on_node, stop=cut, live=live), clamped)
    finally:
        other = later.result()
    for name, r in other.items():
        if math.isnan(r) or r > ranges[name]:
            ranges[name] = r
    both = {name: joined(v, later_live[name]) for name, v in live.items()}
    ranges.update(_ranges(float_values(g, x, on_node, start=cut, live=both), clamped))
    return ranges


def _ranges(values, clamped: set[str]) -> dict[str, float]:
    """abs_max of each (name, value), by name (a name given twice keeps its last value)."""
    ranges: dict[str, float] = {}
    for name, v in values:
        ranges[name] = abs_max(v, name in clamped)
    return ranges


def abs_max(v: np.ndarray, nonnegative: bool = False) -> float:
    """max |v| (0 for an empty v, NaN if v holds one), without the |v| copy np.abs would make;
    `nonnegative`: v has no value below 0 (a ReLU's output), so its maximum is that, in one pass."""
    if not v.size:
        return 0.0
    if nonnegative:
        return abs(float(v.max()))
    return abs(float(np.maximum(v.max(), -v.min())))


def _clamped_at_zero(n: Node) -> bool:
    """Whether the float reference's output of n has no value below 0 (reference._float_node: a
    ReLU or ReLU6, or a layer with one fused, then at most a max pool)."""
    return n.op in ("relu", "relu6") or n.op in ("conv2d", "linear", "add") and n.attrs.get("act") in ("relu", "relu6")


def _act_bounds(act: str | None, s_out: float, qmax: int, zp: int = 0, full: bool = False) -> tuple[int, int]:
    """Clamp bounds of a requantized output: the type's range (symmetric -qmax..qmax for calibrated
    tensors, the full range for imported ones), tightened by a fused ReLU / ReLU6 (real 0 is `zp`)."""
    lo, hi = (-qmax - 1 if full else -qmax), qmax
    if act in ("relu", "relu6"):
        lo = max(lo, zp)
    if act == "relu6":
        hi = min(qmax, zp + int(round(6.0 / s_out)))
    return lo, hi


def fixed_quant(n: Node) -> tuple[float, int] | None:
    """(scale, device zero point) a model fixes for node n's output, or None if calibrated."""
    fq = n.attrs.get("quant")
    if not fq:
        return None
    if fq["dtype"] not in MODEL_DTYPES:
        raise CompileError(f"node '{n.name}' ({n.op}): quantized type {fq['dtype']} is not supported "
                           f"(uint8 and int8 are)")
    return float(np.float32(fq["scale"])), int(fq["zero_point"]) - MODEL_DTYPES[fq["dtype"]]


def _ratio(a, b, c, f32: bool) -> np.ndarray:
    """a * b / c as float64, or evaluated in float32 left to right as ONNX Runtime does."""
    if f32:
        return (np.float32(a) * np.asarray(b, np.float32) / np.float32(c)).astype(np.float64)
    return np.asarray(a * np.asarray(b, np.float64) / c, np.float64)


def ort_add_constants(sa: float, za: int, sb: float, zb: int, sc: float, zc: int) -> tuple[float, float, float]:
    """(rA, rB, F) of ONNX Runtime's quantized add, c = fma(a, rA, fma(b, rB, F)) on raw (model-typed)
    values: rA = sa / sc and rB = sb / sc in float32, and F = zc - (rA * za + rB * zb) with the
    rA * za product contracted into an fma as its compiled x86 code does (found by matching its
    outputs bit for bit on ResNet-18 and MobileNetV2). Zero points are the model's (uint8 / int8)."""
    from mlusim.isa.semantics.vector import fused_multiply_add

    f32 = np.float32
    ra, rb = f32(f32(sa) / f32(sc)), f32(f32(sb) / f32(sc))
    inner = fused_multiply_add(np.array([ra]), np.array([za], f32), np.array([f32(rb * f32(zb))]), "f32")[0]
    fixed = f32(f32(zc) - inner)
    return float(ra), float(rb), float(fixed)


def _mults(ratios) -> tuple[np.ndarray, np.ndarray]:
    """quantize_multiplier of each ratio (per channel: 10^4 and more a model), as int32 arrays.
    Worked on whole arrays where the exponent floor(log2 m) is beyond doubt: m = f * 2**x with
    f in [0.5, 1) has it x - 1 unless f lies within 2**-40 of either end, where a log2 that is a
    few ulps off could round across the integer. Those (and the non-positive, the non-finite and
    any that would not fit 31 bits) go through quantize_multiplier itself, so every pair is the
    one it gives."""
    m = np.atleast_1d(np.asarray(ratios, np.float64))
    if m.size > 1 and (m == m[0]).all():
        # one ratio for every channel (one weight scale per tensor, a shape-only compile's unit
        # scales, whose ratios 1.0 all sit on the unsure edge below): its pair, once
        mult, shift = quantize_multiplier(float(m[0]))
        return np.full(m.shape, mult, np.int32), np.full(m.shape, shift, np.int32)
    frac, x = np.frexp(m)
    shift = np.clip(31 - x, 0, 62)
    with np.errstate(invalid="ignore", over="ignore"):
        mult = np.rint(np.ldexp(m, shift))
        sure = (m > 0) & np.isfinite(m) & (frac > 0.5 + 2.0**-40) & (frac < 1 - 2.0**-40) & (mult < 2**31)
    mult = np.where(sure, np.maximum(mult, 1), 0).astype(np.int64)
    for k in np.flatnonzero(~sure):
        mult[k], shift[k] = quantize_multiplier(float(m[k]))
    return mult.astype(np.int32), shift.astype(np.int32)


def _weights(w: Weight, per_channel: bool, qmax: int, data_scale: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric integer weights and their scales, per output channel or one for the tensor.
    `data_scale` multiplies per-channel ranges only (see quantize). Elementwise and per row, so
    done a block of rows at a time: the same values, with temporaries of a block instead of the
    whole weight (VGG-16's fc6: 411 MB), and a seeded weight is drawn block by block (twice for
    one scale per tensor: its range first)."""
    rows = w.shape[0]
    cols = w.size // rows if rows else 0
    cuts = even_cuts(rows, (16 << 20) // max(1, 4 * cols))
    top = None
    if not per_channel:
        top = max((float(_row_absmax(b).max()) for b in row_blocks(w, cuts) if b.size), default=0.0)
    out = np.empty((rows, cols), np.int16 if qmax > 127 else np.int8)
    s_w = np.empty(rows, np.float64)
    for r0, r1, block in zip(cuts, cuts[1:], row_blocks(w, cuts)):
        amax = _row_absmax(block) if top is None else np.full(r1 - r0, top)
        if top is None and data_scale != 1.0:
            amax *= data_scale
        s_w[r0:r1] = np.where(amax > 0, amax / qmax, 1.0)
        q = block.reshape(r1 - r0, cols) / s_w[r0:r1].astype(np.float32)[:, None]
        np.rint(q, out=q)
        np.clip(q, -qmax, qmax, out=q)
        out[r0:r1] = q
    return out.reshape(w.shape), s_w


def _row_absmax(block: np.ndarray) -> np.ndarray:
    """max |w| of each row (in float64), without an |w| copy."""
    flat = block.reshape(block.shape[0], -1)
    if not flat.size:
        return np.zeros(flat.shape[0])
    return np.maximum(flat.max(axis=1), -flat.min(axis=1)).astype(np.float64)


def _concat_scales(g: Graph, absmax: dict[str, float]) -> dict[str, float]:
    """Concat inputs share the output's scale, so concatenation is a pure copy. An input that only
    passes its producer's scale on (a leaky ReLU, an upsample: PRESERVING ops) takes it from the
    first producer up its chain that sets one, so that producer gets the shared scale (covering
    its own range too)."""
    forced: dict[str, float] = {}
    for n in g.nodes:
        if n.op != "concat" or fixed_quant(n) is not None:
            continue
        members = [n.name]
        for i in n.inputs:
            node = g.node(i)
            members.append(node.name)
            while node.op in PRESERVING and node.inputs and fixed_quant(node) is None:
                node = g.node(node.inputs[0])
                members.append(node.name)
        m = max(absmax.get(k, 0.0) for k in members)
        for k in members:
            forced[k] = m
    return forced


def _bias(bias, acc_scale) -> np.ndarray:
    if bias is None:
        return np.zeros(len(acc_scale), np.int64)
    return np.rint(bias.astype(np.float64) / acc_scale)


def _in_qmax(g: Graph, n: Node, qmax: int) -> int:
    """The largest magnitude the layer's input can hold (its own type's, or the input node's)."""
    src = g.node(n.inputs[0]).q
    return max(qmax, int(src.get("qmax", qmax)) + abs(int(src.get("zp", 0))))


def _depthwise(n: Node) -> bool:
    w = n.params["weight"]
    return n.op == "conv2d" and n.attrs.get("groups", 1) == w.shape[0] and w.shape[1] == 1


def depthwise_qmax(n: Node, in_qmax: int) -> int:
    """An int16 depthwise conv runs on the vector unit (vdwconv), whose int32 sums have no
    position: its weights get the widest range for which no input can overflow them,
    in_qmax * kh * kw * wmax < 2**31 (3x3 with int16 inputs: 7281, about 13 bits, still 64 times
    finer than int8's 127)."""
    kh, kw = n.params["weight"].shape[2:]
    return max(128, min(QMAX["int16"], (2**31 - 1) // (in_qmax * kh * kw)))


def acc_position(wq: np.ndarray, in_qmax: int, acc_scale, bias, res_scale, res_qmax: int) -> int:
    """The position p <= 0 at which an int16 layer's exact sum is kept in 32 bits: the MAC array
    writes rne(acc * 2**p), so p is the largest value for which the worst case over any input of
    |sum x*w| + |bias| (+ the shortcut a residual conv adds in the same units) stays below 2**31.
    int16 products reach 2**30, so any reduction of more than two needs the bound; most layers get
    p between -4 and -12, keeping 31 significant bits, far more than the 16-bit result needs."""
    wsum = np.abs(wq.reshape(wq.shape[0], -1).astype(np.int64)).sum(axis=1)
    acc_scale = np.broadcast_to(np.asarray(acc_scale, np.float64), wsum.shape)
    for p in range(0, -63, -1):
        unit = acc_scale * 2.0**-p
        worst = (wsum * float(in_qmax) + 1) * 2.0**p + np.abs(_bias(bias, unit)) + 1
        if res_scale is not None:
            worst = worst + res_qmax * res_scale / unit + 1
        if float(worst.max()) < 2.0**31:
            return p
    raise CompileError("an int16 layer's accumulator cannot be kept in 32 bits at any position")


def _layer_params(g: Graph, n: Node, q: dict, src: float, s: float, per_channel: bool, fixed: bool,
                  scale: dict, zps: dict, data_scale: float = 1.0, shape_only: bool = False) -> None:
    """A conv or linear layer's integer weights, int32 bias, requantize multipliers and clamp, and
    a residual join's shortcut rescale. `fixed`: the model fixes this node's output quantization.
    An int16 layer keeps its exact sum in 32 bits at position `acc_pos` (acc_position).
    `shape_only`: zero weights and bias of their shapes and types, weight scales 1 (placeholders)."""
    dt, qmax, zp = q["dtype"], q["qmax"], q["zp"]
    imported = fixed or "qweight" in n.params
    bias = n.params.get("bias")
    if "qweight" in n.params:
        wq, s_w = n.params["qweight"], n.params["w_scale"].astype(np.float64)
    elif shape_only:
        wq, s_w = np.zeros(n.params["weight"].shape, np.int8), np.ones(n.params["weight"].shape[0])
        bias = None
    elif dt == "int16" and _depthwise(n):
        wq, s_w = _weights(n.params["weight"], per_channel, depthwise_qmax(n, _in_qmax(g, n, qmax)), data_scale)
    else:
        wq, s_w = _weights(n.params["weight"], per_channel, qmax, data_scale)
    res_scale = scale[n.inputs[1]] if n.attrs.get("residual") else None
    pos = 0 if dt == "int8" or _depthwise(n) else acc_position(wq, _in_qmax(g, n, qmax), src * s_w,
                                                               bias, res_scale, QMAX[dt])
    acc_scale = src * s_w * 2.0**-pos
    bq = n.params["qbias"].astype(np.int64) if "qbias" in n.params else _bias(bias, acc_scale)
    q["weight"] = wq
    # shape-only placeholders: their lowered layouts are zeros too, made as fresh zeros whose pages
    # are never touched (VGG-16's would be 132 MB written for a program whose values nobody reads)
    q["zero_weights"] = shape_only and "qweight" not in n.params
    q["w_scale"] = s_w
    if pos:
        q["acc_pos"] = pos
    q["bias"] = np.clip(bq, -2**31, 2**31 - 1).astype(np.int32)
    q["mult"], q["shift"] = _mults(_ratio(src * 2.0**-pos, s_w, s, imported))
    q["lo"], q["hi"] = _act_bounds(n.attrs.get("act"), s, qmax, zp, imported)
    if fixed and not n.attrs.get("residual"):
        q["fscale"] = _ratio(src, s_w, s, True).astype(np.float32)
    if n.attrs.get("residual"):
        q["res_mult"], q["res_shift"] = _mults(scale[n.inputs[1]] / acc_scale)
        q["res_zp"] = zps[n.inputs[1]]


def _activation_params(n: Node, q: dict, src: float, s: float, fixed: bool, scale: dict, zps: dict) -> None:
    """Float activations (sigmoid, hardswish, hardsigmoid: input scale, inverse output scale with
    the / 6 folded in), leaky ReLU (the slope as a multiplier) and the channel scale x * s (the
    product's rescale)."""
    if n.op in ("sigmoid", "hardswish", "hardsigmoid"):
        q["in_scale"] = src
        q["inv_scale"] = float(np.float32(1.0 / (s * (1.0 if n.op == "sigmoid" else 6.0))))
    elif n.op == "leaky_relu":
        slope = float(n.attrs.get("slope", 0.01))
        if not 0 < slope < 1:
            raise CompileError(f"node '{n.name}' (leaky_relu): slope {slope:g} must be in (0, 1)")
        q["mult"], q["shift"] = quantize_multiplier(slope)
    elif n.op == "mul":
        if zps[n.inputs[0]] or zps[n.inputs[1]]:
            raise CompileError(f"node '{n.name}' (mul): inputs with zero points are not supported")
        q["mult"], q["shift"] = quantize_multiplier(scale[n.inputs[0]] * scale[n.inputs[1]] / s)
        q["lo"], q["hi"] = _act_bounds(None, s, q["qmax"], q["zp"], fixed)


def layer_input_sources(g: Graph) -> set[str]:
    """The nodes whose calibrated range sets the scale a conv or linear layer reads its input at:
    each such layer's (first) input, followed up through ops that pass their input's scale on."""
    out = set()
    for n in g.nodes:
        if n.op in ("conv2d", "linear"):
            src = g.node(n.inputs[0])
            while src.op in PRESERVING and src.inputs:
                src = g.node(src.inputs[0])
            out.add(src.name)
    return out


def scaled_ranges(g: Graph, absmax: dict[str, float], data_scale: float) -> dict[str, float]:
    """Cambricon's `data_scale`: every conv/linear layer input's calibrated range times it (its
    observers multiply each batch's min and max by it: Cambricon/catch torch_mlu/core/quantized/
    observer.py, on the input of every quantized Conv/Linear, modules/conv.py and linear.py)."""
    if data_scale == 1.0:
        return absmax
    inputs = layer_input_sources(g)
    return {k: (v * data_scale if k in inputs else v) for k, v in absmax.items()}


def _check_arguments(dtype: str, mixed: dict[str, str] | None, data_scale: float, shape_only: bool) -> None:
    """quantize's arguments. A shape-only quantization is int8 only: an int16 layer's accumulator
    position (acc_position) depends on its weights, and lowering reads it."""
    if dtype not in QMAX:
        raise CompileError(f"quantization dtype must be int8 or int16, got {dtype!r}")
    if shape_only and (dtype != "int8" or "int16" in (mixed or {}).values()):
        raise CompileError("a shape-only (timing-only) compile needs int8 layers: an int16 layer's accumulator "
                           "position depends on its weights")
    if not (isinstance(data_scale, (int, float)) and 0 < data_scale < float("inf")):
        raise CompileError(f"data_scale must be a positive number, got {data_scale!r}")


def quantize(g: Graph, absmax: dict[str, float], dtype: str = "int8", per_channel: bool = True,
             mixed: dict[str, str] | None = None, data_scale: float = 1.0, shape_only: bool = False) -> Graph:
    """Attach integer parameters to every node (node.q). `mixed` maps node names to 'int16'.
    Nodes with a model-given quantization (attrs 'quant') keep it; the rest are calibrated.
    `data_scale` (Cambricon's qconfig key, default 1) multiplies the calibrated range of every
    conv/linear input (scaled_ranges) and, with per_channel, every weight channel's range: Cambricon's
    per-channel weight observer gets the user's qconfig, its per-tensor one the default (data_scale
    1), in torch_mlu/core/mlu_quantize.py. Below 1 the largest values clip and the rest get finer steps.
    shape_only: every key, shape and type, with placeholders (zero weights and biases, unit weight
    scales; `absmax` as ever), for a program that is only timed (driver.compile_graph)."""
    _check_arguments(dtype, mixed, data_scale, shape_only)
    absmax = scaled_ranges(g, absmax, float(data_scale))
    mixed = mixed or {}
    scale: dict[str, float] = {}
    zps: dict[str, int] = {}
    offs: dict[str, int] = {}      # 128 for tensors the model keeps as uint8, else 0
    forced = _concat_scales(g, absmax)
    for n in g.nodes:
        fx = fixed_quant(n)
        dt = "int8" if fx else mixed.get(n.name, dtype)
        if fx and dtype != "int8":
            raise CompileError(f"node '{n.name}' ({n.op}): the model fixes 8-bit quantization; "
                               f"compile it with dtype int8, not {dtype}")
        qmax = QMAX[dt]
        if fx:
            s, zp = fx
        else:
            s, zp = max(forced.get(n.name, absmax.get(n.name, 1.0)), 1e-8) / qmax, 0
        src = scale.get(n.inputs[0]) if n.inputs else None
        src_zp = zps.get(n.inputs[0], 0) if n.inputs else 0
        q: dict[str, Any] = {"dtype": dt, "qmax": qmax, "zp": zp}
        if n.inputs:
            q["in_zp"] = src_zp
        off = MODEL_DTYPES[n.attrs["quant"]["dtype"]] if fx else (offs.get(n.inputs[0], 0) if n.op in PRESERVING else 0)
        if fx:
            fq = n.attrs["quant"]
            q["model"] = f"{fq['dtype']} zero point {int(fq['zero_point'])}"
        if n.op in PRESERVING:
            if fx and (s, zp) != (src, src_zp):
                raise CompileError(f"node '{n.name}' ({n.op}): the model quantizes its output with scale {s:g} "
                                   f"zero point {zp}, its input with {src:g} / {src_zp}; insert a requant node")
            s, zp = src, src_zp
            q["zp"] = zp
        if n.op in ("softmax", "log_softmax"):
            s = None
            q["in_scale"] = src
        if n.op == "conv2d" and "pad_value" in n.attrs:     # as the device quantizes the input (vquant)
            iq = g.node(n.inputs[0]).q
            fill = np.rint(np.asarray(n.attrs["pad_value"], np.float32).astype(np.float64) * float(iq["inv_scale"]))
            q["pad_fill"] = [int(v) for v in np.clip(fill, -iq["qmax"] - 1, iq["qmax"])]
        if n.op == "input":
            q["inv_scale"] = float(np.float32(1.0 / s))
            if fx:
                q["div_scale"] = float(np.float32(s))
        elif n.op in ("conv2d", "linear"):
            _layer_params(g, n, q, src, s, per_channel, fx is not None, scale, zps, float(data_scale), shape_only)
        elif n.op in ("avgpool", "gap"):
            count = (n.attrs["kernel"][0] * n.attrs["kernel"][1]) if n.op == "avgpool" else None
            if count is None:
                inp = g.node(n.inputs[0])
                count = inp.shape[2] * inp.shape[3]
            q["count"] = count
            # ONNX Runtime: ScaleInput / (ScaleOutput * float(ImageSize)), in float32
            ratio = np.float32(src) / (np.float32(s) * np.float32(count)) if fx else src / (s * count)
            q["mult"], q["shift"] = quantize_multiplier(float(ratio))
            q["lo"], q["hi"] = _act_bounds(None, s, qmax, zp, fx is not None)
            if fx and n.op == "gap":
                q["fscale"] = np.array([ratio], np.float32)
        elif n.op == "add":
            sa, sb = scale[n.inputs[0]], scale[n.inputs[1]]
            sc = max(sa, sb) / 2**(ADD_BITS_FIXED if fx and qmax == 127 else ADD_BITS)
            q["ka"], q["kb"] = int(round(sa / sc)), int(round(sb / sc))
            q["zpa"], q["zpb"] = zps[n.inputs[0]], zps[n.inputs[1]]
            q["mult"], q["shift"] = quantize_multiplier(sc / s)
            q["lo"], q["hi"] = _act_bounds(n.attrs.get("act"), s, qmax, zp, fx is not None)
            if fx:
                q["fma"] = ort_add_constants(sa, zps[n.inputs[0]] + offs[n.inputs[0]], sb,
                                             zps[n.inputs[1]] + offs[n.inputs[1]], s, zp + off)
                q["offsets"] = (offs[n.inputs[0]], offs[n.inputs[1]], off)
        elif n.op == "requant":
            q["mult"], q["shift"] = quantize_multiplier(float(np.float32(src) / np.float32(s)) if fx else src / s)
            q["lo"], q["hi"] = _act_bounds(None, s, qmax, zp, fx is not None)
        elif n.op in ("sigmoid", "hardswish", "hardsigmoid", "leaky_relu", "mul"):
            _activation_params(n, q, src, s, fx is not None, scale, zps)
        elif n.op == "relu6":
            q["hi"] = min(qmax, zp + int(round(6.0 / s)))
        elif n.op == "concat":
            if any(scale[i] != s or zps[i] != zp for i in n.inputs):
                raise CompileError(f"node '{n.name}' (concat): inputs were not given the output scale")
        scale[n.name] = s
        zps[n.name] = zp
        offs[n.name] = off
        if s is not None:
            q["scale"] = s
            q.update(cambricon_form(s))
        n.q = q
    out = g.node(g.output)
    g.meta["output_float"] = out.op in ("softmax", "log_softmax")
    return g


def firstconv(g: Graph, mean: list[float], std: list[float]) -> Graph:
    """Fold input normalisation (x - mean) / std into the first conv, as Cambricon's `firstconv`:
    the model then takes raw pixels. A padded first conv pads the raw image with each channel's
    mean, which normalises to the 0 the float model pads with, so borders are exact too (zero
    padding of the raw image would stand for -mean/std: 0.19 relative error on ResNet-18)."""
    first = g.consumers(g.input.name)
    if len(first) != 1 or first[0].op != "conv2d":
        raise CompileError("firstconv needs the input to feed exactly one conv")
    conv = first[0]
    c = conv.params["weight"].shape[1] * conv.attrs.get("groups", 1)
    for k, v in (("mean", mean), ("std", std)):
        if len(np.atleast_1d(v)) not in (1, c):
            raise CompileError(f"firstconv: {k} has {len(np.atleast_1d(v))} values but the input has {c} channels")
    mean_a = np.broadcast_to(np.asarray(mean, np.float64), (c,))
    std_a = np.broadcast_to(np.asarray(std, np.float64), (c,))
    if conv.attrs.get("groups", 1) != 1:
        raise CompileError("firstconv does not support a grouped first conv")
    w = np.asarray(conv.params["weight"], np.float64)
    conv.params["weight"] = (w / std_a[None, :, None, None]).astype(np.float32)
    b = conv.params.get("bias", np.zeros(w.shape[0], np.float32)).astype(np.float64)
    conv.params["bias"] = (b - (w * (mean_a / std_a)[None, :, None, None]).sum(axis=(1, 2, 3))).astype(np.float32)
    if any(conv.attrs["padding"]) and mean_a.any():
        # the float model pads the normalised image with 0, which is the raw image's channel mean:
        # the raw image is padded with it (kernels/conv.py builds those pads in NRAM)
        conv.attrs["pad_value"] = [float(np.float32(m)) for m in mean_a]
    conv.fused.append("firstconv")
    return g


def weight_bytes(g: Graph) -> int:
    return sum(int(n.q["weight"].nbytes) for n in g.nodes if "weight" in n.q)


__all__ = ["quantize", "calibrate", "quantize_multiplier", "cambricon_form", "firstconv", "Node"]
