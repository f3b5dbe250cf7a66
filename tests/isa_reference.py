"""Independent numpy/Python reference of the instruction semantics in docs/numerics.md.

Written from the contract only (never from mlusim/isa/semantics/ or mlusim/isa/numerics.py), so
that the simulator and this file are two implementations that must agree bit for bit.

Style: slow and obviously correct. Integer arithmetic is done on Python ints (or int64 where the
magnitudes are tiny), rounding to nearest even is done explicitly with integers/fractions, and the
rounding of an exact real value to binary16/binary32 is done by `round_to_float` below from the IEEE
definition rather than by a library conversion, wherever the contract says "rounded once".
"""
from __future__ import annotations

import math
from fractions import Fraction

import numpy as np

NP = {"i8": np.int8, "u8": np.uint8, "i16": np.int16, "i32": np.int32,
      "f16": np.float16, "f32": np.float32}
INT_DT = ("i8", "u8", "i16", "i32")
FLOAT_DT = ("f16", "f32")
HALF = Fraction(1, 2)

# IEEE binary formats: precision (significand bits incl. the hidden one), emin, emax.
_FMT = {"f16": (11, -14, 15), "f32": (24, -126, 127)}


# --------------------------------------------------------------------------------------------------
# scalar building blocks
# --------------------------------------------------------------------------------------------------
def int_range(dt: str) -> tuple[int, int]:
    info = np.iinfo(NP[dt])
    return int(info.min), int(info.max)


def saturate(v: int, dt: str) -> int:
    lo, hi = int_range(dt)
    return lo if v < lo else hi if v > hi else v


def wrap32(v: int) -> int:
    """Reduce an exact integer modulo 2**32 into the int32 range (two's complement)."""
    v &= 0xFFFFFFFF
    return v - (1 << 32) if v >= (1 << 31) else v


def rne_shift(x: int, s: int) -> int:
    """rne(x / 2**s) on integers, s clamped to [0, 62], exactly as the contract words it."""
    s = min(max(int(s), 0), 62)
    x = int(x)
    if s == 0:
        return x
    q = x >> s                      # Python >> is floor division by 2**s, also for negatives
    r = x - (q << s)                # 0 <= r < 2**s
    half = 1 << (s - 1)
    if r > half or (r == half and (q & 1)):
        q += 1
    return q


def rne_fraction(v: Fraction) -> int:
    """Round an exact rational to the nearest integer, ties to even."""
    q = v.numerator // v.denominator  # floor
    r = v - q
    if r > HALF or (r == HALF and (q & 1)):
        q += 1
    return q


def round_to_float(v: Fraction, dt: str, negative_zero: bool = False):
    """Round an exact rational value to IEEE binary16/32 (nearest, ties to even; overflow -> inf;
    gradual underflow). Returns a numpy scalar of the type. `negative_zero` gives the sign of a
    result that is exactly zero (IEEE: the sign of an exactly zero input is kept)."""
    p, emin, emax = _FMT[dt]
    t = NP[dt]
    if v == 0:
        return t(-0.0 if negative_zero else 0.0)
    neg = v < 0
    a = -v if neg else v
    # exponent e with 2**e <= a < 2**(e+1)
    e = a.numerator.bit_length() - a.denominator.bit_length()
    if Fraction(2) ** e > a:
        e -= 1
    assert Fraction(2) ** e <= a < Fraction(2) ** (e + 1)
    e = max(e, emin)                              # subnormal range: fixed quantum
    quantum = Fraction(2) ** (e - p + 1)
    r = rne_fraction(a / quantum) * quantum       # exact multiple of the quantum
    max_finite = (2 - Fraction(2) ** (1 - p)) * Fraction(2) ** emax
    if r > max_finite:
        out = math.inf
    else:
        out = float(r)                            # exact: r is representable in dt, so in float64
    return t(-out if neg else out)


def f64_to(dt: str, x: float):
    """Round a float64 value once to a float type (specials kept)."""
    x = float(x)
    if math.isnan(x):
        return NP[dt](x)
    if math.isinf(x) or x == 0.0:
        return NP[dt](x)  # exact
    return round_to_float(Fraction(x), dt)


