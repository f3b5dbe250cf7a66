"""Bit-exact arithmetic building blocks shared by the instruction semantics (docs/numerics.md).

Integer conv and matmul run through float BLAS: when every partial sum of the int8/int16 products
is an integer of at most 2**24 (bounded by max|x| * max|w| * reduction length), float32 holds it
exactly; below 2**53 float64 does; reductions long enough to break that bound fall back to int64.
The summation order then cannot matter, so the result is the exact integer whatever BLAS does.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

NP_DTYPES = {"i8": np.int8, "u8": np.uint8, "i16": np.int16, "i32": np.int32,
             "f16": np.float16, "f32": np.float32}
INT_DTYPES = ("i8", "u8", "i16", "i32")
FLOAT_DTYPES = ("f16", "f32")
EXACT_F64 = 2.0**53
EXACT_F32 = 2.0**24
_INT_RANGES = {dt: (int(np.iinfo(NP_DTYPES[dt]).min), int(np.iinfo(NP_DTYPES[dt]).max)) for dt in INT_DTYPES}


def int_range(dt: str) -> tuple[int, int]:
    return _INT_RANGES[dt]


def abs_max(a: np.ndarray) -> int:
    """max |a| as a Python int (np.abs would wrap -128 of an int8 to -128)."""
    return max(-int(a.min()), int(a.max())) if a.size else 0


_TYPE_MAX = {np.dtype(NP_DTYPES[dt]): max(-lo, hi) for dt, (lo, hi) in _INT_RANGES.items()}


def type_max(a: np.ndarray) -> int:
    """The largest |value| an integer array's dtype can hold (128 for int8)."""
    m = _TYPE_MAX.get(a.dtype)
    if m is None:
        info = np.iinfo(a.dtype)
        m = max(-int(info.min), int(info.max))
    return m


def exact_float(bound: float):
    """The float type whose BLAS sums are exact when no partial sum exceeds `bound`; None: int64."""
    return np.float32 if bound <= EXACT_F32 else np.float64 if bound < EXACT_F64 else None


def saturate(x: np.ndarray, dt: str) -> np.ndarray:
    """Clip an int64/float64 array into `dt`'s range and convert (no wraparound)."""
    lo, hi = int_range(dt)
    return np.clip(x, lo, hi).astype(NP_DTYPES[dt])


def wrap_int32(x: np.ndarray) -> np.ndarray:
    """The accumulator is 32-bit two's complement: exact sums wrap modulo 2**32."""
    return x.astype(np.int64).astype(np.int32) if x.dtype != np.int64 else x.astype(np.int32)


def rne_shift(x: np.ndarray, shift: np.ndarray | int) -> np.ndarray:
    """x / 2**shift rounded half to even, for int64 x and shift in [0, 62]."""
    x = np.asarray(x, dtype=np.int64)
    s = np.asarray(shift, dtype=np.int64)
    q = x >> s                                   # floor division
    rem = x - (q << s)                           # in [0, 2**s)
    half = np.where(s > 0, np.int64(1) << np.maximum(s - 1, 0), 0)
    up = (rem > half) | ((rem == half) & (s > 0) & ((q & 1) == 1))
    return q + up.astype(np.int64)


def round_float_to_int(x: np.ndarray, dt: str) -> np.ndarray:
    """Float to integer: round half to even, saturate, NaN -> 0."""
    x = np.nan_to_num(np.rint(np.asarray(x, dtype=np.float64)), nan=0.0, posinf=np.inf, neginf=-np.inf)
    lo, hi = int_range(dt)
    return np.clip(x, lo, hi).astype(NP_DTYPES[dt])


def exact_matmul(a: np.ndarray, b_t: np.ndarray) -> np.ndarray:
    """Integer a[m, k] @ b_t[k, n] as int64, exact; float BLAS when that is exact."""
    ftype = exact_float(float(abs_max(a)) * float(abs_max(b_t)) * max(a.shape[1], 1))
    if ftype is not None:
        return (a.astype(ftype) @ b_t.astype(ftype)).astype(np.int64)
    return a.astype(np.int64) @ b_t.astype(np.int64)


