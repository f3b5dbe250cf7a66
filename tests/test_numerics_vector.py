"""Bit-exact tests of the vector unit (elementwise, conversions, requantization, transcendental,
reductions, row broadcast) against the independent reference in tests/isa_reference.py."""
from __future__ import annotations

import os
import sys
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from numerics_util import (
    ALL_DT,
    FLOAT_DT,
    INT_DT,
    NP,
    PROP,
    R,
    assert_bits,
    f32_field,
    rand_data,
    rand_float,
    rand_int,
    run,
    seeds,
)

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


def test_requant_fast_path_equals_the_formula():
    """requant_values takes an in-place path when (acc + bias) * mult cannot reach 2**62; both
    paths give rne((acc + bias) * mult / 2**shift) + zp, clamped, then saturated."""
    from mlusim.isa.numerics import rne_shift
    from mlusim.isa.semantics.vector import requant_values

    rng = np.random.default_rng(11)
    for big in (False, True):
        acc = rng.integers(-2**31, 2**31, (64, 8), dtype=np.int64).astype(np.int32)
        if not big:
            acc //= 1 << 12
        params = np.stack([rng.integers(-2**20, 2**20, 8), rng.integers(2**30, 2**31, 8),
                           rng.integers(0, 63, 8)], axis=1).astype(np.int32)
        for zp, lo, hi, odt in ((3, -128, 127, "i8"), (-7, -300, 300, "i8"), (0, 50, -50, "i16"),
                                (0, -(1 << 31), (1 << 31) - 1, "i32")):
            got = requant_values(acc, params, zp, lo, hi, odt)
            p = params.astype(np.int64)
            q = rne_shift((acc.astype(np.int64) + p[:, 0]) * p[:, 1], np.clip(p[:, 2], 0, 62)) + zp
            dmin, dmax = np.iinfo(got.dtype).min, np.iinfo(got.dtype).max
            assert np.array_equal(got, np.clip(np.clip(q, lo, hi), dmin, dmax)), (big, zp, lo, hi, odt)


def test_requantized_in_place_equals_the_formula_and_keeps_a_refused_input():
    """requantized(..., own=True) works on a float64 input in place: the same values as the int64
    formula (zero and nonzero biases, int32 extremes, 31-bit multipliers, ties), and when float64
    is not exact (the int64 path then runs on the input) the input is left as it came."""
    from mlusim.isa.numerics import rne_shift
    from mlusim.isa.semantics import requant as rq

    rng = np.random.default_rng(12)
    ends = np.array([-(1 << 31), (1 << 31) - 1, 0, 1, -1, 3 << 20, -(3 << 20)], np.int64)
    for big, zero_bias in ((False, False), (False, True), (True, False), (True, True)):
        acc = rng.integers(-2**31, 2**31, (64, 8), dtype=np.int64)
        if not big:
            acc //= 1 << 12
        acc[:, 0] = np.resize(ends if big else ends // (1 << 12), 64)
        bias = np.zeros(8, np.int64) if zero_bias else rng.integers(-2**31, 2**31, 8) >> (0 if big else 11)
        mult = np.where(np.arange(8) < 4, (1 << 31) - 1, rng.integers(2**30, 2**31, 8))
        shift = np.array([1, 2, 20, 31, 40, 62, 0, 33])           # shift 1, 2: ties at .5
        params = np.stack([bias, mult, shift], axis=1).astype(np.int32)
        rp = rq.decode(params)
        p = params.astype(np.int64)
        want = np.clip(rne_shift((acc + p[:, 0]) * p[:, 1], p[:, 2]), -(1 << 31), (1 << 31) - 1)
        t = acc.astype(np.float64)
        top = int(np.abs(acc).max())
        got = rq.requantized(t, rp, 0, -(1 << 31), (1 << 31) - 1, "i32", top, own=True)
        assert np.array_equal(np.asarray(got).astype(np.int64), want), (big, zero_bias)
        if big:                        # 2**31 * 2**31 >= 2**53: refused by the check, t untouched
            assert rq.scaled(t, rp, top, own=True) is None
            assert np.array_equal(t, acc.astype(np.float64))
        else:                          # exact in float64: worked in place
            assert got is t


def test_requant_clamp_bounds_equal_the_clamp_chain():
    """The requantization folds clamp(q, lo, hi) then saturation to odt into one clip: the same
    value for every q, lo > hi (np.clip's min(max(q, lo), hi)) and bounds past odt included."""
    from mlusim.isa.semantics.requant import clamp_bounds

    for odt, (dlo, dhi) in (("i8", (-128, 127)), ("u8", (0, 255))):
        edges = (-300, -129, -128, -5, 0, 3, 127, 128, 255, 256, 400)
        for lo in edges:
            for hi in edges:
                low, high = clamp_bounds(lo, hi, odt)
                for q in range(-310, 410, 7):
                    assert min(max(q, low), high) == min(max(min(max(q, lo), hi), dlo), dhi), (odt, lo, hi, q)