def float_to_int(x: float, dt: str) -> int:
    """Float to integer conversion: rne, then saturate; NaN -> 0; +-inf saturate."""
    x = float(x)
    if math.isnan(x):
        return 0
    lo, hi = int_range(dt)
    if math.isinf(x):
        return hi if x > 0 else lo
    return saturate(rne_fraction(Fraction(x)), dt)


def _ints(values, dt: str, shape) -> np.ndarray:
    lo, hi = int_range(dt)
    flat = [int(v) for v in values]
    assert all(lo <= v <= hi for v in flat)
    return np.array(flat, dtype=np.int64).astype(NP[dt]).reshape(shape)


def _floats(values, dt: str, shape) -> np.ndarray:
    out = np.empty(len(values), dtype=NP[dt])
    for i, v in enumerate(values):
        out[i] = v  # v already a numpy scalar of dt (exact store)
    return out.reshape(shape)


def _finite(x) -> bool:
    return bool(np.isfinite(x))


def float_arith(op: str, x, y, dt: str):
    """One IEEE operation in `dt` on two scalars of `dt`: the exact result rounded once.
    Special operands/results (NaN, inf, zeros, division by zero) use numpy's scalar semantics."""
    t = NP[dt]
    x, y = t(x), t(y)
    if not (_finite(x) and _finite(y)) or x == 0 or y == 0:
        with np.errstate(all="ignore"):
            return t({"add": np.add, "sub": np.subtract, "mul": np.multiply,
                      "div": np.divide}[op](x, y))
    fx, fy = Fraction(float(x)), Fraction(float(y))
    if op == "add":
        v = fx + fy
    elif op == "sub":
        v = fx - fy
    elif op == "mul":
        v = fx * fy
    elif op == "div":
        v = fx / fy
    else:
        raise ValueError(op)
    # exact zero from a sum/difference of nonzero values is +0 under round-to-nearest
    return round_to_float(v, dt)


def _int_result(op: str, v: int, dt: str) -> int:
    """An elementwise integer result stored: i32 sums wrap (the accumulator's arithmetic), the rest saturate."""
    return wrap32(v) if op == "add" and dt == "i32" else saturate(v, dt)


def _int_op(op: str, a: int, b: int) -> int:
    if op == "add":
        return a + b
    if op == "sub":
        return a - b
    if op == "mul":
        return a * b
    if op == "max":
        return max(a, b)
    if op == "min":
        return min(a, b)
    if op == "div":
        if b == 0:
            return 0
        q = abs(a) // abs(b)                       # truncation toward zero
        return q if (a < 0) == (b < 0) else -q
    raise ValueError(op)


def _float_op(op: str, x, y, dt: str):
    t = NP[dt]
    if op == "max":
        return np.maximum(t(x), t(y))
    if op == "min":
        return np.minimum(t(x), t(y))
    return float_arith(op, x, y, dt)


# --------------------------------------------------------------------------------------------------
# MAC array
# --------------------------------------------------------------------------------------------------
def mac_output(acc: np.ndarray, odt: str, pos: int, dt: str = "i8") -> np.ndarray:
    """acc: exact sums. i8 inputs: wrap to int32, i32 stores it, float stores acc * 2**pos rounded
    once. i16 inputs: no wrap; float stores acc * 2**pos rounded once, i32 stores rne(acc * 2**pos)
    saturated (pos <= 0 shifts right; pos > 0 multiplies)."""
    flat = [int(v) if dt == "i16" else wrap32(int(v)) for v in acc.reshape(-1)]
    if odt == "i32":
        if dt == "i16":
            flat = [saturate(rne_fraction(Fraction(v) * Fraction(2) ** int(pos)), "i32") for v in flat]
        return _ints(flat, "i32", acc.shape)
    scale = Fraction(2) ** int(pos)
    return _floats([round_to_float(v * scale, odt) for v in flat], odt, acc.shape)