def rne_shift_small(x: np.ndarray, shift: np.ndarray) -> np.ndarray:
    """rne_shift of an int64 array known to stay below 2**62 in magnitude, with a per-channel
    shift in [0, 62] along its last axis, in place and in fewer passes: for s >= 1,
    rne(x / 2**s) = (x + 2**(s-1) - 1 + (floor(x / 2**s) & 1)) >> s (a remainder above half, or
    at half with an odd quotient, carries into the next multiple); s = 0 leaves x alone."""
    pos = shift > 0
    off = np.where(pos, (np.int64(1) << np.maximum(shift - 1, 0)) - 1, 0)
    parity = (x >> shift) & pos.astype(np.int64)
    x += off
    x += parity
    x >>= shift
    return x


def out_cast(acc: np.ndarray, odt: str, pos: int, dt: str = "i8") -> np.ndarray:
    """Store an exact int64 accumulator as the instruction's output type (docs/numerics.md).

    i8 inputs: the accumulator is 32 bits (wraps); f16/f32 store acc * 2**pos rounded once.
    i16 inputs: the sum stays exact (Cambricon's int16 conv writes float with a fix position,
    `__mlvm_stream_conv_f32_fix16_fix16`), so f16/f32 store the exact sum times 2**pos rounded once
    and i32 stores it at position pos: rne(acc * 2**pos), saturated."""
    if dt != "i16":
        if odt == "i32":
            return acc.astype(np.int32)
        wrapped = acc.astype(np.int32).astype(np.float64)   # the int8 accumulator is 32 bits
        return (wrapped * (2.0**pos)).astype(NP_DTYPES[odt])
    if odt == "i32":
        a = acc.astype(np.int64)
        v = rne_shift(a, -pos) if pos < 0 else np.clip(a, -2**40, 2**40) << min(pos, 22)
        return saturate(v, "i32")
    # |acc| < 2**53 for every reduction the fields can encode with int16 products below 2**30
    # times k < 2**20 (matmul) or realistic conv windows, so the float64 product is exact
    return (acc.astype(np.float64) * (2.0**pos)).astype(NP_DTYPES[odt])


def conv_out_size(size: int, k: int, stride: int, pad_a: int, pad_b: int, dil: int) -> int:
    eff = dil * (k - 1) + 1
    return (size + pad_a + pad_b - eff) // stride + 1


def conv_nhwc(x: np.ndarray, w: np.ndarray, sh: int, sw: int, pads: tuple[int, int, int, int],
              dh: int, dw: int, groups: int) -> np.ndarray:
    """Exact int64 NHWC conv: x [n, hi, wi, ci] ints, w [co, kh, kw, ci/groups]."""
    sums, _bound = conv_sums(x, w, sh, sw, pads, dh, dw, groups)
    return sums if sums.dtype == np.int64 else sums.astype(np.int64)


def conv_sums(x: np.ndarray, w: np.ndarray, sh: int, sw: int, pads: tuple[int, int, int, int],
              dh: int, dw: int, groups: int) -> tuple[np.ndarray, float]:
    """The conv's exact integer sums [n, ho, wo, co] in whatever type computed them exactly
    (float32, float64 or int64: see gemm_exact), and the bound on their magnitude."""
    n, hi, wi, ci = x.shape
    co, kh, kw, cig = w.shape
    ho = conv_out_size(hi, kh, sh, pads[0], pads[1], dh)
    wo = conv_out_size(wi, kw, sw, pads[2], pads[3], dw)
    if groups == 1:
        g = conv_gemm(x, w, sh, sw, pads, dh, dw)
        return gemm_exact(g.rows(), g.weights, g.each, g.w_max).reshape(n, ho, wo, co), g.bound
    each, _w_max = product_bound(x, w)
    bound = each * cig * kh * kw
    cog = co // groups
    xp = _padded(x, pads)
    ftype = exact_float(bound) or np.int64
    xp = xp.astype(ftype, copy=False)
    wf = w.astype(ftype)
    acc = np.zeros((n * ho * wo, co), dtype=ftype)
    for i in range(kh):
        for j in range(kw):
            r0, c0 = i * dh, j * dw
            tap = xp[:, r0:r0 + sh * (ho - 1) + 1:sh, c0:c0 + sw * (wo - 1) + 1:sw, :]
            tap = tap.reshape(n * ho * wo, ci)
            if cig == 1 and cog == 1:
                acc += tap * wf[:, i, j, 0]
            else:
                for g in range(groups):
                    acc[:, g * cog:(g + 1) * cog] += tap[:, g * cig:(g + 1) * cig] @ wf[g * cog:(g + 1) * cog, i, j, :].T
    return acc.reshape(n, ho, wo, co), bound


