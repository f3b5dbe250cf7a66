"""Conv products computed when first needed, the tiles of one weight block in one GEMM.

Why: a conv instruction is one output row's tile, 7 to 56 im2col rows against a whole weight block
(up to 4,608 x 512), a shape BLAS runs at 10-20 GMAC/s against ~45 for tall products. Its sums are
exact integers however BLAS adds them (numerics.gemm_exact; its float32 data bound is per row, so
it holds row by row for rows stacked from many tiles), so a tile's product may run later without
changing a bit. `conv` hands its tile here (the im2col rows are a fresh copy anyway) and leaves its
destination unwritten; before any instruction of that core touches those NRAM bytes, every pending
tile of the same weight block, on any core, is computed in one stacked GEMM and stored. Cores
running one layer side by side have typically all issued their tile by then. Cores splitting a
layer's output channels issue equal rows against their own blocks: those rows are written once,
into a Stack the blocks' groups share.

The weight block's float32 form is made once per load into WRAM and shared by every core whose
WRAM holds the same bytes (found by content); a write into WRAM drops the blocks it overlaps.
Timing is untouched: this only moves when the host computes values nobody has read yet.
"""
from __future__ import annotations

import weakref
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from mlusim.isa import numerics as nx
from mlusim.isa.fields import DTYPE_BYTES, DTYPES
from mlusim.isa.semantics import requant as rq


class WeightBlock:
    """A weight block [n, k] as float32 (exact for int8 and int16 values) and its waiting groups of
    tiles, by gemm_exact's bounds (each, w_max), which must be the same for every stacked row.

    `solo`: its last group held one tile, so its next tiles are computed at once. A block's
    groups keep one size while it stays loaded (cores sharing it issue their tiles side by side
    from the first group on: ResNet-50 on 16 cores, batch 1 and 16, never has a one-tile group
    followed by a bigger one), and a tile computed at once skips the waiting's bookkeeping and
    finds its rows and weights still in cache: at batch 1, three quarters of the groups are one
    tile. A reload into WRAM is a new block, observed afresh. `rows`: how many rows its last group
    stacked, the size of its next group's buffer (0: no group yet). `raw`: the weights' bytes,
    which a block found by fingerprint must equal (DeferredGemms.block)."""
    __slots__ = ("bf", "raw", "waiting", "solo", "rows", "__weakref__")

    def __init__(self, w: np.ndarray, raw: bytes | None = None):
        # [n, k] as a view of a [k, n] C-contiguous array: BLAS multiplies rows @ bf.T 1.2-1.8x
        # faster with its right operand laid out row-major (ResNet-50's stacks of 28-112 rows
        # against k of 1,024-4,608) than transposed
        self.bf = np.ascontiguousarray(w.T, dtype=np.float32).T
        self.raw = w.tobytes() if raw is None else raw
        self.waiting: dict[tuple[float, int], Group] = {}
        self.solo = False
        self.rows = 0


STACKS = 8         # recent stacks of one window searched for a new group's first tile
PROBE = 32          # tiles of a window looked up before its inputs, never found shared, are not
PLAN_MEMO = 1 << 15     # per-instruction plans remembered (ResNet-50 b16 has 7,352 distinct)


@dataclass(slots=True, eq=False)
class Touched:
    """What `execute` reads of an instruction's touches: the NRAM ranges [lo, hi) it touches and
    the WRAM ranges it writes. Worked out once per prepared instruction (the engine keeps it
    beside the touches), not looked up per issue: 138k issues at ResNet-50 b16."""
    nram: tuple[tuple[int, int], ...]
    wram_writes: tuple[tuple[int, int], ...]


def touched(touches) -> Touched:
    """The Touched of a touch list (space, addr, nbytes, "r"/"w", align)."""
    return Touched(tuple((a, a + n) for space, a, n, _, _ in touches if space == "nram"),
                   tuple((a, a + n) for space, a, n, rw, _ in touches if space == "wram" and rw == "w"))


