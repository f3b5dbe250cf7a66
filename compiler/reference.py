"""Reference executors of a graph in plain numpy, independent of the simulator.

`run_float` is the float model (what the quantized model approximates). `run_quant` executes the
quantized graph's integer arithmetic directly on NCHW arrays with Python-level formulas taken from
docs/numerics.md; the simulator must match it bit for bit. Neither imports anything from mlusim.isa.

Zero points are handled here the way the math reads, not the way the kernels do it: a conv takes
(x - zp) padded with real zeros and the model's own bias, where the device kernel multiplies the raw
int8 values, pads with zp and corrects the bias (kernels/conv.py). Agreement is then a check of
that lowering, not a restatement of it.
"""
from __future__ import annotations

import functools
from typing import Iterator

import numpy as np

from mlusim.compiler.graph import Graph, output_names
from mlusim.compiler.weights import row_blocks


# ---- float ---------------------------------------------------------------------------------------
def _padded(x: np.ndarray, pads, fill=0) -> np.ndarray:
    """np.pad of x's last two axes with `fill`, in the memory order np.pad picks (F for an array
    only F-contiguous, else C: the taps' strides, and so the BLAS calls over them, are the ones
    np.pad's copy gave), without its generic overhead; x itself when it has nothing to add and is
    laid out so already."""
    pt, pb, pl, pr = pads
    order = "F" if x.flags.fnc else "C"
    if not any(pads) and x.flags["F_CONTIGUOUS" if order == "F" else "C_CONTIGUOUS"]:
        return x
    n, c, h, w = x.shape
    xp = np.empty((n, c, h + pt + pb, w + pl + pr), x.dtype, order=order)
    xp[:, :, :pt] = fill
    xp[:, :, pt + h:] = fill
    xp[:, :, pt:pt + h, :pl] = fill
    xp[:, :, pt:pt + h, pl + w:] = fill
    xp[:, :, pt:pt + h, pl:pl + w] = x
    return xp


