"""Vector unit semantics: elementwise, casts, (de)quantization, requantization, pooling, depthwise
convolution, reductions, transposes, and the fused ops imported models need."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mlusim.isa import numerics as nx
from mlusim.isa.fields import DTYPE_BYTES, bits_f32
from mlusim.isa.semantics import requant as rq
from mlusim.isa.semantics.base import NP, E, span, view
from mlusim.isa.semantics.requant import requant_values  # noqa: F401  (tests and callers import it here)


def _combine(x: np.ndarray, y: np.ndarray, op: str, dt: str) -> np.ndarray:
    if dt in nx.INT_DTYPES:
        x, y = x.astype(np.int64), y.astype(np.int64)
        if op == "add" and dt == "i32":       # the accumulator's arithmetic: a split sum adds up exactly
            return nx.wrap_int32(x + y)
        if op == "div":
            nz = y != 0
            q = np.where(nz, np.abs(x) // np.where(nz, np.abs(y), 1) * np.sign(x) * np.sign(y), 0)
            return nx.saturate(q, dt)
    f = {"add": np.add, "sub": np.subtract, "mul": np.multiply, "max": np.maximum, "min": np.minimum,
         "div": np.divide}[op]
    with np.errstate(all="ignore"):
        r = f(x, y)
    return nx.saturate(r, dt) if dt in nx.INT_DTYPES else r.astype(NP[dt])


def binary(op: str):
    def run(ctx, a):
        dt, n = E(a, "dt"), a["n"]
        r = _combine(view(ctx, "nram", a["a"], dt, n), view(ctx, "nram", a["b"], dt, n), op, dt)
        view(ctx, "nram", a["dst"], dt, n)[:] = r

    return run


def touch_binary(a):
    out = []
    for f, rw in (("a", "r"), ("b", "r"), ("dst", "w")):
        addr, nb, al = span(a, f)
        out.append(("nram", addr, nb, rw, al))
    return out


def touch_unary(a):
    return [("nram",) + span(a, "src")[:2] + ("r", span(a, "src")[2]), ("nram",) + span(a, "dst")[:2] + ("w", span(a, "dst")[2])]


def touch_set(a):
    addr, nb, al = span(a, "dst")
    return [("nram", addr, nb, "w", al)]


def vrelu(ctx, a):
    dt, n = E(a, "dt"), a["n"]
    src = view(ctx, "nram", a["src"], dt, n)
    view(ctx, "nram", a["dst"], dt, n)[:] = np.maximum(src, np.zeros((), NP[dt]))


def check_int_dt(a):
    return None if E(a, "dt") in nx.INT_DTYPES else "needs an integer dt"


def check_float_dt(a):
    return None if E(a, "dt") in nx.FLOAT_DTYPES else "needs a float dt (f16 or f32)"


def vclamp(ctx, a):
    dt, n = E(a, "dt"), a["n"]
    src = view(ctx, "nram", a["src"], dt, n).astype(np.int64)
    view(ctx, "nram", a["dst"], dt, n)[:] = nx.saturate(np.clip(src, a["lo"], a["hi"]), dt)


def vset(ctx, a):
    dt = E(a, "dt")
    val = nx.saturate(np.array(a["value"]), dt) if dt in nx.INT_DTYPES else NP[dt](a["value"])
    view(ctx, "nram", a["dst"], dt, a["n"])[:] = val


def touch_cast(a):
    sdt = "sdt" if "sdt" in a else "dt"
    return [("nram", a["src"], a["n"] * DTYPE_BYTES[E(a, sdt)], "r", DTYPE_BYTES[E(a, sdt)]),
            ("nram", a["dst"], a["n"] * DTYPE_BYTES[E(a, _dst_dt(a))], "w", DTYPE_BYTES[E(a, _dst_dt(a))])]


def _dst_dt(a):
    return "ddt" if "ddt" in a else "odt"


def vcast(ctx, a):
    sdt, ddt, n = E(a, "sdt"), E(a, "ddt"), a["n"]
    src = view(ctx, "nram", a["src"], sdt, n)
    if ddt in nx.INT_DTYPES:
        out = nx.saturate(src.astype(np.int64), ddt) if sdt in nx.INT_DTYPES else nx.round_float_to_int(src, ddt)
    else:
        out = src.astype(NP[ddt])
    view(ctx, "nram", a["dst"], ddt, n)[:] = out


def check_int_per_channel(mnemonic: str, dt_field: str):
    """Checker for a per-channel integer op: `dt_field` is an integer type and n a multiple of c."""
    def check(a):
        if E(a, dt_field) not in nx.INT_DTYPES:
            return f"{mnemonic} needs an integer {dt_field}"
        if a["c"] == 0 or a["n"] % a["c"]:
            return f"n={a['n']} must be a multiple of c={a['c']}"
        return None

    return check


check_requant = check_int_per_channel("vrequant", "odt")


def touch_requant(a):
    osz = DTYPE_BYTES[E(a, "odt")]
    return [("nram", a["src"], a["n"] * 4, "r", 4), ("nram", a["params"], a["c"] * 12, "r", 4),
            ("nram", a["dst"], a["n"] * osz, "w", osz)]


def _params(ctx, a, key: str) -> rq.RequantParams:
    """The [c, 3] requantization parameters at NRAM address a[key] of ctx's core, decoded
    (remembered by place, checked by their bytes: DeferredGemms.requant_params)."""
    return ctx.gemms.requant_params(ctx.id, ctx.mem("nram"), a[key], a["c"])


def vrequant(ctx, a):
    c, n, odt = a["c"], a["n"], E(a, "odt")
    acc = view(ctx, "nram", a["src"], "i32", n).reshape(-1, c)
    rp = _params(ctx, a, "params")
    view(ctx, "nram", a["dst"], odt, n)[:] = rq.requantized(acc, rp, a["zp"], a["lo"], a["hi"], odt).reshape(-1)


def check_dequant(a):
    if E(a, "sdt") not in nx.INT_DTYPES or E(a, "odt") not in nx.FLOAT_DTYPES:
        return "vdequant converts an integer sdt to a float odt"
    return None


def vdequant(ctx, a):
    sdt, odt, n = E(a, "sdt"), E(a, "odt"), a["n"]
    src = view(ctx, "nram", a["src"], sdt, n).astype(np.int64) - a["zp"]
    scale = float(np.float32(bits_f32(a["scale"])))
    # int (< 2**31) times float32 scale (24-bit mantissa) is exact in float64 unless |src| >= 2**29;
    # then it is correctly rounded to float64 first, a documented double rounding.
    view(ctx, "nram", a["dst"], odt, n)[:] = (src.astype(np.float64) * scale).astype(NP[odt])


def check_quant(a):
    if E(a, "sdt") not in nx.FLOAT_DTYPES or E(a, "odt") not in nx.INT_DTYPES:
        return "vquant converts a float sdt to an integer odt"
    return None


def vquant(ctx, a):
    sdt, odt, n = E(a, "sdt"), E(a, "odt"), a["n"]
    src = view(ctx, "nram", a["src"], sdt, n).astype(np.float64)
    scale = float(np.float32(bits_f32(a["scale"])))
    q = np.rint(src * scale)   # float32 x float32 is exact in float64
    q = np.nan_to_num(q, nan=0.0) + a["zp"]
    view(ctx, "nram", a["dst"], odt, n)[:] = nx.round_float_to_int(q, odt)


def pool_geom(a):
    ho = nx.conv_out_size(a["hi"], a["kh"], a["sh"], a["pt"], a["pb"], 1)
    wo = nx.conv_out_size(a["wi"], a["kw"], a["sw"], a["pl"], a["pr"], 1)
    return ho, wo


def check_pool(a):
    for k in ("n", "hi", "wi", "c", "kh", "kw", "sh", "sw"):
        if a[k] == 0:
            return f"{k} must be >= 1"
    if max(a["pt"], a["pb"]) >= a["kh"] or max(a["pl"], a["pr"]) >= a["kw"]:
        return "padding must be smaller than the window"
    ho, wo = pool_geom(a)
    return None if ho >= 1 and wo >= 1 else "window larger than the padded input"


def _pool_out_dt(a) -> str:
    dt = E(a, "dt")
    if a["mode"] == 0:
        return dt
    return "i32" if dt in nx.INT_DTYPES else "f32"


def touch_pool(a):
    dt = E(a, "dt")
    ho, wo = pool_geom(a)
    odt = _pool_out_dt(a)
    return [("nram", a["src"], a["n"] * a["hi"] * a["wi"] * a["c"] * DTYPE_BYTES[dt], "r", DTYPE_BYTES[dt]),
            ("nram", a["dst"], a["n"] * ho * wo * a["c"] * DTYPE_BYTES[odt], "w", DTYPE_BYTES[odt])]


def vpool(ctx, a):
    dt = E(a, "dt")
    n, hi, wi, c = a["n"], a["hi"], a["wi"], a["c"]
    x = view(ctx, "nram", a["src"], dt, n * hi * wi * c).reshape(n, hi, wi, c)
    pads = (a["pt"], a["pb"], a["pl"], a["pr"])
    odt = _pool_out_dt(a)
    if a["mode"] == 0:
        fill = nx.int_range(dt)[0] if dt in nx.INT_DTYPES else -np.inf
        out = nx.pool_windows(x, a["kh"], a["kw"], a["sh"], a["sw"], pads, fill).max(axis=(-2, -1))
    else:
        acc_t = np.int64 if dt in nx.INT_DTYPES else np.float32
        win = nx.pool_windows(x.astype(acc_t), a["kh"], a["kw"], a["sh"], a["sw"], pads, 0)
        if acc_t is np.int64:
            out = nx.saturate(win.sum(axis=(-2, -1)), "i32")
        else:  # left to right, row-major over the window, in float32
            flat = win.reshape(win.shape[:4] + (-1,))
            out = np.cumsum(flat, axis=-1, dtype=np.float32)[..., -1]
    view(ctx, "nram", a["dst"], odt, out.size)[:] = out.reshape(-1).astype(NP[odt])


def _dw_geom(a):
    ho = nx.conv_out_size(a["hi"], a["kh"], a["sh"], a["pt"], a["pb"], a["dh"])
    wo = nx.conv_out_size(a["wi"], a["kw"], a["sw"], a["pl"], a["pr"], a["dw"])
    return ho, wo


def check_dwconv(a):
    if E(a, "dt") not in ("i8", "i16"):
        return "vdwconv takes dt=i8 or i16"
    for k in ("n", "hi", "wi", "c", "kh", "kw", "sh", "sw", "dh", "dw"):
        if a[k] == 0:
            return f"{k} must be >= 1"
    ho, wo = _dw_geom(a)
    return None if ho >= 1 and wo >= 1 else "window larger than the padded input"


def touch_dwconv(a):
    esz = DTYPE_BYTES[E(a, "dt")]
    ho, wo = _dw_geom(a)
    return [("nram", a["src"], a["n"] * a["hi"] * a["wi"] * a["c"] * esz, "r", esz),
            ("nram", a["wgt"], a["kh"] * a["kw"] * a["c"] * esz, "r", esz),
            ("nram", a["dst"], a["n"] * ho * wo * a["c"] * 4, "w", 4)]


def vdwconv(ctx, a):
    dt = E(a, "dt")
    n, hi, wi, c, kh, kw = a["n"], a["hi"], a["wi"], a["c"], a["kh"], a["kw"]
    x = view(ctx, "nram", a["src"], dt, n * hi * wi * c).reshape(n, hi, wi, c)
    w = view(ctx, "nram", a["wgt"], dt, kh * kw * c).reshape(kh, kw, c)
    wc = np.ascontiguousarray(w.transpose(2, 0, 1))[:, :, :, None]   # [c, kh, kw, 1]
    acc = nx.conv_nhwc(x, wc, a["sh"], a["sw"], (a["pt"], a["pb"], a["pl"], a["pr"]), a["dh"], a["dw"], c)
    # i8: the 32-bit accumulator wraps; i16 (9 products near 2**30 overflow it): saturates, as the
    # vector unit's integer results do (the compiler runs int16 depthwise convs on the MAC array)
    out = nx.saturate(acc, "i32") if E(a, "dt") == "i16" else nx.wrap_int32(acc)
    view(ctx, "nram", a["dst"], "i32", acc.size)[:] = out.reshape(-1)


def unary_float(fn: str):
    f = {"exp": np.exp, "log": np.log}[fn]

    def run(ctx, a):
        dt, n = E(a, "dt"), a["n"]
        src = view(ctx, "nram", a["src"], dt, n)
        with np.errstate(all="ignore"):
            view(ctx, "nram", a["dst"], dt, n)[:] = f(src)

    return run


def _reduce_out_dt(a) -> str:
    dt = E(a, "dt")
    return "i32" if a["mode"] == 2 and dt in nx.INT_DTYPES else dt


def touch_reduce(a):
    dt, odt = E(a, "dt"), _reduce_out_dt(a)
    return [("nram", a["src"], a["rows"] * a["cols"] * DTYPE_BYTES[dt], "r", DTYPE_BYTES[dt]),
            ("nram", a["dst"], a["rows"] * DTYPE_BYTES[odt], "w", DTYPE_BYTES[odt])]


def vreduce(ctx, a):
    dt, rows, cols = E(a, "dt"), a["rows"], a["cols"]
    x = view(ctx, "nram", a["src"], dt, rows * cols).reshape(rows, cols)
    mode = ("max", "min", "sum")[a["mode"]]
    if mode == "max":
        out = x.max(axis=1) if cols else np.zeros(rows, NP[dt])
    elif mode == "min":
        out = x.min(axis=1) if cols else np.zeros(rows, NP[dt])
    elif dt in nx.INT_DTYPES:
        out = nx.saturate(x.astype(np.int64).sum(axis=1), "i32")
    else:
        out = np.cumsum(x, axis=1, dtype=NP[dt])[:, -1] if cols else np.zeros(rows, NP[dt])
    odt = _reduce_out_dt(a)
    view(ctx, "nram", a["dst"], odt, rows)[:] = out


def touch_row(a):
    dt = E(a, "dt")
    esz = DTYPE_BYTES[dt]
    nb = a["rows"] if a["axis"] == 0 else a["cols"]
    return [("nram", a["a"], a["rows"] * a["cols"] * esz, "r", esz), ("nram", a["b"], nb * esz, "r", esz),
            ("nram", a["dst"], a["rows"] * a["cols"] * esz, "w", esz)]


def vrow(ctx, a):
    dt, rows, cols = E(a, "dt"), a["rows"], a["cols"]
    op = ("add", "sub", "mul", "div", "max")[a["op"]]
    x = view(ctx, "nram", a["a"], dt, rows * cols).reshape(rows, cols)
    if a["axis"] == 0:
        b = view(ctx, "nram", a["b"], dt, rows)[:, None]
    else:
        b = view(ctx, "nram", a["b"], dt, cols)[None, :]
    out = _combine(x, np.broadcast_to(b, x.shape), op, dt)
    view(ctx, "nram", a["dst"], dt, rows * cols)[:] = out.reshape(-1)


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
    ho, wo = pool_geom(a)
    nin = a["n"] * a["hi"] * a["wi"] * a["c"] * esz
    return [("nram", a["src"], nin, "r", esz), ("nram", a["grad"], a["n"] * ho * wo * a["c"] * esz, "r", esz),
            ("nram", a["dst"], nin, "w", esz)]


def vpoolbp(ctx, a):
    dt = E(a, "dt")
    n, hi, wi, c, kh, kw, sh, sw = a["n"], a["hi"], a["wi"], a["c"], a["kh"], a["kw"], a["sh"], a["sw"]
    pt, pl = a["pt"], a["pl"]
    ho, wo = pool_geom(a)
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
    return touch_binary(a) + [("nram",) + span(a, "c")[:2] + ("r", span(a, "c")[2])]


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


@dataclass(slots=True, eq=False)
class JoinViews:
    """The NRAM operands of a vaddrq or vrqadd on one core, as views made once per instruction and
    core (the engine passes one args dict per distinct instruction): their bytes are read at each
    issue, the slicing (~4 us of the ~20 us fixed cost of a vrqadd) is not redone."""
    nram: np.ndarray
    src: np.ndarray                 # [n / c, c] of sdt: the shortcut
    acc: np.ndarray                 # [n / c, c] int32: the conv's sums
    dst: np.ndarray                 # [n] of the output type


def _by_core(a) -> dict:
    return {}


def _join_views(ctx, a, odt: str) -> JoinViews:
    """The views of vaddrq (odt="i32") or vrqadd on ctx's core."""
    per = ctx.gemms.memo(a, _by_core)
    nram = ctx.mem("nram")
    v = per.get(ctx.id)
    if v is None or v.nram is not nram:
        c, n = a["c"], a["n"]
        v = per[ctx.id] = JoinViews(nram, view(ctx, "nram", a["src"], E(a, "sdt"), n).reshape(-1, c),
                                    view(ctx, "nram", a["a"], "i32", n).reshape(-1, c),
                                    view(ctx, "nram", a["dst"], odt, n))
    return v


