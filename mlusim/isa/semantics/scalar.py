"""Scalar unit semantics: register arithmetic, special registers, branches (64-bit, wrapping)."""
from __future__ import annotations

from mlusim.isa.fields import SPECIAL_REGS

MASK64 = (1 << 64) - 1


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
    ctx.set_reg(a["rd"], ctx.special(SPECIAL_REGS[a["sr"]]))


def branch(cond: str):
    tests = {"lt": lambda x, y: x < y, "ge": lambda x, y: x >= y, "ne": lambda x, y: x != y,
             "eq": lambda x, y: x == y}

    def run(ctx, a):
        if cond == "al" or tests[cond](ctx.regs[a["rs1"]], ctx.regs[a["rs2"]]):
            return a["target"]
        return None

    return run
