"""Functional semantics of every instruction (numpy), plus the memory each one touches.

`ctx` is the executing core: `ctx.regs` (list of ints, r0 == 0), `ctx.special(name)`, and
`ctx.mem(space)` returning that space's bytes as a uint8 array. `a` maps field names to ints with
addresses already resolved to absolute byte offsets. Enum fields arrive as indices; `E` turns them
back into names. Touch functions return (space, addr, nbytes, 'r' or 'w', alignment).
"""
from __future__ import annotations

import numpy as np

from mlusim.isa import numerics as nx
from mlusim.isa.fields import DIRECTIONS, DTYPE_BYTES, DTYPES, bits_f32

DIR_NAMES = tuple(DIRECTIONS)
NP = nx.NP_DTYPES
MASK64 = (1 << 64) - 1


def E(a: dict, name: str) -> str:
    return DTYPES[a[name]]


def view(ctx, space: str, addr: int, dt: str, count: int) -> np.ndarray:
    nbytes = count * DTYPE_BYTES[dt]
    return ctx.mem(space)[addr:addr + nbytes].view(NP[dt])


# ---- scalar --------------------------------------------------------------------------------------
def _wrap64(v: int) -> int:
    v &= MASK64
    return v - (1 << 64) if v >> 63 else v


def nop(ctx, a):
    return None


def li(ctx, a):
    ctx.set_reg(a["rd"], a["imm"])


def alu(kind: str):
    fn = {"add": lambda x, y: x + y, "sub": lambda x, y: x - y, "mul": lambda x, y: x * y}[kind]

    def run(ctx, a):
        ctx.set_reg(a["rd"], _wrap64(fn(ctx.regs[a["rs1"]], ctx.regs[a["rs2"]])))

    return run


def addi(ctx, a):
    ctx.set_reg(a["rd"], _wrap64(ctx.regs[a["rs1"]] + a["imm"]))


def muli(ctx, a):
    ctx.set_reg(a["rd"], _wrap64(ctx.regs[a["rs1"]] * a["imm"]))


def rdsr(ctx, a):
    from mlusim.isa.table import SPECIAL_REGS

    ctx.set_reg(a["rd"], ctx.special(SPECIAL_REGS[a["sr"]]))


def branch(cond: str):
    tests = {"lt": lambda x, y: x < y, "ge": lambda x, y: x >= y, "ne": lambda x, y: x != y,
             "eq": lambda x, y: x == y}

    def run(ctx, a):
        if cond == "al" or tests[cond](ctx.regs[a["rs1"]], ctx.regs[a["rs2"]]):
            return a["target"]
        return None

    return run


# ---- DMA -----------------------------------------------------------------------------------------
def dma_spaces(a) -> tuple[str, str]:
    return DIRECTIONS[DIR_NAMES[a["dir"]]]


def dma_extent(size, stride, count, stride2, count2) -> int:
    return (count2 - 1) * stride2 + (count - 1) * stride + size


def check_dma(a):
    size, cnt, cnt2 = a["size"], a["count"], a["count2"]
    if size == 0 or cnt == 0 or cnt2 == 0:
        return "size, count and count2 must be >= 1"
    if cnt > 1 and a["dstride"] < size:
        return f"destination segments overlap (dstride {a['dstride']} < size {size})"
    if cnt2 > 1 and a["dstride2"] < dma_extent(size, a["dstride"], cnt, 0, 1):
        return "destination blocks overlap (dstride2 smaller than one block)"
    if a["dcl"] and DIR_NAMES[a["dir"]] != "s2s":
        return f"dcl={a['dcl']} (another cluster's SRAM) is only for s2s, not {DIR_NAMES[a['dir']]}"
    return None


def touch_dma(a):
    src_space, dst_space = dma_spaces(a)
    return [(src_space, a["src"], dma_extent(a["size"], a["sstride"], a["count"], a["sstride2"], a["count2"]), "r", 1),
            (dst_space, a["dst"], dma_extent(a["size"], a["dstride"], a["count"], a["dstride2"], a["count2"]), "w", 1)]


def _strided(buf: np.ndarray, addr: int, size: int, stride: int, count: int, stride2: int, count2: int):
    return np.lib.stride_tricks.as_strided(buf[addr:], shape=(count2, count, size),
                                           strides=(stride2, stride, 1), writeable=True)


