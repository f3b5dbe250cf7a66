"""Bit-exact tests of the MAC array (conv, matmul), pooling, depthwise convolution and strided DMA,
run through the simulator and compared with the independent reference in tests/isa_reference.py
(written from docs/numerics.md); the vector unit is in test_numerics_vector.py."""
from __future__ import annotations

import os
import sys

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from mlusim.errors import MlusimError
from mlusim.isa.encoding import Instr
from mlusim.program import Kernel, Program, TensorDecl, allocate
from mlusim.sim import simulate

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from numerics_util import (
    ALL_DT,
    DT_OF,
    INT_DT,
    NP,
    PROP,
    R,
    assert_bits,
    rand_data,
    rand_int,
    run,
    seeds,
)


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
    pos = draw(st.sampled_from([0, -1, -7, -12, -20, -30, -45, 3, 10, 100])) if odt != "i32" or dt == "i16" else 0
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


@pytest.mark.parametrize("odt,pos", [("i32", 0), ("i32", -2), ("f32", -30), ("f16", -20)])
def test_int16_conv_sums_are_exact(odt, pos):
    # i16 1x1 conv with ci=3, every product (-32768)**2 = 2**30: the sums 3*2**30 and 2*2**30 are
    # past int32; they stay exact (a 32-bit accumulator would give -2**30 and -2**31)
    case = dict(dt="i16", n=1, hi=2, wi=2, ci=3, co=2, kh=1, kw=1, sh=1, sw=1, dh=1, dw=1,
                pads=(0, 0, 0, 0), groups=1, odt=odt, pos=pos)
    x = np.full((1, 2, 2, 3), -32768, np.int16)
    w = np.full((2, 1, 1, 3), -32768, np.int16)
    w[1, 0, 0, 2] = 0
    exp = R.ref_conv(x, w, 1, 1, (0, 0, 0, 0), 1, 1, 1, odt, pos)
    want = {("i32", 0): [2**31 - 1, 2**31 - 1], ("i32", -2): [3 * 2**28, 2**29],
            ("f32", -30): [3.0, 2.0], ("f16", -20): [3072.0, 2048.0]}[(odt, pos)]
    assert exp[0, 0, 0].tolist() == want
    assert_bits(run_conv(x, w, case), exp)


def test_int8_accumulator_still_wraps_at_32_bits():
    # the int8 path keeps its 32-bit accumulator: 133,152 products of 127 * 127 pass 2**31
    k = 133_152
    a = np.full((1, k), 127, np.int8)
    b = np.full((1, k), 127, np.int8)
    exp = R.wrap32(k * 127 * 127)
    assert exp < 0
    assert run_matmul(a, b, "i8", "i32", 0).reshape(-1).tolist() == [exp]


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
    pos = 0 if odt == "i32" and dt == "i8" else pos
    assert_bits(run_matmul(a, b, dt, odt, pos), R.ref_matmul(a, b, odt, pos), (dt, odt, pos))


@pytest.mark.parametrize("odt,pos", [("i32", 0), ("i32", -3), ("f32", -30), ("f16", -28)])
def test_int16_matmul_sums_are_exact(odt, pos):
    a = np.full((2, 3), -32768, np.int16)
    a[1, 2] = 0
    b = np.full((2, 3), -32768, np.int16)
    b[1] = [32767, 32767, 32767]
    exp = R.ref_matmul(a, b, odt, pos)
    if odt == "i32" and pos == -3:    # 3*2**30, -3*(2**30-2**15), 2*2**30, -2*(2**30-2**15), over 8
        assert exp.tolist() == [[3 * 2**27, -3 * (2**27 - 2**12)], [2**28, -(2**28 - 2**13)]]
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


def test_dwconv_int16_saturates_int8_wraps():
    c = dict(dt="i16", n=1, hi=3, wi=3, c=2, kh=3, kw=3, sh=1, sw=1, dh=1, dw=1, pads=(0, 0, 0, 0))
    x = np.full((1, 3, 3, 2), -32768, np.int16)
    w = np.full((3, 3, 2), -32768, np.int16)
    w[..., 1] = 32767
    exp = R.ref_dwconv(x, w, 1, 1, (0, 0, 0, 0), 1, 1)
    assert exp.reshape(-1).tolist() == [2**31 - 1, -2**31]
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


