"""MAC array semantics: convolution and matrix multiply, exact integer sums cast to the output type."""
from __future__ import annotations

from dataclasses import dataclass
from functools import partial

import numpy as np

from mlusim.isa import numerics as nx
from mlusim.isa.fields import DTYPE_BYTES, OUT_DTYPES
from mlusim.isa.semantics.base import E, view


def conv_shape(a) -> tuple[int, int]:
    ho = nx.conv_out_size(a["hi"], a["kh"], a["sh"], a["pt"], a["pb"], a["dh"])
    wo = nx.conv_out_size(a["wi"], a["kw"], a["sw"], a["pl"], a["pr"], a["dw"])
    return ho, wo


def _odt(a) -> str:
    return OUT_DTYPES[a["odt"]]


def check_conv(a):
    if E(a, "dt") not in ("i8", "i16"):
        return "conv takes dt=i8 or i16"
    for k in ("n", "hi", "wi", "ci", "co", "kh", "kw", "sh", "sw", "dh", "dw", "groups"):
        if a[k] == 0:
            return f"{k} must be >= 1"
    if a["ci"] % a["groups"] or a["co"] % a["groups"]:
        return f"groups={a['groups']} must divide ci={a['ci']} and co={a['co']}"
    if max(a["pt"], a["pb"]) >= a["dh"] * (a["kh"] - 1) + 1 or max(a["pl"], a["pr"]) >= a["dw"] * (a["kw"] - 1) + 1:
        return "padding must be smaller than the (dilated) window"
    ho, wo = conv_shape(a)
    if ho < 1 or wo < 1:
        return "window larger than the padded input"
    return None