def dma(ctx, a):
    src_space, dst_space = dma_spaces(a)
    dbuf = ctx.remote_sram(a["dcl"] - 1) if a["dcl"] else ctx.mem(dst_space)
    if a["count"] == 1 and a["count2"] == 1:
        n, s, d = a["size"], a["src"], a["dst"]
        dbuf[d:d + n] = ctx.mem(src_space)[s:s + n]
        return
    src = _strided(ctx.mem(src_space), a["src"], a["size"], a["sstride"], a["count"], a["sstride2"], a["count2"])
    dst = _strided(dbuf, a["dst"], a["size"], a["dstride"], a["count"], a["dstride2"], a["count2"])
    dst[...] = src.copy() if src_space == dst_space else src


# ---- MAC array -----------------------------------------------------------------------------------
def conv_shape(a) -> tuple[int, int]:
    ho = nx.conv_out_size(a["hi"], a["kh"], a["sh"], a["pt"], a["pb"], a["dh"])
    wo = nx.conv_out_size(a["wi"], a["kw"], a["sw"], a["pl"], a["pr"], a["dw"])
    return ho, wo


def _odt(a) -> str:
    from mlusim.isa.table import OUT_DTYPES

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


def conv(ctx, a):
    dt = E(a, "dt")
    ho, wo = conv_shape(a)
    n, hi, wi, ci, co = a["n"], a["hi"], a["wi"], a["ci"], a["co"]
    x = view(ctx, "nram", a["src"], dt, n * hi * wi * ci).reshape(n, hi, wi, ci)
    cig = ci // a["groups"]
    w = view(ctx, "wram", a["wgt"], dt, co * a["kh"] * a["kw"] * cig).reshape(co, a["kh"], a["kw"], cig)
    acc = nx.conv_nhwc(x, w, a["sh"], a["sw"], (a["pt"], a["pb"], a["pl"], a["pr"]), a["dh"], a["dw"], a["groups"])
    odt = _odt(a)
    view(ctx, "nram", a["dst"], odt, acc.size)[:] = nx.out_cast(acc, odt, a["pos"], dt).reshape(-1)


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


# ---- vector unit ---------------------------------------------------------------------------------
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


def _t(a, field, dt_field="dt", count="n"):
    esz = DTYPE_BYTES[E(a, dt_field)]
    return a[field], a[count] * esz, esz


def touch_binary(a):
    out = []
    for f, rw in (("a", "r"), ("b", "r"), ("dst", "w")):
        addr, nb, al = _t(a, f)
        out.append(("nram", addr, nb, rw, al))
    return out


def touch_unary(a):
    return [("nram",) + _t(a, "src")[:2] + ("r", _t(a, "src")[2]), ("nram",) + _t(a, "dst")[:2] + ("w", _t(a, "dst")[2])]


def touch_set(a):
    addr, nb, al = _t(a, "dst")
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


def requant_values(acc: np.ndarray, params: np.ndarray, zp: int, lo: int, hi: int, odt: str) -> np.ndarray:
    """acc int32 [..., c] with params int32 [c, 3] -> odt. Shared with the compiler's reference."""
    bias, mult, shift = (params[:, i].astype(np.int64) for i in range(3))
    shift = np.clip(shift, 0, 62)
    prod = (acc.astype(np.int64) + bias) * mult
    q = nx.rne_shift(prod, shift) + zp
    return nx.saturate(np.clip(q, lo, hi), odt)


def vrequant(ctx, a):
    c, n, odt = a["c"], a["n"], E(a, "odt")
    acc = view(ctx, "nram", a["src"], "i32", n).reshape(-1, c)
    params = view(ctx, "nram", a["params"], "i32", c * 3).reshape(c, 3)
    view(ctx, "nram", a["dst"], odt, n)[:] = requant_values(acc, params, a["zp"], a["lo"], a["hi"], odt).reshape(-1)


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


def _pool_geom(a):
    ho = nx.conv_out_size(a["hi"], a["kh"], a["sh"], a["pt"], a["pb"], 1)
    wo = nx.conv_out_size(a["wi"], a["kw"], a["sw"], a["pl"], a["pr"], 1)
    return ho, wo


def check_pool(a):
    for k in ("n", "hi", "wi", "c", "kh", "kw", "sh", "sw"):
        if a[k] == 0:
            return f"{k} must be >= 1"
    if max(a["pt"], a["pb"]) >= a["kh"] or max(a["pl"], a["pr"]) >= a["kw"]:
        return "padding must be smaller than the window"
    ho, wo = _pool_geom(a)
    return None if ho >= 1 and wo >= 1 else "window larger than the padded input"


def _pool_out_dt(a) -> str:
    dt = E(a, "dt")
    if a["mode"] == 0:
        return dt
    return "i32" if dt in nx.INT_DTYPES else "f32"


def touch_pool(a):
    dt = E(a, "dt")
    ho, wo = _pool_geom(a)
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
