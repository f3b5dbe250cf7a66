"""Bit-exact arithmetic building blocks shared by the instruction semantics (docs/numerics.md).

Integer conv and matmul run through float64 BLAS: every partial sum of int8/int16 products is an
integer below 2**53, so the float result is the exact integer. Reductions long enough to break
that bound fall back to int64.
"""
from __future__ import annotations

import numpy as np

NP_DTYPES = {"i8": np.int8, "u8": np.uint8, "i16": np.int16, "i32": np.int32,
             "f16": np.float16, "f32": np.float32}
INT_DTYPES = ("i8", "u8", "i16", "i32")
FLOAT_DTYPES = ("f16", "f32")
EXACT_F64 = 2.0**53


def int_range(dt: str) -> tuple[int, int]:
    info = np.iinfo(NP_DTYPES[dt])
    return int(info.min), int(info.max)


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
    """Integer a[m, k] @ b_t[k, n] as int64, exact; float64 BLAS when that is exact."""
    k = a.shape[1]
    amax = float(np.abs(a).max(initial=0))
    bmax = float(np.abs(b_t).max(initial=0))
    if amax * bmax * max(k, 1) < EXACT_F64:
        return (a.astype(np.float64) @ b_t.astype(np.float64)).astype(np.int64)
    return a.astype(np.int64) @ b_t.astype(np.int64)


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
    n, hi, wi, ci = x.shape
    co, kh, kw, cig = w.shape
    pt, pb, pl, pr = pads
    ho = conv_out_size(hi, kh, sh, pt, pb, dh)
    wo = conv_out_size(wi, kw, sw, pl, pr, dw)
    cog = co // groups
    big = float(np.abs(x).max(initial=0)) * float(np.abs(w).max(initial=0)) * cig * kh * kw >= EXACT_F64
    ftype = np.int64 if big else np.float64
    if kh == kw == sh == sw == 1 and groups == 1 and not any(pads):
        return (x.reshape(-1, ci).astype(ftype) @ w.reshape(co, ci).T.astype(ftype)).astype(np.int64).reshape(n, ho, wo, co)
    xp = np.zeros((n, hi + pt + pb, wi + pl + pr, ci), dtype=ftype)
    xp[:, pt:pt + hi, pl:pl + wi, :] = x
    wf = w.astype(ftype)
    acc = np.zeros((n * ho * wo, co), dtype=ftype)
    for i in range(kh):
        for j in range(kw):
            r0, c0 = i * dh, j * dw
            tap = xp[:, r0:r0 + sh * (ho - 1) + 1:sh, c0:c0 + sw * (wo - 1) + 1:sw, :]
            tap = tap.reshape(n * ho * wo, ci)
            if groups == 1:
                acc += tap @ wf[:, i, j, :].T
            elif cig == 1 and cog == 1:
                acc += tap * wf[:, i, j, 0]
            else:
                for g in range(groups):
                    acc[:, g * cog:(g + 1) * cog] += tap[:, g * cig:(g + 1) * cig] @ wf[g * cog:(g + 1) * cog, i, j, :].T
    return acc.astype(np.int64).reshape(n, ho, wo, co)


def pool_windows(x: np.ndarray, kh: int, kw: int, sh: int, sw: int, pads, fill) -> np.ndarray:
    """[n, ho, wo, c, kh, kw] view of the padded input's pooling windows."""
    n, hi, wi, c = x.shape
    pt, pb, pl, pr = pads
    xp = np.full((n, hi + pt + pb, wi + pl + pr, c), fill, dtype=x.dtype)
    xp[:, pt:pt + hi, pl:pl + wi, :] = x
    win = np.lib.stride_tricks.sliding_window_view(xp, (kh, kw), axis=(1, 2))
    return win[:, ::sh, ::sw]
