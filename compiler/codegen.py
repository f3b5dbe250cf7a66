"""Instruction streams from dataflow: kernels say what each instruction depends on; this module
turns those dependencies into the ISA's dependency tokens.

A core runs three in-order queues (ld, cp, st). An instruction on queue p that depends on an
instruction d on queue q != p must pop a token that d pushes on completion. Because queues
complete in order, only the latest dependency per source queue matters, and a dependency already
covered by an earlier pop on p needs nothing. Each consumer then pops at most one token per source
queue, and the signalling instruction gets the matching `sig` bit: no counting by hand, no leftover
or missing tokens.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from mlusim.errors import CompileError
from mlusim.isa.encoding import Instr
from mlusim.isa.fields import QUEUE_OF_DIR, QUEUES

QBIT = {q: 1 << i for i, q in enumerate(QUEUES)}


def queue_of(ins: Instr) -> str:
    return QUEUE_OF_DIR[ins.args["dir"]] if ins.op.unit == "dma" else "cp"


def queues_of(instrs: list[Instr]) -> list[str]:
    """queue_of of each instruction, in one pass (fused segments scan a layer's stream for where
    to slot weight loads in: hundreds of instructions, hundreds of times per segment)."""
    return [QUEUE_OF_DIR[i.args["dir"]] if i.op.unit == "dma" else "cp" for i in instrs]


@dataclass
class TaskStream:
    """One task's instructions in issue order, with their dataflow dependencies."""

    ops: list[Instr] = field(default_factory=list)
    deps: list[list[int]] = field(default_factory=list)

    def emit(self, mnemonic: str, deps=(), **fields) -> int:
        """Append an instruction; `deps` are handles of earlier ones it must wait for. Returns its handle."""
        return self.append(mnemonic, deps, fields)

    def append(self, mnemonic: str, deps, fields: dict) -> int:
        """`emit` with the fields in a dict (the stream may change it: relocate.RecordingStream)."""
        self.ops.append(Instr.from_fields(mnemonic, fields))
        self.deps.append([d for d in deps if d is not None])
        return len(self.ops) - 1

    def dma(self, direction: str, dst: int, src: int, size: int, deps=(), **kw) -> int:
        return self.append("dma", deps, {"dir": direction, "dst": dst, "src": src, "size": size, **kw})

    def finish(self) -> list[Instr]:
        """Set every instruction's wait/sig bits from the dependencies."""
        ops = self.ops
        queues = queues_of(ops)
        covered: dict[tuple[str, str], int] = {}      # (src queue, dst queue) -> latest handle waited for
        for idx, deps in enumerate(self.deps):
            if not deps:
                continue
            p = queues[idx]
            latest: dict[str, int] = {}
            for d in deps:
                if d >= idx:
                    raise CompileError(f"instruction {idx} depends on a later instruction {d}")
                q = queues[d]
                if q != p and d > latest.get(q, -1):
                    latest[q] = d
            for q, d in latest.items():
                if covered.get((q, p), -1) >= d:
                    continue
                covered[(q, p)] = d
                ops[idx].args["wait"] |= QBIT[q]
                ops[d].args["sig"] |= QBIT[p]
        return ops


def load_dir(t) -> str:
    """DMA direction bringing activation `t` into NRAM: from GDRAM, or from cluster SRAM when a
    fused segment keeps it there (compiler/fusion.py)."""
    return "s2n" if getattr(t, "space", "gdram") == "sram" else "g2n"


def store_dir(t) -> str:
    """DMA direction writing activation `t` from NRAM back to where it lives."""
    return "n2s" if getattr(t, "space", "gdram") == "sram" else "n2g"


class Arena:
    """A bump allocator for one scratchpad, so kernels name buffers, not addresses."""

    def __init__(self, name: str, size: int, align: int = 64, base: int = 0):
        self.name, self.size, self.align, self.top = name, size, align, base

    def alloc(self, nbytes: int, what: str) -> int:
        addr = -(-self.top // self.align) * self.align
        if addr + nbytes > self.size:
            raise CompileError(f"{self.name}: {what} needs {nbytes:,} bytes at {addr:#x}, over the "
                               f"{self.size:,}-byte scratchpad (tiling bug)")
        self.top = addr + nbytes
        return addr

    def fits(self, *sizes: int) -> bool:
        top = 0
        for s in sizes:
            top = -(-top // self.align) * self.align + s
        return top <= self.size
