"""Deferred conv products (mlusim/isa/deferred.py) give the bits an immediate computation would:
a conv output read whole by a vrequant, overwritten while pending, requantized in place, and
weights reloaded at the same WRAM address between convs, against the independent reference."""
from __future__ import annotations

import numpy as np

from mlusim.isa.encoding import Instr
from mlusim.program import Kernel, Program, TensorDecl, allocate
from mlusim.sim import simulate
from numerics_util import R, assert_bits

X_AT, P_AT, D1, D2, Q1 = 0, 4096, 8192, 16384, 24576      # NRAM addresses
GEOM = dict(dt="i8", odt="i32", n=1, hi=4, wi=5, ci=8, co=16, kh=3, kw=3, sh=1, sw=1, pt=1, pb=1, pl=1, pr=1,
            dh=1, dw=1, groups=1, pos=0)


def _const(name, arr):
    arr = np.ascontiguousarray(arr)
    return TensorDecl(name, "const", {np.int8: "i8", np.int32: "i32"}[arr.dtype.type], (arr.size,), -1,
                      data=arr.reshape(-1))


def test_deferred_convs_and_requants_match_the_reference():
    rng = np.random.default_rng(7)
    x = rng.integers(-128, 128, (1, 4, 5, 8)).astype(np.int8)
    w1 = rng.integers(-128, 128, (16, 3, 3, 8)).astype(np.int8)
    w2 = rng.integers(-128, 128, (16, 3, 3, 8)).astype(np.int8)
    params = np.stack([rng.integers(-1000, 1000, 16), rng.integers(1 << 29, 1 << 31, 16),
                       np.full(16, 36)], 1).astype(np.int32)
    n = 4 * 5 * 16
    ins = {k: _const(k, v) for k, v in (("x", x), ("w1", w1), ("w2", w2), ("params", params))}
    outs = {k: TensorDecl(k, "output", dt, (n,), -1) for k, dt in (("d1", "i32"), ("d2", "i32"), ("q1", "i8"))}
    tensors = list(ins.values()) + list(outs.values())
    allocate(tensors)
    conv = dict(src=X_AT, wgt=0, **GEOM)
    rq = dict(c=16, n=n, params=P_AT, zp=3, lo=-100, hi=100)
    stream = [
        Instr.make("dma", dir="g2n", dst=X_AT, src=ins["x"].addr, size=x.nbytes),
        Instr.make("dma", dir="g2n", dst=P_AT, src=ins["params"].addr, size=params.nbytes),
        Instr.make("dma", dir="g2w", dst=0, src=ins["w1"].addr, size=w1.nbytes, sig="cp"),
        Instr.make("conv", dst=D1, wait="ld", **conv),                      # pending
        Instr.make("vrequant", dst=Q1, src=D1, odt="i8", sig="ld", **rq),   # waits with it
        Instr.make("dma", dir="g2w", dst=0, src=ins["w2"].addr, size=w2.nbytes, wait="cp", sig="cp"),
        Instr.make("conv", dst=D2, wait="ld", **conv),                      # the new weights
        Instr.make("conv", dst=D1, **conv),                                 # overwrites a pending tile
        Instr.make("vrequant", dst=D2, src=D2, odt="i32", sig="st", **rq),  # in place
    ] + [Instr.make("dma", dir="n2g", dst=outs[k].addr, src=a, size=outs[k].nbytes, **({"wait": "cp"} if i == 0 else {}))
         for i, (k, a) in enumerate((("d1", D1), ("d2", D2), ("q1", Q1)))]
    res = simulate(Program([Kernel("k", "block", 1, [stream])], tensors), "mlu270", cores=1)
    pads = (1, 1, 1, 1)
    c1 = R.ref_conv(x, w1, 1, 1, pads, 1, 1, 1, "i32", 0).reshape(-1)
    c2 = R.ref_conv(x, w2, 1, 1, pads, 1, 1, 1, "i32", 0).reshape(-1)
    assert_bits(res.outputs["d1"].reshape(-1), c2)
    assert_bits(res.outputs["q1"].reshape(-1), R.ref_requant(c1, params, 16, "i8", 3, -100, 100))
    assert_bits(res.outputs["d2"].reshape(-1), R.ref_requant(c2, params, 16, "i32", 3, -100, 100))


