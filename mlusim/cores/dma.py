"""A core's DMA engine: what a transfer costs and which links it crosses.

A DMA instruction takes   startup + (segments - 1) * segment_cycles   of descriptor processing, plus
the DRAM first-byte latency when GDRAM is involved, then streams its bus bytes through the Fabric.
A strided transfer that stays on chip (SRAM, NRAM, WRAM: the Move-DMA rather than the IO-DMA) pays
`move_segment_cycles` per extra segment instead: no DRAM bursts or row changes to set up. So does a
GDRAM segment that starts within `dram.page_bytes` of the previous one's end (the open row: a
channel slice of an NHWC tensor, a row band of a padded tile); a jump past it opens a new row.
GDRAM bus bytes are each segment rounded out to the access granularity; a write that covers only
part of a granule costs a read of that granule too (read-modify-write).
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from math import gcd

import numpy as np

from mlusim.isa.fields import DIR_NAMES, DIRECTIONS, QUEUE_OF_DIR

def gdram_bus_bytes(addr: int, size: int, stride: int, count: int, stride2: int, count2: int,
                    gran: int, write: bool) -> int:
    """Exact bytes on the DRAM bus for a strided access, using the periodicity of offsets mod gran."""
    if count == 1 and count2 == 1:
        off = addr % gran
        span = -(-(off + size) // gran) * gran
        if not write:
            return span
        first, last = off != 0, (off + size) % gran != 0
        return span + gran * ((first or last) if span == gran else (first + last))
    # only the offsets mod gran matter, so a layer's many tiles share a handful of answers
    return _strided_bus_bytes(addr % gran, size, stride % gran, count, stride2 % gran, count2, gran, write)


@lru_cache(maxsize=1 << 14)
def _strided_bus_bytes(addr: int, size: int, stride: int, count: int, stride2: int, count2: int,
                       gran: int, write: bool) -> int:
    p1 = gran // gcd(stride % gran or gran, gran) if count > 1 else 1
    p2 = gran // gcd(stride2 % gran or gran, gran) if count2 > 1 else 1
    k1 = np.arange(min(p1, count))
    k2 = np.arange(min(p2, count2))
    n1 = (count - k1 + p1 - 1) // p1
    n2 = (count2 - k2 + p2 - 1) // p2
    off = (addr + k2[:, None] * stride2 + k1[None, :] * stride) % gran
    end = off + size
    span = -(-end // gran) * gran
    total = span
    if write:
        first_partial = off != 0
        last_partial = (end % gran) != 0
        single = span == gran
        partial = np.where(single, (first_partial | last_partial).astype(np.int64),
                           first_partial.astype(np.int64) + last_partial.astype(np.int64))
        total = span + partial * gran
    return int((total * n2[:, None] * n1[None, :]).sum())


@dataclass
class DmaPlan:
    queue: str
    fixed_cycles: float     # descriptor start-up and segment costs, plus DRAM latency
    bus_bytes: float        # bytes through the links
    payload: int            # bytes the program asked to move
    src: str
    dst: str
    gdram_read: int = 0
    gdram_write: int = 0
    read_key: str | None = None     # stats.TRAFFIC_KEYS entries this transfer's payload counts under
    write_key: str | None = None


def operand(src: str, dst: str, reads_weights: bool) -> str:
    """Which operand a transfer moves, from where it goes (SCALE-Sim's IFMAP / FILTER / OFMAP):
    weights when it reads a constant tensor in GDRAM or fills WRAM (which only holds weights);
    output when it leaves a core's NRAM (results), goes from SRAM back to GDRAM, or copies between
    clusters' SRAM (a wide segment's output slices); anything else brings a layer its input."""
    if reads_weights or dst == "wram":
        return "weights"
    if src == "nram" and dst != "nram" or src == "sram" and dst in ("gdram", "sram"):
        return "output"
    return "input"


def with_operand(plan: DmaPlan, reads_weights: bool) -> DmaPlan:
    """`plan` with the traffic keys its payload is counted under (reads at the source's level,
    writes at the destination's, for GDRAM and SRAM)."""
    key = (plan.src, plan.dst, reads_weights)
    keys = _KEYS.get(key)
    if keys is None:
        op = operand(*key)
        keys = _KEYS[key] = (f"{plan.src}.{op}.read" if plan.src in ("gdram", "sram") else None,
                             f"{plan.dst}.{op}.write" if plan.dst in ("gdram", "sram") else None)
    plan.read_key, plan.write_key = keys
    return plan


_KEYS: dict[tuple[str, str, bool], tuple[str | None, str | None]] = {}


def segment_costs(cfg, size: int, stride: int, count: int, stride2: int, count2: int) -> int:
    """Descriptor cycles of a strided transfer's extra segments on its GDRAM side: each jump from
    a segment's end to the next one's start is priced by cfg.segment_cycles (inside the open DRAM
    page, or a new row)."""
    inner = (count - 1) * count2 * cfg.segment_cycles(stride - size) if count > 1 else 0
    outer = (count2 - 1) * cfg.segment_cycles(stride2 - (count - 1) * stride - size) if count2 > 1 else 0
    return inner + outer


def plan_cached(a: dict, cfg, memo: dict, is_weights) -> DmaPlan:
    """`plan` with its traffic keys (`with_operand`), remembered in `memo` (one per chip, so one
    cfg) by what they depend on: the fields other than addresses, a GDRAM address's offset in
    its access granule, and whether the source is a constant tensor. A layer's tiles differ in
    their addresses only, so at batch 1 most of its transfers share a plan. The plan is shared:
    nothing changes it once made."""
    d = a["dir"]
    src, dst = DIRECTIONS[DIR_NAMES[d]]
    g = cfg.dram.access_bytes
    key = (d, a["size"], a["count"], a["count2"], a["sstride"], a["sstride2"], a["dstride"], a["dstride2"],
           a["src"] % g if src == "gdram" else -1, a["dst"] % g if dst == "gdram" else -1,
           src == "gdram" and is_weights(a["src"]))
    hit = memo.get(key)
    if hit is None:
        hit = memo[key] = with_operand(plan(a, cfg), key[-1])
    return hit


def plan(a: dict, cfg) -> DmaPlan:
    d = DIR_NAMES[a["dir"]]
    src, dst = DIRECTIONS[d]
    size, cnt, cnt2 = a["size"], a["count"], a["count2"]
    segs = cnt * cnt2
    payload = size * segs
    rd = wr = 0
    seg = (segs - 1) * cfg.dma.move_segment_cycles if src != "gdram" and dst != "gdram" else 0
    g = cfg.dram.access_bytes
    if src == "gdram":
        rd = gdram_bus_bytes(a["src"], size, a["sstride"], cnt, a["sstride2"], cnt2, g, False)
        seg = segment_costs(cfg, size, a["sstride"], cnt, a["sstride2"], cnt2)
    if dst == "gdram":
        wr = gdram_bus_bytes(a["dst"], size, a["dstride"], cnt, a["dstride2"], cnt2, g, True)
        seg = max(seg, segment_costs(cfg, size, a["dstride"], cnt, a["dstride2"], cnt2))
    fixed = cfg.dma.startup_cycles + seg
    if rd or wr:
        fixed += cfg.dram.latency_cycles
    bus = max(rd + wr, payload)
    return DmaPlan(QUEUE_OF_DIR[a["dir"]], fixed, bus, payload, src, dst, rd, wr)