@dataclass(slots=True, eq=False)
class ConvGemm:
    """A groups=1 conv as one product: out[m, co] = rows() @ weights.T (m = n * ho * wo), exactly
    by gemm_exact(rows, weights, each, w_max); |out| <= bound. Every tap's window side by side
    (im2col), one product over kh * kw * ci gives the same exact sums as tap by tap."""
    x: np.ndarray           # [n, hi, wi, ci]
    window: tuple           # (kh, kw, sh, sw, pads, dh, dw, ho, wo)
    weights: np.ndarray     # [co, kh * kw * ci], a view of w
    each: float             # bound on one product
    w_max: int              # bound on |weights|
    bound: float
    stage: type             # the rows' type: float32 when it holds every operand and the sums
    # stay below 2**53 (float64's exact range, which gemm_exact then needs), else int64
    pad: np.ndarray | None = None   # a reusable padded-input buffer, its border zero (see rows)

    @property
    def m(self) -> int:
        return self.x.shape[0] * self.window[7] * self.window[8]

    def rows(self, out: np.ndarray | None = None) -> np.ndarray:
        """The im2col rows [m, kh * kw * ci] as `stage`, written into `out` when given (a fresh
        array otherwise: never a view of x)."""
        kh, kw, sh, sw, pads, dh, dw, ho, wo = self.window
        x = self.x
        n, ci = x.shape[0], x.shape[3]
        if out is None:
            out = np.empty((self.m, kh * kw * ci), self.stage)
        if kh == kw == sh == sw == 1 and not any(pads):
            np.copyto(out, x.reshape(-1, ci), casting="unsafe")
        else:
            win = _im2col(_padded(x, pads, self.pad), kh, kw, sh, sw, dh, dw, ho, wo)
            np.copyto(out.reshape(n, ho, wo, kh, kw, ci), win, casting="unsafe")
        return out


def conv_gemm(x: np.ndarray, w: np.ndarray, sh: int, sw: int, pads: tuple[int, int, int, int],
              dh: int, dw: int) -> ConvGemm:
    """x [n, hi, wi, ci] ints, w [co, kh, kw, ci] as a GEMM (its rows made when asked for)."""
    n, hi, wi, ci = x.shape
    co, kh, kw, _ = w.shape
    ho = conv_out_size(hi, kh, sh, pads[0], pads[1], dh)
    wo = conv_out_size(wi, kw, sw, pads[2], pads[3], dw)
    return conv_gemm_planned(x, w, (kh, kw, sh, sw, pads, dh, dw, ho, wo))


def conv_gemm_planned(x: np.ndarray, w: np.ndarray, window: tuple,
                      bounds: tuple[float, int, float] | None = None, pad: np.ndarray | None = None) -> ConvGemm:
    """conv_gemm with its window (ConvGemm.window) worked out already, and when the caller knows
    them (they depend on the types only: int8), the bounds (each, w_max, bound); `pad`: a buffer of
    the padded input's shape whose border is zero, reused by rows() instead of a fresh one."""
    co = w.shape[0]
    if bounds is None:
        each, w_max = product_bound(x, w)
        bounds = (each, w_max, each * w.shape[1] * w.shape[2] * w.shape[3])
    each, w_max, bound = bounds
    return ConvGemm(x, window, w.reshape(co, -1), each, w_max, bound,
                    np.float32 if bound < EXACT_F64 else np.int64, pad)


def product_bound(x: np.ndarray, w: np.ndarray) -> tuple[float, int]:
    """(bound on one product |x * w|, bound on |w|): int8's from the types alone (its sums stay
    far below 2**53, and gemm_exact's row-sum bound is what keeps long reductions in float32);
    int16's from the values, which may be smaller than their type allows."""
    co, kh, kw, cig = w.shape
    w_max = type_max(w)
    each = float(type_max(x)) * float(w_max)
    if each * cig * kh * kw > EXACT_F32 and x.dtype != np.int8:
        w_max = abs_max(w)
        each = float(abs_max(x)) * float(w_max)
    return each, w_max