def test_one_conv_instruction_issued_over_new_inputs_reads_each():
    """mac.conv keeps one plan per distinct instruction, with a padded-input buffer reused across
    issues: the same conv issued again after its input changed sees the new input (its
    padding still zero) and the first result is not disturbed."""
    rng = np.random.default_rng(5)
    xa, xb = (rng.integers(-128, 128, (1, 4, 5, 8)).astype(np.int8) for _ in range(2))
    w = rng.integers(-128, 128, (16, 3, 3, 8)).astype(np.int8)
    n = 4 * 5 * 16
    ins = {k: _const(k, v) for k, v in (("xa", xa), ("xb", xb), ("w", w))}
    outs = {k: TensorDecl(k, "output", "i32", (n,), -1) for k in ("d1", "d2")}
    tensors = list(ins.values()) + list(outs.values())
    allocate(tensors)
    conv = dict(src=X_AT, wgt=0, **GEOM)
    stream = [
        Instr.make("dma", dir="g2n", dst=X_AT, src=ins["xa"].addr, size=xa.nbytes),
        Instr.make("dma", dir="g2w", dst=0, src=ins["w"].addr, size=w.nbytes, sig="cp"),
        Instr.make("conv", dst=D1, wait="ld", sig="ld", **conv),
        Instr.make("dma", dir="g2n", dst=X_AT, src=ins["xb"].addr, size=xb.nbytes, wait="cp", sig="cp"),
        Instr.make("conv", dst=D2, wait="ld", sig="st", **conv),
        Instr.make("dma", dir="n2g", dst=outs["d1"].addr, src=D1, size=4 * n, wait="cp"),
        Instr.make("dma", dir="n2g", dst=outs["d2"].addr, src=D2, size=4 * n),
    ]
    res = simulate(Program([Kernel("k", "block", 1, [stream])], tensors), "mlu270", cores=1)
    for k, x in (("d1", xa), ("d2", xb)):
        assert_bits(res.outputs[k].reshape(-1), R.ref_conv(x, w, 1, 1, (1, 1, 1, 1), 1, 1, 1, "i32", 0).reshape(-1))


def test_weight_block_is_the_weights_laid_out_k_major():
    """WeightBlock.bf is w [n, k] as float32, stored [k, n] row-major (BLAS's quicker layout for
    rows @ bf.T): the same values, its transpose C-contiguous."""
    from mlusim.isa.deferred import WeightBlock
    w = np.random.default_rng(3).integers(-128, 128, (6, 10)).astype(np.int8)
    bf = WeightBlock(w).bf
    assert bf.dtype == np.float32 and bf.shape == (6, 10) and bf.T.flags.c_contiguous
    assert_bits(bf, w.astype(np.float32))


def test_one_conv_instruction_on_two_cores_reads_each_cores_memory():
    """The same conv instruction (one args dict, prepared once chip-wide), issued by two tasks on
    two cores over different inputs and weights, gives each core's own product: whatever its
    semantics remember per instruction must not carry one core's memory views to another."""
    rng = np.random.default_rng(11)
    xs = [rng.integers(-128, 128, (1, 4, 5, 8)).astype(np.int8) for _ in range(2)]
    ws = [rng.integers(-128, 128, (16, 3, 3, 8)).astype(np.int8) for _ in range(2)]
    n = 4 * 5 * 16
    ins = {f"{k}{i}": _const(f"{k}{i}", v) for k, vs in (("x", xs), ("w", ws)) for i, v in enumerate(vs)}
    outs = {f"d{i}": TensorDecl(f"d{i}", "output", "i32", (n,), -1) for i in range(2)}
    tensors = list(ins.values()) + list(outs.values())
    allocate(tensors)
    conv = Instr.make("conv", dst=D1, src=X_AT, wgt=0, wait="ld", sig="st", **GEOM)     # one object, both streams
    streams = [[
        Instr.make("dma", dir="g2n", dst=X_AT, src=ins[f"x{i}"].addr, size=xs[i].nbytes),
        Instr.make("dma", dir="g2w", dst=0, src=ins[f"w{i}"].addr, size=ws[i].nbytes, sig="cp"),
        conv,
        Instr.make("dma", dir="n2g", dst=outs[f"d{i}"].addr, src=D1, size=4 * n, wait="cp"),
    ] for i in range(2)]
    res = simulate(Program([Kernel("k", "block", 2, streams, task_stream=[0, 1])], tensors), "mlu270", cores=2)
    for i in range(2):
        assert_bits(res.outputs[f"d{i}"].reshape(-1),
                    R.ref_conv(xs[i], ws[i], 1, 1, (1, 1, 1, 1), 1, 1, 1, "i32", 0).reshape(-1))


def test_touched_keeps_nram_ranges_and_wram_writes():
    """execute's summary of a touch list: every NRAM range, and only the WRAM ranges written."""
    from mlusim.isa.deferred import touched
    t = touched([("nram", 0, 64, "r", 1), ("wram", 128, 32, "r", 64), ("nram", 256, 16, "w", 4),
                 ("wram", 512, 8, "w", 64), ("gdram", 0, 4, "w", 1)])
    assert t.nram == ((0, 64), (256, 272))
    assert t.wram_writes == ((512, 520),)


