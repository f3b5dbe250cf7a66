"""Cycle cost of each instruction on its unit, from its fields and the hardware config.

The formulas are deliberately simple enough to check by hand (docs/timing.md): start-up plus
work divided by the unit's width, with the MAC array padding channels to its lanes. DMA costs are
not here: they depend on what else is in flight and live in mlusim/cores/dma.py.
"""
from __future__ import annotations

from math import ceil

from mlusim.isa.fields import DTYPE_BYTES, DTYPES
from mlusim.isa import numerics as nx

TRANSCENDENTAL_PASSES = 4   # [G] exp/log cost four vector passes (ref 2: nonlinear ops 6-18 cycles)


def _dt(a, name="dt") -> str:
    return DTYPES[a[name]]


def scalar(a, cfg) -> float:
    """`startup_cycles.scalar`, at the issue stage."""
    return cfg.core.startup_cycles.scalar


def ci_lanes(cfg, dt: str) -> int:
    return cfg.core.mac_ci_lanes_int8 if dt in ("i8", "u8") else cfg.core.mac_ci_lanes_int16


def conv(a, cfg) -> float:
    """`startup_cycles.conv + n*ho*wo*kh*kw * ceil(ci_g/ci_lanes) * ceil(co_g/co_lanes) * groups`:
    one output pixel x ci_lanes input x co_lanes output channels per cycle, per tap (ci_g = ci/groups)."""
    ho = nx.conv_out_size(a["hi"], a["kh"], a["sh"], a["pt"], a["pb"], a["dh"])
    wo = nx.conv_out_size(a["wi"], a["kw"], a["sw"], a["pl"], a["pr"], a["dw"])
    g = a["groups"]
    cig, cog = a["ci"] // g, a["co"] // g
    blocks = ceil(cig / ci_lanes(cfg, _dt(a))) * ceil(cog / cfg.core.mac_co_lanes)
    return cfg.core.startup_cycles.conv + a["n"] * ho * wo * a["kh"] * a["kw"] * blocks * g


def matmul(a, cfg) -> float:
    """`startup_cycles.matmul + m * ceil(k/ci_lanes) * ceil(n/co_lanes)`."""
    blocks = ceil(a["k"] / ci_lanes(cfg, _dt(a))) * ceil(a["n"] / cfg.core.mac_co_lanes)
    return cfg.core.startup_cycles.matmul + a["m"] * blocks


def _vec(nbytes: float, cfg, passes: int = 1) -> float:
    return cfg.core.startup_cycles.vector + passes * ceil(nbytes / cfg.core.vector_bytes_per_cycle)


def vec_elementwise(a, cfg) -> float:
    """`startup_cycles.vector + ceil(n*size(dt) / vector_bytes_per_cycle)`."""
    return _vec(a["n"] * DTYPE_BYTES[_dt(a)], cfg)


def vec_cast(a, cfg) -> float:
    """`startup_cycles.vector + ceil(n*max(size(src), size(dst)) / vector_bytes_per_cycle)`."""
    src = "sdt" if "sdt" in a else "dt"
    dst = "ddt" if "ddt" in a else "odt"
    return _vec(a["n"] * max(DTYPE_BYTES[_dt(a, src)], DTYPE_BYTES[_dt(a, dst)]), cfg)


def vec_requant(a, cfg) -> float:
    """`startup_cycles.vector + ceil(n*4 / vector_bytes_per_cycle)` (the int32 stream is widest)."""
    return _vec(a["n"] * 4, cfg)   # the int32 accumulator stream is the widest operand


def vec_pool(a, cfg) -> float:
    """`startup_cycles.vector + ceil(n*ho*wo*c*kh*kw*w / vector_bytes_per_cycle)`, w = size(dt) for max, 4 for sum."""
    ho = nx.conv_out_size(a["hi"], a["kh"], a["sh"], a["pt"], a["pb"], 1)
    wo = nx.conv_out_size(a["wi"], a["kw"], a["sw"], a["pl"], a["pr"], 1)
    width = DTYPE_BYTES[_dt(a)] if a["mode"] == 0 else 4
    return _vec(a["n"] * ho * wo * a["c"] * a["kh"] * a["kw"] * width, cfg)


def vec_dwconv(a, cfg) -> float:
    """`startup_cycles.vector + ceil(n*ho*wo*c*kh*kw*4 / vector_bytes_per_cycle)`: one MAC per tap into int32 lanes."""
    ho = nx.conv_out_size(a["hi"], a["kh"], a["sh"], a["pt"], a["pb"], a["dh"])
    wo = nx.conv_out_size(a["wi"], a["kw"], a["sw"], a["pl"], a["pr"], a["dw"])
    return _vec(a["n"] * ho * wo * a["c"] * a["kh"] * a["kw"] * 4, cfg)


def vec_transcendental(a, cfg) -> float:
    """`startup_cycles.vector + 4 * ceil(n*size(dt) / vector_bytes_per_cycle)` (four passes, a guess)."""
    return _vec(a["n"] * DTYPE_BYTES[_dt(a)], cfg, TRANSCENDENTAL_PASSES)


def vec_reduce(a, cfg) -> float:
    """`startup_cycles.vector + ceil(rows*cols*size(dt) / vector_bytes_per_cycle)`."""
    return _vec(a["rows"] * a["cols"] * DTYPE_BYTES[_dt(a)], cfg)


def vec_row(a, cfg) -> float:
    """`startup_cycles.vector + ceil(rows*cols*size(dt) / vector_bytes_per_cycle)`."""
    return _vec(a["rows"] * a["cols"] * DTYPE_BYTES[_dt(a)], cfg)


def useful_macs(mnemonic: str, a) -> int:
    """Multiply-accumulates the instruction really needs (no lane padding), for utilization."""
    if mnemonic == "matmul":
        return a["m"] * a["k"] * a["n"]
    ho = nx.conv_out_size(a["hi"], a["kh"], a["sh"], a["pt"], a["pb"], a["dh"])
    wo = nx.conv_out_size(a["wi"], a["kw"], a["sw"], a["pl"], a["pr"], a["dw"])
    return a["n"] * ho * wo * a["co"] * a["kh"] * a["kw"] * (a["ci"] // a["groups"])


def vec_trans(a, cfg) -> float:
    """`startup_cycles.vector + ceil(rows*cols*size(dt) / vector_bytes_per_cycle)`."""
    return _vec(a["rows"] * a["cols"] * DTYPE_BYTES[_dt(a)], cfg)


def vec_poolbp(a, cfg) -> float:
    """`startup_cycles.vector + ceil(n*ho*wo*c*kh*kw*size(dt) / vector_bytes_per_cycle)` (window scan),
    plus a pass over the input to write it."""
    ho = nx.conv_out_size(a["hi"], a["kh"], a["sh"], a["pt"], a["pb"], 1)
    wo = nx.conv_out_size(a["wi"], a["kw"], a["sw"], a["pl"], a["pr"], 1)
    esz = DTYPE_BYTES[_dt(a)]
    return _vec(a["n"] * ho * wo * a["c"] * a["kh"] * a["kw"] * esz + a["n"] * a["hi"] * a["wi"] * a["c"] * esz, cfg)
