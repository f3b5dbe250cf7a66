"""Conv products computed when first needed, the tiles of one weight block in one GEMM.

Why: a conv instruction is one output row's tile, 7 to 56 im2col rows against a whole weight block
(up to 4,608 x 512), a shape BLAS runs at 10-20 GMAC/s against ~45 for tall products. Its sums are
exact integers however BLAS adds them (numerics.gemm_exact; its float32 data bound is per row, so
it holds row by row for rows stacked from many tiles), so a tile's product may run later without
changing a bit. `conv` hands its tile here (the im2col rows are a fresh copy anyway) and leaves its
destination unwritten; before any instruction of that core touches those NRAM bytes, every pending
tile of the same weight block, on any core, is computed in one stacked GEMM and stored. Cores
running one layer side by side have typically all issued their tile by then.

The weight block's float32 form is made once per load into WRAM and shared by every core whose
WRAM holds the same bytes (found by content); a write into WRAM drops the blocks it overlaps.
Timing is untouched: this only moves when the host computes values nobody has read yet.
"""
from __future__ import annotations

import weakref
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from mlusim.isa import numerics as nx


class WeightBlock:
    """A weight block [n, k] as float32 (exact for int8 and int16 values) and its waiting groups of
    tiles, by gemm_exact's bounds (each, w_max), which must be the same for every stacked row."""
    __slots__ = ("bf", "waiting", "__weakref__")

    def __init__(self, w: np.ndarray):
        self.bf = w.astype(np.float32)
        self.waiting: dict[tuple[float, int], Group] = {}


@dataclass(eq=False)
class Group:
    """Tiles waiting for one product with `block` under the bounds (each, w_max)."""
    block: WeightBlock
    each: float
    w_max: int
    tiles: list[Tile] = field(default_factory=list)


@dataclass(eq=False)
class Tile:
    """One conv's pending product: `store(sums)` writes NRAM bytes [lo, hi) of core `owner`."""
    owner: int
    lo: int
    hi: int
    rows: np.ndarray
    store: Callable[[np.ndarray], None]
    group: Group


class DeferredGemms:
    """The chip's pending conv products (one per chip: tiles of several cores share a GEMM)."""

    def __init__(self):
        # core -> {(WRAM addr, shape, dtype): (end addr, block)}: the blocks its WRAM holds
        self._held: dict[int, dict[tuple, tuple[int, WeightBlock]]] = {}
        self._pending: dict[int, list[Tile]] = {}       # core -> its tiles not stored yet
        self._shared: weakref.WeakValueDictionary = weakref.WeakValueDictionary()   # content -> block

    def block(self, owner: int, addr: int, w: np.ndarray) -> WeightBlock:
        """The block for weights `w` [n, k], a view of core `owner`'s WRAM at `addr`."""
        held = self._held.setdefault(owner, {})
        key = (addr, w.shape, w.dtype.str)
        hit = held.get(key)
        if hit is not None:
            return hit[1]
        content = (w.shape, w.dtype.str, w.tobytes())
        b = self._shared.get(content)
        if b is None:
            b = self._shared[content] = WeightBlock(w)
        held[key] = (addr + w.nbytes, b)
        return b

    def defer(self, owner: int, lo: int, hi: int, block: WeightBlock, rows: np.ndarray,
              each: float, w_max: int, store: Callable[[np.ndarray], None]) -> None:
        """Compute rows @ block.T exactly (gemm_exact with bounds each, w_max) before NRAM
        [lo, hi) of core `owner` is next touched, and pass the sums to `store`."""
        g = block.waiting.get((each, w_max))
        if g is None:
            g = block.waiting[(each, w_max)] = Group(block, each, w_max)
        t = Tile(owner, lo, hi, rows, store, g)
        g.tiles.append(t)
        self._pending.setdefault(owner, []).append(t)

    def before(self, owner: int, touches) -> None:
        """Core `owner` is about to execute an instruction with these touches (space, addr,
        nbytes, 'r'/'w', align): store the pending tiles whose bytes it touches, and forget the
        weight blocks a write into WRAM changes."""
        pend = self._pending.get(owner)
        held = self._held.get(owner)
        if not pend and not held:
            return
        for space, addr, n, rw, _ in touches:
            if space == "nram":
                if pend:
                    for t in [t for t in pend if addr < t.hi and t.lo < addr + n]:
                        if t.group.tiles:       # not stored already with an earlier one's group
                            self._run(t.group)
            elif space == "wram" and rw == "w" and held:
                end = addr + n
                for key in [k for k, (e, _) in held.items() if addr < e and k[0] < end]:
                    del held[key]

    def settle(self) -> None:
        """Store every pending tile (the end of a run)."""
        for pend in list(self._pending.values()):
            while pend:
                self._run(pend[0].group)

    def _run(self, g: Group) -> None:
        """One stacked product for a group's tiles, each tile's rows then stored."""
        tiles = g.tiles
        del g.block.waiting[(g.each, g.w_max)]
        rows = tiles[0].rows if len(tiles) == 1 else np.concatenate([t.rows for t in tiles])
        sums = nx.gemm_exact(rows, g.block.bf, g.each, g.w_max)
        r0 = 0
        for t in tiles:
            r1 = r0 + len(t.rows)
            t.store(sums[r0:r1])
            r0 = r1
            self._pending[t.owner].remove(t)
        g.tiles = []