class Stack:
    """Im2col rows of tiles, each written once (`pieces`: (window signature, input bytes), their
    rows `spans`): cores that split a layer's output channels issue the same rows against their
    own weight blocks, and their groups share one stack (DeferredGemms._group). Rows are only
    appended, so a product taken of it stays right whatever is added after."""
    __slots__ = ("buf", "used", "pieces", "spans", "__weakref__")

    def __init__(self, k: int, rows: int):
        self.buf = np.empty((rows, k), np.float32)
        self.used = 0
        self.pieces: list[tuple[tuple, bytes]] = []
        self.spans: list[tuple[int, int]] = []

    def find(self, piece: tuple | None, guess: int) -> tuple[int, int] | None:
        """The rows of a tile equal to `piece` (None: equal to none); `guess`: where one issued
        in order would be."""
        if piece is None:
            return None
        pieces = self.pieces
        if guess < len(pieces) and pieces[guess] == piece:
            return self.spans[guess]
        for i, p in enumerate(pieces):
            if p == piece:
                return self.spans[i]
        return None

    def add(self, gemm: nx.ConvGemm, piece: tuple, guess: int) -> tuple[int, int]:
        """The rows (r0, r1) of a tile: found, else written at the end."""
        span = self.find(piece, guess)
        if span is not None:
            return span
        r0 = self.used
        if r0 + gemm.m > len(self.buf):
            grown = np.empty((max(2 * len(self.buf), r0 + gemm.m), self.buf.shape[1]), np.float32)
            grown[:r0] = self.buf[:r0]
            self.buf = grown
        self.used = r0 + gemm.m
        gemm.rows(self.buf[r0:self.used])
        self.pieces.append(piece)
        self.spans.append((r0, self.used))
        return r0, self.used


class Group:
    """Tiles waiting for one product with `block` under the bounds (each, w_max), their rows in
    a Stack (no copy to gather them at the product when they are one run of it: else gathered)."""
    __slots__ = ("block", "each", "w_max", "stack", "used", "tiles")

    def __init__(self, block: WeightBlock, each: float, w_max: int, stack: Stack):
        self.block, self.each, self.w_max, self.stack = block, each, w_max, stack
        self.used = 0
        self.tiles: list[Tile] = []

    def rows(self) -> np.ndarray:
        """The rows of the group's product, tiles' r0/r1 made relative to them: the stack's when
        the tiles' spans are one run of it without a gap or a repeat, else gathered in order."""
        ts = sorted(self.tiles, key=lambda t: t.r0)
        lo, hi = ts[0].r0, ts[-1].r1
        if hi - lo == self.used and all(u.r0 == t.r1 for t, u in zip(ts, ts[1:])):
            if lo:
                for t in ts:
                    t.r0, t.r1 = t.r0 - lo, t.r1 - lo
            self.tiles = ts
            return self.stack.buf[lo:hi]
        src = self.stack.buf
        out = np.empty((self.used, src.shape[1]), np.float32)
        r = 0
        for t in self.tiles:
            m = t.r1 - t.r0
            out[r:r + m] = src[t.r0:t.r1]
            t.r0, t.r1 = r, r + m
            r += m
        return out


@dataclass(slots=True, eq=False)
class Requant:
    """A vrequant of a pending tile's whole output, waiting with it: its parameters decoded when
    it ran (rq.decode snapshots them), and NRAM bytes [lo, hi) its `dst` view covers."""
    rp: rq.RequantParams
    zp: int
    low: int
    high: int
    odt: str
    dst: np.ndarray
    lo: int
    hi: int


@dataclass(slots=True, eq=False)
class Tile:
    """One conv's pending product, rows [r0, r1) of its group's stack: `store(sums)` writes NRAM
    bytes [lo, hi) of core `owner`; `plain` when those bytes are the sums themselves as int32
    (a vrequant reading them may then wait too: `then`)."""
    owner: int
    lo: int
    hi: int
    r0: int
    r1: int
    store: Callable[[np.ndarray], None]
    group: Group
    plain: bool
    then: Requant | None = None

    def touches(self, lo: int, hi: int) -> bool:
        """Whether NRAM [lo, hi) overlaps bytes this tile (or its waiting vrequant) will write."""
        t = self.then
        return (lo < self.hi and self.lo < hi) or (t is not None and lo < t.hi and t.lo < hi)


