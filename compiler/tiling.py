"""Choosing tiles: enumerate candidate tilings that fit the scratchpads, price each with the same
formulas the simulator uses, keep the cheapest.

This is why changing `core.nram_kib` changes the generated code: the feasible set and the prices
both come from the target config.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from math import ceil

DOUBLE = 2     # ping-pong buffers for anything loaded or stored per tile


def dma_cycles(cfg, nbytes: int, segments: int = 1, space: str = "gdram", rate: float | None = None,
               gap: int | None = None) -> float:
    """One DMA between NRAM/WRAM and `space` (gdram or the cluster's sram), as the engine prices it
    without contention, or at `rate` bytes per cycle when the caller knows its share; `gap`: bytes
    from one GDRAM segment's end to the next one's start, when known (HardwareConfig.segment_cycles)."""
    d = cfg.dma
    if space == "sram":
        return d.startup_cycles + (segments - 1) * d.move_segment_cycles + nbytes / (rate or d.sram_bandwidth_bytes_per_cycle)
    fixed = d.startup_cycles + (segments - 1) * cfg.segment_cycles(gap) + cfg.dram.latency_cycles
    return fixed + nbytes / (rate or d.core_bandwidth_bytes_per_cycle)


def vec_cycles(cfg, nbytes: int) -> float:
    return cfg.core.startup_cycles.vector + ceil(nbytes / cfg.core.vector_bytes_per_cycle)


def split(n: int, parts: int) -> list[tuple[int, int]]:
    """n items into `parts` contiguous chunks whose sizes differ by at most one."""
    base, extra = divmod(n, parts)
    out, start = [], 0
    for i in range(parts):
        size = base + (1 if i < extra else 0)
        out.append((start, start + size))
        start += size
    return out


@lru_cache(maxsize=1 << 14)
def block_loads(units: int, tasks: int, per_block: int) -> tuple[int, int]:
    """(most, total) weight blocks the tasks load when `units` tiles, `per_block` to a block and
    block-major, are cut into `tasks` contiguous runs (split): a run loads each block it touches."""
    loads = [(b1 - 1) // per_block - b0 // per_block + 1 for b0, b1 in split(units, tasks)]
    return max(loads), sum(loads)


def row_candidates(rows: int, multiple: int = 1, limit: int = 48) -> list[int]:
    """Tile heights worth trying: rows/k for small k, plus small heights, all multiples of `multiple`."""
    cands = set()
    for k in range(1, min(rows, limit) + 1):
        r = -(-rows // k)
        r = -(-r // multiple) * multiple
        cands.add(min(r, -(-rows // multiple) * multiple))
    cands.update(m for m in (multiple, 2 * multiple, 4 * multiple) if m <= rows)
    return sorted(c for c in cands if c >= 1)


def block_candidates(channels: int, lanes: int) -> list[int]:
    """Output-channel blocks: all of them, or halvings (multiples of the MAC lanes first; smaller
    blocks waste lanes but let a tile fit a small NRAM, so they stay candidates)."""
    out = {channels}
    b = channels
    while b > 8 and b % 2 == 0:
        b //= 2
        out.add(b)
    return sorted(out, reverse=True)


@dataclass
class Plan:
    rows: int             # output rows per tile (before a fused pool)
    block: int            # output channels per tile
    tasks: int
    cost: float           # estimated cycles of the slowest task, or of DRAM if that is slower
    units: int
    buffers: int = 1      # accumulators: 2 lets the MAC array and the vector unit overlap
    fold: int = 1         # conv kernel columns folded into input channels (kernels/conv.py folded())
    row_step: int = 1     # a strided 1x1 conv loading one input row in row_step (kernels/conv.py skipping_rows())

    def describe(self) -> str:
        return (f"{self.rows} rows x {self.block} channels per tile, {self.units} tiles over {self.tasks} tasks"
                + (", double accumulator" if self.buffers == 2 else "")
                + (f", {self.fold} kernel columns folded into channels" if self.fold > 1 else "")
                + (f", loading one input row in {self.row_step}" if self.row_step > 1 else ""))


def choose(cands, price):
    """The candidate with the lowest price; `price` returns None for infeasible ones."""
    best = None
    for c in cands:
        p = price(*c)
        if p is not None and (best is None or p.cost < best.cost):
            best = p
    return best
