"""Semantics of the instructions added for training (vtrans, vcmp, vpoolbp) and for ONNX import
(vfma), kept apart from semantics.py so each file stays readable; same conventions."""
from __future__ import annotations

import numpy as np

from mlusim.isa import numerics as nx
from mlusim.isa.fields import DTYPE_BYTES
from mlusim.isa.semantics import NP, E, _pool_geom, _t, check_int_per_channel, touch_binary, view

# ---- training support ------------------------------------------------------------------------------
def touch_trans(a):
    esz = DTYPE_BYTES[E(a, "dt")]
    nb = a["rows"] * a["cols"] * esz
    return [("nram", a["src"], nb, "r", esz), ("nram", a["dst"], nb, "w", esz)]


def vtrans(ctx, a):
    dt, r, c = E(a, "dt"), a["rows"], a["cols"]
    src = view(ctx, "nram", a["src"], dt, r * c).reshape(r, c)
    view(ctx, "nram", a["dst"], dt, r * c)[:] = np.ascontiguousarray(src.T).reshape(-1)


def vcmp(ctx, a):
    dt, n = E(a, "dt"), a["n"]
    f = (np.greater, np.greater_equal, np.less, np.less_equal, np.equal, np.not_equal)[a["mode"]]
    r = f(view(ctx, "nram", a["a"], dt, n), view(ctx, "nram", a["b"], dt, n))
    view(ctx, "nram", a["dst"], dt, n)[:] = r.astype(NP[dt])


def touch_poolbp(a):
    dt = E(a, "dt")
    esz = DTYPE_BYTES[dt]
    ho, wo = _pool_geom(a)
    nin = a["n"] * a["hi"] * a["wi"] * a["c"] * esz
    return [("nram", a["src"], nin, "r", esz), ("nram", a["grad"], a["n"] * ho * wo * a["c"] * esz, "r", esz),
            ("nram", a["dst"], nin, "w", esz)]


def vpoolbp(ctx, a):
    dt = E(a, "dt")
    n, hi, wi, c, kh, kw, sh, sw = a["n"], a["hi"], a["wi"], a["c"], a["kh"], a["kw"], a["sh"], a["sw"]
    pt, pl = a["pt"], a["pl"]
    ho, wo = _pool_geom(a)
    x = view(ctx, "nram", a["src"], dt, n * hi * wi * c).reshape(n, hi, wi, c)
    g = view(ctx, "nram", a["grad"], dt, n * ho * wo * c).reshape(n, ho, wo, c)
    fill = nx.int_range(dt)[0] if dt in nx.INT_DTYPES else -np.inf
    win = nx.pool_windows(x, kh, kw, sh, sw, (pt, a["pb"], pl, a["pr"]), fill)   # [n, ho, wo, c, kh, kw]
    first = win.reshape(n, ho, wo, c, kh * kw).argmax(axis=-1)                    # first maximum
    acc = np.zeros((n, hi + pt + a["pb"], wi + pl + a["pr"], c), dtype=np.float64 if dt in nx.FLOAT_DTYPES else np.int64)
    ii, jj = np.divmod(first, kw)
    rows = np.arange(ho)[None, :, None, None] * sh + ii
    cols = np.arange(wo)[None, None, :, None] * sw + jj
    nn_ = np.broadcast_to(np.arange(n)[:, None, None, None], first.shape)
    cc = np.broadcast_to(np.arange(c)[None, None, None, :], first.shape)
    np.add.at(acc, (nn_, rows, cols, cc), g.astype(acc.dtype))
    out = acc[:, pt:pt + hi, pl:pl + wi, :]
    view(ctx, "nram", a["dst"], dt, n * hi * wi * c)[:] = (
        nx.saturate(out, dt) if dt in nx.INT_DTYPES else out.astype(NP[dt])).reshape(-1)


def touch_fma(a):
    return touch_binary(a) + [("nram",) + _t(a, "c")[:2] + ("r", _t(a, "c")[2])]