def test_weight_blocks_are_shared_by_equal_bytes_not_by_fingerprint():
    """Cores holding equal weights share one block; weights whose 8-byte words are the same words
    in another order (the same fingerprint: DeferredGemms.block) get their own."""
    from mlusim.isa.deferred import DeferredGemms, _fingerprint
    w1 = np.arange(32, dtype=np.int8).reshape(2, 16)
    w2 = np.concatenate([w1[:, 8:], w1[:, :8]], axis=1)      # each row's two words swapped
    assert _fingerprint(w1) == _fingerprint(w2) and w1.tobytes() != w2.tobytes()
    g = DeferredGemms()
    b1, b2, b3 = g.block(0, 0, w1), g.block(1, 0, w2), g.block(2, 64, w1.copy())
    assert b1 is not b2 and b1 is b3
    assert_bits(b2.bf, w2.astype(np.float32))


def _deferred_tiles(order, xs, ws):
    """Defer a conv tile per (core, input, weights, pads) in `order` (each core's weights at
    WRAM 0), settle, and return {(core, position): sums}."""
    from mlusim.isa import numerics as nx
    from mlusim.isa.deferred import DeferredGemms
    g, got = DeferredGemms(), {}
    for lo, (core, xi, wi, pads) in enumerate(order):
        gemm = nx.conv_gemm(xs[xi], ws[wi], 1, 1, pads, 1, 1)
        g.defer(core, 0, 64 * lo, 64 * lo + 64, gemm, lambda s, k=(core, lo): got.__setitem__(k, s.copy()), True)
    g.settle()
    return got


def _rows_written(monkeypatch) -> list[int]:
    """The row counts of every im2col written from now on."""
    from mlusim.isa import numerics as nx
    written = []
    rows = nx.ConvGemm.rows
    monkeypatch.setattr(nx.ConvGemm, "rows", lambda self, out=None: (written.append(self.m), rows(self, out))[1])
    return written


def _check(got, order, xs, ws):
    for lo, (core, xi, wi, pads) in enumerate(order):
        assert_bits(got[(core, lo)].astype(np.int32).reshape(-1),
                    R.ref_conv(xs[xi], ws[wi], 1, 1, pads, 1, 1, 1, "i32", 0).reshape(-1))


def _operands(seed: int, inputs: int):
    """`inputs` int8 inputs of 1x3x5x8 and two 16x3x3x8 weight blocks (cores splitting output channels)."""
    rng = np.random.default_rng(seed)
    xs = [rng.integers(-128, 128, (1, 3, 5, 8)).astype(np.int8) for _ in range(inputs)]
    return xs, [rng.integers(-128, 128, (16, 3, 3, 8)).astype(np.int8) for _ in range(2)]


def test_tiles_of_equal_inputs_share_one_stack_across_weight_blocks(monkeypatch):
    """Cores splitting output channels (blocks w0 and w1) issue the same inputs in different
    orders, and one input the other block never sees: each input's rows are written once, and
    every tile still gets its own exact product."""
    xs, ws = _operands(5, 3)
    written = _rows_written(monkeypatch)
    p = (1, 1, 1, 1)
    order = [(0, 0, 0, p), (2, 1, 0, p), (3, 1, 1, p), (1, 0, 1, p), (3, 2, 1, p)]
    got = _deferred_tiles(order, xs, ws)
    assert sum(written) == 3 * 15                   # x0, x1 and x2 once each, not five tiles
    _check(got, order, xs, ws)


def test_equal_inputs_under_another_window_are_not_shared(monkeypatch):
    """The same input bytes under other padding are other rows: written again."""
    xs, ws = _operands(6, 1)
    written = _rows_written(monkeypatch)
    order = [(0, 0, 0, (1, 1, 1, 1)), (1, 0, 1, (0, 0, 1, 1))]
    got = _deferred_tiles(order, xs, ws)
    assert written == [15, 5]
    _check(got, order, xs, ws)


def test_a_group_with_a_gap_or_a_repeat_in_its_stack_gathers_its_rows(monkeypatch):
    """Block w0's tiles are rows 0-15 and 30-45 of the shared stack (w1 wrote x1 between them),
    and block w0 issues x0 twice (one span, two tiles): each still gets its own exact product."""
    xs, ws = _operands(8, 3)
    written = _rows_written(monkeypatch)
    p = (1, 1, 1, 1)
    order = [(0, 0, 0, p), (1, 0, 1, p), (1, 1, 1, p), (0, 2, 0, p), (2, 0, 0, p)]
    got = _deferred_tiles(order, xs, ws)
    assert sum(written) == 3 * 15
    _check(got, order, xs, ws)
