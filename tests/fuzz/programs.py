"""Programs for the fuzz suite: a small real one, and a hypothesis strategy for random streams.

Random streams are "valid-ish": every field is in its encoding range (what Instr.make and the
decoder guarantee) and branch targets mostly stay inside the stream (what the assembler and the
.mlu loader guarantee), but nothing else is promised, so addresses, sizes, dtypes, tokens and barriers
are whatever the draw gives. Values are biased toward the small and the boundary, where a
program is most likely to get past one check and trip another.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from hypothesis import strategies as st

from mlusim.isa.encoding import Instr
from mlusim.isa.fields import Addr, Deps, Enum, F32, Imm, Reg, Target, f32_bits
from mlusim.isa.table import OPS
from mlusim.program import Kernel, Program, TensorDecl, allocate

ROOT = Path(__file__).resolve().parents[2]
SOURCES = sorted((ROOT / "examples").glob("*.s")) + sorted((ROOT / "bench" / "kernels").glob("*.s"))


def I(mnemonic: str, **kw) -> Instr:  # noqa: E743 - reads like assembly
    return Instr.make(mnemonic, **kw)


def smoke_program(tasks: int = 4) -> Program:
    """Each task: its 1 KiB slice of x through relu and a 64x64x64 matmul tile, into y."""
    t = [TensorDecl("x", "input", "i8", (tasks * 1024,), -1), TensorDecl("y", "output", "i8", (tasks * 1024,), -1),
         TensorDecl("w", "const", "i8", (64, 64), -1, data=np.arange(4096, dtype=np.int64).astype(np.int8).reshape(64, 64)),
         TensorDecl("z", "output", "i32", (tasks * 64, 64), -1)]
    allocate(t)
    x, y, w, z = t
    s = [I("rdsr", rd=1, sr="taskid"), I("muli", rd=2, rs1=1, imm=1024), I("muli", rd=3, rs1=1, imm=64 * 64 * 4),
         I("dma", dir="g2n", dst=0, src=(2, x.addr), size=1024, sig="cp"),
         I("dma", dir="g2w", dst=0, src=w.addr, size=4096),
         I("vrelu", dt="i8", dst=1024, src=0, n=1024, wait="ld", sig="st"),
         I("dma", dir="n2g", dst=(2, y.addr), src=1024, size=1024, wait="cp"),
         I("sync"),
         I("matmul", dt="i8", odt="i32", dst=4096, a=0, b=0, m=64, k=16, n=64, sig="st"),
         I("dma", dir="n2g", dst=(3, z.addr), src=4096, size=64 * 64 * 4, wait="cp")]
    return Program([Kernel("smoke", "block", tasks, [s])], t)


SMALL = [0, 1, 2, 3, 4, 7, 8, 15, 16, 31, 32, 63, 64, 65, 100, 127, 128, 255, 256, 1024]


def _imm(f: Imm):
    lo, hi = f.range()
    edges = [v for v in (lo, hi, lo + 1, hi - 1, -1, 0) if lo <= v <= hi]
    return st.one_of(st.sampled_from([v for v in SMALL if lo <= v <= hi] or [lo]), st.sampled_from(edges),
                     st.integers(lo, hi))


def _addr(f: Addr):
    lim = (1 << f.bits) - 1
    offsets = st.one_of(st.sampled_from([0, 64, 128, 1024, 4096, 0x10000, 0x5FFC0, 0x60000, 0x80000]),
                        st.integers(0, 0x60000).map(lambda v: v & ~63), st.integers(0, min(lim, 1 << 20)),
                        st.just(lim))
    return st.tuples(st.sampled_from([0, 0, 0, 1, 2, 31]), offsets).map(lambda p: (p[0] << f.bits) | p[1])


def field_strategy(f):
    if isinstance(f, Reg):
        return st.sampled_from([0, 1, 2, 3, 4, 31])
    if isinstance(f, Addr):
        return _addr(f)
    if isinstance(f, Enum):
        return st.integers(0, len(f.choices) - 1)
    if isinstance(f, Deps):
        return st.sampled_from([0, 0, 0, 1, 2, 4, 3, 7])
    if isinstance(f, Target):
        return st.integers(-3, 3)
    if isinstance(f, F32):
        return st.one_of(st.sampled_from([f32_bits(v) for v in (0.0, 1.0, -1.0, 0.5, 1e-3, 3e38, float("inf"))]
                                         + [0x7FC00000]), st.integers(0, 2**32 - 1))
    if isinstance(f, Imm):
        return _imm(f)
    lo, hi = f.range()
    return st.integers(lo, hi)


@st.composite
def instruction(draw, ops=OPS):
    op = draw(st.sampled_from(ops))
    args = {f.name: draw(field_strategy(f)) for f in op.fields}
    return Instr(op, {f.name: f.check(v, op.mnemonic) for f, v in zip(op.fields, args.values())})


def clamp_targets(stream: list[Instr]) -> list[Instr]:
    """Branch targets inside [0, len]: the invariant assembler and loader establish."""
    out = []
    for pc, ins in enumerate(stream):
        args = dict(ins.args)
        for f in ins.op.fields:
            if isinstance(f, Target):
                args[f.name] = min(max(args[f.name], -pc), len(stream) - pc)
        out.append(Instr(ins.op, args))
    return out


@st.composite
def random_program(draw, max_len: int = 10):
    # Mostly targets inside the stream (the assembler and loader guarantee it); sometimes not, which
    # Program.validate must catch for programs built in Python.
    clamp = clamp_targets if draw(st.integers(0, 3)) else (lambda s: s)
    streams = [clamp(draw(st.lists(instruction(), min_size=0, max_size=max_len)))
               for _ in range(draw(st.integers(1, 2)))]
    ttype = draw(st.sampled_from(["block", "block", "union1"]))
    tasks = draw(st.sampled_from([1, 2, 3, 4] if ttype == "block" else [4, 8]))
    task_stream = None if len(streams) == 1 else [draw(st.integers(0, len(streams) - 1)) for _ in range(tasks)]
    t = [TensorDecl("x", "input", draw(st.sampled_from(["i8", "i16", "f32"])), (draw(st.sampled_from([64, 4096])),), -1),
         TensorDecl("y", "output", "i8", (4096,), -1)]
    allocate(t)
    return Program([Kernel("fz", ttype, tasks, streams, task_stream)], t)
