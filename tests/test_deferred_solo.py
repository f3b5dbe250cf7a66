"""A weight block whose last group held one tile has its next tiles computed at once
(mlusim/isa/deferred.py, WeightBlock.solo): the same bits as the reference, one group run."""
from __future__ import annotations

import numpy as np

from mlusim.isa import deferred
from mlusim.isa.encoding import Instr
from mlusim.program import Kernel, Program, TensorDecl, allocate
from mlusim.sim import simulate
from numerics_util import R, assert_bits

X_AT, D1, D2, D3 = 0, 8192, 16384, 24576      # NRAM addresses
GEOM = dict(dt="i8", odt="i32", n=1, hi=4, wi=5, ci=8, co=16, kh=3, kw=3, sh=1, sw=1, pt=1, pb=1, pl=1, pr=1,
            dh=1, dw=1, groups=1, pos=0)


def test_tiles_after_a_one_tile_group_are_computed_at_once(monkeypatch):
    runs = []
    run = deferred.DeferredGemms._run
    monkeypatch.setattr(deferred.DeferredGemms, "_run", lambda self, g: (runs.append(len(g.tiles)), run(self, g)))
    rng = np.random.default_rng(11)
    x = rng.integers(-128, 128, (1, 4, 5, 8)).astype(np.int8)
    w = rng.integers(-128, 128, (16, 3, 3, 8)).astype(np.int8)
    n = 4 * 5 * 16
    xs, ws = (TensorDecl(k, "const", "i8", (a.size,), -1, data=a.reshape(-1)) for k, a in (("x", x), ("w", w)))
    outs = {k: TensorDecl(k, "output", "i32", (n,), -1) for k in ("d1", "d2", "d3")}
    tensors = [xs, ws, *outs.values()]
    allocate(tensors)
    conv = dict(src=X_AT, wgt=0, **GEOM)
    stream = [Instr.make("dma", dir="g2n", dst=X_AT, src=xs.addr, size=x.nbytes),
              Instr.make("dma", dir="g2w", dst=0, src=ws.addr, size=w.nbytes, sig="cp")]
    for i, (k, d) in enumerate((("d1", D1), ("d2", D2), ("d3", D3))):    # each read before the next conv
        stream += [Instr.make("conv", dst=d, sig="st", wait="st" if i else "ld", **conv),
                   Instr.make("dma", dir="n2g", dst=outs[k].addr, src=d, size=4 * n, wait="cp",
                              **({"sig": "cp"} if i < 2 else {}))]
    res = simulate(Program([Kernel("k", "block", 1, [stream])], tensors), "mlu270", cores=1)
    exp = R.ref_conv(x, w, 1, 1, (1, 1, 1, 1), 1, 1, 1, "i32", 0).reshape(-1)
    for k in outs:
        assert_bits(res.outputs[k].reshape(-1), exp)
    assert runs == [1]