class DeferredGemms:
    """The chip's pending conv products (one per chip: tiles of several cores share a GEMM)."""

    def __init__(self):
        # core -> {(WRAM addr, shape, dtype): (end addr, block)}: the blocks its WRAM holds
        self._held: dict[int, dict[tuple, tuple[int, WeightBlock]]] = {}
        self._pending: dict[int, list[Tile]] = {}       # core -> its tiles not stored yet
        self._shared: weakref.WeakValueDictionary = weakref.WeakValueDictionary()   # content -> block
        self._plans: dict[tuple, tuple] = {}            # (id(args), make) -> (args, plan): see memo
        self._scratch: dict[tuple, np.ndarray] = {}     # (shape, pads, dtype) -> zeroed buffer
        self._params: dict[tuple, tuple[bytes, rq.RequantParams]] = {}   # see requant_params
        self._stacks: dict[tuple, list] = {}            # window signature -> recent stacks (refs)
        self._seen: dict[tuple, list[int]] = {}         # window signature -> [tiles, found in a stack]

    def scratch(self, key: tuple) -> np.ndarray:
        """A zeroed buffer of shape key[0] and dtype key[2], one per key on this chip: the padded
        inputs of convs whose padding (key[1]) puts their data at the same place, so writers of
        its interior only (nx.ConvGemm.rows) leave its border zero for the next."""
        buf = self._scratch.get(key)
        if buf is None:
            buf = self._scratch[key] = np.zeros(key[0], key[2])
        return buf

    def memo(self, args: dict, make: Callable):
        """make(args), remembered by the args' id and `make` (the entry holds the args, so the id
        stays theirs): the engine passes one dict per distinct instruction, chip-wide, so what an
        instruction's semantics work out from its fields alone is worked out once per kind of plan."""
        key = (id(args), make)
        hit = self._plans.get(key)
        if hit is None or hit[0] is not args:
            if len(self._plans) >= PLAN_MEMO:
                self._plans.clear()
            hit = self._plans[key] = (args, make(args))
        return hit[1]

    def forget(self) -> None:
        """Drop the per-instruction plans and scratch buffers (a finished run's: see
        Chip.forget_prepared)."""
        self._plans.clear()
        self._scratch.clear()
        self._params.clear()
        self._stacks.clear()
        self._seen.clear()

    def requant_params(self, core: int, buf: np.ndarray, p: int, c: int) -> rq.RequantParams:
        """The decoded [c, 3] parameter block at NRAM byte p of `core` (buf), remembered by its
        place and checked against its bytes: a compare of the bytes skips rq.decode's hash of
        them (1-10 us for 64-2,048 channels; 0.2-1.2 us), ~22k vrequants at ResNet-50 b16."""
        raw = buf[p:p + 12 * c].tobytes()
        key = (core, p, c)
        hit = self._params.get(key)
        if hit is None or hit[0] != raw:
            hit = self._params[key] = (raw, rq.decode(buf[p:p + 12 * c].view(np.int32)))
        return hit[1]

    def block(self, owner: int, addr: int, w: np.ndarray) -> WeightBlock:
        """The block for weights `w` [n, k], a view of core `owner`'s WRAM at `addr`."""
        held = self._held.setdefault(owner, {})
        key = (addr, w.shape, w.dtype)
        hit = held.get(key)
        if hit is not None:
            return hit[1]
        raw = w.tobytes()
        content = (w.shape, w.dtype, _fingerprint(w))
        b = self._shared.get(content)
        if b is None:
            b = self._shared[content] = WeightBlock(w, raw)
        elif b.raw != raw:          # other bytes, the same fingerprint: a block of its own, unshared
            b = WeightBlock(w, raw)
        held[key] = (addr + w.nbytes, b)
        return b

    def defer(self, owner: int, wgt: int, lo: int, hi: int, gemm: nx.ConvGemm,
              store: Callable[[np.ndarray], None], plain: bool) -> None:
        """Compute `gemm` (float32 rows; its weights a view of core `owner`'s WRAM at `wgt`)
        before NRAM [lo, hi) of that core is next touched, and pass the sums to `store` (`plain`:
        which writes them there as they are, int32); at once when the weight block's last group
        held one tile (WeightBlock.solo)."""
        block = self.block(owner, wgt, gemm.weights)
        if block.solo:
            store(nx.gemm_exact(gemm.rows(), block.bf, gemm.each, gemm.w_max))
            return
        key = (gemm.each, gemm.w_max)
        sig = (gemm.window, gemm.x.shape, gemm.x.dtype, key)
        seen = self._seen.get(sig)
        if seen is None:
            seen = self._seen[sig] = [0, 0]
        piece = (sig, gemm.x.tobytes()) if seen[1] or seen[0] < PROBE else None
        g = block.waiting.get(key)
        if g is None:
            g = block.waiting[key] = self._group(block, key, piece)
        st = g.stack
        written = st.used
        r0, r1 = st.add(gemm, piece, len(g.tiles))
        seen[0] += 1
        seen[1] += st.used == written
        g.used += r1 - r0
        t = Tile(owner, lo, hi, r0, r1, store, g, plain)
        g.tiles.append(t)
        self._pending.setdefault(owner, []).append(t)

    def _group(self, block: WeightBlock, key: tuple, piece: tuple) -> Group:
        """A new group for `block` whose first tile is `piece`: on a recent stack of that window
        that holds the tile's rows already (another block's group wrote them), else on a new one.
        The STACKS latest stacks of a window are kept while a waiting group holds them. `piece`
        None: a window whose inputs are not compared (PROBE), a stack of the group's own."""
        if piece is None:
            return Group(block, *key, stack=Stack(block.bf.shape[1], block.rows))
        recent = self._stacks.get(piece[0])
        if recent is None:
            recent = self._stacks[piece[0]] = []
        for ref in reversed(recent):
            st = ref()
            if st is not None and st.find(piece, 0) is not None:
                return Group(block, *key, stack=st)
        st = Stack(block.bf.shape[1], block.rows)
        recent.append(weakref.ref(st))
        if len(recent) > STACKS:
            del recent[0]
        return Group(block, *key, stack=st)

    def execute(self, core, op, a: dict, used: Touched) -> None:
        """Run an instruction's semantics on `core` (what it touches given): a vrequant of a
        pending tile's whole output waits with the tile; anything else first has the pending tiles
        whose bytes it touches stored, and a write into WRAM drops the blocks it overlaps."""
        if used.wram_writes:
            self._forget(core.id, used.wram_writes)
        pend = self._pending.get(core.id)
        if pend:
            if op.mnemonic == "vrequant" and self._requant_later(core, a, used.nram, pend):
                return
            for lo, hi in used.nram:
                for t in [t for t in pend if t.touches(lo, hi)]:
                    if t.group.tiles:           # not stored already with an earlier one's group
                        self._run(t.group)
        op.execute(core, a)

    def _requant_later(self, core, a: dict, nram: tuple, pend: list[Tile]) -> bool:
        """Attach a vrequant to the pending tile it reads whole (c = the tile's channels, its
        sums stored plain), when its other operands (`nram`: every NRAM range it touches) touch
        no pending bytes."""
        src, n, c = a["src"], a["n"], a["c"]
        end = src + 4 * n
        for t in pend:
            if t.lo == src and t.hi == end:
                break
        else:
            return False
        if not t.plain or t.then is not None or t.group.block.bf.shape[0] != c:
            return False
        for lo, hi in nram:
            for u in pend:
                if u.touches(lo, hi) and (u is not t or lo != src or hi != end):
                    return False
        odt = DTYPES[a["odt"]]
        buf = core.mem("nram")
        rp = self.requant_params(core.id, buf, a["params"], c)
        d = a["dst"]
        dhi = d + n * DTYPE_BYTES[odt]
        t.then = Requant(rp, a["zp"], a["lo"], a["hi"], odt, buf[d:dhi].view(nx.NP_DTYPES[odt]), d, dhi)
        return True

    def _forget(self, owner: int, writes: tuple) -> None:
        """Drop the weight blocks of core `owner` that WRAM writes [lo, hi) change."""
        held = self._held.get(owner)
        for lo, hi in writes if held else ():
            for key in [k for k, (end, _) in held.items() if lo < end and k[0] < hi]:
                del held[key]

    def settle(self) -> None:
        """Store every pending tile (the end of a run)."""
        for pend in list(self._pending.values()):
            while pend:
                self._run(pend[0].group)

    def _run(self, g: Group) -> None:
        """One stacked product for a group's tiles, each tile's rows then stored."""
        del g.block.waiting[(g.each, g.w_max)]
        g.block.solo, g.block.rows = len(g.tiles) == 1, g.used
        sums = nx.gemm_exact(g.rows(), g.block.bf, g.each, g.w_max)
        pending = self._pending
        for t in g.tiles:
            t.store(sums[t.r0:t.r1])
            pending[t.owner].remove(t)
        _requant_runs(g.tiles, sums)
        g.tiles = []


