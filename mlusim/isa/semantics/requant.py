"""Requantization arithmetic (docs/numerics.md, `vrequant`): rne((acc + bias) * mult / 2**shift)
+ zp, clamped, saturated; shared by vrequant, vaddrq and vrqadd.

ResNet-50 b16 runs ~39,000 of these on tiles of 2,000-14,000 values, so the cost is the number
of numpy calls per tile: the per-channel parameters are decoded once per distinct block, and the
arithmetic stays in float64 (exact there, see `scaled`) from the int32 input to the store.

Each pass is a same-type ufunc on a float64 block: numpy runs a mixed-type op (int8 or int32 or
float32 with float64) through its casting buffers, 2-3x the time of a conversion then the plain
loop over ResNet-50's 14k values.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from mlusim.isa import numerics as nx

I32 = nx.int_range("i32")


@dataclass(frozen=True)
class RequantParams:
    """A [c, 3] int32 (bias, mult, shift) block, decoded: int64 columns with shift clamped to
    [0, 62], and float64 bias and scale = mult * 2**-shift (exact: a 31-bit integer times a power
    of two)."""
    bias: np.ndarray
    mult: np.ndarray
    shift: np.ndarray
    bias_f: np.ndarray
    scale: np.ndarray
    bias_max: int
    mult_max: int
    scale_max: float


@lru_cache(maxsize=4096)
def _decode(raw: bytes) -> RequantParams:
    p = np.frombuffer(raw, np.int32).reshape(-1, 3).astype(np.int64)
    bias, mult = p[:, 0].copy(), p[:, 1].copy()
    shift = np.minimum(np.maximum(p[:, 2], 0), 62)
    scale = np.ldexp(mult.astype(np.float64), (-shift).astype(np.int32))
    arrays = (bias, mult, shift, bias.astype(np.float64), scale)
    for a in arrays:
        a.flags.writeable = False          # shared by every tile with these parameters
    scale_max = float(np.abs(scale).max()) if scale.size else 0.0
    return RequantParams(*arrays, nx.abs_max(bias), nx.abs_max(mult), scale_max)


def decode(params: np.ndarray) -> RequantParams:
    """The decoded form of a [c, 3] int32 parameter block, by its bytes (a layer's tiles share one)."""
    return _decode(params.tobytes())


def scaled(acc: np.ndarray, rp: RequantParams, acc_max: int | None = None, own: bool = False) -> np.ndarray | None:
    """rne((acc + bias) * mult / 2**shift) as float64 [..., c], or None when that is not exact.

    acc + bias is an integer below 2**34, exact in float64; while |acc + bias| * |mult| < 2**53
    the product with scale is the exact quotient (its integer numerator fits the significand), and
    np.rint rounds it half to even as rne does. The check uses `acc_max` (a bound on |acc| the
    caller knows) or acc's type when that suffices (an int8 shortcut), else the sums themselves.
    `own`: acc is the caller's scratch, worked on in place when it is C-contiguous float64 integers
    below 2**52 in magnitude (returned; on None it is left as it came)."""
    if own and acc.dtype == np.float64 and acc.flags.c_contiguous:
        t = acc
    else:
        t = acc.astype(np.float64, order="C")           # exact: integers below 2**53
    if rp.bias_max:                                     # adding zeros would change nothing
        t += rp.bias_f
    top = input_max(acc) if acc_max is None else acc_max
    if (top + rp.bias_max) * rp.mult_max >= nx.EXACT_F64 and t.size \
            and int(max(-t.min(), t.max())) * rp.mult_max >= nx.EXACT_F64:
        if t is acc and rp.bias_max:
            t -= rp.bias_f                              # acc as it came (exact: integers)
        return None
    t *= rp.scale
    np.rint(t, out=t)
    return t


def input_max(acc: np.ndarray) -> int:
    """The largest |value| acc's type allows (2**53 for float64 integers: no help)."""
    return nx.type_max(acc) if acc.dtype.kind in "iu" else 1 << 53


def within_i32(src: np.ndarray, rp: RequantParams) -> bool:
    """Whether every rne((src + bias) * scale) fits int32 whatever src's values, by its type."""
    return (input_max(src) + rp.bias_max) * rp.scale_max < I32[1]


def clamp(t: np.ndarray, low: int, high: int) -> np.ndarray:
    """t clamped to [low, high] in place (low <= high): one np.clip pass, 4x quicker than
    np.maximum then np.minimum with scalar bounds (their NaN-propagating loops are slow; 22 us
    against 6 us on 14k float64 values)."""
    return np.clip(t, low, high, out=t)


@lru_cache(maxsize=1024)
def clamp_bounds(lo: int, hi: int, odt: str) -> tuple[int, int]:
    """(L, H) with min(max(min(max(q, lo), hi), dlo), dhi) == min(max(q, L), H) for every q, where
    [dlo, dhi] is odt's range: a clamp of a clamp is a clamp, to the images of -inf and +inf."""
    dlo, dhi = nx.int_range(odt)

    def f(q: int) -> int:
        return min(max(min(max(q, lo), hi), dlo), dhi)

    big = 1 << 80
    return f(-big), f(big)


def store_values(t: np.ndarray, zp: int, lo: int, hi: int, odt: str) -> np.ndarray:
    """Rounded float64 values t -> clamp(t + zp, lo, hi) saturated to odt, in place in t (float64
    integers within odt's range, ready for an exact cast)."""
    low, high = clamp_bounds(lo, hi, odt)
    clamp(t, low - zp, high - zp)                # = clamp(t + zp) - zp, exact for integers
    if zp:
        t += zp
    return t


def requant_int64(acc: np.ndarray, rp: RequantParams, zp: int, lo: int, hi: int, odt: str) -> np.ndarray:
    """requant in int64, for sums too large for float64's exact range."""
    # (acc + bias) * mult stays below 2**62 for every real layer: then the product cannot wrap and
    # the rounding shift can add its half without overflow, in place (same values, fewer passes)
    top = (nx.abs_max(acc) + rp.bias_max) * rp.mult_max
    if top < 2**62:
        q = acc.astype(np.int64)
        q += rp.bias
        q *= rp.mult
        q = nx.rne_shift_small(q, rp.shift)
    else:
        q = nx.rne_shift((acc.astype(np.int64) + rp.bias) * rp.mult, rp.shift)
    q += zp
    low, high = clamp_bounds(lo, hi, odt)
    clamp(q, low, high)
    return q.astype(nx.NP_DTYPES[odt])


def requantized(acc: np.ndarray, rp: RequantParams, zp: int, lo: int, hi: int, odt: str,
                acc_max: int | None = None, own: bool = False) -> np.ndarray:
    """acc [..., c] (integers of any type, |acc| <= acc_max when given) requantized with rp, zp,
    lo, hi to odt's values: float64 integers within odt's range or an odt array, so a store into
    odt casts them exactly. `own`: see `scaled`."""
    t = scaled(acc, rp, acc_max, own)
    if t is None:
        return requant_int64(acc, rp, zp, lo, hi, odt)
    return store_values(t, zp, lo, hi, odt)


def requant_values(acc: np.ndarray, params: np.ndarray, zp: int, lo: int, hi: int, odt: str) -> np.ndarray:
    """acc int32 [..., c] with params int32 [c, 3] -> odt."""
    rp = decode(params)
    t = scaled(acc, rp)
    if t is None:
        return requant_int64(acc, rp, zp, lo, hi, odt)
    return store_values(t, zp, lo, hi, odt).astype(nx.NP_DTYPES[odt])