def fused_multiply_add(x: np.ndarray, y: np.ndarray, z: np.ndarray, dt: str) -> np.ndarray:
    """x * y + z rounded once to `dt` (IEEE fusedMultiplyAdd), for float32 / float16 operands.

    The product of two float32 values is exact in float64; TwoSum gives the sum's exact error e
    beside its float64 rounding s. Rounding s to `dt` is then correct unless s sits exactly on a
    midpoint of two `dt` neighbours with e != 0, where e decides the direction."""
    p = x.astype(np.float64) * y.astype(np.float64)
    c = z.astype(np.float64)
    with np.errstate(all="ignore"):
        s = p + c
        bb = s - p
        e = (p - (s - bb)) + (c - bb)
        r = s.astype(NP[dt])
        r64 = r.astype(np.float64)
        other = np.nextafter(r, np.where(s > r64, np.inf, -np.inf).astype(NP[dt]))
        mid = (r64 + other.astype(np.float64)) / 2
        fix = np.isfinite(s) & (r64 != s) & (s == mid) & (e != 0)
    # at a midpoint the exact value lies on e's side of it: take the neighbour on that side
    toward_other = np.sign(other.astype(np.float64) - s) == np.sign(e)
    out = np.where(fix & toward_other, other, r)
    nan = np.isnan(p) | np.isnan(c) | (np.isinf(p) & np.isinf(c) & (np.sign(p) != np.sign(c)))
    return np.where(nan, np.array(np.nan, NP[dt]), out).astype(NP[dt])


def vfma(ctx, a):
    dt, n = E(a, "dt"), a["n"]
    x, y, z = (view(ctx, "nram", a[k], dt, n) for k in ("a", "b", "c"))
    view(ctx, "nram", a["dst"], dt, n)[:] = fused_multiply_add(x, y, z, dt)


# ---- fused shortcut ------------------------------------------------------------------------------------
check_addrq = check_int_per_channel("vaddrq", "sdt")


_CHECK_RQADD = (check_int_per_channel("vrqadd", "sdt"), check_int_per_channel("vrqadd", "odt"))


def check_rqadd(a):
    return _CHECK_RQADD[0](a) or _CHECK_RQADD[1](a)


def touch_addrq(a):
    ssz = DTYPE_BYTES[E(a, "sdt")]
    n = a["n"]
    return [("nram", a["a"], n * 4, "r", 4), ("nram", a["src"], n * ssz, "r", ssz),
            ("nram", a["params"], a["c"] * 12, "r", 4), ("nram", a["dst"], n * 4, "w", 4)]


def _joined(ctx, a, params: str) -> np.ndarray:
    """sat32(a[i] + rne((src[i] + bias[ch]) * mult[ch] / 2**shift[ch])) with the shortcut's
    [c, 3] parameters in field `params`, as int32 [n / c, c]: what vaddrq writes and vrqadd
    requantizes."""
    from mlusim.isa.semantics import requant_values

    c, n = a["c"], a["n"]
    src = view(ctx, "nram", a["src"], E(a, "sdt"), n).reshape(-1, c)
    p = view(ctx, "nram", a[params], "i32", c * 3).reshape(c, 3)
    r = requant_values(src, p, 0, -(1 << 31), (1 << 31) - 1, "i32")
    acc = view(ctx, "nram", a["a"], "i32", n).reshape(-1, c)
    return nx.saturate(acc.astype(np.int64) + r, "i32")


def vaddrq(ctx, a):
    """Exactly vcast(src -> i32), vrequant(odt=i32, zp=0, full clamps), vadd(i32): one pass."""
    view(ctx, "nram", a["dst"], "i32", a["n"])[:] = _joined(ctx, a, "params").reshape(-1)


def touch_rqadd(a):
    ssz, osz, n = DTYPE_BYTES[E(a, "sdt")], DTYPE_BYTES[E(a, "odt")], a["n"]
    return [("nram", a["a"], n * 4, "r", 4), ("nram", a["src"], n * ssz, "r", ssz),
            ("nram", a["rparams"], a["c"] * 12, "r", 4), ("nram", a["params"], a["c"] * 12, "r", 4),
            ("nram", a["dst"], n * osz, "w", osz)]


def vrqadd(ctx, a):
    """Exactly vaddrq (shortcut requantized with rparams, added to a) then vrequant (params, zp,
    lo, hi) of that int32 sum: the residual join and the conv's output requantization in one pass."""
    from mlusim.isa.semantics import requant_values

    c, n, odt = a["c"], a["n"], E(a, "odt")
    params = view(ctx, "nram", a["params"], "i32", c * 3).reshape(c, 3)
    out = requant_values(_joined(ctx, a, "rparams"), params, a["zp"], a["lo"], a["hi"], odt)
    view(ctx, "nram", a["dst"], odt, n)[:] = out.reshape(-1)
