"""Bit-exact tests: every vector/MAC instruction and a strided DMA, run through the simulator and
compared with the independent reference in tests/reference.py (written from docs/numerics.md)."""
from __future__ import annotations

import os
import sys
import warnings
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mlusim.errors import MlusimError
from mlusim.isa.encoding import Instr
from mlusim.program import Kernel, Program, TensorDecl, allocate
from mlusim.sim import simulate

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import reference as R  # noqa: E402

NP = R.NP
DT_OF = {np.dtype(v): k for k, v in NP.items()}
INT_DT = R.INT_DT
FLOAT_DT = R.FLOAT_DT
ALL_DT = INT_DT + FLOAT_DT
NRAM_BYTES = 384 * 1024
WRAM_BYTES = 1024 * 1024
ALIGN = 64

PROP = settings(max_examples=int(os.environ.get("NUMERICS_EXAMPLES", "200")), deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                       HealthCheck.filter_too_much])


# --------------------------------------------------------------------------------------------------
# harness
# --------------------------------------------------------------------------------------------------
def _align(a: int) -> int:
    return -(-a // ALIGN) * ALIGN


def run(mn: str, inputs: dict, out_dt: str, out_shape, **fields) -> np.ndarray:
    """Run one compute instruction `mn`. `inputs` maps an address field name to (space, array): each
    array becomes a GDRAM const tensor loaded by DMA into NRAM/WRAM at a fresh 64-byte aligned
    address; `dst` is a fresh NRAM buffer of `out_shape` x `out_dt` that is stored back and returned."""
    tensors, loads = [], []
    nxt = {"nram": 0, "wram": 0}
    for name, (space, arr) in inputs.items():
        arr = np.ascontiguousarray(arr)
        assert arr.size > 0
        a = _align(nxt[space])
        nxt[space] = a + arr.nbytes
        fields[name] = a
        t = TensorDecl(f"in_{name}", "const", DT_OF[arr.dtype], (arr.size,), -1, data=arr.reshape(-1))
        tensors.append(t)
        loads.append((space, a, t))
    nout = int(np.prod(out_shape))
    dst = _align(nxt["nram"])
    nxt["nram"] = dst + nout * np.dtype(NP[out_dt]).itemsize
    assert nxt["nram"] <= NRAM_BYTES and nxt["wram"] <= WRAM_BYTES
    y = TensorDecl("y", "output", out_dt, (nout,), -1)
    tensors.append(y)
    allocate(tensors)
    stream = []
    for i, (space, a, t) in enumerate(loads):
        deps = {"sig": "cp"} if i == len(loads) - 1 else {}
        stream.append(Instr.make("dma", dir="g2n" if space == "nram" else "g2w", dst=a, src=t.addr,
                                 size=t.nbytes, **deps))
    deps = {"wait": "ld"} if loads else {}
    stream.append(Instr.make(mn, dst=dst, sig="st", **deps, **fields))
    stream.append(Instr.make("dma", dir="n2g", dst=y.addr, src=dst, size=y.nbytes, wait="cp"))
    prog = Program([Kernel("k", "block", 1, [stream])], tensors)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        res = simulate(prog, "mlu270", cores=1)
    return res.outputs["y"].reshape(out_shape)


def assert_bits(got: np.ndarray, exp: np.ndarray, ctx=None):
    """Bit-for-bit equality; floats compared through their bit patterns (NaN payloads included)."""
    got, exp = np.asarray(got), np.asarray(exp)
    assert got.dtype == exp.dtype, (got.dtype, exp.dtype)
    assert got.shape == exp.shape, (got.shape, exp.shape)
    if exp.dtype.kind == "f":
        u = {2: np.uint16, 4: np.uint32}[exp.dtype.itemsize]
        g, e = got.view(u), exp.view(u)
    else:
        g, e = got, exp
    if not np.array_equal(g, e):
        bad = np.argwhere(g != e)
        lines = []
        for idx in bad[:8]:
            idx = tuple(idx)
            lines.append(f"  at {idx}: got {got[idx]!r} (0x{int(g[idx]) & 0xFFFFFFFF:x}) "
                         f"expected {exp[idx]!r} (0x{int(e[idx]) & 0xFFFFFFFF:x})")
        raise AssertionError(f"{len(bad)} of {exp.size} elements differ {ctx or ''}\n" + "\n".join(lines))


# --------------------------------------------------------------------------------------------------
# data generators (numpy RNG seeded by hypothesis, so runs are deterministic)
# --------------------------------------------------------------------------------------------------
def rand_int(rng, dt, shape, extreme=0.2, lim=None):
    lo, hi = R.int_range(dt)
    if lim is not None:
        lo, hi = max(lo, lim[0]), min(hi, lim[1])
    x = rng.integers(lo, hi, size=shape, endpoint=True, dtype=np.int64)
    ext = np.array(sorted({lo, lo + 1, -1 if lo < 0 else lo, 0 if lo <= 0 else lo, 1, hi - 1, hi}),
                   dtype=np.int64)
    ext = ext[(ext >= lo) & (ext <= hi)]
    mask = rng.random(shape) < extreme
    x = np.where(mask, rng.choice(ext, size=shape), x)
    return x.astype(NP[dt])


def rand_float(rng, dt, shape, specials=False, nan=False, neg_zero=False):
    n = int(np.prod(shape))
    p, emin, emax = {"f16": (11, -14, 15), "f32": (24, -126, 127)}[dt]
    fmax = float(np.finfo(NP[dt]).max)
    kind = rng.integers(0, 4, n)
    sign = rng.choice([-1.0, 1.0], n)
    wide = sign * np.ldexp(1.0 + rng.random(n), rng.integers(emin - p + 1, emax + 1, n))
    halves = rng.integers(-80, 81, n) / 2.0                 # exact x.5 ties and small integers
    modest = rng.standard_normal(n) * 8.0
    ints = rng.integers(-300, 301, n).astype(np.float64)
    vals = np.select([kind == 0, kind == 1, kind == 2], [wide, halves, modest], ints)
    vals = np.clip(vals, -fmax, fmax)
    x = vals.astype(NP[dt])
    if specials:
        sp = [np.inf, -np.inf, fmax, -fmax, float(np.finfo(NP[dt]).smallest_subnormal), 0.0]
        if nan:
            sp.append(np.nan)
        if neg_zero:
            sp.append(-0.0)
        mask = rng.random(n) < 0.15
        x = np.where(mask, np.array(sp, dtype=NP[dt])[rng.integers(0, len(sp), n)], x)
    if not neg_zero:
        x = np.where(x == 0, NP[dt](0.0), x)
    return x.astype(NP[dt]).reshape(shape)


def rand_data(rng, dt, shape, **kw):
    if dt in INT_DT:
        return rand_int(rng, dt, shape)
    return rand_float(rng, dt, shape, **kw)


seeds = st.integers(0, 2**32 - 1)


def f32_field(x) -> int:
    return int(np.array([x], dtype=np.float32).view(np.uint32)[0])


# --------------------------------------------------------------------------------------------------
# MAC array: conv, matmul
# --------------------------------------------------------------------------------------------------
@st.composite
def conv_cases(draw):
    dt = draw(st.sampled_from(["i8", "i16"]))
    if draw(st.booleans()):                       # depthwise: groups == ci == co
        ci = co = groups = draw(st.integers(1, 6))
    else:
        groups = draw(st.integers(1, 3))
        ci = groups * draw(st.integers(1, 4))
        co = groups * draw(st.integers(1, 3))
    kh, kw = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    sh, sw = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    dh, dw = draw(st.integers(1, 2)), draw(st.integers(1, 2))
    eh, ew = dh * (kh - 1) + 1, dw * (kw - 1) + 1
    # the simulator rejects padding >= the (dilated) window (a legality check, not numerics)
    pt, pb = draw(st.integers(0, min(2, eh - 1))), draw(st.integers(0, min(2, eh - 1)))
    pl, pr = draw(st.integers(0, min(2, ew - 1))), draw(st.integers(0, min(2, ew - 1)))
    hi = draw(st.integers(max(1, eh - pt - pb), eh + 4))
    wi = draw(st.integers(max(1, ew - pl - pr), ew + 4))
    n = draw(st.integers(1, 2))
    odt = draw(st.sampled_from(["i32", "f16", "f32"]))
    pos = draw(st.sampled_from([0, -1, -7, -12, -20, -30, -45, 3, 10, 100])) if odt != "i32" else 0
    return dict(dt=dt, n=n, hi=hi, wi=wi, ci=ci, co=co, kh=kh, kw=kw, sh=sh, sw=sw, dh=dh, dw=dw,
                pads=(pt, pb, pl, pr), groups=groups, odt=odt, pos=pos, seed=draw(seeds))


def run_conv(x, w, case):
    c = case
    pt, pb, pl, pr = c["pads"]
    ho = R.conv_out_size(c["hi"], pt, pb, c["kh"], c["sh"], c["dh"])
    wo = R.conv_out_size(c["wi"], pl, pr, c["kw"], c["sw"], c["dw"])
    return run("conv", {"src": ("nram", x), "wgt": ("wram", w)}, c["odt"], (c["n"], ho, wo, c["co"]),
               dt=c["dt"], odt=c["odt"], n=c["n"], hi=c["hi"], wi=c["wi"], ci=c["ci"], co=c["co"],
               kh=c["kh"], kw=c["kw"], sh=c["sh"], sw=c["sw"], pt=pt, pb=pb, pl=pl, pr=pr,
               dh=c["dh"], dw=c["dw"], groups=c["groups"], pos=c["pos"])


@PROP
@given(conv_cases())
def test_conv(case):
    rng = np.random.default_rng(case["seed"])
    c = case
    x = rand_int(rng, c["dt"], (c["n"], c["hi"], c["wi"], c["ci"]))
    w = rand_int(rng, c["dt"], (c["co"], c["kh"], c["kw"], c["ci"] // c["groups"]))
    exp = R.ref_conv(x, w, c["sh"], c["sw"], c["pads"], c["dh"], c["dw"], c["groups"], c["odt"], c["pos"])
    assert_bits(run_conv(x, w, c), exp, case)


@pytest.mark.parametrize("odt,pos", [("i32", 0), ("f32", -30), ("f16", -20)])
def test_conv_accumulator_wraps(odt, pos):
    # i16 1x1 conv with ci=3, every product (-32768)**2 = 2**30: exact sum 3*2**30 wraps to -2**30
    case = dict(dt="i16", n=1, hi=2, wi=2, ci=3, co=2, kh=1, kw=1, sh=1, sw=1, dh=1, dw=1,
                pads=(0, 0, 0, 0), groups=1, odt=odt, pos=pos)
    x = np.full((1, 2, 2, 3), -32768, np.int16)
    w = np.full((2, 1, 1, 3), -32768, np.int16)
    w[1, 0, 0, 2] = 0                                      # 2 * 2**30 = 2**31 wraps to -2**31
    exp = R.ref_conv(x, w, 1, 1, (0, 0, 0, 0), 1, 1, 1, odt, pos)
    if odt == "i32":
        assert exp[0, 0, 0, 0] == -(1 << 30) and exp[0, 0, 0, 1] == -(1 << 31)
    assert_bits(run_conv(x, w, case), exp)


def run_matmul(a, b, dt, odt, pos):
    m, k = a.shape
    n = b.shape[0]
    return run("matmul", {"a": ("nram", a), "b": ("wram", b)}, odt, (m, n), dt=dt, odt=odt, m=m, k=k,
               n=n, pos=pos)


@PROP
@given(st.sampled_from(["i8", "i16"]), st.integers(1, 5), st.integers(1, 40), st.integers(1, 5),
       st.sampled_from(["i32", "f16", "f32"]), st.integers(-60, 20), seeds)
def test_matmul(dt, m, k, n, odt, pos, seed):
    rng = np.random.default_rng(seed)
    a = rand_int(rng, dt, (m, k))
    b = rand_int(rng, dt, (n, k))
    pos = 0 if odt == "i32" else pos
    assert_bits(run_matmul(a, b, dt, odt, pos), R.ref_matmul(a, b, odt, pos), (dt, odt, pos))


@pytest.mark.parametrize("odt,pos", [("i32", 0), ("f32", -30), ("f16", -28)])
def test_matmul_accumulator_wraps(odt, pos):
    a = np.full((2, 3), -32768, np.int16)
    a[1, 2] = 0
    b = np.full((2, 3), -32768, np.int16)
    b[1] = [32767, 32767, 32767]
    exp = R.ref_matmul(a, b, odt, pos)
    if odt == "i32":
        # 3*2**30 -> -2**30 ; 2*2**30 = 2**31 -> -2**31 ; -3*(2**30-2**15) ; -2*(2**30-2**15)
        assert exp.tolist() == [[-(1 << 30), R.wrap32(-3 * (2**30 - 2**15))],
                                [-(1 << 31), -2 * (2**30 - 2**15)]]
    assert_bits(run_matmul(a, b, "i16", odt, pos), exp)


def test_matmul_float_output_rounds_once():
    # accumulators 2**26 + 2**15 + 1, 2**26 + 2**15, 2**26 + 3*2**15 scaled by 2**-20 into f16:
    # 64 + 2**-5 + 2**-20 -> 64.0625 (rounding via f32 first would give 64.0); ties go to even.
    a = np.array([[8192, 8192, 1], [8192, 8192, 0], [8192, 24576, 0]], np.int16)
    b = np.array([[8192, 4, 1]], np.int16)
    exp = R.ref_matmul(a, b, "f16", -20)
    assert exp.reshape(-1).tolist() == [64.0625, 64.0, 64.125]
    assert_bits(run_matmul(a, b, "i16", "f16", -20), exp)
    exp32 = R.ref_matmul(a, b, "f32", -20)
    assert_bits(run_matmul(a, b, "i16", "f32", -20), exp32)


# --------------------------------------------------------------------------------------------------
# elementwise
# --------------------------------------------------------------------------------------------------
BINARY = {"vadd": "add", "vsub": "sub", "vmul": "mul", "vmax": "max", "vmin": "min"}


def run_binary(mn, a, b, dt):
    return run(mn, {"a": ("nram", a), "b": ("nram", b)}, dt, a.shape, dt=dt, n=a.size)


@PROP
@given(st.sampled_from(sorted(BINARY)), st.sampled_from(ALL_DT), st.integers(1, 70), seeds)
def test_binary(mn, dt, n, seed):
    rng = np.random.default_rng(seed)
    # -0.0 is excluded for max/min: the contract does not order +0 and -0
    kw = dict(specials=True, nan=True, neg_zero=mn not in ("vmax", "vmin"))
    a, b = rand_data(rng, dt, (n,), **kw), rand_data(rng, dt, (n,), **kw)
    assert_bits(run_binary(mn, a, b, dt), R.ref_binary(BINARY[mn], a, b, dt), (mn, dt))


@pytest.mark.parametrize("mn,dt,a,b,want", [
    ("vadd", "i8", [127, -128, 100, -100], [1, -1, 100, -100], [127, -128, 127, -128]),
    ("vsub", "i8", [-128, 127, 0], [1, -1, -128], [-128, 127, 127]),
    ("vsub", "u8", [0, 5, 255], [1, 10, 0], [0, 0, 255]),
    ("vadd", "u8", [200, 255], [100, 1], [255, 255]),
    ("vmul", "i16", [300, -300, -32768, 181], [300, 300, -1, 181], [32767, -32768, 32767, 32761]),
    ("vmul", "i32", [65536, -65536, -2**31], [65536, 65536, -1], [2**31 - 1, -2**31, 2**31 - 1]),
    ("vadd", "i32", [2**31 - 1, -2**31], [1, -1], [-2**31, 2**31 - 1]),      # i32 sums wrap
    ("vmax", "i8", [-128, 5], [127, -5], [127, 5]),
    ("vmin", "u8", [0, 255], [255, 7], [0, 7]),
])
def test_binary_int_saturation(mn, dt, a, b, want):
    a, b = np.array(a, NP[dt]), np.array(b, NP[dt])
    exp = R.ref_binary(BINARY[mn], a, b, dt)
    assert exp.tolist() == want
    assert_bits(run_binary(mn, a, b, dt), exp)


def test_binary_f16_rounds_in_f16():
    a = np.array([2048, 1, 65504, 0.1, -2.0**-24], np.float16)
    b = np.array([1, 2.0**-11, 32, 0.2, 2.0**-25], np.float16)
    for mn in ("vadd", "vsub", "vmul"):
        assert_bits(run_binary(mn, a, b, "f16"), R.ref_binary(BINARY[mn], a, b, "f16"), mn)
    assert R.ref_binary("add", a, b, "f16")[0] == 2048          # 2049 ties to even
    assert np.isinf(R.ref_binary("add", a, b, "f16")[2])         # 65536 overflows


@PROP
@given(st.sampled_from(ALL_DT), st.integers(1, 70), seeds)
def test_relu(dt, n, seed):
    rng = np.random.default_rng(seed)
    x = rand_data(rng, dt, (n,), specials=True)                 # no NaN, no -0.0 (max(-0, 0) unspecified)
    got = run("vrelu", {"src": ("nram", x)}, dt, (n,), dt=dt, n=n)
    assert_bits(got, R.ref_relu(x, dt), dt)


lohi = st.one_of(st.integers(-(1 << 31), (1 << 31) - 1), st.integers(-300, 300),
                 st.sampled_from([-128, 127, 0, 255, -32768, 32767]))


@PROP
@given(st.sampled_from(INT_DT), st.integers(1, 70), lohi, lohi, seeds)
def test_clamp(dt, n, lo, hi, seed):
    rng = np.random.default_rng(seed)
    x = rand_int(rng, dt, (n,))
    got = run("vclamp", {"src": ("nram", x)}, dt, (n,), dt=dt, n=n, lo=lo, hi=hi)
    assert_bits(got, R.ref_clamp(x, dt, lo, hi), (dt, lo, hi))


@pytest.mark.parametrize("dt,value", [
    ("i8", 5), ("i8", 300), ("i8", -300), ("u8", -1), ("u8", 256), ("i16", 40000), ("i16", -40000),
    ("i32", -(1 << 31)), ("i32", (1 << 31) - 1), ("f32", -7), ("f32", (1 << 31) - 1),
    ("f32", 16777217), ("f16", 2049), ("f16", 2051), ("f16", -65504), ("f16", 0)])
def test_set(dt, value):
    got = run("vset", {}, dt, (19,), dt=dt, n=19, value=value)
    assert_bits(got, R.ref_set(19, dt, value), (dt, value))


# --------------------------------------------------------------------------------------------------
# conversions
# --------------------------------------------------------------------------------------------------
@PROP
@given(st.sampled_from(ALL_DT), st.sampled_from(ALL_DT), st.integers(1, 70), seeds)
def test_cast(sdt, ddt, n, seed):
    rng = np.random.default_rng(seed)
    x = rand_data(rng, sdt, (n,), specials=True, nan=True, neg_zero=True)
    got = run("vcast", {"src": ("nram", x)}, ddt, (n,), sdt=sdt, ddt=ddt, n=n)
    assert_bits(got, R.ref_cast(x, sdt, ddt), (sdt, ddt))


TIES = [0.5, 1.5, 2.5, 3.5, -0.5, -1.5, -2.5, -3.5, 126.5, 127.5, -127.5, -128.5, 0.49999997,
        -0.49999997, 1e10, -1e10, np.nan, np.inf, -np.inf, 2.0**31, -2.0**31, 65535.5, -0.0]


@pytest.mark.parametrize("sdt", FLOAT_DT)
@pytest.mark.parametrize("ddt", INT_DT)
def test_cast_float_to_int_edges(sdt, ddt):
    with np.errstate(all="ignore"):
        x = np.array(TIES, np.float32).astype(NP[sdt])
    got = run("vcast", {"src": ("nram", x)}, ddt, x.shape, sdt=sdt, ddt=ddt, n=x.size)
    exp = R.ref_cast(x, sdt, ddt)
    if sdt == "f32" and ddt == "i32":
        assert exp[:8].tolist() == [0, 2, 2, 4, 0, -2, -2, -4] and exp[16] == 0
        assert exp[19] == 2**31 - 1 and exp[20] == -2**31
    assert_bits(got, exp, (sdt, ddt))


def test_cast_int_to_float_rounding():
    x = np.array([2**31 - 1, 16777217, 16777219, 65504, 65519, 65520, -65520, 2049, 2051, -2049],
                 np.int32)
    for ddt in FLOAT_DT:
        got = run("vcast", {"src": ("nram", x)}, ddt, x.shape, sdt="i32", ddt=ddt, n=x.size)
        assert_bits(got, R.ref_cast(x, "i32", ddt), ddt)
    assert R.ref_cast(x, "i32", "f16").tolist()[3:10] == [65504, 65504, np.inf, -np.inf, 2048, 2052, -2048]


def test_cast_nan_payloads_and_signed_zero():
    bits32 = np.array([0x7FC00000, 0xFFC00000, 0x7F800001, 0x7FA00000, 0x7FFFFFFF, 0xFF802000,
                       0x80000000, 0x00000001, 0x7F800000, 0xFF800000], np.uint32)
    bits16 = np.array([0x7E00, 0xFE00, 0x7C01, 0x7D00, 0x7FFF, 0xFC20, 0x8000, 0x0001, 0x7C00, 0xFC00],
                      np.uint16)
    for x, sdt in ((bits32.view(np.float32), "f32"), (bits16.view(np.float16), "f16")):
        for ddt in ALL_DT:
            got = run("vcast", {"src": ("nram", x)}, ddt, x.shape, sdt=sdt, ddt=ddt, n=x.size)
            assert_bits(got, R.ref_cast(x, sdt, ddt), (sdt, ddt))


@st.composite
def requant_cases(draw):
    c = draw(st.integers(1, 4))
    n = c * draw(st.integers(1, 12))
    odt = draw(st.sampled_from(INT_DT))
    seed = draw(seeds)
    zp = draw(st.one_of(st.integers(-200, 200), st.integers(-(1 << 31), (1 << 31) - 1)))
    lo, hi = draw(lohi), draw(lohi)
    if draw(st.booleans()):
        lo, hi = -(1 << 31), (1 << 31) - 1
    return c, n, odt, seed, zp, lo, hi


@PROP
@given(requant_cases())
def test_requant(case):
    c, n, odt, seed, zp, lo, hi = case
    rng = np.random.default_rng(seed)
    src = rand_int(rng, "i32", (n,))
    bias = rand_int(rng, "i32", (c,), lim=(-(1 << 31), (1 << 31) - 1))
    bias = np.where(rng.random(c) < 0.5, rng.integers(-1000, 1000, c), bias)
    # mult: a 31-bit integer (both signs exercised); -2**31 excluded so (src+bias)*mult fits int64
    mult = np.where(rng.random(c) < 0.5, rng.integers(1 << 29, 1 << 31, c),
                    rng.integers(-(1 << 31) + 1, 1 << 31, c))
    mult = np.where(rng.random(c) < 0.3, rng.integers(-255, 256, c), mult)   # visible ties in i8
    mult = np.where(rng.random(c) < 0.1, rng.integers(-3, 4, c), mult)
    shift = rng.integers(0, 63, c)
    shift = np.where(rng.random(c) < 0.2, rng.choice([-5, -1, 0, 1, 62, 63, 100], c), shift)
    shift = np.where(rng.random(c) < 0.3, rng.integers(1, 5, c), shift)       # small shifts: ties
    # make about a third of the elements exact ties, rne(k + 1/2): for odd mult,
    # (src + bias) * mult = 2**(s-1) (mod 2**s)  iff  src + bias = 2**(s-1) (mod 2**s)
    for i in range(n):
        ch = i % c
        s = min(max(int(shift[ch]), 0), 62)
        if s >= 1 and int(mult[ch]) % 2 and rng.random() < 0.35:
            k = int(rng.integers(-20, 20))
            v = k * (1 << s) + (1 << (s - 1)) - int(bias[ch])
            if -(1 << 31) <= v < (1 << 31):
                src[i] = v
    params = np.stack([bias, mult, shift], axis=1).astype(np.int32)
    got = run("vrequant", {"src": ("nram", src), "params": ("nram", params)}, odt, (n,), odt=odt,
              c=c, n=n, zp=zp, lo=lo, hi=hi)
    assert_bits(got, R.ref_requant(src, params, c, odt, zp, lo, hi), case)


@PROP
@given(st.sampled_from(INT_DT), st.integers(1, 24), st.integers(-255, 255), st.integers(-1000, 1000),
       st.integers(-20, 20), st.integers(1, 3), seeds)
def test_requant_ties(odt, shift, mult, bias, zp, c, seed):
    """Every element is an exact tie rne(q + 1/2), with q small enough to be visible in the output."""
    rng = np.random.default_rng(seed)
    mult = mult or 1
    tz = (abs(mult) & -abs(mult)).bit_length() - 1          # trailing zero bits of mult
    shift = max(shift, tz + 1)
    m = shift - tz                                          # (src + bias) = k*2**m + 2**(m-1)
    n = c * 16
    k = rng.integers(-40, 40, n)
    src = (k * (1 << m) + (1 << (m - 1)) - bias).astype(np.int64)
    assert np.all(np.abs(src) < 2**31)
    src = src.astype(np.int32)
    params = np.array([[bias, mult, shift]] * c, np.int32)
    params[1:, 2] = shift                                   # same tie structure on every channel
    got = run("vrequant", {"src": ("nram", src), "params": ("nram", params)}, odt, (n,), odt=odt,
              c=c, n=n, zp=zp)
    assert_bits(got, R.ref_requant(src, params, c, odt, zp), (odt, shift, mult, bias, zp))


def test_requant_rne_ties_and_shift_clamp():
    src = np.array([5, 7, -5, -7, 6, -6, 3, -3, 1, -1, 2**31 - 1, -2**31], np.int32)
    cases = [  # (bias, mult, shift) -> expected i32 output
        ((0, 1, 1), [2, 4, -2, -4, 3, -3, 2, -2, 0, 0, 2**30, -2**30]),
        ((0, 1, 2), [1, 2, -1, -2, 2, -2, 1, -1, 0, 0, 2**29, -2**29]),
        ((0, 1, 0), src.tolist()),
        ((0, 1, -4), src.tolist()),                                  # shift clamps to 0
        ((1, 3, 1), [9, 12, -6, -9, 10, -8, 6, -3, 3, 0, None, None]),
        ((0, 2**30, 62), None), ((0, 2**30, 63), None), ((0, 2**30, 1000), None),  # clamp to 62
        ((-2**31, 2**31 - 1, 31), None),
    ]
    for (bias, mult, shift), want in cases:
        params = np.array([[bias, mult, shift]], np.int32)
        for odt in ("i32", "i8"):
            exp = R.ref_requant(src, params, 1, odt)
            if want is not None and odt == "i32":
                assert [v for v, w in zip(exp.tolist(), want) if w is not None] == \
                       [w for w in want if w is not None]
            got = run("vrequant", {"src": ("nram", src), "params": ("nram", params)}, odt, src.shape,
                      odt=odt, c=1, n=src.size)
            assert_bits(got, exp, (bias, mult, shift, odt))
    # shift 62 and 63 must agree (63 is clamped to 62)
    p62 = R.ref_requant(src, np.array([[0, 2**30, 62]], np.int32), 1, "i32")
    p63 = R.ref_requant(src, np.array([[0, 2**30, 63]], np.int32), 1, "i32")
    assert np.array_equal(p62, p63)


def test_requant_zp_and_activation_clamp():
    src = np.arange(-40, 40, dtype=np.int32) * 37
    params = np.array([[10, 1 << 30, 33]], np.int32)           # multiplier 1/8
    for lo, hi, zp, odt in [(3, 2**31 - 1, 3, "u8"), (-128, 60, -5, "i8"), (-1000, 1000, 200, "i8")]:
        got = run("vrequant", {"src": ("nram", src), "params": ("nram", params)}, odt, src.shape,
                  odt=odt, c=1, n=src.size, zp=zp, lo=lo, hi=hi)
        assert_bits(got, R.ref_requant(src, params, 1, odt, zp, lo, hi), (lo, hi, zp, odt))


scales = st.one_of(st.floats(-1000.0, 1000.0, width=32, allow_nan=False, allow_infinity=False),
                   st.floats(float(np.float32(1e-8)), float(np.float32(0.1)), width=32), st.sampled_from([1.0, 0.5, -0.5, 2.0**-7, 3.0e38,
                                                                      1e-40, 0.0, 1.0 / 3]))


@PROP
@given(st.sampled_from(INT_DT), st.sampled_from(FLOAT_DT), st.integers(1, 60), scales,
       st.one_of(st.integers(-300, 300), st.integers(-(1 << 31), (1 << 31) - 1)), seeds)
def test_dequant(sdt, odt, n, scale, zp, seed):
    rng = np.random.default_rng(seed)
    x = rand_int(rng, sdt, (n,))
    got = run("vdequant", {"src": ("nram", x)}, odt, (n,), sdt=sdt, odt=odt, n=n,
              scale=f32_field(scale), zp=zp)
    assert_bits(got, R.ref_dequant(x, odt, scale, zp), (sdt, odt, scale, zp))


def test_dequant_rounds_once():
    # (2**24 + 1) * 1.0 -> f32 rounds to even; (2049) * 1 -> f16 2048; 3 * (1/3 as f32) etc.
    x = np.array([2**24 + 1, 2**24 + 3, 2049, 2051, 3, -7, 2**31 - 1, -2**31], np.int32)
    for scale in (1.0, np.float32(1) / np.float32(3), 2.0**-10, 1e-30):
        for odt in FLOAT_DT:
            got = run("vdequant", {"src": ("nram", x)}, odt, x.shape, sdt="i32", odt=odt, n=x.size,
                      scale=f32_field(scale), zp=1)
            assert_bits(got, R.ref_dequant(x, odt, scale, 1), (scale, odt))


@pytest.mark.parametrize("d,scale_bits", [(2901768257, 1065523137), (2520594335, 1070212191),
                                           (2200486171, 1069723923), (2660948417, 1069561409)])
def test_dequant_large_difference_rounds_float64_product(d, scale_bits):
    """For |src - zp| >= 2**29 the contract's float64 product can itself round: these cases land the
    float64 product exactly on a float32 tie (so the result differs from rounding the exact product)."""
    src = np.array([2**31 - 1], np.int32)
    zp = 2**31 - 1 - d
    scale = np.array([scale_bits], np.uint32).view(np.float32)[0]
    exp = R.ref_dequant(src, "f32", scale, zp)
    exact = R.round_to_float(Fraction(d) * Fraction(float(scale)), "f32")
    assert exp[0] != exact                                  # the case really is a double rounding
    got = run("vdequant", {"src": ("nram", src)}, "f32", (1,), sdt="i32", odt="f32", n=1,
              scale=scale_bits, zp=zp)
    assert_bits(got, exp, (d, scale_bits))


@PROP
@given(st.sampled_from(FLOAT_DT), st.sampled_from(INT_DT), st.integers(1, 60),
       st.one_of(scales.filter(lambda s: s != 0.0), st.just(1.0)),
       st.one_of(st.integers(-300, 300), st.integers(-(1 << 31), (1 << 31) - 1)), seeds)
def test_quant(sdt, odt, n, scale, zp, seed):
    rng = np.random.default_rng(seed)
    x = rand_float(rng, sdt, (n,), specials=True, neg_zero=True)      # no NaN (see reference)
    got = run("vquant", {"src": ("nram", x)}, odt, (n,), sdt=sdt, odt=odt, n=n,
              scale=f32_field(scale), zp=zp)
    assert_bits(got, R.ref_quant(x, odt, scale, zp), (sdt, odt, scale, zp))


def test_quant_ties():
    x = np.array([0.5, 1.5, 2.5, -0.5, -1.5, -2.5, 0.25, 0.75, 127.5, -128.5, 3.0e38, -np.inf],
                 np.float32)
    for scale, zp, odt in [(1.0, 0, "i32"), (1.0, 3, "i8"), (2.0, -1, "i16"), (0.5, 0, "i32"),
                           (1.0, 10, "u8")]:
        got = run("vquant", {"src": ("nram", x)}, odt, x.shape, sdt="f32", odt=odt, n=x.size,
                  scale=f32_field(scale), zp=zp)
        exp = R.ref_quant(x, odt, scale, zp)
        if (scale, zp, odt) == (1.0, 0, "i32"):
            assert exp.tolist()[:10] == [0, 2, 2, 0, -2, -2, 0, 1, 128, -128]
        assert_bits(got, exp, (scale, zp, odt))


# --------------------------------------------------------------------------------------------------
# transcendental
# --------------------------------------------------------------------------------------------------
@PROP
@given(st.sampled_from(["vexp", "vlog"]), st.sampled_from(FLOAT_DT), st.integers(1, 80), seeds)
def test_exp_log(mn, dt, n, seed):
    rng = np.random.default_rng(seed)
    x = rand_float(rng, dt, (n,), specials=True, nan=True, neg_zero=True)
    if rng.random() < 0.5:
        x = (rng.standard_normal(n) * 6).astype(NP[dt])
    got = run(mn, {"src": ("nram", x)}, dt, (n,), dt=dt, n=n)
    assert_bits(got, R.ref_unary_float(mn[1:], x, dt), (mn, dt))


# --------------------------------------------------------------------------------------------------
# reductions and row broadcast
# --------------------------------------------------------------------------------------------------
@PROP
@given(st.sampled_from(["max", "min", "sum"]), st.sampled_from(ALL_DT), st.integers(1, 6),
       st.integers(1, 40), seeds)
def test_reduce(mode, dt, rows, cols, seed):
    rng = np.random.default_rng(seed)
    # max/min: no NaN and no -0.0 (their order is unspecified); sum: -0.0 is well defined because
    # the order is (acc = x[0]; acc += x[1]; ...), so it is included
    x = rand_data(rng, dt, (rows, cols), specials=(mode == "sum"), neg_zero=(mode == "sum"))
    odt = "i32" if (mode == "sum" and dt in INT_DT) else dt
    got = run("vreduce", {"src": ("nram", x)}, odt, (rows,), mode=mode, dt=dt, rows=rows, cols=cols)
    assert_bits(got, R.ref_reduce(mode, x, dt), (mode, dt))


def test_reduce_float_sum_is_left_to_right():
    x32 = np.array([[1e8, 1, -1e8, 1], [1, 1e8, 1, -1e8], [0.1, 0.2, 0.3, -0.6]], np.float32)
    x16 = np.array([[2048, 1, 1, 1, 1, 1], [1, 1, 1, 1, 2048, 1], [0.1, 0.2, 0.3, 0.4, 1000, -1000]],
                   np.float16)
    for x, dt in ((x32, "f32"), (x16, "f16")):
        got = run("vreduce", {"src": ("nram", x)}, dt, (3,), mode="sum", dt=dt, rows=3, cols=x.shape[1])
        assert_bits(got, R.ref_reduce("sum", x, dt), dt)
    assert R.ref_reduce("sum", x32, "f32")[:2].tolist() == [1.0, 0.0]
    assert R.ref_reduce("sum", x16, "f16")[:2].tolist() == [2048.0, 2052.0]


def test_reduce_int_sum_exact_then_saturated():
    x = np.array([[2**31 - 1, 1, -5], [2**31 - 1, 1, 5], [-2**31, -1, 1], [-2**31, -2**31, 2**31 - 1]],
                 np.int32)
    exp = R.ref_reduce("sum", x, "i32")
    assert exp.tolist() == [2**31 - 5, 2**31 - 1, -2**31, -2**31]
    got = run("vreduce", {"src": ("nram", x)}, "i32", (4,), mode="sum", dt="i32", rows=4, cols=3)
    assert_bits(got, exp)
    x8 = np.full((2, 200), 127, np.int8)
    x8[1] = -128
    got = run("vreduce", {"src": ("nram", x8)}, "i32", (2,), mode="sum", dt="i8", rows=2, cols=200)
    assert_bits(got, R.ref_reduce("sum", x8, "i8"))
    assert got.tolist() == [25400, -25600]


ROW_OPS = ["add", "sub", "mul", "div", "max"]


def run_row(op, a, b, dt, axis):
    rows, cols = a.shape
    return run("vrow", {"a": ("nram", a), "b": ("nram", b)}, dt, (rows, cols), op=op, dt=dt,
               rows=rows, cols=cols, axis=axis)


@PROP
@given(st.sampled_from(ROW_OPS), st.sampled_from(ALL_DT), st.sampled_from(["row", "col"]),
       st.integers(1, 6), st.integers(1, 12), seeds)
def test_row(op, dt, axis, rows, cols, seed):
    rng = np.random.default_rng(seed)
    kw = dict(specials=True, nan=op != "max", neg_zero=op != "max")
    a = rand_data(rng, dt, (rows, cols), **kw)
    b = rand_data(rng, dt, (rows if axis == "row" else cols,), **kw)
    assert_bits(run_row(op, a, b, dt, axis), R.ref_row(op, a, b, dt, axis), (op, dt, axis))


@pytest.mark.parametrize("dt", INT_DT)
def test_row_int_division(dt):
    lo, hi = R.int_range(dt)
    a = np.array([[7, -7, 0, lo, hi, 5], [7, -7, lo, lo, hi, 5]], np.int64)
    a = np.clip(a, lo, hi).astype(NP[dt])
    b_row = np.clip(np.array([2, -1], np.int64), lo, hi).astype(NP[dt])     # u8: -1 -> 0 (div by 0)
    b_col = np.clip(np.array([2, -2, 0, -1, 3, 0], np.int64), lo, hi).astype(NP[dt])
    for axis, b in (("row", b_row), ("col", b_col)):
        exp = R.ref_row("div", a, b, dt, axis)
        assert_bits(run_row("div", a, b, dt, axis), exp, (dt, axis))
    if dt == "i8":
        assert R.ref_row("div", a, b_col, dt, "col").tolist() == [[3, 3, 0, 127, 42, 0],
                                                                  [3, 3, 0, 127, 42, 0]]
        assert R.ref_row("div", a, b_row, dt, "row")[1].tolist() == [-7, 7, 127, 127, -127, -5]


# --------------------------------------------------------------------------------------------------
# pooling and depthwise convolution
# --------------------------------------------------------------------------------------------------
@st.composite
def pool_cases(draw):
    kh, kw = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    sh, sw = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    pads = (draw(st.integers(0, kh - 1)), draw(st.integers(0, kh - 1)),
            draw(st.integers(0, kw - 1)), draw(st.integers(0, kw - 1)))   # windows never all padding
    hi = draw(st.integers(max(1, kh - pads[0] - pads[1]), kh + 4))
    wi = draw(st.integers(max(1, kw - pads[2] - pads[3]), kw + 4))
    return dict(mode=draw(st.sampled_from(["max", "sum"])), dt=draw(st.sampled_from(ALL_DT)),
                n=draw(st.integers(1, 2)), hi=hi, wi=wi, c=draw(st.integers(1, 5)), kh=kh, kw=kw,
                sh=sh, sw=sw, pads=pads, seed=draw(seeds))


@PROP
@given(pool_cases())
def test_pool(case):
    c = case
    rng = np.random.default_rng(c["seed"])
    # sum: -0.0 included (left to right from the first window element, padding adds +0.0)
    x = rand_data(rng, c["dt"], (c["n"], c["hi"], c["wi"], c["c"]), specials=c["mode"] == "sum",
                  neg_zero=c["mode"] == "sum")
    exp = R.ref_pool(c["mode"], x, c["dt"], c["kh"], c["kw"], c["sh"], c["sw"], c["pads"])
    pt, pb, pl, pr = c["pads"]
    got = run("vpool", {"src": ("nram", x)}, DT_OF[exp.dtype], exp.shape, mode=c["mode"], dt=c["dt"],
              n=c["n"], hi=c["hi"], wi=c["wi"], c=c["c"], kh=c["kh"], kw=c["kw"], sh=c["sh"],
              sw=c["sw"], pt=pt, pb=pb, pl=pl, pr=pr)
    assert_bits(got, exp, case)


def test_pool_max_padding_never_wins():
    for dt in ("i8", "i16", "f16", "f32"):
        lo = R.int_range(dt)[0] if dt in INT_DT else -np.inf
        x = np.full((1, 2, 2, 2), lo, NP[dt])
        x[0, :, :, 1] = -5
        exp = R.ref_pool("max", x, dt, 3, 3, 1, 1, (1, 1, 1, 1))
        got = run("vpool", {"src": ("nram", x)}, dt, exp.shape, mode="max", dt=dt, n=1, hi=2, wi=2,
                  c=2, kh=3, kw=3, sh=1, sw=1, pt=1, pb=1, pl=1, pr=1)
        assert_bits(got, exp, dt)
        assert (exp[..., 1] == -5).all()


def test_pool_sum_float_is_row_major_left_to_right():
    # one 2x2 window; row-major order gives 1 (f32) / 2**-24 (f16 input), column-major would give 2 / 2**-23
    for dt, big, small in (("f32", 1e8, 1.0), ("f16", 65504.0, 2.0**-24)):
        x = np.array([[big, small], [-big, small]], NP[dt]).reshape(1, 2, 2, 1)
        exp = R.ref_pool("sum", x, dt, 2, 2, 1, 1, (0, 0, 0, 0))
        assert exp.reshape(-1).tolist() == [small]
        got = run("vpool", {"src": ("nram", x)}, "f32", exp.shape, mode="sum", dt=dt, n=1, hi=2, wi=2,
                  c=1, kh=2, kw=2)
        assert_bits(got, exp, dt)


def test_pool_sum_saturates_i32():
    x = np.full((1, 2, 2, 1), 2**31 - 1, np.int32)
    x2 = np.full((1, 2, 2, 1), -2**31, np.int32)
    for arr in (x, x2):
        exp = R.ref_pool("sum", arr, "i32", 2, 2, 1, 1, (0, 0, 0, 0))
        got = run("vpool", {"src": ("nram", arr)}, "i32", exp.shape, mode="sum", dt="i32", n=1, hi=2,
                  wi=2, c=1, kh=2, kw=2)
        assert_bits(got, exp)


@st.composite
def dw_cases(draw):
    kh, kw = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    dh, dw = draw(st.integers(1, 2)), draw(st.integers(1, 2))
    eh, ew = dh * (kh - 1) + 1, dw * (kw - 1) + 1
    pads = (draw(st.integers(0, min(2, eh - 1))), draw(st.integers(0, min(2, eh - 1))),
            draw(st.integers(0, min(2, ew - 1))), draw(st.integers(0, min(2, ew - 1))))
    return dict(dt=draw(st.sampled_from(["i8", "i16"])), n=draw(st.integers(1, 2)),
                hi=draw(st.integers(max(1, eh - pads[0] - pads[1]), eh + 4)),
                wi=draw(st.integers(max(1, ew - pads[2] - pads[3]), ew + 4)), c=draw(st.integers(1, 6)),
                kh=kh, kw=kw, sh=draw(st.integers(1, 3)), sw=draw(st.integers(1, 3)), dh=dh, dw=dw,
                pads=pads, seed=draw(seeds))


def run_dw(x, w, c):
    pt, pb, pl, pr = c["pads"]
    exp_shape = (c["n"], R.conv_out_size(c["hi"], pt, pb, c["kh"], c["sh"], c["dh"]),
                 R.conv_out_size(c["wi"], pl, pr, c["kw"], c["sw"], c["dw"]), c["c"])
    return run("vdwconv", {"src": ("nram", x), "wgt": ("nram", w)}, "i32", exp_shape, dt=c["dt"],
               n=c["n"], hi=c["hi"], wi=c["wi"], c=c["c"], kh=c["kh"], kw=c["kw"], sh=c["sh"],
               sw=c["sw"], pt=pt, pb=pb, pl=pl, pr=pr, dh=c["dh"], dw=c["dw"])


@PROP
@given(dw_cases())
def test_dwconv(case):
    c = case
    rng = np.random.default_rng(c["seed"])
    x = rand_int(rng, c["dt"], (c["n"], c["hi"], c["wi"], c["c"]))
    w = rand_int(rng, c["dt"], (c["kh"], c["kw"], c["c"]))
    exp = R.ref_dwconv(x, w, c["sh"], c["sw"], c["pads"], c["dh"], c["dw"])
    assert_bits(run_dw(x, w, c), exp, case)


def test_dwconv_accumulator_wraps():
    c = dict(dt="i16", n=1, hi=3, wi=3, c=2, kh=3, kw=3, sh=1, sw=1, dh=1, dw=1, pads=(0, 0, 0, 0))
    x = np.full((1, 3, 3, 2), -32768, np.int16)
    w = np.full((3, 3, 2), -32768, np.int16)
    w[..., 1] = 32767
    exp = R.ref_dwconv(x, w, 1, 1, (0, 0, 0, 0), 1, 1)
    assert exp.reshape(-1).tolist() == [R.wrap32(9 * 2**30), R.wrap32(-9 * 32768 * 32767)]
    assert_bits(run_dw(x, w, c), exp)


# --------------------------------------------------------------------------------------------------
# DMA
# --------------------------------------------------------------------------------------------------
def run_dma_gather(g: np.ndarray, size, sstride, count, sstride2, count2, soff, dstride=None,
                   dstride2=None):
    """Gather from GDRAM tensor `g` (bytes at offset soff) into NRAM 0 with a 3-D DMA, then store the
    packed NRAM result contiguously; returns the stored bytes."""
    dstride = size if dstride is None else dstride
    dstride2 = count * dstride if dstride2 is None else dstride2
    total = (count2 - 1) * dstride2 + (count - 1) * dstride + size
    src = TensorDecl("g", "const", DT_OF[g.dtype], (g.size,), -1, data=g.reshape(-1))
    y = TensorDecl("y", "output", "u8", (total,), -1)
    tensors = [src, y]
    allocate(tensors)
    stream = [
        Instr.make("vset", dt="u8", dst=0, n=total, value=0xA5, sig="ld"),      # known background
        Instr.make("dma", dir="g2n", dst=0, src=src.addr + soff, size=size, sstride=sstride,
                   count=count, sstride2=sstride2, count2=count2, dstride=dstride, dstride2=dstride2,
                   wait="cp", sig="st"),
        Instr.make("dma", dir="n2g", dst=y.addr, src=0, size=total, wait="ld"),
    ]
    prog = Program([Kernel("k", "block", 1, [stream])], tensors)
    res = simulate(prog, "mlu270", cores=1)
    expect = R.ref_dma(g.tobytes(), bytearray([0xA5] * total), 0, soff, size, dstride, sstride, count,
                       dstride2, sstride2, count2)
    return res.outputs["y"], np.frombuffer(bytes(expect), np.uint8)


@PROP
@given(st.sampled_from(["i8", "i16", "f16", "f32", "i32"]), st.integers(1, 5), st.integers(1, 6),
       st.integers(1, 9), st.data())
def test_dma_strided_tile(dt, d0, d1, d2, data):
    g = np.arange(d0 * d1 * d2, dtype=np.int64).reshape(d0, d1, d2)
    g = (g * 7919 + 13).astype(NP[dt]) if dt in INT_DT else (g * 0.25 - 3).astype(NP[dt])
    z0 = data.draw(st.integers(0, d0 - 1))
    y0 = data.draw(st.integers(0, d1 - 1))
    x0 = data.draw(st.integers(0, d2 - 1))
    nz = data.draw(st.integers(1, d0 - z0))
    ny = data.draw(st.integers(1, d1 - y0))
    nx = data.draw(st.integers(1, d2 - x0))
    pad = data.draw(st.sampled_from([0, 0, 3]))      # extra destination gap (bytes) between rows
    it = g.itemsize
    got, exp_bytes = run_dma_gather(g, nx * it, d2 * it, ny, d1 * d2 * it, nz,
                                    ((z0 * d1 + y0) * d2 + x0) * it, dstride=nx * it + pad,
                                    dstride2=ny * (nx * it + pad) + pad)
    assert_bits(got, exp_bytes)
    if pad == 0:
        tile = g[z0:z0 + nz, y0:y0 + ny, x0:x0 + nx]
        assert_bits(got.view(NP[dt]).reshape(tile.shape), tile)


def test_dma_stride_zero_repeats_rows():
    g = np.arange(12, dtype=np.int16).reshape(3, 4)
    it = 2
    # repeat row 1 three times per block, blocks walk rows 0 and 2
    got, exp_bytes = run_dma_gather(g, 4 * it, 0, 3, 2 * 4 * it, 2, 0)
    assert_bits(got, exp_bytes)
    tile = np.stack([np.repeat(g[0:1], 3, axis=0), np.repeat(g[2:3], 3, axis=0)])
    assert_bits(got.view(np.int16).reshape(tile.shape), tile)


@pytest.mark.parametrize("size,dstride,count,dstride2,count2", [
    (8, 4, 2, 16, 1),          # segments of a block overlap
    (8, 8, 2, 8, 2),           # blocks overlap
    (4, 0, 3, 12, 1),          # destination stride 0 writes the same bytes repeatedly
])
def test_dma_overlapping_destination_is_rejected(size, dstride, count, dstride2, count2):
    g = np.arange(64, dtype=np.int8)
    with pytest.raises(MlusimError, match="overlap"):
        run_dma_gather(g, size, size, count, size * count, count2, 0, dstride=dstride,
                       dstride2=dstride2)


def test_vadd_wraps_on_i32_and_saturates_narrower_types():
    """i32 sums wrap like the MAC array's accumulator (split reductions add up exactly); i8/i16 saturate."""
    from conftest import I, program, run
    from mlusim.program import TensorDecl
    from conftest import tensors

    a = np.array([2**31 - 1, -2**31, 5], np.int32)
    b = np.array([1, -1, 7], np.int32)
    t = tensors(TensorDecl("a", "const", "i32", (3,), -1, data=a), TensorDecl("b", "const", "i32", (3,), -1, data=b),
                TensorDecl("c", "const", "i8", (2,), -1, data=np.array([120, -120], np.int8)),
                TensorDecl("o", "output", "i32", (3,), -1), TensorDecl("o8", "output", "i8", (2,), -1))
    s = [I("dma", dir="g2n", dst=0, src=t[0].addr, size=12), I("dma", dir="g2n", dst=64, src=t[1].addr, size=12),
         I("dma", dir="g2n", dst=128, src=t[2].addr, size=2, sig="cp"),
         I("vadd", dt="i32", dst=192, a=0, b=64, n=3, wait="ld"),
         I("vadd", dt="i8", dst=256, a=128, b=128, n=2, sig="st"),
         I("dma", dir="n2g", dst=t[3].addr, src=192, size=12, wait="cp"),
         I("dma", dir="n2g", dst=t[4].addr, src=256, size=2)]
    res = run(program(s, t))
    assert list(res.outputs["o"]) == [-2**31, 2**31 - 1, 12]
    assert list(res.outputs["o8"]) == [127, -128]