def _fingerprint(w: np.ndarray) -> int:
    """A contiguous array's bytes summed as uint64 words (wrapping; a tail under 8 bytes left out):
    the key under which blocks of equal weights are shared, 15x cheaper than hashing the bytes
    (Python's SipHash: 65 us for a 64 x 4,608 block; 1,080 look-ups at ResNet-50 b16). Equal
    bytes have equal fingerprints; a block found by one is used only if its bytes are equal."""
    flat = w.reshape(-1).view(np.uint8)
    return int(flat[:flat.size // 8 * 8].view(np.uint64).sum())


def _requant_runs(tiles: list[Tile], sums: np.ndarray) -> None:
    """The waiting vrequants of a group's tiles, each run of neighbours with the same parameters
    requantized together from the stacked sums (the same values the int32 store holds)."""
    i = 0
    while i < len(tiles):
        q = tiles[i].then
        if q is None:
            i += 1
            continue
        j = i + 1
        while j < len(tiles) and _same(tiles[j].then, q):
            j += 1
        base = tiles[i].r0
        vals = rq.requantized(sums[base:tiles[j - 1].r1], q.rp, q.zp, q.low, q.high, q.odt)
        for t in tiles[i:j]:
            t.then.dst[:] = vals[t.r0 - base:t.r1 - base].reshape(-1)
        i = j


def _same(p: Requant | None, q: Requant) -> bool:
    return p is not None and p.rp is q.rp and (p.zp, p.low, p.high, p.odt) == (q.zp, q.low, q.high, q.odt)