def conv_out_size(i, p0, p1, k, s, d):
    return (i + p0 + p1 - (d * (k - 1) + 1)) // s + 1


def ref_conv(x, w, sh, sw, pads, dh, dw, groups, odt, pos):
    """x NHWC [n, hi, wi, ci], w [co, kh, kw, ci/groups]; pads = (pt, pb, pl, pr)."""
    n, hi, wi, ci = x.shape
    co, kh, kw, cig = w.shape
    pt, pb, pl, pr = pads
    assert ci == cig * groups and co % groups == 0
    cog = co // groups
    ho = conv_out_size(hi, pt, pb, kh, sh, dh)
    wo = conv_out_size(wi, pl, pr, kw, sw, dw)
    xp = np.zeros((n, hi + pt + pb, wi + pl + pr, ci), dtype=np.int64)
    xp[:, pt:pt + hi, pl:pl + wi, :] = x
    wl = w.astype(np.int64)
    acc = np.zeros((n, ho, wo, co), dtype=np.int64)
    for oy in range(ho):
        for ox in range(wo):
            for ky in range(kh):
                for kx in range(kw):
                    pix = xp[:, oy * sh + ky * dh, ox * sw + kx * dw, :]        # [n, ci]
                    for g in range(groups):
                        xs = pix[:, g * cig:(g + 1) * cig]                      # [n, cig]
                        ws = wl[g * cog:(g + 1) * cog, ky, kx, :]               # [cog, cig]
                        acc[:, oy, ox, g * cog:(g + 1) * cog] += np.einsum("nc,oc->no", xs, ws)
    return mac_output(acc, odt, pos, "i16" if x.dtype == np.int16 else "i8")


def ref_matmul(a, b, odt, pos):
    """a [m, k], b [n, k] -> dst [m, n] = sum_k a[m, k] * b[n, k]."""
    m, k = a.shape
    n, k2 = b.shape
    assert k == k2
    acc = np.zeros((m, n), dtype=object)
    for i in range(m):
        for j in range(n):
            acc[i, j] = sum(int(a[i, t]) * int(b[j, t]) for t in range(k))
    return mac_output(acc, odt, pos, "i16" if a.dtype == np.int16 else "i8")


# --------------------------------------------------------------------------------------------------
# requantization and conversions
# --------------------------------------------------------------------------------------------------
def ref_requant(src, params, c, odt, zp=0, lo=-(1 << 31), hi=(1 << 31) - 1):
    """src int32 [N]; params int32 [c, 3] = (bias, mult, shift)."""
    params = np.asarray(params).reshape(c, 3)
    out = []
    for i, s in enumerate(np.asarray(src).reshape(-1)):
        bias, mult, shift = (int(v) for v in params[i % c])
        t = (int(s) + bias) * mult
        q = rne_shift(t, shift) + int(zp)
        q = min(max(q, int(lo)), int(hi))
        out.append(saturate(q, odt))
    return _ints(out, odt, np.shape(src))


def ref_dequant(src, odt, scale, zp=0):
    """dst = odt((int64(src) - zp) * float64(scale)), scale a float32."""
    sc = float(np.float32(scale))
    out = [f64_to(odt, float(int(s) - int(zp)) * sc) for s in np.asarray(src).reshape(-1)]
    return _floats(out, odt, np.shape(src))


def ref_quant(src, odt, scale, zp=0):
    """dst = saturate(rne(float64(src) * float64(scale)) + zp). NaN inputs are not covered."""
    sc = float(np.float32(scale))
    lo, hi = int_range(odt)
    out = []
    for s in np.asarray(src).reshape(-1):
        v = float(s) * sc                      # exact: product of two float32 values
        assert not math.isnan(v), "NaN input to vquant is not specified by the contract"
        if math.isinf(v):
            out.append(hi if v > 0 else lo)
            continue
        out.append(saturate(rne_fraction(Fraction(v)) + int(zp), odt))
    return _ints(out, odt, np.shape(src))