def _out_size(x_shape, kh: int, kw: int, stride, pads, dil) -> tuple[int, int]:
    """A conv's output height and width."""
    pt, pb, pl, pr = pads
    return ((x_shape[2] + pt + pb - dil[0] * (kh - 1) - 1) // stride[0] + 1,
            (x_shape[3] + pl + pr - dil[1] * (kw - 1) - 1) // stride[1] + 1)


def _taps(x, kh, kw, stride, pads, dil, fill=0):
    """Yield (i, j, tap) with tap[n, c, ho, wo] = padded x at output position times stride plus the tap offset."""
    xp = _padded(x, pads, fill)
    ho, wo = _out_size(x.shape, kh, kw, stride, pads, dil)
    for i in range(kh):
        for j in range(kw):
            yield i, j, xp[:, :, i * dil[0]:i * dil[0] + stride[0] * (ho - 1) + 1:stride[0],
                           j * dil[1]:j * dil[1] + stride[1] * (wo - 1) + 1:stride[1]]


# OpenBLAS (SkylakeX kernels, 0.3.x) computes a GEMM of at most SMALL_GEMM_MNK multiply-adds in its
# small-matrix kernel, one pass over the reduction; a larger one in its blocked driver, which cuts
# a reduction longer than its GEMM_Q (448 here, at least 256 on x86) into blocks added in turn.
# Either way each element's sum depends on the reduction only, not on the number of rows.
# That holds for OpenBLAS's SkylakeX-family sgemm kernels (AVX-512) only: its Haswell and Zen
# kernels compute the rows of a 12-row tile's tail otherwise, so elsewhere numpy's calls stay.
SMALL_GEMM_MNK = 100 ** 3
ONE_BLOCK_K = 256
ROW_INDEPENDENT_CORES = frozenset({"SkylakeX", "Cooperlake", "SapphireRapids"})
TRANSPOSE_FLOATS = 8192      # a cache-sized block (32 KB of float32) of a channels-last transpose


@functools.cache
def _rows_independent_blas() -> bool:
    """Whether every BLAS numpy may call is OpenBLAS on one of ROW_INDEPENDENT_CORES, whose GEMM
    gives a row the same sums whatever rows come with it (found once per process: reading the
    loaded libraries takes about a millisecond)."""
    from threadpoolctl import threadpool_info

    blas = [i for i in threadpool_info() if i["user_api"] == "blas"]
    return bool(blas) and all(i["internal_api"] == "openblas" and i.get("architecture") in ROW_INDEPENDENT_CORES
                              for i in blas)


def _rows_merge(wo: int, ci: int, co: int) -> bool:
    """Whether a tap's [wo, ci] x [ci, co] products may run as one GEMM of more rows with the same
    sums: both calls then take the blocked driver (the per-matrix one is past the small-matrix
    bound already), or the reduction is one block for either kernel."""
    return wo * ci * co > SMALL_GEMM_MNK or ci <= ONE_BLOCK_K


def _one_gemm_per_tap(x, wo: int, ci: int, co: int, groups: int) -> bool:
    """Whether a conv's taps may each run as one GEMM (`_conv_rows`) with the sums numpy's batched
    matmul gives (one [wo, ci] x [ci, co] BLAS product per image row): no dimension of 1 (numpy
    takes other paths then) and no groups; the padded input `_padded` makes C-ordered (unless x
    is F-contiguous only), so that numpy hands every tap matrix to BLAS transposed, in place at
    stride 1, copied so otherwise (numpy 2 copies an operand BLAS cannot take, transposed when its
    first axis has the smaller stride); `_rows_merge`; and a BLAS whose rows do not depend on
    each other (`_rows_independent_blas`). A row-major operand would not do: the small-matrix
    kernels then sum otherwise."""
    return groups == 1 and 1 not in (wo, ci, co) and not x.flags.fnc and _rows_merge(wo, ci, co) \
        and _rows_independent_blas()


def _channels_first(x: np.ndarray, pads, dtype) -> np.ndarray:
    """x [n, c, h, w] as a C-contiguous [c, n, h + pt + pb, w + pl + pr], zero-padded, in `dtype`.
    A conv's output is channels-last in memory ([n, h, w, c] transposed); numpy's strided copy of
    it gathers one float per channel stride, 2-3x slower than a copy in cache-sized blocks."""
    n, c, h, w = x.shape
    pt, pb, pl, pr = pads
    xp = np.empty((c, n, h + pt + pb, w + pl + pr), dtype)
    if any(pads):
        xp[:, :, :pt] = 0
        xp[:, :, pt + h:] = 0
        xp[:, :, pt:pt + h, :pl] = 0
        xp[:, :, pt:pt + h, pl + w:] = 0
    inner = xp[:, :, pt:pt + h, pl:pl + w]
    last = x.transpose(0, 2, 3, 1)
    if not last.flags.c_contiguous or c == 1:
        inner[...] = x.transpose(1, 0, 2, 3)
    elif not any(pads):
        src, dst, step = last.reshape(-1, c), xp.reshape(c, -1), max(1, TRANSPOSE_FLOATS // c)
        for r0 in range(0, src.shape[0], step):
            dst[:, r0:r0 + step] = src[r0:r0 + step].T
    else:
        step = max(1, TRANSPOSE_FLOATS // (w * c))
        for k in range(n):
            for y0 in range(0, h, step):
                inner[:, k, y0:y0 + step] = last[k, y0:y0 + step].transpose(2, 0, 1)
    return xp


def _conv_rows(x, w, stride, pads, dil, dtype) -> np.ndarray:
    """An ungrouped conv as `_conv_acc` sums it, each tap's n * ho matrices in one GEMM over all
    n * ho * wo output positions: the tap is laid out column-major ([ci, n, ho, wo], copied from
    the padded input laid out so once), so BLAS gets the transposes, reduction and weight operand
    numpy gives it per matrix, only more rows, and OpenBLAS sums each element's reduction the
    same whatever the row count (tests/test_reference.py holds the two formulas equal). 3-4x
    faster on 7x7 and 14x14 layers."""
    n, ci = x.shape[:2]
    co, _, kh, kw = w.shape
    ho, wo = _out_size(x.shape, kh, kw, stride, pads, dil)
    wt = np.ascontiguousarray(w.transpose(2, 3, 0, 1))      # [kh, kw, co, ci]: tap (i, j) is wt[i, j]
    xp = _channels_first(x, pads, dtype)
    whole = xp.shape[2:] == (ho, wo)                        # a 1x1 tap of stride 1 is all of xp
    buf = xp if whole else np.empty((ci, n, ho, wo), dtype)
    a = buf.reshape(ci, n * ho * wo).T
    out, part = None, np.empty((n * ho * wo, co), dtype)
    for i in range(kh):
        for j in range(kw):
            if not whole:
                buf[...] = xp[:, :, i * dil[0]:i * dil[0] + stride[0] * (ho - 1) + 1:stride[0],
                              j * dil[1]:j * dil[1] + stride[1] * (wo - 1) + 1:stride[1]]
            if out is None:     # the first product is the sum so far (0 + p: a product is never -0.0)
                out = np.matmul(a, wt[i, j].T)
            else:
                out += np.matmul(a, wt[i, j].T, out=part)
    return out.reshape(n, ho, wo, co).transpose(0, 3, 1, 2)


def _conv_acc(x, w, stride, pads, dil, groups, dtype):
    """Sum over taps and groups of tap . w, as [n, co, ho, wo] in `dtype` (BLAS-friendly).
    Calibration's scales are maxima of these float sums, so each tap's BLAS products stay what
    `tap @ w[:, :, i, j].T` makes them: for each tap (and group) a batch of [wo, ci] x [ci, co]
    products, added to the sum in tap order; where the same sums come from one GEMM per tap,
    they are made so (`_one_gemm_per_tap`). Elsewhere only what is around numpy's calls is saved:
    its matmul copies a weight matrix it cannot hand to BLAS (a k x k tap's) into column-major
    order for every matrix of the batch, so each tap's is laid out so once here; where a
    dimension is 1 it takes other paths that read the operands as given, and gets them as given.
    The products land in one reused buffer."""
    n = x.shape[0]
    co, cig, kh, kw = w.shape
    cog = co // groups
    out = part = wt = None
    wd = np.asarray(w).astype(dtype, copy=False)
    if _one_gemm_per_tap(x, _out_size(x.shape, kh, kw, stride, pads, dil)[1], cig, co, groups):
        return _conv_rows(x, wd, stride, pads, dil, dtype)
    for i, j, tap in _taps(x.astype(dtype, copy=False), kh, kw, stride, pads, dil):
        ho, wo = tap.shape[2], tap.shape[3]
        t = tap.transpose(0, 2, 3, 1)
        if out is None:
            wt = wd.transpose(2, 3, 0, 1)                      # [kh, kw, co, ci]: tap (i, j) is wt[i, j]
            if 1 not in (wo, cig, cog):                        # numpy's matrix x matrix path
                wt = np.ascontiguousarray(wt)
            part = np.empty((n, ho, wo, co if groups == 1 or cig == cog == 1 else cog), dtype)
            if groups == 1:     # the first product is the sum so far (0 + p: a product is never -0.0)
                out = np.matmul(t, wt[i, j].T)
                continue
            out = np.zeros((n, ho, wo, co), dtype)
        if groups == 1:
            out += np.matmul(t, wt[i, j].T, out=part)
        elif cig == 1 and cog == 1:
            out += np.multiply(t, wt[i, j, :, 0], out=part)
        else:
            for g in range(groups):
                out[..., g * cog:(g + 1) * cog] += np.matmul(t[..., g * cig:(g + 1) * cig],
                                                             wt[i, j, g * cog:(g + 1) * cog].T, out=part)
    return out.transpose(0, 3, 1, 2)


def pad_channels(x: np.ndarray, pads, values) -> tuple[np.ndarray, tuple]:
    """x [n, c, h, w] padded with values[c] in channel c (firstconv's raw-image padding), and the
    zero pads that remain for the conv."""
    pt, pb, pl, pr = pads
    out = np.empty(x.shape[:2] + (x.shape[2] + pt + pb, x.shape[3] + pl + pr), x.dtype)
    out[:] = np.asarray(values, x.dtype).reshape(1, -1, 1, 1)
    out[:, :, pt:pt + x.shape[2], pl:pl + x.shape[3]] = x
    return out, (0, 0, 0, 0)


def _conv_f(x, w, b, stride, pads, dil, groups, pad_value=None):
    if pad_value is not None:
        x, pads = pad_channels(x, pads, pad_value)
    out = _conv_acc(x, w, stride, pads, dil, groups, np.float32)
    if b is not None:
        out += b.reshape(1, -1, 1, 1)     # in place: the sum is ours; float32 (a float64 b rounds once)
    return out


def _pool_f(x, kernel, stride, pads, mode):
    """A max pool is the running np.maximum of its taps' strided views, in tap order: numpy's max
    over a window view's last two axes reduces them innermost with the same first-kept rule, so
    even the sign of a zero and a NaN come out as it gives them (tests/test_reference.py), at
    a sixth of its time (ResNet-50's stem pool: 48 -> 8 ms at two images). A mean keeps numpy's
    reduction: its float sums depend on the order."""
    kh, kw = kernel
    pt, pb, pl, pr = pads
    fill = -np.inf if mode == "max" else 0.0
    xp = np.pad(x, ((0, 0), (0, 0), (pt, pb), (pl, pr)), constant_values=fill)
    if mode != "max":
        win = np.lib.stride_tricks.sliding_window_view(xp, (kh, kw), axis=(2, 3))[:, :, ::stride[0], ::stride[1]]
        return win.mean(axis=(-2, -1)).astype(np.float32)
    (sh, sw), ho, wo = stride, (xp.shape[2] - kh) // stride[0] + 1, (xp.shape[3] - kw) // stride[1] + 1
    out = None
    for i in range(kh):
        for j in range(kw):
            tap = xp[:, :, i:i + sh * (ho - 1) + 1:sh, j:j + sw * (wo - 1) + 1:sw]
            if out is None:
                out = tap.astype(np.float32)
            else:
                np.maximum(out, tap, out=out)
    return out


def _act_f(y, act, out=None):
    if act == "relu":
        return np.maximum(y, 0, out=out)
    if act == "relu6":
        return np.clip(y, 0, 6, out=out)
    return y


CHUNK_BYTES = 64 << 20     # the most float64 weight _linear_f converts at once


def _linear_f(x: np.ndarray, w: np.ndarray, b: np.ndarray) -> np.ndarray:
    """x @ w.T + b in float64. A big weight is converted a block of output rows at a time (VGG-16's
    fc6 whole in float64 would be 822 MB, more than all its float32 weights together): each block
    is the same float64 BLAS product over the full reduction, one output column per weight row,
    with blocks of at least 64 rows so the product never takes the matrix-vector path. A seeded
    weight (compiler/weights.py) is drawn block by block, never whole."""
    x64 = x.astype(np.float64)
    o = w.shape[0]
    blocks = -(-o // max(64, CHUNK_BYTES // (8 * w.shape[1])))
    if blocks == 1:
        return x64 @ np.asarray(w).T.astype(np.float64) + b
    y = np.empty((x.shape[0], o), np.float64)
    cuts = [o * i // blocks for i in range(blocks + 1)]          # equal blocks: none of a few rows
    for j0, j1, wb in zip(cuts, cuts[1:], row_blocks(w, cuts)):
        y[:, j0:j1] = x64 @ wb.T.astype(np.float64)
    return y + b


def run_float(g: Graph, x: np.ndarray, on_node=None) -> dict[str, np.ndarray]:
    """Every node's float32 output (fused activations and pools applied); `on_node(k)` after the
    k-th node (a compile's progress: calibration is its longest phase)."""
    return dict(float_values(g, x, on_node, keep=True))


def float_values(g: Graph, x: np.ndarray, on_node=None, keep: bool = False, start: int = 0, stop: int | None = None,
                 live: dict[str, np.ndarray] | None = None) -> Iterator[tuple[str, np.ndarray]]:
    """(node name, float32 output) for each node in graph order, as run_float computes them. Unless
    `keep`, a value is dropped once its last consumer has run: calibration only needs each
    tensor's range, and holding every activation of a batch (plus a big layer's temporaries) is
    what set the peak memory of a compile. start, stop, live: nodes start to stop - 1 only, from
    the values made before `start` that `live` holds; `live` is the run's own dict, so it holds
    the values used after `stop` when the run is over."""
    last: dict[str, int] = {}
    for k, n in enumerate(g.nodes):
        for i in n.inputs:
            last[i] = k
    v: dict[str, np.ndarray] = {} if live is None else live
    for k in range(start, len(g.nodes) if stop is None else stop):
        n = g.nodes[k]
        y = np.asarray(_float_node(n, [v[i] for i in n.inputs], x), dtype=np.float32)
        v[n.name] = y
        del y
        yield n.name, v[n.name]
        if not keep:
            for name in {*n.inputs, n.name}:
                if last.get(name, -1) <= k:
                    v.pop(name, None)
        if on_node is not None:
            on_node(k + 1)


# ops whose float output of each image is made from that image alone, by the same sums whatever
# the batch: elementwise ops, windows and means within an image, and convolutions (one GEMM row
# per output pixel, _conv_rows, or numpy's products per image row). Not linear: one image is a
# matrix-vector product, with other sums than a matrix's row.
PER_IMAGE = frozenset({"input", "conv2d", "batchnorm", "relu", "relu6", "dropout", "requant", "sigmoid", "hardswish",
                       "hardsigmoid", "leaky_relu", "upsample", "mul", "maxpool", "avgpool", "gap", "add", "concat",
                       "flatten", "reshape"})


def per_image_prefix(g: Graph) -> int:
    """How many of g's first nodes are PER_IMAGE ops: run on parts of a batch, they give each
    image's values bit for bit as on the whole batch."""
    return next((k for k, n in enumerate(g.nodes) if n.op not in PER_IMAGE), len(g.nodes))


def joined(first: np.ndarray, second: np.ndarray) -> np.ndarray:
    """first and second stacked along the batch, laid out in memory as first is (channels-last
    stays so), as the value made on the whole batch would be."""
    out = np.empty_like(first, shape=(first.shape[0] + second.shape[0],) + first.shape[1:])
    out[:first.shape[0]], out[first.shape[0]:] = first, second
    return out


def _float_node(n, a: list[np.ndarray], x: np.ndarray) -> np.ndarray:
    """Node n's float output from its inputs' (the graph input is x)."""
    op = n.op
    if op == "input":
        y = x.astype(np.float32)
    elif op == "conv2d":          # y is the conv's own sum: shortcut and activation go in place
        y = _conv_f(a[0], n.params["weight"], n.params.get("bias"), n.attrs["stride"],
                    n.attrs["padding"], n.attrs["dilation"], n.attrs["groups"], n.attrs.get("pad_value"))
        if n.attrs.get("residual"):
            y += a[1]
        y = _act_f(y, n.attrs.get("act"), out=y)
        if "pool" in n.attrs:
            y = _pool_f(y, n.attrs["pool"], n.attrs["pool"], (0, 0, 0, 0), "max")
    elif op == "linear":
        y = _act_f(_linear_f(a[0], n.params["weight"], n.params["bias"]).astype(np.float32), n.attrs.get("act"))
    elif op == "batchnorm":
        p = n.params
        k = p["gamma"] / np.sqrt(p["var"] + n.attrs.get("eps", 1e-5))
        shape = (1, -1) + (1,) * (a[0].ndim - 2)
        y = (a[0] - p["mean"].reshape(shape)) * k.reshape(shape) + p["beta"].reshape(shape)
    elif op in ("relu", "relu6"):
        y = _act_f(a[0], op)
    elif op in ("dropout", "requant"):
        y = a[0]
    elif op == "sigmoid":
        y = 1.0 / (1.0 + np.exp(-a[0].astype(np.float64)))
    elif op == "hardswish":
        y = a[0] * np.clip(a[0] + 3.0, 0.0, 6.0) / 6.0
    elif op == "hardsigmoid":
        y = np.clip(a[0] + 3.0, 0.0, 6.0) / 6.0
    elif op == "leaky_relu":
        y = np.where(a[0] >= 0, a[0], a[0] * np.float32(n.attrs.get("slope", 0.01)))
    elif op == "upsample":
        f = n.attrs["scale"]
        y = a[0].repeat(f, axis=2).repeat(f, axis=3)
    elif op == "mul":
        y = a[0] * a[1]
    elif op in ("maxpool", "avgpool"):
        y = _pool_f(a[0], n.attrs["kernel"], n.attrs["stride"], n.attrs["padding"], op[:3])
    elif op == "gap":
        y = a[0].mean(axis=(2, 3), keepdims=True)
    elif op == "add":
        y = _act_f(a[0] + a[1], n.attrs.get("act"))
    elif op == "concat":
        y = np.concatenate(a, axis=1)
    elif op in ("flatten", "reshape"):
        y = a[0].reshape(a[0].shape[0], -1)
    elif op == "cpu":
        y = host_call(n, a)
    elif op in ("softmax", "log_softmax"):
        z = a[0] - a[0].max(axis=1, keepdims=True)
        e = np.exp(z)
        y = e / e.sum(axis=1, keepdims=True) if op == "softmax" else z - np.log(e.sum(axis=1, keepdims=True))
    else:  # pragma: no cover - infer_shapes rejects unknown ops first
        raise NotImplementedError(op)
    return y


# ---- quantized -----------------------------------------------------------------------------------
def _rne_shift(t: np.ndarray, shift) -> np.ndarray:
    """t / 2**shift, round half to even, for int64 t (shift broadcastable, >= 0)."""
    shift = np.asarray(shift, dtype=np.int64)
    den = np.left_shift(np.int64(1), shift)
    q = np.floor_divide(t, den)
    r = t - q * den
    twice = 2 * r
    up = (twice > den) | ((twice == den) & (q % 2 == 1))
    return q + up


def requant(acc: np.ndarray, bias, mult, shift, lo: int, hi: int, qmax: int, axis: int = 1, zp: int = 0) -> np.ndarray:
    """(acc + bias) * mult / 2**shift, rne, plus the zero point, clamp to [lo, hi] and the type's range."""
    shape = [1] * acc.ndim
    shape[axis] = -1
    b = np.asarray(bias, np.int64).reshape(shape) if np.ndim(bias) else np.int64(bias)
    m = np.asarray(mult, np.int64).reshape(shape) if np.ndim(mult) else np.int64(mult)
    s = np.asarray(shift, np.int64).reshape(shape) if np.ndim(shift) else np.int64(shift)
    q = _rne_shift((acc.astype(np.int64) + b) * m, s) + zp
    return np.clip(np.clip(q, lo, hi), -qmax - 1, qmax)


def _conv_i(x, w, stride, pads, dil, groups) -> np.ndarray:
    """Exact int64 NCHW convolution. Sums of int8/int16 products stay far below 2**53 here, so
    float64 arithmetic is exact; larger reductions fall back to int64."""
    co, cig, kh, kw = w.shape
    bound = float(np.abs(x).max(initial=0)) * float(np.abs(w).max(initial=0)) * cig * kh * kw
    dtype = np.float64 if bound < 2.0**53 else np.int64
    return _conv_acc(x, w, stride, pads, dil, groups, dtype).astype(np.int64)


def _wrap32(a: np.ndarray) -> np.ndarray:
    return ((a + 2**31) % 2**32) - 2**31


def _accumulator(acc: np.ndarray, q: dict) -> np.ndarray:
    """What the MAC array hands the epilogue: an int8 layer's 32-bit accumulator (wrapping), an
    int16 layer's exact sum at its position acc_pos <= 0: rne(acc * 2**acc_pos), saturated."""
    if q.get("dtype") != "int16":
        return _wrap32(acc)
    return np.clip(_rne_shift(acc, -int(q.get("acc_pos", 0))), -2**31, 2**31 - 1)


def quantize_input(x: np.ndarray, inv_scale: float, qmax: int, zp: int = 0) -> np.ndarray:
    """rne(x * float32(inv_scale)) + zp, saturated; NaN counts as 0."""
    t = np.nan_to_num(np.rint(x.astype(np.float64) * float(np.float32(inv_scale))), nan=0.0) + zp
    return np.clip(t, -qmax - 1, qmax).astype(np.int64)


def _float_requant(t: np.ndarray, q: dict, axis: int = 1) -> np.ndarray:
    """ONNX Runtime's requantization of an int32 sum (MlasRequantizeOutput): float32(t) times the
    float32 per-channel scale, rounded to nearest even, plus the zero point, clamped."""
    shape = [1] * t.ndim
    shape[axis] = -1
    f = np.clip(t, -2**31, 2**31 - 1).astype(np.float32) * q["fscale"].astype(np.float32).reshape(shape)
    y = np.rint(f.astype(np.float32).astype(np.float64)) + q.get("zp", 0)
    qmax = q["qmax"]
    return np.clip(np.clip(y, q["lo"], q["hi"]), -qmax - 1, qmax).astype(np.int64)


def _fma32(x: np.ndarray, y: float, z) -> np.ndarray:
    """float32(x * y + z) with one rounding. x holds small integers, y and z are float32: the exact
    value fits the 64-bit significand of x86's extended long double, whose conversion to float32
    rounds once. (The simulator uses float64 with an error term instead: two methods, one answer.)"""
    if np.finfo(np.longdouble).nmant < 63:   # pragma: no cover - platforms without extended precision
        from fractions import Fraction

        flat = [np.float32(float(Fraction(float(a)) * Fraction(float(y)) + Fraction(float(b))))
                for a, b in zip(np.ravel(x), np.ravel(np.broadcast_to(z, np.shape(x))))]
        return np.array(flat, np.float32).reshape(np.shape(x))
    ld = np.longdouble
    return (x.astype(ld) * ld(np.float32(y)) + np.asarray(z, np.float32).astype(ld)).astype(np.float32)


def _ort_add(a: np.ndarray, b: np.ndarray, q: dict) -> np.ndarray:
    """ONNX Runtime's quantized add on raw values: c = fma(a, rA, fma(b, rB, F)), rounded to nearest
    even, saturated to the model's type (raw = device value + its uint8 offset)."""
    ra, rb, fixed = q["fma"]
    oa, ob, oc = q["offsets"]
    t = _fma32(b + ob, rb, np.float32(fixed))
    c = _fma32(a + oa, ra, t)
    y = np.rint(c.astype(np.float64)) - oc
    qmax = q["qmax"]
    return np.clip(np.clip(y, -qmax - 1, qmax), q["lo"], q["hi"]).astype(np.int64)


def _unary_float(op: str, x: np.ndarray, q: dict) -> np.ndarray:
    """sigmoid / hardswish as the vector unit computes them: dequantize, float32 steps in a fixed
    order, quantize with the output scale (hardswish folds its /6 into that scale)."""
    qmax = q["qmax"]
    if op == "sigmoid":
        f = dequantize(x, -q["in_scale"], q["in_zp"])            # -x, exactly
        e = (np.exp(f).astype(np.float32) + np.float32(1)).astype(np.float32)
        y = (np.float32(1) / e).astype(np.float32)
    elif op == "hardsigmoid":       # relu6(x + 3), its / 6 in the quantize scale
        f = dequantize(x, q["in_scale"], q["in_zp"])
        y = np.minimum(np.maximum((f + np.float32(3)).astype(np.float32), np.float32(0)), np.float32(6))
    else:
        f = dequantize(x, q["in_scale"], q["in_zp"])
        t = np.minimum(np.maximum((f + np.float32(3)).astype(np.float32), np.float32(0)), np.float32(6))
        y = (f * t).astype(np.float32)
    return quantize_input(y, q["inv_scale"], qmax, q["zp"])


def run_quant(g: Graph, x: np.ndarray) -> dict[str, np.ndarray]:
    """Every node's integer output (int64 arrays, NCHW), and the float32 graph output under
    the key '__output__'."""
    v: dict[str, np.ndarray] = {}
    for n in g.nodes:
        a = [v[i] for i in n.inputs]
        q = n.q
        qmax = q.get("qmax", 127)
        zp, zin = q.get("zp", 0), q.get("in_zp", 0)
        if n.op == "input" and "div_scale" in q:    # ONNX QuantizeLinear divides by the scale
            t = np.rint((x.astype(np.float32) / np.float32(q["div_scale"])).astype(np.float64))
            y = np.clip(np.nan_to_num(t, nan=0.0) + zp, -qmax - 1, qmax).astype(np.int64)
        elif n.op == "input":
            y = quantize_input(x, q["inv_scale"], qmax, zp)
        elif n.op == "conv2d":
            xin, pads = (a[0] - zin), n.attrs["padding"]
            if "pad_fill" in q:
                xin, pads = pad_channels(xin, pads, q["pad_fill"])
            acc = _accumulator(_conv_i(xin, q["weight"], n.attrs["stride"], pads, n.attrs["dilation"],
                                       n.attrs["groups"]), q)
            if n.attrs.get("residual"):   # shortcut rescaled into the accumulator's scale, per channel
                sc = requant(a[1] - q.get("res_zp", 0), 0, q["res_mult"], q["res_shift"], -2**31, 2**31 - 1, 2**31 - 1)
                acc = np.clip(acc + sc, -2**31, 2**31 - 1)
            if "fscale" in q:
                y = _float_requant(acc + q["bias"].astype(np.int64).reshape(1, -1, 1, 1), q)
            else:
                y = requant(acc, q["bias"], q["mult"], q["shift"], q["lo"], q["hi"], qmax, zp=zp)
            if "pool" in n.attrs:
                kh, kw = n.attrs["pool"]
                y = np.lib.stride_tricks.sliding_window_view(y, (kh, kw), axis=(2, 3))[:, :, ::kh, ::kw].max(axis=(-2, -1))
        elif n.op == "linear":
            acc = _accumulator((a[0].astype(np.int64) - zin) @ q["weight"].astype(np.int64).T, q)
            if "fscale" in q:
                y = _float_requant(acc + q["bias"].astype(np.int64)[None, :], q)
            else:
                y = requant(acc, q["bias"], q["mult"], q["shift"], q["lo"], q["hi"], qmax, zp=zp)
        elif n.op == "relu":
            y = np.maximum(a[0], zp)
        elif n.op == "relu6":
            y = np.clip(a[0], zp, q["hi"])
        elif n.op == "requant":
            y = requant(a[0] - zin, 0, q["mult"], q["shift"], q["lo"], q["hi"], qmax, zp=zp)
        elif n.op in ("sigmoid", "hardswish", "hardsigmoid"):
            y = _unary_float(n.op, a[0], q)
        elif n.op == "leaky_relu":     # the negative side scaled by the slope, in the same scale
            neg = requant(a[0] - zin, 0, q["mult"], q["shift"], -qmax - 1, qmax, qmax, zp=zp)
            y = np.maximum(a[0], neg)
        elif n.op == "upsample":
            y = a[0].repeat(n.attrs["scale"], axis=2).repeat(n.attrs["scale"], axis=3)
        elif n.op == "mul":
            y = requant(a[0] * a[1], 0, q["mult"], q["shift"], q["lo"], q["hi"], qmax, zp=zp)
        elif n.op == "maxpool":
            pt, pb, pl, pr = n.attrs["padding"]
            xp = np.pad(a[0], ((0, 0), (0, 0), (pt, pb), (pl, pr)), constant_values=-2**40)
            win = np.lib.stride_tricks.sliding_window_view(xp, n.attrs["kernel"], axis=(2, 3))
            y = win[:, :, ::n.attrs["stride"][0], ::n.attrs["stride"][1]].max(axis=(-2, -1))
        elif n.op in ("avgpool", "gap"):
            if n.op == "gap":
                s = (a[0] - zin).sum(axis=(2, 3), keepdims=True)
            else:
                pt, pb, pl, pr = n.attrs["padding"]
                xp = np.pad(a[0] - zin, ((0, 0), (0, 0), (pt, pb), (pl, pr)))
                win = np.lib.stride_tricks.sliding_window_view(xp, n.attrs["kernel"], axis=(2, 3))
                s = win[:, :, ::n.attrs["stride"][0], ::n.attrs["stride"][1]].sum(axis=(-2, -1))
            if "fscale" in q:
                y = _float_requant(s, q)
            else:
                y = requant(np.clip(s, -2**31, 2**31 - 1), 0, q["mult"], q["shift"], q["lo"], q["hi"], qmax, zp=zp)
        elif n.op == "add" and "fma" in q:
            y = _ort_add(a[0], a[1], q)
        elif n.op == "add":
            t = np.clip((a[0] - q.get("zpa", 0)) * q["ka"], -2**31, 2**31 - 1) + \
                np.clip((a[1] - q.get("zpb", 0)) * q["kb"], -2**31, 2**31 - 1)
            y = requant(np.clip(t, -2**31, 2**31 - 1), 0, q["mult"], q["shift"], q["lo"], q["hi"], qmax, zp=zp)
        elif n.op == "concat":
            y = np.concatenate(a, axis=1)
        elif n.op in ("flatten", "reshape"):
            y = a[0].reshape(a[0].shape[0], -1)
        elif n.op == "cpu":
            y = cpu_node_quant(n, a, [g.node(i).q for i in n.inputs])
        elif n.op in ("softmax", "log_softmax"):
            f = dequantize(a[0], q["in_scale"], zin)
            m = f.max(axis=1, keepdims=True)
            z = (f - m).astype(np.float32)
            e = np.exp(z).astype(np.float32)
            tot = _seq_sum(e)
            y = (e / tot).astype(np.float32) if n.op == "softmax" else (z - np.log(tot).astype(np.float32))
        else:  # pragma: no cover
            raise NotImplementedError(n.op)
        v[n.name] = y
    out = v[g.output]
    oq = g.node(g.output).q
    v["__output__"] = out.astype(np.float32) if g.meta.get("output_float") else \
        dequantize(out, oq["scale"], oq.get("zp", 0))
    for name in g.extra_outputs:
        oq = g.node(name).q
        v[f"__output__{name}"] = dequantize(v[name], oq["scale"], oq.get("zp", 0))
    return v


def program_outputs(g: Graph, v: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """run_quant's float outputs under the names the compiled program gives them
    (graph.output_names: 'output', or each output node's name when there are several)."""
    arrays = [v["__output__"]] + [v[f"__output__{o}"] for o in g.extra_outputs]
    return dict(zip(output_names(g), arrays))


def dequantize(q: np.ndarray, scale: float, zp: int = 0) -> np.ndarray:
    """float32((q - zp) * float32(scale)), the product exact in float64 and rounded once."""
    return ((q.astype(np.int64) - zp).astype(np.float64) * float(np.float32(scale))).astype(np.float32)


def _seq_sum(e: np.ndarray) -> np.ndarray:
    """Row sums of a float32 [N, C] array added left to right in float32."""
    acc = e[:, 0].copy()
    for j in range(1, e.shape[1]):
        acc = (acc + e[:, j]).astype(np.float32)
    return acc[:, None]


def host_call(n, arrays) -> np.ndarray:
    """Run a `cpu` node's torch function on float32 numpy inputs."""
    import torch

    with torch.no_grad():
        out = n.attrs["call"](*[torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32)) for a in arrays])
    return out.detach().float().numpy()


def cpu_node_quant(n, ints, in_qs) -> np.ndarray:
    """A host op in the quantized pipeline: dequantize its inputs, run it in float, quantize the
    result with its calibrated scale (rne, saturate)."""
    floats = [dequantize(v, q["scale"], q.get("zp", 0)) for v, q in zip(ints, in_qs)]
    y = host_call(n, floats).astype(np.float64)
    qmax = n.q["qmax"]
    return np.clip(np.rint(y / n.q["scale"]), -qmax - 1, qmax).astype(np.int64)