def touch_conv(a):
    esz = DTYPE_BYTES[E(a, "dt")]
    ho, wo = conv_shape(a)
    osz = DTYPE_BYTES[_odt(a)]
    return [("nram", a["src"], a["n"] * a["hi"] * a["wi"] * a["ci"] * esz, "r", esz),
            ("wram", a["wgt"], a["co"] * a["kh"] * a["kw"] * (a["ci"] // a["groups"]) * esz, "r", 64),
            ("nram", a["dst"], a["n"] * ho * wo * a["co"] * osz, "w", osz)]


@dataclass(slots=True, eq=False)
class ConvPlan:
    """What a conv instruction's fields fix, worked out once per distinct instruction (the engine
    passes the same args dict for every issue of the same content, ResNet-50 b16 issuing 30,696
    convs of a few hundred distinct ones): byte ranges, shapes, the window, and for int8 inputs
    the product bounds, which come from the types alone (None: from the data, per issue)."""
    dt: str
    np_dt: type
    x_at: tuple[int, int]           # NRAM bytes of the input
    x_shape: tuple[int, ...]
    w_at: tuple[int, int]           # WRAM bytes of the weights
    w_shape: tuple[int, ...]        # [co, kh, kw, ci / groups]
    dst_at: tuple[int, int]         # NRAM bytes of the output
    odt: str
    window: tuple                   # ConvGemm.window
    bounds: tuple[float, int, float] | None    # (each, w_max, bound) when fixed by the types
    pad: tuple | None               # the padded input's layout (shape, pads, dtype): the key of
    # its scratch buffer (DeferredGemms.scratch), border zero; None: no padding


def conv_plan(a) -> ConvPlan:
    dt = E(a, "dt")
    esz, np_dt = DTYPE_BYTES[dt], nx.NP_DTYPES[dt]
    n, hi, wi, ci, co, kh, kw = a["n"], a["hi"], a["wi"], a["ci"], a["co"], a["kh"], a["kw"]
    cig = ci // a["groups"]
    pads = (a["pt"], a["pb"], a["pl"], a["pr"])
    ho, wo = conv_shape(a)
    odt = _odt(a)
    x_at = (a["src"], a["src"] + n * hi * wi * ci * esz)
    w_at = (a["wgt"], a["wgt"] + co * kh * kw * cig * esz)
    dst_at = (a["dst"], a["dst"] + n * ho * wo * co * DTYPE_BYTES[odt])
    bounds = None
    if dt == "i8":
        each, w_max = nx.product_bound(np.empty(0, np_dt), np.empty((co, kh, kw, cig), np_dt))
        bounds = (each, w_max, each * cig * kh * kw)
    pad = None
    if any(pads):
        pad = ((n, hi + pads[0] + pads[1], wi + pads[2] + pads[3], ci), pads, np_dt)
    return ConvPlan(dt, np_dt, x_at, (n, hi, wi, ci), w_at, (co, kh, kw, cig), dst_at, odt,
                    (kh, kw, a["sh"], a["sw"], pads, a["dh"], a["dw"], ho, wo), bounds, pad)


def conv(ctx, a):
    """groups=1 convs of float32-exact rows go to ctx.gemms, computed when their output is first
    touched, stacked with other tiles of the same weights (mlusim/isa/deferred.py); the rest now."""
    plan = ctx.gemms.memo(a, conv_plan)
    nram = ctx.mem("nram")
    x = nram[plan.x_at[0]:plan.x_at[1]].view(plan.np_dt).reshape(plan.x_shape)
    w = ctx.mem("wram")[plan.w_at[0]:plan.w_at[1]].view(plan.np_dt).reshape(plan.w_shape)
    odt, dt = plan.odt, plan.dt
    dst = nram[plan.dst_at[0]:plan.dst_at[1]].view(nx.NP_DTYPES[odt])
    if a["groups"] == 1:
        pad = None if plan.pad is None else ctx.gemms.scratch(plan.pad)
        g = nx.conv_gemm_planned(x, w, plan.window, plan.bounds, pad)
        plain = _plain(odt, dt, g.bound)
        store = partial(_store_plain, dst) if plain else partial(_store, dst, odt, a["pos"], dt, g.bound)
        if g.stage is np.float32:
            ctx.gemms.defer(ctx.id, plan.w_at[0], plan.dst_at[0], plan.dst_at[1], g, store, plain)
        else:
            store(nx.gemm_exact(g.rows(), g.weights, g.each, g.w_max))
        return
    sums, bound = nx.conv_sums(x, w, a["sh"], a["sw"], plan.window[4], a["dh"], a["dw"], a["groups"])
    _store(dst, odt, a["pos"], dt, bound, sums)


def _plain(odt: str, dt: str, bound: float) -> bool:
    """Whether a conv's sums are stored as they are: int32 output of sums that fit, no wrap."""
    return odt == "i32" and dt != "i16" and bound < 2**31


def _store_plain(dst: np.ndarray, sums: np.ndarray) -> None:
    """Exact sums that fit int32 (_plain) stored as they are."""
    dst[:] = sums.reshape(-1)


def _store(dst: np.ndarray, odt: str, pos: int, dt: str, bound: float, sums: np.ndarray) -> None:
    """A conv's exact sums (any shape, float or int type) into its destination as `odt`."""
    if _plain(odt, dt, bound):
        dst[:] = sums.reshape(-1)          # exact integers that fit: no 32-bit wrap to apply (plain)
    else:
        dst[:] = nx.out_cast(sums.astype(np.int64), odt, pos, dt).reshape(-1)


def check_matmul(a):
    if E(a, "dt") not in ("i8", "i16"):
        return "matmul takes dt=i8 or i16"
    if min(a["m"], a["k"], a["n"]) == 0:
        return "m, k and n must be >= 1"
    return None


def touch_matmul(a):
    esz = DTYPE_BYTES[E(a, "dt")]
    osz = DTYPE_BYTES[_odt(a)]
    return [("nram", a["a"], a["m"] * a["k"] * esz, "r", esz), ("wram", a["b"], a["n"] * a["k"] * esz, "r", 64),
            ("nram", a["dst"], a["m"] * a["n"] * osz, "w", osz)]


def matmul(ctx, a):
    dt = E(a, "dt")
    m, k, n = a["m"], a["k"], a["n"]
    x = view(ctx, "nram", a["a"], dt, m * k).reshape(m, k)
    w = view(ctx, "wram", a["b"], dt, n * k).reshape(n, k)
    acc = nx.exact_matmul(x, w.T)
    odt = _odt(a)
    view(ctx, "nram", a["dst"], odt, m * n)[:] = nx.out_cast(acc, odt, a["pos"], dt).reshape(-1)