def _joined(v: JoinViews, rp: rq.RequantParams) -> tuple[np.ndarray, int]:
    """sat32(a[i] + rne((src[i] + bias[ch]) * mult[ch] / 2**shift[ch])) with the shortcut's
    parameters `rp`, as [n / c, c] integers (int32, or float64 holding them
    exactly): what vaddrq writes and vrqadd requantizes; and a bound on their magnitude. The bound
    comes from the sums' own extremes, which also say whether the saturation can change anything,
    so the requantization that follows needs no second look at the data."""
    src, acc = v.src, v.acc
    t = rq.scaled(src, rp)
    if t is None:
        r = rq.requant_int64(src, rp, 0, *rq.I32, "i32")
        return nx.saturate(acc.astype(np.int64) + r, "i32"), 1 << 31
    if not rq.within_i32(src, rp):
        rq.clamp(t, *rq.I32)                # the requant to i32 with full clamps
    t += acc.astype(np.float64)             # exact: both below 2**31 (converted first: see rq)
    if not t.size:
        return t, 0
    lo, hi = t.min(), t.max()
    if lo < rq.I32[0] or hi > rq.I32[1]:
        return rq.clamp(t, *rq.I32), 1 << 31     # saturated to i32
    return t, int(max(-lo, hi))


def vaddrq(ctx, a):
    """Exactly vcast(src -> i32), vrequant(odt=i32, zp=0, full clamps), vadd(i32): one pass."""
    v = _join_views(ctx, a, "i32")
    v.dst[:] = _joined(v, _params(ctx, a, "params"))[0].reshape(-1)


def touch_rqadd(a):
    ssz, osz, n = DTYPE_BYTES[E(a, "sdt")], DTYPE_BYTES[E(a, "odt")], a["n"]
    return [("nram", a["a"], n * 4, "r", 4), ("nram", a["src"], n * ssz, "r", ssz),
            ("nram", a["rparams"], a["c"] * 12, "r", 4), ("nram", a["params"], a["c"] * 12, "r", 4),
            ("nram", a["dst"], n * osz, "w", osz)]


def vrqadd(ctx, a):
    """Exactly vaddrq (shortcut requantized with rparams, added to a) then vrequant (params, zp,
    lo, hi) of that int32 sum: the residual join and the conv's output requantization in one pass."""
    odt = E(a, "odt")
    v = _join_views(ctx, a, odt)
    rp = _params(ctx, a, "params")
    joined, top = _joined(v, _params(ctx, a, "rparams"))   # a fresh array: requantized in place
    v.dst[:] = rq.requantized(joined, rp, a["zp"], a["lo"], a["hi"], odt, top, own=True).reshape(-1)