def _padded(x: np.ndarray, pads: tuple[int, int, int, int], buf: np.ndarray | None = None) -> np.ndarray:
    """x [n, h, w, c] with zero rows and columns around it (x itself when there are none), in
    `buf` when given (its border zero: only the interior is written)."""
    pt, pb, pl, pr = pads
    if not any(pads):
        return np.ascontiguousarray(x)
    n, hi, wi, ci = x.shape
    xp = np.zeros((n, hi + pt + pb, wi + pl + pr, ci), dtype=x.dtype) if buf is None else buf
    xp[:, pt:pt + hi, pl:pl + wi, :] = x
    return xp


def _im2col(xp: np.ndarray, kh: int, kw: int, sh: int, sw: int, dh: int, dw: int, ho: int, wo: int) -> np.ndarray:
    """The [n, ho, wo, kh, kw, c] view of a contiguous padded input's conv windows: one strided
    view, so the caller's single astype gathers and converts every tap in one pass (the ndarray
    constructor on the buffer, quicker than as_strided)."""
    s0, s1, s2, s3 = xp.strides
    return np.ndarray((xp.shape[0], ho, wo, kh, kw, xp.shape[3]), xp.dtype, xp, 0,
                      (s0, sh * s1, sw * s2, dh * s1, dw * s2, s3))


MIN_SLICE = 64      # below this many columns per float32 slice, one float64 product is faster


def gemm_exact(a: np.ndarray, b: np.ndarray, each: float, b_max: int | None = None) -> np.ndarray:
    """a [m, k] @ b [n, k].T of integers whose products are at most `each` in magnitude, exactly:
    in float32 when every partial sum stays within 2**24; else in slices of k that do, each slice
    in float32 and the slices summed in float64 (exact below 2**53); else int64.

    Every partial sum of out[i, j], in whatever order BLAS adds, is at most
    sum_k |a[i, k]| * |b[j, k]| <= (row sum of |a[i]|) * max|b|: real activations are far from
    their type's extremes, so this data bound keeps most long reductions in one float32 product.
    It costs one pass over a, the small operand of a tile's product (m is a few output rows).
    `b_max` is max|b| when the caller knows it."""
    k = a.shape[1]
    bound = each * k
    if bound >= EXACT_F64:
        return a.astype(np.int64, copy=False) @ b.astype(np.int64).T
    af, bf = a.astype(np.float32, copy=False), b.astype(np.float32, copy=False)
    if bound > EXACT_F32 and _rows_within_f32(af, abs_max(b) if b_max is None else b_max):
        bound = EXACT_F32
    if bound <= EXACT_F32:
        return af @ bf.T
    kc = int(EXACT_F32 // each) if each >= 1 else k
    if kc < MIN_SLICE:
        return a.astype(np.float64) @ b.astype(np.float64).T
    out = (af[:, :kc] @ bf[:, :kc].T).astype(np.float64)
    for k0 in range(kc, k, kc):
        out += af[:, k0:k0 + kc] @ bf[:, k0:k0 + kc].T
    return out


def _rows_within_f32(af: np.ndarray, b_max: int) -> bool:
    """Whether (largest row sum of |af|) * b_max <= 2**24, af float32 integers. The row sums are
    taken in float32, in any order (einsum's row sums, 1.4-3x quicker than sum(axis=1) on stacks
    of 28-2,000 rows): a computed sum of non-negative terms is at least min(true sum, 2**24)
    (rounding is monotone and 2**24 is representable), so one below 2**24 is the exact sum."""
    if af.size == 0:
        return True
    # conv rows are mostly ReLU outputs: when none is negative |af| is af, and the row sums need
    # no |af| copy (one more pass over the stack and a fresh buffer of its size: 0.17 -> 0.1 s
    # over ResNet-50 b16's 1,430 checks)
    l1 = float(np.einsum("ij->i", af if af.min() >= 0 else np.abs(af)).max())
    return l1 < EXACT_F32 and l1 * b_max <= EXACT_F32


def pool_windows(x: np.ndarray, kh: int, kw: int, sh: int, sw: int, pads, fill) -> np.ndarray:
    """[n, ho, wo, c, kh, kw] view of the padded input's pooling windows."""
    n, hi, wi, c = x.shape
    pt, pb, pl, pr = pads
    xp = np.full((n, hi + pt + pb, wi + pl + pr, c), fill, dtype=x.dtype)
    xp[:, pt:pt + hi, pl:pl + wi, :] = x
    win = np.lib.stride_tricks.sliding_window_view(xp, (kh, kw), axis=(1, 2))
    return win[:, ::sh, ::sw]