def ref_cast(src, sdt, ddt):
    src = np.asarray(src, dtype=NP[sdt])
    flat = src.reshape(-1)
    if ddt in INT_DT:
        if sdt in INT_DT:
            out = [saturate(int(v), ddt) for v in flat]
        else:
            out = [float_to_int(float(v), ddt) for v in flat]
        return _ints(out, ddt, src.shape)
    out = []
    for v in flat:
        if sdt in INT_DT:
            out.append(round_to_float(Fraction(int(v)), ddt))
        elif np.isnan(v):
            out.append(np.array([v]).astype(NP[ddt])[0])  # contract: numpy astype (payload rule)
        else:
            out.append(f64_to(ddt, float(v)))
    return _floats(out, ddt, src.shape)


# --------------------------------------------------------------------------------------------------
# elementwise
# --------------------------------------------------------------------------------------------------
def ref_binary(op, a, b, dt):
    a = np.asarray(a, dtype=NP[dt]).reshape(-1)
    b = np.asarray(b, dtype=NP[dt]).reshape(-1)
    if dt in INT_DT:
        return _ints([_int_result(op, _int_op(op, int(x), int(y)), dt) for x, y in zip(a, b)], dt, a.shape)
    return _floats([_float_op(op, x, y, dt) for x, y in zip(a, b)], dt, a.shape)


def ref_relu(x, dt):
    x = np.asarray(x, dtype=NP[dt]).reshape(-1)
    if dt in INT_DT:
        return _ints([max(int(v), 0) for v in x], dt, x.shape)
    return _floats([v if v > 0 else NP[dt](0.0) for v in x], dt, x.shape)  # no NaN / -0 inputs


def ref_clamp(x, dt, lo, hi):
    x = np.asarray(x, dtype=NP[dt]).reshape(-1)
    return _ints([saturate(min(max(int(v), int(lo)), int(hi)), dt) for v in x], dt, x.shape)


def ref_set(n, dt, value):
    if dt in INT_DT:
        return _ints([saturate(int(value), dt)] * n, dt, (n,))
    return _floats([round_to_float(Fraction(int(value)), dt)] * n, dt, (n,))


def ref_unary_float(fn, x, dt):
    """vexp / vlog: numpy's function in dt (the contract defines it so)."""
    with np.errstate(all="ignore"):
        return getattr(np, fn)(np.asarray(x, dtype=NP[dt]))


# --------------------------------------------------------------------------------------------------
# reductions and row broadcast
# --------------------------------------------------------------------------------------------------
def ref_reduce(mode, x, dt):
    """x [rows, cols] -> [rows]. Integer sum: exact, saturated to int32. Float sum: left to right in dt."""
    rows, cols = x.shape
    out = []
    for r in range(rows):
        row = x[r]
        if dt in INT_DT:
            vals = [int(v) for v in row]
            if mode == "max":
                out.append(max(vals))
            elif mode == "min":
                out.append(min(vals))
            else:
                out.append(saturate(sum(vals), "i32"))
        else:
            acc = NP[dt](row[0])
            for j in range(1, cols):
                if mode == "max":
                    acc = np.maximum(acc, row[j])
                elif mode == "min":
                    acc = np.minimum(acc, row[j])
                else:
                    acc = float_arith("add", acc, row[j], dt)
            out.append(acc)
    if dt in INT_DT:
        return _ints(out, "i32" if mode == "sum" else dt, (rows,))
    return _floats(out, dt, (rows,))


def ref_row(op, a, b, dt, axis):
    """dst[r, c] = a[r, c] op b[r] (axis='row') or b[c] (axis='col')."""
    rows, cols = a.shape
    out = []
    for r in range(rows):
        for c in range(cols):
            y = b[r] if axis == "row" else b[c]
            if dt in INT_DT:
                out.append(_int_result(op, _int_op(op, int(a[r, c]), int(y)), dt))
            else:
                out.append(_float_op(op, a[r, c], y, dt))
    if dt in INT_DT:
        return _ints(out, dt, (rows, cols))
    return _floats(out, dt, (rows, cols))