@pytest.mark.parametrize("fields, nbytes, shape", [
    (dict(size=4, count=3, sstride=4, dstride=4, count2=2, sstride2=12, dstride2=12), 24, None),   # one range
    (dict(size=4, count=3, sstride=4, dstride=4, count2=2, sstride2=16, dstride2=12), 12, (2, 1, 12)),
    (dict(size=4, count=3, sstride=8, dstride=4, count2=1, sstride2=0, dstride2=0), 4, (1, 3, 4)),
    (dict(size=5, count=1, sstride=0, dstride=0, count2=1, sstride2=0, dstride2=0), 5, None)])
def test_dma_plan_joins_segments_laid_end_to_end_on_both_sides(fields, nbytes, shape):
    from mlusim.isa.fields import DIR_NAMES
    from mlusim.isa.semantics.dma import dma_plan
    p = dma_plan(dict(dir=DIR_NAMES.index("n2n"), dcl=0, src=7, dst=100, **fields))
    assert (p.nbytes, p.shape) == (nbytes, shape)
    assert p.overlap is False


@pytest.mark.parametrize("dst, sstride, dstride, sstride2", [(3, 8, 6, 24), (0, 6, 9, 24), (30, 4, 4, 12),
                                                       (5, 4, 4, 12)])
def test_dma_within_nram_reads_its_whole_source_first(dst, sstride, dstride, sstride2):
    """A strided n2n copy whose source and destination overlap (or not) in NRAM: as if the
    whole source were read before any byte is written."""
    size, count, count2 = 4, 3, 2
    dstride2 = dstride * count
    g = np.arange(64, dtype=np.uint8) * 3 + 1
    src = TensorDecl("g", "const", "u8", (64,), -1, data=g)
    y = TensorDecl("y", "output", "u8", (64,), -1)
    allocate([src, y])
    stream = [
        Instr.make("dma", dir="g2n", dst=0, src=src.addr, size=64, sig="st"),
        Instr.make("dma", dir="n2g", dst=y.addr, src=0, size=1, wait="ld", sig="ld"),   # a hop: n2n is on ld too
        Instr.make("dma", dir="n2n", dst=dst, src=0, size=size, sstride=sstride, count=count,
                   sstride2=sstride2, count2=count2, dstride=dstride, dstride2=dstride2, wait="st", sig="st"),
        Instr.make("dma", dir="n2g", dst=y.addr, src=0, size=64, wait="ld"),
    ]
    res = simulate(Program([Kernel("k", "block", 1, [stream])], [src, y]), "mlu270", cores=1)
    expect = bytearray(g.tobytes())
    before = bytes(expect)
    for b in range(count2):
        for i in range(count):
            s0, d0 = b * sstride2 + i * sstride, dst + b * dstride2 + i * dstride
            expect[d0:d0 + size] = before[s0:s0 + size]
    assert_bits(res.outputs["y"], np.frombuffer(bytes(expect), np.uint8))


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
    from conftest import I, program, run, tensors

    from mlusim.program import TensorDecl

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


# ---- the float paths of the exact integer products (mlusim/isa/numerics.py) ------------------------
@pytest.mark.parametrize("k, hi", [(1024, 128), (1025, 128), (4608, 128), (700, 32767), (3, 2**30)])
def test_gemm_exact_matches_int64_on_every_path(k, hi):
    """Whole float32 (every partial sum <= 2**24), float32 slices summed in float64, float64, and
    int64 past 2**53: each gives the int64 product exactly, extremes of the dtype included."""
    from mlusim.isa.numerics import gemm_exact

    rng = np.random.default_rng(k)
    dt = np.int8 if hi == 128 else np.int16 if hi == 32767 else np.int64
    a = rng.integers(-hi, hi, (37, k), dtype=dt)
    b = rng.integers(-hi, hi, (19, k), dtype=dt)
    a[0, :] = -hi                         # products at the bound: -128 * -128
    b[0, :] = -hi
    got = gemm_exact(a, b, float(hi) * hi)
    assert np.array_equal(got.astype(np.int64), a.astype(np.int64) @ b.astype(np.int64).T)


@pytest.mark.parametrize("top, extreme, one_product", [(8, False, True), (64, False, True), (65, False, False),
                                                     (127, False, False), (64, True, True), (127, True, True)])
