"""mac.conv binds a groups=1 int8 conv's operands once per core (views of NRAM and WRAM, the
product, the store): every later issue of the same instruction must read the bytes there now."""
from __future__ import annotations

import numpy as np

from mlusim.isa.encoding import Instr
from mlusim.program import Kernel, Program, TensorDecl, allocate
from mlusim.sim import simulate
from numerics_util import R, assert_bits

X_AT, D_AT = 0, 8192
GEOM = dict(dt="i8", odt="i32", n=1, hi=4, wi=5, ci=8, co=16, kh=3, kw=3, sh=1, sw=1, pt=1, pb=1, pl=1, pr=1,
            dh=1, dw=1, groups=1, pos=0)


def _tensor(name, kind, arr=None, n=0):
    if arr is None:
        return TensorDecl(name, kind, "i32", (n,), -1)
    return TensorDecl(name, kind, "i8", (arr.size,), -1, data=np.ascontiguousarray(arr).reshape(-1))


def test_the_same_conv_issued_again_reads_new_inputs_and_weights():
    """One conv instruction (same fields, so one plan and one binding) issued three times on one
    core, its input and then its weights reloaded in place between issues: three products."""
    rng = np.random.default_rng(9)
    xa, xb = (rng.integers(-128, 128, (1, 4, 5, 8)).astype(np.int8) for _ in range(2))
    wa, wb = (rng.integers(-128, 128, (16, 3, 3, 8)).astype(np.int8) for _ in range(2))
    n = 4 * 5 * 16
    ins = {k: _tensor(k, "const", v) for k, v in (("xa", xa), ("xb", xb), ("wa", wa), ("wb", wb))}
    outs = {k: _tensor(k, "output", n=n) for k in ("o1", "o2", "o3")}
    tensors = list(ins.values()) + list(outs.values())
    allocate(tensors)
    conv = Instr.make("conv", dst=D_AT, src=X_AT, wgt=0, wait="ld", sig="st", **GEOM)

    def load(space, name, **sync):
        return Instr.make("dma", dir=f"g2{space}", dst=0 if space == "w" else X_AT, src=ins[name].addr,
                          size=ins[name].nbytes, **sync)

    def out(name, **sync):          # a store waits for the conv; the next load for the store
        return Instr.make("dma", dir="n2g", dst=outs[name].addr, src=D_AT, size=4 * n, wait="cp", **sync)

    stream = [load("n", "xa"), load("w", "wa", sig="cp"), conv, out("o1", sig="ld"),
              load("n", "xb", wait="st", sig="cp"), conv, out("o2", sig="ld"),
              load("w", "wb", wait="st", sig="cp"), conv, out("o3")]
    res = simulate(Program([Kernel("k", "block", 1, [stream])], tensors), "mlu270", cores=1)
    pads = (1, 1, 1, 1)
    for name, x, w in (("o1", xa, wa), ("o2", xb, wa), ("o3", xb, wb)):
        assert_bits(res.outputs[name].reshape(-1), R.ref_conv(x, w, 1, 1, pads, 1, 1, 1, "i32", 0).reshape(-1))