# --------------------------------------------------------------------------------------------------
# pooling and depthwise convolution
# --------------------------------------------------------------------------------------------------
def ref_pool(mode, x, dt, kh, kw, sh, sw, pads):
    """x NHWC [n, hi, wi, c]. max keeps dt (padding never wins); sum -> i32 (saturating) for integer
    dt, f32 summed left to right over the window in row-major order for float dt (padding = 0)."""
    n, hi, wi, c = x.shape
    pt, pb, pl, pr = pads
    ho = conv_out_size(hi, pt, pb, kh, sh, 1)
    wo = conv_out_size(wi, pl, pr, kw, sw, 1)
    isint = dt in INT_DT
    out = []
    for b in range(n):
        for oy in range(ho):
            for ox in range(wo):
                for ch in range(c):
                    window = []     # (is_padding, value) in row-major order
                    for ky in range(kh):
                        for kx in range(kw):
                            iy, ix = oy * sh + ky - pt, ox * sw + kx - pl
                            inside = 0 <= iy < hi and 0 <= ix < wi
                            window.append((not inside, x[b, iy, ix, ch] if inside else None))
                    if mode == "max":
                        vals = [v for pad, v in window if not pad]
                        assert vals, "window entirely in padding"
                        if isint:
                            out.append(max(int(v) for v in vals))
                        else:
                            acc = vals[0]
                            for v in vals[1:]:
                                acc = np.maximum(acc, v)
                            out.append(NP[dt](acc))
                    else:
                        if isint:
                            out.append(saturate(sum(0 if pad else int(v) for pad, v in window), "i32"))
                        else:
                            vals = [np.float32(0.0) if pad else np.float32(v) for pad, v in window]
                            acc = vals[0]
                            for v in vals[1:]:
                                acc = float_arith("add", acc, v, "f32")
                            out.append(np.float32(acc))
    shape = (n, ho, wo, c)
    if mode == "max":
        return _ints(out, dt, shape) if isint else _floats(out, dt, shape)
    return _ints(out, "i32", shape) if isint else _floats(out, "f32", shape)


def ref_dwconv(x, w, sh, sw, pads, dh, dw):
    """x NHWC [n, hi, wi, c], w [kh, kw, c] -> int32 NHWC, exact sums wrapped to int32 (i8) or
    saturated (i16)."""
    n, hi, wi, c = x.shape
    kh, kw, c2 = w.shape
    assert c == c2
    pt, pb, pl, pr = pads
    ho = conv_out_size(hi, pt, pb, kh, sh, dh)
    wo = conv_out_size(wi, pl, pr, kw, sw, dw)
    acc = np.zeros((n, ho, wo, c), dtype=object)
    for b in range(n):
        for oy in range(ho):
            for ox in range(wo):
                for ch in range(c):
                    s = 0
                    for ky in range(kh):
                        for kx in range(kw):
                            iy, ix = oy * sh + ky * dh - pt, ox * sw + kx * dw - pl
                            if 0 <= iy < hi and 0 <= ix < wi:
                                s += int(x[b, iy, ix, ch]) * int(w[ky, kx, ch])
                    acc[b, oy, ox, ch] = s
    keep = (lambda v: saturate(v, "i32")) if x.dtype == np.int16 else wrap32
    return _ints([keep(v) for v in acc.reshape(-1)], "i32", acc.shape)


# --------------------------------------------------------------------------------------------------
# DMA
# --------------------------------------------------------------------------------------------------
def ref_dma(src_bytes: bytes, dst_bytes: bytearray, dst, src, size, dstride=0, sstride=0, count=1,
            dstride2=0, sstride2=0, count2=1) -> bytearray:
    """Segment (j, i) copies `size` bytes from src + j*sstride2 + i*sstride to
    dst + j*dstride2 + i*dstride (addresses are offsets into the given byte buffers)."""
    out = bytearray(dst_bytes)
    for j in range(count2):
        for i in range(count):
            s = src + j * sstride2 + i * sstride
            d = dst + j * dstride2 + i * dstride
            out[d:d + size] = src_bytes[s:s + size]
    return out