def test_gemm_exact_data_bound(top, extreme, one_product):
    """K = 4096 int8 fails the type bound (128 * 128 * K > 2**24). The data bound (the largest
    row sum of |a| times max|b|) runs one float32 product when the values allow it, up to a sum
    of exactly 2**24 (64 * 64 * 4096), and float32 slices past it; the result is the exact int64
    product either way."""
    from mlusim.isa.numerics import gemm_exact

    rng = np.random.default_rng(top)
    k = 4096
    a = rng.integers(-8, 9, (23, k)).astype(np.int8)
    b = rng.integers(-8, 9, (17, k)).astype(np.int8)
    a[0, :] = top
    b[0, :] = -top
    if extreme:                             # -128s, in rows of a whose sums stay small
        b[1, 5] = -128
        a[0, :] = 0
        a[0, 5] = -128
    got = gemm_exact(a, b, 128.0 * 128.0)
    assert (got.dtype == np.float32) == one_product
    assert np.array_equal(got.astype(np.int64), a.astype(np.int64) @ b.astype(np.int64).T)


@pytest.mark.parametrize("signs, one_product", [("none negative", True), ("one -1", True),
                                                ("cancelling", False), ("cancelling, one -1", False)])
def test_gemm_exact_data_bound_takes_absolute_row_sums(signs, one_product):
    """The row-sum bound is over |a|: rows of ReLU outputs (none negative) are summed as they are,
    a row whose signed sum cancels (+-65 alternating: sum 0, but 65 * 4096 * 64 > 2**24 with
    max|b| = 64) is not; a single negative value anywhere switches to |a| for all rows."""
    from mlusim.isa.numerics import gemm_exact

    k = 4096
    rng = np.random.default_rng(len(signs))
    a = rng.integers(0, 3, (9, k)).astype(np.int8)
    b = rng.integers(-64, 65, (5, k)).astype(np.int8)
    b[0, 0] = 64
    if "cancelling" in signs:
        a[3, :] = np.resize(np.array([65, -65], np.int8), k)
    if "-1" in signs:
        a[7, 11] = -1
    got = gemm_exact(a, b, 128.0 * 128.0)
    assert (got.dtype == np.float32) == one_product
    assert np.array_equal(got.astype(np.int64), a.astype(np.int64) @ b.astype(np.int64).T)


@pytest.mark.parametrize("ci, k, stride, pad", [(128, 3, 1, 1), (512, 3, 2, 1), (2048, 1, 1, 0), (64, 7, 2, 3)])
def test_conv_sums_im2col_matches_tap_by_tap_int64(ci, k, stride, pad):
    from mlusim.isa.numerics import conv_sums

    rng = np.random.default_rng(ci + k)
    x = rng.integers(-128, 128, (2, 9, 9, ci), dtype=np.int8)
    x[0, 0, 0, :] = -128
    w = rng.integers(-128, 128, (16, k, k, ci), dtype=np.int8)
    sums, bound = conv_sums(x, w, stride, stride, (pad,) * 4, 1, 1, 1)
    xp = np.pad(x.astype(np.int64), ((0, 0), (pad, pad), (pad, pad), (0, 0)))
    ho = (9 + 2 * pad - k) // stride + 1
    ref = np.zeros((2, ho, ho, 16), np.int64)
    for i in range(k):
        for j in range(k):
            tap = xp[:, i:i + stride * (ho - 1) + 1:stride, j:j + stride * (ho - 1) + 1:stride, :]
            ref += tap @ w[:, i, j, :].astype(np.int64).T
    assert np.array_equal(sums.astype(np.int64), ref)
    assert np.abs(ref).max() <= bound


def test_rne_shift_small_matches_rne_shift():
    from mlusim.isa.numerics import rne_shift, rne_shift_small

    rng = np.random.default_rng(7)
    shift = np.arange(63, dtype=np.int64)
    x = rng.integers(-2**61, 2**61, (300, 63), dtype=np.int64)
    x[:50] = rng.integers(-5, 5, (50, 63))                        # halves and ties near zero
    x[50:60] = (np.int64(1) << np.maximum(shift - 1, 0)) * rng.integers(-1, 2, (10, 1))   # exact halves
    x[60:70] = np.where(shift < 61, (np.int64(3) << np.maximum(shift - 1, 0)), 0) * rng.integers(-1, 2, (10, 1))
    assert np.array_equal(rne_shift_small(x.copy(), shift), rne_shift(x, shift))
