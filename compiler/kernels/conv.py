"""Conv2d (+ folded batch norm, bias, activation, fused max pool) as one kernel.

Each task owns a contiguous run of tiles, ordered so consecutive tiles share an output-channel block
(its weights stay in WRAM). Per tile, three stages overlap across tiles (double buffering):
    ld: input rows (with halo) -> NRAM ping/pong            [+ weights -> WRAM at block changes]
    cp: conv on the MAC array (or vdwconv on the vector unit for depthwise) -> int32,
        vrequant (bias, per-channel multiplier, activation clamp) -> int8, [vpool max]
        (a residual conv: vrqadd, the shortcut's join and the requantization in one pass)
    st: tile -> GDRAM (contiguous when the tile spans all channels)
Dependencies are declared as dataflow; codegen.TaskStream turns them into tokens.

A grouped conv keeps all its groups in one weight block (one conv instruction per tile, contiguous
input rows). Only when that block cannot fit WRAM (AlexNet's conv4 at int16: 1.3 MB) do blocks
split the groups (ConvGeometry.sliced): whole groups, or equal parts of one, each tile holding
just its groups' input channels, picked out of every pixel by a strided DMA.

Input zero points (imported asymmetric models). The MAC array multiplies raw int8 values and its
padding reads zeros, but the real value of q is (q - zp) * s. Two exact rewrites make it right:
  * bias: sum (x - zp) w = sum x w - zp * sum w, so the requantize bias gets -zp * sum(w) per
    output channel (requant.zero_point_bias), computed at compile time;
  * padding: a padded position must hold zp (real 0) for that identity to hold everywhere, so the
    input tile is built padded in NRAM: both ping-pong buffers are filled with zp once (vset), the
    rows are DMA'd into the interior with a strided copy, pad rows are DMA'd from a one-row zp
    constant in GDRAM (source stride 0), and the conv runs with no padding of its own.
Both are exact integer identities, so int8 speed is kept; the reference (reference.run_quant)
computes the plain conv of (x - zp) and checks it.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field, replace
from functools import lru_cache
from math import ceil

import numpy as np

from mlusim.compiler.codegen import Arena, TaskStream, load_dir, store_dir
from mlusim.compiler.kernels.requant import float_requant, requant_params, zero_point_bias
from mlusim.compiler.context import KernelCtx, WramSlot, dram_rate
from mlusim.compiler.tiling import (DOUBLE, Plan, block_candidates, block_loads, dma_cycles, row_candidates, split,
                                    vec_cycles)
from mlusim.errors import CompileError
from mlusim.isa.encoding import Instr


class ConvGeometry:
    def __init__(self, node, x_shape):
        n, h, w, ci = x_shape
        co, cig, kh, kw = node.q["weight"].shape
        self.n, self.h, self.w, self.ci, self.co, self.cig, self.kh, self.kw = n, h, w, ci, co, cig, kh, kw
        self.sh, self.sw = node.attrs["stride"]
        self.dh, self.dw = node.attrs["dilation"]
        self.pt, self.pb, self.pl, self.pr = node.attrs["padding"]
        self.groups = node.attrs["groups"]
        self.depthwise = self.groups == ci == co and cig == 1
        self.cog = co // self.groups                                        # output channels per group
        self.in_slice = False                                               # see sliced()
        conv_shape = node.attrs.get("conv_shape", node.shape)
        self.ho, self.wo = conv_shape[2], conv_shape[3]
        self.pool = node.attrs.get("pool")
        self.residual = bool(node.attrs.get("residual"))
        self.esz = 2 if node.q["dtype"] == "int16" else 1
        self.dt = "i16" if self.esz == 2 else "i8"
        self.zp_in = int(node.q.get("in_zp", 0))
        # firstconv: the raw image's padding holds each channel's quantized mean (quant.firstconv)
        self.fill = node.q.get("pad_fill")
        self.zp_pad = (bool(self.zp_in) or self.fill is not None) and any(node.attrs["padding"])   # pads built in NRAM
        self.wp = w + self.pl + self.pr if self.zp_pad else w              # width of a tile row in NRAM
        self.fscale = "fscale" in node.q                                    # ONNX Runtime's float requantization
        self.fold, self.src_ci, self.src_w, self.src_sw = 1, ci, w, self.sw   # see folded()
        self.row_step, self.src_h = 1, h                                    # see skipping_rows()
        # channels [c_off, c_off + co) of output / shortcut tensors that have yc channels (a
        # cluster's share of a layer split across clusters, compiler/wide.py); c_off only moves
        # where those tensors start (`channel_slice`), so the geometry and its plan leave it out
        self.yc = node.attrs.get("out_slice", (0, co))[1]

    def can_fold(self, lanes: int) -> bool:
        return (self.kw > 1 and self.dw == 1 and self.pl == self.pr == 0 and self.groups == 1
                and not self.zp_pad and not self.depthwise and ceil(self.kw * self.ci / lanes) < self.kw * ceil(self.ci / lanes))

    def folded(self) -> "ConvGeometry":
        """The same conv with its kernel columns folded into input channels: a few-channel input
        (the space-to-depth stem: 12 channels of 64 lanes) fills kw times more MAC lanes. The tile
        row for output pixel x is input pixels x..x+kw-1 side by side, which in NHWC are kw*ci
        consecutive bytes: one strided Move-DMA with overlapping source segments builds the tile,
        and the [co, kh, kw, ci] weights already are [co, kh, 1, kw*ci]. With a column stride s
        the segments start s pixels apart (AlexNet's 11x11/4 and SqueezeNet 1.0's 7x7/2 stems)."""
        g = copy.copy(self)
        g.fold, g.ci, g.cig, g.kw = self.kw, self.kw * self.ci, self.kw * self.ci, 1
        g.src_sw, g.sw = self.sw, 1
        g.w = g.wp = self.wo
        return g

    def can_skip_rows(self) -> bool:
        return (self.kh == 1 and self.sh > 1 and self.pt == self.pb == 0 and self.fold == 1 and not self.zp_pad
                and not self.depthwise)

    def skipping_rows(self) -> "ConvGeometry":
        """A 1x1 conv with row stride s reads one input row in s (ResNet's stride-2 shortcut
        convs): a strided DMA brings only those rows and the conv runs on them with row stride 1,
        so half the input bytes cross DRAM or the SRAM port."""
        g = copy.copy(self)
        g.row_step, g.h, g.sh = self.sh, self.ho, 1
        return g

    def can_slice(self) -> bool:
        return self.groups > 1 and not self.depthwise and self.fill is None and self.fold == 1 and self.row_step == 1

    def slice_blocks(self, lanes: int) -> list[int]:
        """Output-channel blocks that never straddle a group: whole groups, or equal parts of one."""
        return [b for b in block_candidates(self.co, lanes)
                if b < self.co and self.co % b == 0 and (b % self.cog == 0 or self.cog % b == 0)]

    def sliced(self, block: int) -> "ConvGeometry":
        """The conv as one block of `block` output channels sees it: its own groups (whole ones, or
        part of one), whose input channels (ci) are all its tile holds. A strided DMA picks them out
        of each input pixel (src_ci channels), so a grouped conv whose weights exceed WRAM (AlexNet's
        conv4 at int16: 1.3 MB) still runs, block by block."""
        g = copy.copy(self)
        g.in_slice, g.groups = True, max(1, block // self.cog)
        g.ci = g.groups * self.cig
        return g

    def in_channel(self, c0: int) -> int:
        """The first input channel the block starting at output channel c0 reads."""
        return (c0 // self.cog) * self.cig if self.in_slice else 0

    def tile_bytes(self, rows: int) -> int:
        """NRAM bytes of the input tile for `rows` output rows (padded rows too when zp_pad)."""
        return min(self.rows_in(rows), self.h + self.pt + self.pb) * self.wp * self.ci * self.esz

    def in_rows(self, r0: int, r1: int) -> tuple[int, int, int, int]:
        """Input rows [a, b) a tile of output rows [r0, r1) reads, and its top/bottom padding."""
        start = r0 * self.sh - self.pt
        end = (r1 - 1) * self.sh - self.pt + (self.kh - 1) * self.dh + 1
        return max(start, 0), min(end, self.h), max(0, -start), max(0, end - self.h)

    def rows_in(self, r: int) -> int:
        return (r - 1) * self.sh + (self.kh - 1) * self.dh + 1

    def raw_bytes(self, rows: int, space: str) -> int:
        """NRAM for the unfolded input rows of a folded tile read from GDRAM (0 otherwise): the
        IO-DMA brings the rows whole (one contiguous segment) and the Move-DMA builds the folded
        tile from them on chip, where overlapping segments cost `move_segment_cycles`, not the
        IO-DMA's per-segment DRAM set-up (kernel columns of a stem read straight from GDRAM
        would be one IO-DMA segment per output pixel)."""
        if self.fold == 1 or space != "gdram":
            return 0
        return min(self.rows_in(rows), self.h) * self.src_w * self.src_ci * self.esz


def _stacked(top: int, sizes: list[int], align: int) -> int:
    """Arena.fits's bump allocation: the top after `sizes`, each aligned, placed from `top` on."""
    for s in sizes:
        top = -(-top // align) * align + s
    return top


def all_blocks(wspace: str, blocks: int) -> float:
    """How many of a task's weight blocks sit in WRAM together when they are prefetched: all of
    them when they come from SRAM (staged there once for the chip, compiler/share.py), else the
    task is not prefetched (inf): its blocks would cost a DRAM read per core."""
    return blocks if wspace == "sram" else float("inf")


@dataclass
class _Tile:
    """A tile's facts that hold for any task count (see _Pricer)."""
    rows: int
    block: int
    fits: tuple[bool, bool]       # NRAM holds it with one accumulator, with two
    units: int
    nblocks: int
    in_tile: int
    out: int
    st_bytes: int
    wblock: int
    raw: int
    c_mac: float
    c_vec: float
    segs_in: int
    segs: int
    io_bytes: int                 # DRAM bytes of its activations over all units


@dataclass
class _Run:
    """A tile's facts once the task count is known (see _Pricer)."""
    tasks: int
    per_task: int
    most: int
    ld: float
    st: float
    w1: float
    dram: float


class _Pricer:
    """The cost of a conv tiling on one geometry, split by what each part depends on: the tile
    (rows, block), the task count, the accumulators, so a search works each out once.
    spaces: where the input, output and shortcut live (gdram, or sram inside a fused segment);
    wspace: where the weights come from (sram when staged there, compiler/share.py; wram when
    loaded ahead into a slot of their own, one block per task: fusion.py's gathered fc)."""

    def __init__(self, ctx: KernelCtx, geo: ConvGeometry, spaces: tuple[str, str, str], wspace: str):
        self.ctx, self.cfg, self.geo, self.spaces, self.wspace = ctx, ctx.cfg, geo, spaces, wspace
        cfg = ctx.cfg
        self.nram = Arena("nram", cfg.nram_bytes)
        self.room = cfg.wram_bytes - ctx.wram_base
        self.dram_all = dram_rate(cfg, None, ctx.dram_share)
        # what tile() needs of the geometry, once (integer products: any grouping is exact)
        lanes_ci = cfg.core.mac_ci_lanes_int8 if geo.esz == 1 else cfg.core.mac_ci_lanes_int16
        self.w_per_channel = geo.kh * geo.kw * geo.esz * (1 if geo.depthwise else geo.cig)
        self.mac_per_row = geo.wo * geo.kh * geo.kw * ceil(geo.cig / lanes_ci)
        self.pool_area = geo.pool[0] * geo.pool[1] if geo.pool else 0
        self.io_gdram = tuple(sp == "gdram" for sp in spaces)
        self.in_rows_most = geo.h + geo.pt + geo.pb          # geo.tile_bytes, inlined: tile() runs ~50 times a search
        self.in_row_bytes = geo.wp * geo.ci * geo.esz
        self.shares: dict[int, float] = {}                    # task count -> its DRAM rate (run())

    def tile(self, rows: int, block: int, limit: float | None = None) -> _Tile | None:
        """None when not even one accumulator fits NRAM, its weight block alone overflows WRAM, or
        no task count could price it below `limit` (the best cost so far)."""
        cfg, geo = self.cfg, self.geo
        wo, esz = geo.wo, geo.esz
        wblock = block * self.w_per_channel
        if not geo.depthwise and wblock > self.room:
            return None
        in_tile = min((rows - 1) * geo.sh + (geo.kh - 1) * geo.dh + 1, self.in_rows_most) * self.in_row_bytes
        out = rows * wo * block * esz
        pooled = out // self.pool_area if geo.pool else 0
        st_bytes = pooled if geo.pool else out
        nblocks = ceil(geo.co / block)
        units = geo.n * ceil(geo.ho / rows) * nblocks
        if geo.depthwise:
            c_mac = vec_cycles(cfg, rows * wo * block * geo.kh * geo.kw * 4)
        else:
            c_mac = cfg.core.startup_cycles.conv + rows * self.mac_per_row * \
                ceil(block // geo.groups / cfg.core.mac_co_lanes) * geo.groups
        c_vec = vec_cycles(cfg, rows * wo * block * 4) * (4 if geo.fscale else 1) + \
            (vec_cycles(cfg, out) if geo.pool else 0)
        xg, yg, rg = self.io_gdram
        io_bytes = units * ((in_tile if xg else 0) + (st_bytes if yg else 0) + (out if geo.residual and rg else 0))
        # the slowest task computes at least this many tiles (each at least the slower of its units'
        # work) and drains its last, and the DRAM moves at least the activations (every term `cost`
        # adds to either is positive, so float rounding keeps the order)
        bound = max(ceil(units / min(units, self.ctx.tasks)) * max(c_mac, c_vec) + c_mac, io_bytes / self.dram_all)
        if limit is not None and bound >= limit:
            return None
        acc, params, raw = rows * wo * block * 4, block * 16, geo.raw_bytes(rows, self.spaces[0])
        rest = [out] * DOUBLE + [pooled] * (DOUBLE if geo.pool else 0) + [params] * DOUBLE + \
            ([raw] * DOUBLE if raw else []) + ([out] * DOUBLE + [params] * DOUBLE if geo.residual else []) + \
            ([wblock] if geo.depthwise else [])
        # NRAM's bump allocator (Arena.fits) over [in_tile] * DOUBLE + [acc] * accumulators + rest
        align, top = self.nram.align, 0
        for _ in range(DOUBLE):
            top = -(-top // align) * align + in_tile
        one = -(-top // align) * align + acc
        fits1 = _stacked(one, rest, align) <= self.nram.size
        if not fits1:
            return None
        fits = (fits1, _stacked(-(-one // align) * align + acc, rest, align) <= self.nram.size)
        if geo.fold > 1:
            segs_in = min(geo.rows_in(rows), geo.h + geo.pt + geo.pb) * geo.wo
        elif geo.in_slice:          # one segment per pixel: its block's channels
            segs_in = min(geo.rows_in(rows), geo.h) * geo.w
        else:
            segs_in = rows if geo.wp != geo.w or geo.row_step > 1 else 1
        segs = 1 if block == geo.yc else \
            (rows // (geo.pool[0] if geo.pool else 1)) * (wo // (geo.pool[1] if geo.pool else 1))
        return _Tile(rows, block, fits, units, nblocks, in_tile, out, st_bytes, wblock, raw, c_mac, c_vec,
                     segs_in, segs, io_bytes)

    def run(self, tile: _Tile, max_tasks: int, limit: float | None = None) -> _Run | None:
        """None when a task's weight blocks do not fit WRAM, or when its tiles per task alone cost
        `limit` (the best so far) or more (see tile())."""
        cfg, ctx, geo, wspace, (xs, ys, rs) = self.cfg, self.ctx, self.geo, self.wspace, self.spaces
        units, wblock = tile.units, tile.wblock
        tasks = min(units, max_tasks)
        per_task = ceil(units / tasks)
        if limit is not None and per_task * max(tile.c_mac, tile.c_vec) + tile.c_mac >= limit:
            return None          # (tile())
        # units are ordered block-major and cut into contiguous runs, one per task: a task loads each
        # weight block its run touches once
        most, loads = block_loads(units, tasks, units // tile.nblocks)
        if not geo.depthwise and wblock * (DOUBLE if most > 1 else 1) > self.room or wspace == "wram" and most > 1:
            return None          # a task with one weight block needs no second WRAM buffer
        # a queue moves one DMA at a time, so a tile's fixed costs (start-up, DRAM latency) do not hide
        # behind other tiles of the same task; from GDRAM its bytes flow at its share of the DRAM
        share = self.shares.get(tasks)
        if share is None:
            share = self.shares[tasks] = dram_rate(cfg, 1, ctx.dram_share, tasks)
        ld = dma_cycles(cfg, tile.in_tile, tile.segs_in, xs, rate=share if xs == "gdram" else None) if not tile.raw \
            else dma_cycles(cfg, tile.raw, 1, xs, rate=share) + dma_cycles(cfg, tile.in_tile, tile.segs_in, "sram")
        gap = (geo.yc - tile.block) * geo.esz     # a channel slice's segments: one per pixel, this far apart
        if geo.residual:
            ld += dma_cycles(cfg, tile.out, 1 if tile.block == geo.yc else tile.rows * geo.wo, rs,
                             rate=share if rs == "gdram" else None, gap=gap)
        st = dma_cycles(cfg, tile.st_bytes, tile.segs, ys, rate=share if ys == "gdram" else None, gap=gap)
        # every task fetches its first weight block at once, sharing the DRAM it can count on; later
        # blocks load behind the compute of the one before
        w1 = dma_cycles(cfg, wblock, rate=share) if wspace == "gdram" else \
            dma_cycles(cfg, wblock, space="sram") if wspace == "sram" else 0.0
        if ctx.prefetch and not geo.depthwise and \
                wblock * (1 if most == 1 else all_blocks(wspace, most)) <= self.room // 2:
            # its blocks can stream in beside the layer before's (compiler/prefetch.py): one block, or
            # all of a task's when staged in SRAM (compiler/share.py: no extra DRAM reads)
            w1 = 0.0
        total_bytes = tile.io_bytes + (wblock * loads if wspace == "gdram" else 0)
        return _Run(tasks, per_task, most, ld, st, w1, total_bytes / self.dram_all)

    @staticmethod
    def cost(tile: _Tile, run: _Run, accs: int) -> float | None:
        """Cycles of the slowest task or of the DRAM traffic; None when the accumulators do not fit."""
        if not tile.fits[accs - 1]:
            return None
        c_mac, per_task, ld, st, w1 = tile.c_mac, run.per_task, run.ld, run.st, run.w1
        cp = max(c_mac, tile.c_vec) if accs == 2 else c_mac + tile.c_vec      # two accumulators: the units overlap
        task = w1 + max(per_task * ld + w1 * (run.most - 1), per_task * cp, per_task * st) + ld + c_mac + st
        return max(task, run.dram)


_PLANS: dict = {}


def plan_conv(ctx: KernelCtx, node, x_shape, spaces: tuple[str, str, str] = ("gdram",) * 3
              ) -> tuple[ConvGeometry, Plan]:
    """The cheapest tiling; memoized, since a fused segment emits a layer once per job and image
    group and the segment planner prices the same layers again and again. The key holds, by value,
    everything the search reads: the config, the conv's geometry (all ConvGeometry takes from the
    node), and the context's fields; not the node's name, so a network's repeated blocks (ResNet-50:
    691 searches -> 326 at batch 16) share one search, as they share its answer; nor where a
    channel slice starts (out_slice: a wide layer's parts differ only there, see channel_slice)."""
    q = node.q
    wspace = "sram" if node.name in ctx.weight_home else "wram" if node.name in ctx.weights_ready else "gdram"
    fill = q.get("pad_fill")
    key = (ctx.cfg_key(), q["weight"].shape, q["dtype"], int(q.get("in_zp", 0)), "fscale" in q,
           None if fill is None else tuple(int(v) for v in fill),
           tuple(node.shape), tuple(x_shape), spaces, wspace, ctx.tasks, ctx.dram_share, ctx.prefetch, ctx.wram_base,
           repr(sorted(((k, v[1] if k == "out_slice" else v) for k, v in node.attrs.items()), key=str)))
    hit = _PLANS.get(key)
    if hit is not None:
        return hit
    out = _plan_conv(ctx, node, x_shape, spaces, wspace)
    if len(_PLANS) > 20_000:
        _PLANS.clear()
    _PLANS[key] = out
    return out


def _plan_conv(ctx, node, x_shape, spaces, wspace) -> tuple[ConvGeometry, Plan]:
    geo = ConvGeometry(node, x_shape)
    lanes = ctx.cfg.core.mac_ci_lanes_int8 if geo.esz == 1 else ctx.cfg.core.mac_ci_lanes_int16
    blocks = [geo.co] if geo.depthwise or geo.groups > 1 else block_candidates(geo.co, ctx.cfg.core.mac_co_lanes)
    geos = [geo] + ([geo.folded()] if geo.can_fold(lanes) else []) + ([geo.skipping_rows()] if geo.can_skip_rows() else [])
    found = _search(ctx, geo, [(gm, blocks) for gm in geos], spaces, wspace)
    if found is None and geo.can_slice():
        # a grouped conv keeps all its groups in one block (one conv per tile, contiguous input
        # loads); only when no such tiling fits are the groups split between blocks
        found = _search(ctx, geo, [(geo.sliced(b), [b]) for b in geo.slice_blocks(ctx.cfg.core.mac_co_lanes)],
                        spaces, wspace)
    if found is None:
        raise CompileError(f"node '{node.name}' (conv2d): no tiling fits NRAM {ctx.cfg.nram_bytes:,} B / WRAM "
                           f"{ctx.cfg.wram_bytes:,} B of config {ctx.cfg.name} (one output row of "
                           f"{geo.wo} x {geo.co} needs more)")
    return found


def _search(ctx, geo: ConvGeometry, options: list[tuple[ConvGeometry, list[int]]], spaces, wspace
            ) -> tuple[ConvGeometry, Plan] | None:
    """The cheapest plan over tile heights, blocks, task counts and accumulators for each
    (geometry, its blocks) option, with the geometry it was priced on: the first of the cheapest
    in the order (rows, block, tasks, accumulators, option). A tile that cannot beat the best so far
    (its bound) is not priced further."""
    mult = geo.pool[0] if geo.pool else 1
    blocks = sorted({b for _, bs in options for b in bs}, reverse=True)
    # fewer tasks than cores is a candidate too: splitting a small layer finely can cost more in
    # per-task start-up and weight reloads than it gains
    spread = sorted({max(1, ctx.tasks // d) for d in (1, 2, 4)}, reverse=True)
    pricers = [(_Pricer(ctx, gm, spaces, wspace), set(bs)) for gm, bs in options]
    best, best_cost = None, None
    for r in row_candidates(geo.ho, mult):
        for b in blocks:
            tiles = [(p, tile) for p, bs in pricers if b in bs and (tile := p.tile(r, b, best_cost)) is not None]
            for t in spread:
                # a tile of fewer units than t runs on as many tasks as at the t before: the same
                # price, which cannot beat itself
                runs = [(p, tile, run) for p, tile in tiles
                        if (t < tile.units or t == spread[0]) and (run := p.run(tile, t, best_cost)) is not None]
                for accs in (2, 1):
                    for p, tile, run in runs:
                        if accs == 1 and tile.fits[1]:
                            continue    # one accumulator costs no less than two (cost()) where two fit
                        cost = p.cost(tile, run, accs)
                        if cost is not None and (best is None or cost < best_cost):
                            best, best_cost = (p.geo, tile, run, accs), cost
    if best is None:
        return None
    where, tile, run, accs = best
    return where, Plan(tile.rows, tile.block, run.tasks, best_cost, tile.units, accs, where.fold, where.row_step)


@dataclass
class ConvLayout:
    """What lower_conv settles before emitting anything: the tiling, the constants' addresses, the
    (block, image, row block) units and each task's run of them, and the WRAM slot its weights
    may keep (None: loaded block by block)."""

    geo: ConvGeometry
    plan: Plan
    consts: ConvConsts
    units: list[tuple[int, int, int]]
    runs: list[tuple[int, int]]
    resident: WramSlot | None
    nblk: int                # most weight blocks in one task
    wblock: int              # bytes of one weight block
    one_block: bool


def _layout(ctx: KernelCtx, node, x, y, res) -> ConvLayout:
    geo, plan = plan_conv(ctx, node, x.shape, (x.space, y.space, res.space if res is not None else "gdram"))
    w_addr, p_addr, fs_addr, zp_row, r_addr = _constants(ctx, node, geo)
    # a fused segment may stage this layer's weights in cluster SRAM (compiler/share.py): the
    # blocks then come SRAM -> WRAM on the Move-DMA instead of from GDRAM
    home = ctx.weight_home.get(node.name)
    w_src = ("g2w", w_addr) if home is None or geo.depthwise else ("s2w", home)
    block = plan.block
    units, runs, nblk = _units(ceil(geo.co / block), geo.n, ceil(geo.ho / plan.rows), plan.tasks)
    # a fused segment may keep this layer's weights in WRAM across the image groups of a job:
    # (a WramSlot) when every task holds a single weight block
    resident = ctx.wram_slots.get(node.name)
    wblock = block * geo.kh * geo.kw * geo.cig * geo.esz
    # a task's weight blocks can all sit in WRAM (prefetched, or kept across image groups) when it
    # has one, or when they come from SRAM and fit beside another layer's (see all_blocks)
    one_block = nblk == 1 or (w_src[0] == "s2w" and ctx.prefetch and not geo.depthwise
                              and nblk * wblock <= (ctx.cfg.wram_bytes - ctx.wram_base) // 2)
    consts = ConvConsts(w_src[0], w_src[1], p_addr, fs_addr, r_addr, zp_row)
    return ConvLayout(geo, plan, consts, units, runs, resident if one_block else None, nblk, wblock, one_block)


@lru_cache(maxsize=4096)
def _units(nblocks: int, images: int, rblocks: int, tasks: int
           ) -> tuple[list[tuple[int, int, int]], list[tuple[int, int]], int]:
    """The (block, image, row block) tiles in order, each task's run of them (split), and the
    most weight blocks one run touches; the same for every layer of that tiling (shared lists:
    nothing changes them)."""
    units = [(cb, n, rb) for cb in range(nblocks) for n in range(images) for rb in range(rblocks)]
    runs = split(len(units), tasks)
    nblk = max((len({u[0] for u in units[t0:t1]}) for t0, t1 in runs if t1 > t0), default=1)
    return units, runs, nblk


def lower_conv(ctx: KernelCtx, node, x, y, res=None) -> None:
    """x, y: device tensors (addr, NHWC shape) of the input and output; res: the fused shortcut."""
    lay = _layout(ctx, node, x, y, res)
    geo, plan, q = lay.geo, lay.plan, node.q
    resident, nblk, wblock, one_block = ctx.wram_slots.get(node.name), lay.nblk, lay.wblock, lay.one_block
    if not ctx.dry:
        y, res = channel_slice(node, geo, y), channel_slice(node, geo, res)
    streams = [] if ctx.dry else _streams(ctx, lay, q, x, y, res)
    macs = node.attrs.get("macs", geo.n * geo.ho * geo.wo * geo.co * geo.kh * geo.kw * geo.cig)
    kept = "" if not (resident and one_block) else \
        ", weights prefetched during the layer before" if resident.prefetched else ", weights resident in WRAM"
    sliced = f", {geo.ci} input channels per block (groups split)" if geo.in_slice else ""
    ctx.kernel(node, streams, macs=macs, tiling=plan.describe() + sliced + kept,
               unit="vector" if geo.depthwise else "mac",
               wram_resident_bytes=nblk * wblock if one_block and not geo.depthwise else 0,
               wram_bytes_used=0 if geo.depthwise else (nblk if one_block else DOUBLE) * (-(-wblock // 64) * 64))


def channel_slice(node, geo: ConvGeometry, t):
    """Output or shortcut tensor `t` as the conv's channel slice sees it: starting at its first
    channel (out_slice), so a wide layer's slices differ only in base addresses (relocate.py)."""
    c_off = node.attrs.get("out_slice", (0,))[0]
    return t if t is None or not c_off else replace(t, addr=t.addr + c_off * geo.esz)


def weight_loads(ctx: KernelCtx, node, x, y, res=None) -> list[list[Instr]]:
    """Each task's loads of weight blocks into WRAM, as lower_conv emits them (the same constants
    made in the same order), as prefetch.weight_loads takes them from its streams, without
    emitting the rest: a fused segment only wants these, to place in the layer before's streams
    (fusion.capture_loads), and building whole streams for that doubled a layer's emission."""
    lay = _layout(ctx, node, x, y, res)
    geo, block, consts, resident = lay.geo, lay.plan.block, lay.consts, lay.resident
    if ctx.dry:
        return []
    per_channel = geo.kh * geo.kw * geo.cig * geo.esz      # weight bytes of one output channel
    out = []
    for t0, t1 in lay.runs:
        units = lay.units[t0:t1]
        mine: list[Instr] = []
        out.append(mine)
        if geo.depthwise or (resident and resident.loaded):
            continue        # depthwise weights go to NRAM; loaded ones are not loaded again
        slots = _weight_slots(ctx, geo, block, resident, len({u[0] for u in units}))
        cur, wslot = None, -1
        for cb, _n, _rb in units:
            if cb != cur:       # as _load_block
                wslot, cur = (wslot + 1) % len(slots), cb
                c0 = cb * block
                mine.append(Instr.make("dma", dir=consts.w_dir, dst=slots[wslot], src=consts.w_addr + c0 * per_channel,
                                       size=(min(geo.co, c0 + block) - c0) * per_channel))
    return out


def _constants(ctx: KernelCtx, node, geo: ConvGeometry) -> tuple[int, int, int | None, int | None, int | None]:
    """GDRAM addresses of the layer's constants: weights, requantization parameters, float scales,
    the padding row, the shortcut's parameters (in that order: the order places them). Each is
    made only when the context does not hold it yet (const_of): a fused segment emits a layer
    once per job and image group."""
    q = node.q

    def weights():
        if geo.depthwise:
            w = q["weight"][:, 0].transpose(1, 2, 0)    # [kh, kw, c] for vdwconv
        else:
            w = q["weight"].transpose(0, 2, 3, 1)       # [co, kh, kw, ci/g]
        return np.zeros(w.shape, w.dtype) if q["zero_weights"] else np.ascontiguousarray(w)

    def pad_row():
        pad_px = np.asarray(geo.fill if geo.fill is not None else [geo.zp_in] * geo.ci)   # one pixel of padding
        return np.tile(pad_px, geo.wp).astype(np.int16 if geo.esz == 2 else np.int8)

    def residual_params():
        return np.stack([np.full_like(q["res_mult"], -q.get("res_zp", 0)), q["res_mult"], q["res_shift"]],
                        axis=1).astype(np.int32)

    w_addr = ctx.const_of(f"{node.name}.weight", weights)
    p_addr = ctx.const_of(f"{node.name}.params",
                          lambda: requant_params(q, zero_point_bias(node, q["bias"], q["weight"], geo.zp_in)))
    fs_addr = ctx.const_of(f"{node.name}.scales", lambda: q["fscale"]) if geo.fscale else None
    zp_row = ctx.const_of(f"{node.name}.zp_row", pad_row) if geo.zp_pad else None
    r_addr = ctx.const_of(f"{node.name}.residual_params", residual_params) if geo.residual else None
    return w_addr, p_addr, fs_addr, zp_row, r_addr


def _streams(ctx, lay: ConvLayout, q, x, y, res) -> list[list]:
    """Every task's stream; from the compile's StreamMemo when a layer of the same shape and plan
    was emitted before with its activations, constants and WRAM slots elsewhere (a fused segment's
    other jobs and image groups, and ResNet's repeated bottleneck blocks: their weights, parameters,
    SRAM activations and resident weights sit at other addresses, the instructions are the same)."""
    geo, plan, consts, resident = lay.geo, lay.plan, lay.consts, lay.resident
    tensors = (("x", x), ("y", y), ("res", res))
    addrs = (("w", consts.w_addr), ("p", consts.p_addr), ("fs", consts.fs_addr), ("rp", consts.r_addr),
             ("zp", consts.zp_row))
    # the WRAM slots of the task with the most weight blocks (each task's are the first of them),
    # placed here, where their addresses can be checked against WRAM's size
    wslots = [] if geo.depthwise else _weight_slots(ctx, geo, plan.block, resident, lay.nblk)

    def build(bases: dict, new_stream) -> list[list]:
        xb, yb, rb = (t if t is None else replace(t, addr=bases[tag]) for tag, t in tensors)
        cb = ConvConsts(consts.w_dir, *(None if a is None else bases[tag] for tag, a in addrs))
        wb = [bases["wram"] + (a - wslots[0]) for a in wslots]
        return [_task(ctx, geo, q, lay.units[t0:t1], plan.rows, plan.block, xb, yb, cb, rb, plan.buffers, resident,
                      new_stream(), wb) for t0, t1 in lay.runs]

    bases = {tag: t.addr for tag, t in tensors if t is not None}
    bases.update((tag, a) for tag, a in addrs if a is not None)
    bases.update({"wram": wslots[0]} if wslots else {})
    if ctx.streams_memo is None:
        return build(bases, TaskStream)
    # everything _task reads but those base addresses (geo and cfg by identity: kept alive below)
    key = ("conv", id(geo), id(ctx.cfg), plan.rows, plan.block, plan.tasks, plan.buffers,
           q["lo"], q["hi"], q.get("zp", 0), q.get("acc_pos", 0), q.get("qmax"), _placed(x), _placed(y), _placed(res),
           consts.w_dir, tuple(bases), None if resident is None else resident.loaded)
    fixed = [tag for tag in bases if tag not in ("x", "y", "res") or dict(tensors)[tag].space != "gdram"]
    return ctx.streams_memo.streams(key, bases, build, keep=(geo, ctx.cfg), fixed=fixed)


def _placed(t) -> tuple | None:
    """A tensor as a StreamMemo key sees it: all but its address (relocatable, GDRAM or SRAM)."""
    if t is None:
        return None
    return t.space, tuple(t.shape), t.dtype, t.flat_from


def _load_tile(s, geo, buf, x, n, a, b, pt, pb, zp_row, deps, raw=None, ch0: int = 0):
    """DMAs bringing input rows [a, b) of image n into `buf` (with pt / pb zp rows around them
    when the pads are built in NRAM; of a sliced geometry, channels [ch0, ch0 + ci) of each pixel).
    Returns their handles. `raw`: the NRAM staging buffer of a folded tile read from GDRAM
    (ConvGeometry.raw_bytes)."""
    esz, row = geo.esz, geo.w * geo.ci * geo.esz
    src = x.addr + ((n * geo.h + a) * geo.w) * geo.ci * esz
    ld = load_dir(x)
    if geo.fold > 1:        # output pixel x's row: kw input pixels from x on (overlapping segments)
        srow = geo.src_w * geo.src_ci * esz
        first = x.addr + (n * geo.h + a) * srow
        staged = []
        if raw is not None:
            staged = [s.dma(ld, raw, first, (b - a) * srow, deps=deps)]
            ld, first, deps = "n2n", raw, staged
        return staged + [s.dma(ld, buf, first, row // geo.wo, deps=deps, count=geo.wo,
                               sstride=geo.src_sw * geo.src_ci * esz, dstride=row // geo.wo, count2=b - a,
                               sstride2=srow, dstride2=row)]
    if geo.row_step > 1:    # every row_step-th input row (skipping_rows)
        src = x.addr + (n * geo.src_h + a * geo.row_step) * row
        return [s.dma(ld, buf, src, row, deps=deps, count=b - a, sstride=geo.row_step * row, dstride=row)]
    if geo.in_slice:
        return _load_slice(s, geo, buf, x, n, a, b, pt, pb, zp_row, deps, ch0)
    if not geo.zp_pad:
        return [s.dma(ld, buf, src, (b - a) * row, deps=deps)]
    prow = geo.wp * geo.ci * esz
    out = []
    if b > a:
        dst = buf + (pt * geo.wp + geo.pl) * geo.ci * esz
        out.append(s.dma(ld, dst, src, (b - a) * row, deps=deps) if geo.wp == geo.w else
                   s.dma(ld, dst, src, row, deps=deps, count=b - a, dstride=prow, sstride=row))
    return out + _pad_rows(s, geo, buf, zp_row, pt, pb, b - a, deps)


def _load_slice(s, geo, buf, x, n, a, b, pt, pb, zp_row, deps, ch0: int) -> list:
    """A sliced geometry's tile: of every input pixel in rows [a, b), the ci channels from ch0
    (one segment per pixel), packed; the pads around them as _load_tile builds them."""
    esz, pix = geo.esz, geo.ci * geo.esz
    spix = geo.src_ci * esz
    out = []
    if b > a:
        dst = buf + (pt * geo.wp + geo.pl) * pix if geo.zp_pad else buf
        out.append(s.dma(load_dir(x), dst, x.addr + ((n * geo.h + a) * geo.w * geo.src_ci + ch0) * esz, pix,
                         deps=deps, count=geo.w, sstride=spix, dstride=pix, count2=b - a, sstride2=geo.w * spix,
                         dstride2=geo.wp * pix))
    return out + (_pad_rows(s, geo, buf, zp_row, pt, pb, b - a, deps) if geo.zp_pad else [])


def _pad_rows(s, geo, buf, zp_row, pt: int, pb: int, rows: int, deps) -> list:
    """The top and bottom pad rows of a tile whose pads are built in NRAM, from the padding row."""
    prow = geo.wp * geo.ci * geo.esz
    out = []
    if pt:
        out.append(s.dma("g2n", buf, zp_row, prow, deps=deps, count=pt, dstride=prow, sstride=0))
    if pb:
        out.append(s.dma("g2n", buf + (pt + rows) * prow, zp_row, prow, deps=deps, count=pb, dstride=prow,
                         sstride=0))
    return out


def _fill_pads(s, geo, bufs, in_tile: int, zp_row) -> list:
    """Left / right pad columns are never overwritten: fill each input buffer with the padding
    value once (vset with zp; a per-channel fill, firstconv's means, repeats the padding row)."""
    if not geo.zp_pad:
        return [None] * len(bufs)
    if geo.fill is None:
        return [s.emit("vset", [], dt=geo.dt, dst=b, n=in_tile // geo.esz, value=geo.zp_in) for b in bufs]
    prow = geo.wp * geo.ci * geo.esz
    return [s.dma("g2n", b, zp_row, prow, count=in_tile // prow, dstride=prow, sstride=0) for b in bufs]


@dataclass(frozen=True)
class ConvConsts:
    """Where a conv's constants sit on the device; every task of the layer reads them."""

    w_dir: str               # g2w: weights from GDRAM; s2w: from their copy staged in SRAM (share.py)
    w_addr: int
    p_addr: int              # [co, 3] requantization parameters
    fs_addr: int | None      # [co] float32 scales (float requantization)
    r_addr: int | None       # [co, 3] shortcut parameters (a residual conv)
    zp_row: int | None       # one padded row of the padding value (pads built in NRAM)


@dataclass
class TaskBuffers:
    """One task's scratchpad buffers: ping/pong pairs in NRAM, weight slots in WRAM (NRAM for a
    depthwise conv's vdwconv)."""

    inp: list[int]
    raw: list                # per input buffer: NRAM staging of a folded tile's rows read from GDRAM, or None
    fills: list              # per input buffer: the instruction that filled its pads, or None
    accs: list[int]
    out: list[int]
    pool: list[int] | None
    par: list[int]
    fs: list[int] | None
    res: list[int] | None
    rpar: list[int] | None
    w: list[int]
    wsize: int


@dataclass
class TaskState:
    """What a task's tiles need of the tiles before them: the handles their buffers wait for."""

    blocks: list[int]                                        # the weight blocks the task's tiles use, in order
    hist_cp: list[int] = field(default_factory=list)         # per tile: the compute op reading its input buffer
    hist_st: list[int] = field(default_factory=list)         # per tile: the store that frees its output buffer
    res_readers: list[int] = field(default_factory=list)     # per tile: the op reading its shortcut buffer
    block_last_cp: dict[int, int] = field(default_factory=dict)   # block index -> last op using its params
    cur_cb: int | None = None
    w_load: int | None = None
    p_load: int | None = None
    wslot: int = -1


def _task_buffers(ctx, geo, s, rows: int, block: int, naccs: int, wslots: list[int], zp_row,
                  x_space: str) -> TaskBuffers:
    """Allocate a task's NRAM buffers (their order is part of the program) and fill the input
    buffers' pads; `wslots`: its weight blocks' WRAM slots (_weight_slots)."""
    cfg, esz = ctx.cfg, geo.esz
    nram = Arena("nram", cfg.nram_bytes)
    in_tile = geo.tile_bytes(rows)
    inp = [nram.alloc(in_tile, "input tile") for _ in range(DOUBLE)]
    nraw = geo.raw_bytes(rows, x_space)
    staging = [nram.alloc(nraw, "unfolded input rows") for _ in range(DOUBLE)] if nraw else [None] * DOUBLE
    fills = _fill_pads(s, geo, inp, in_tile, zp_row)
    accs = [nram.alloc(rows * geo.wo * block * 4, "accumulator") for _ in range(naccs)]
    out = [nram.alloc(rows * geo.wo * block * esz, "output tile") for _ in range(DOUBLE)]
    pool = [nram.alloc(rows * geo.wo * block * esz // (geo.pool[0] * geo.pool[1]), "pooled tile")
            for _ in range(DOUBLE)] if geo.pool else None
    par = [nram.alloc(block * 12, "requant params") for _ in range(DOUBLE)]
    fs = [nram.alloc(block * 4, "requant scales") for _ in range(DOUBLE)] if geo.fscale else None
    res = rpar = None
    if geo.residual:
        res = [nram.alloc(rows * geo.wo * block * esz, "shortcut tile") for _ in range(DOUBLE)]
        rpar = [nram.alloc(block * 12, "shortcut params") for _ in range(DOUBLE)]
    wsize = (geo.kh * geo.kw * geo.co * esz) if geo.depthwise else block * geo.kh * geo.kw * geo.cig * esz
    w = [nram.alloc(wsize, "depthwise weights")] if geo.depthwise else wslots
    return TaskBuffers(inp, staging, fills, accs, out, pool, par, fs, res, rpar, w, wsize)


def _weight_slots(ctx, geo, block: int, resident, nblocks: int) -> list[int]:
    """WRAM addresses of the weight blocks of a task with `nblocks` of them (a task with fewer
    uses the first `_slot_count` of these)."""
    wram = Arena("wram", ctx.cfg.wram_bytes, base=resident.addr if resident else ctx.wram_base)
    wsize = block * geo.kh * geo.kw * geo.cig * geo.esz
    return [wram.alloc(wsize, "weights") for _ in range(_slot_count(resident, nblocks))]


def _slot_count(resident, nblocks: int) -> int:
    """WRAM slots of a task's weight blocks: all of them when resident, else one, or two taking turns."""
    return nblocks if resident else DOUBLE if nblocks > 1 else 1


def _load_block(s, geo, bufs: TaskBuffers, consts: ConvConsts, st: TaskState, cb: int, c0: int, bc: int,
                resident) -> None:
    """A tile starts a new output-channel block: its weights (unless resident and loaded already)
    into the next WRAM slot once the tiles of the block that used it last are done, and its
    requantization (and shortcut) parameters into the next NRAM pair."""
    esz = geo.esz
    st.wslot = (st.wslot + 1) % len(bufs.w)
    bi = st.blocks.index(cb)
    prev_user = st.block_last_cp.get(bi - len(bufs.w)) if len(bufs.w) > 1 else \
        (st.hist_cp[-1] if st.hist_cp else None)
    par_user = st.block_last_cp.get(bi - DOUBLE) if len(st.blocks) > 1 else prev_user
    if geo.depthwise:
        st.w_load = s.dma("g2n", bufs.w[0], consts.w_addr, bufs.wsize) if st.cur_cb is None else st.w_load
    elif resident and resident.loaded:
        st.w_load = None            # loaded by this task's image group before
    else:
        st.w_load = s.dma(consts.w_dir, bufs.w[st.wslot], consts.w_addr + c0 * geo.kh * geo.kw * geo.cig * esz,
                          bc * geo.kh * geo.kw * geo.cig * esz, deps=[prev_user])
    pslot = st.wslot % DOUBLE
    st.p_load = s.dma("g2n", bufs.par[pslot], consts.p_addr + c0 * 12, bc * 12, deps=[par_user])
    if geo.fscale:
        st.p_load = s.dma("g2n", bufs.fs[pslot], consts.fs_addr + c0 * 4, bc * 4, deps=[par_user])
    if geo.residual:
        st.p_load = s.dma("g2n", bufs.rpar[pslot], consts.r_addr + c0 * 12, bc * 12, deps=[par_user])
    st.cur_cb = cb


def _mac(s, geo, q, bufs: TaskBuffers, st: TaskState, slot: int, acc: int, lds: list, bc: int,
         pt: int, pb: int, rows_in: int) -> int:
    """The tile's products into the int32 accumulator: vdwconv on the vector unit for a depthwise
    conv, else conv on the MAC array (no padding of its own when the tile carries it)."""
    if geo.zp_pad:
        pads = dict(hi=pt + rows_in + pb, wi=geo.wp, pt=0, pb=0, pl=0, pr=0)
    else:
        pads = dict(hi=rows_in, wi=geo.w, pt=pt, pb=pb, pl=geo.pl, pr=geo.pr)
    if geo.depthwise:
        return s.emit("vdwconv", lds + [st.w_load], dt=geo.dt, dst=acc, src=bufs.inp[slot], wgt=bufs.w[0], n=1,
                      c=geo.ci, kh=geo.kh, kw=geo.kw, sh=geo.sh, sw=geo.sw, dh=geo.dh, dw=geo.dw, **pads)
    return s.emit("conv", lds + [st.w_load], dt=geo.dt, odt="i32", dst=acc, src=bufs.inp[slot],
                  wgt=bufs.w[st.wslot], n=1, ci=geo.ci, co=bc, kh=geo.kh, kw=geo.kw, sh=geo.sh, sw=geo.sw,
                  dh=geo.dh, dw=geo.dw, groups=geo.groups, pos=q.get("acc_pos", 0), **pads)


def _requantize(s, geo, q, bufs: TaskBuffers, st: TaskState, i: int, acc: int, mac: int, res, n: int, r0: int,
                c0: int, bc: int, npix: int) -> int:
    """The accumulator back to int8/int16 in the tile's output buffer: with the shortcut joined
    first for a residual conv (vrqadd does both in one pass), by vrequant or, for float scales,
    float_requant. Returns the instruction that writes the output."""
    slot, pslot, esz = i % DOUBLE, st.wslot % DOUBLE, geo.esz
    free_out = st.hist_st[i - DOUBLE] if i >= DOUBLE else None
    if geo.residual:
        rsrc = res.addr + ((n * geo.ho + r0) * geo.wo * geo.yc + c0) * esz
        free_res = st.res_readers[i - DOUBLE] if i >= DOUBLE else None
        if bc == geo.yc:
            lr = s.dma(load_dir(res), bufs.res[slot], rsrc, npix * bc * esz, deps=[free_res])
        else:
            lr = s.dma(load_dir(res), bufs.res[slot], rsrc, bc * esz, deps=[free_res], count=npix,
                       dstride=bc * esz, sstride=geo.yc * esz)
        if not geo.fscale:      # the join and the requantization in one pass
            rq = s.emit("vrqadd", [lr, st.p_load, mac, free_out], sdt=geo.dt, odt=geo.dt, dst=bufs.out[slot], a=acc,
                        src=bufs.res[slot], rparams=bufs.rpar[pslot], params=bufs.par[pslot], c=bc, n=npix * bc,
                        lo=q["lo"], hi=q["hi"], zp=q.get("zp", 0))
            st.res_readers.append(rq)
            return rq
        st.res_readers.append(s.emit("vaddrq", [lr, st.p_load, mac], sdt=geo.dt, dst=acc, a=acc, src=bufs.res[slot],
                                     params=bufs.rpar[pslot], c=bc, n=npix * bc))
    if geo.fscale:
        return float_requant(s, [st.p_load, free_out], q, acc, bufs.out[slot], bufs.par[pslot], bufs.fs[pslot],
                             npix, bc, geo.dt)
    return s.emit("vrequant", [st.p_load, free_out], odt=geo.dt, dst=bufs.out[slot], src=acc, params=bufs.par[pslot],
                  c=bc, n=npix * bc, lo=q["lo"], hi=q["hi"], zp=q.get("zp", 0))


def _store_tile(s, geo, y, last: int, out_buf: int, n: int, r0: int, r1: int, c0: int, bc: int) -> int:
    """The (pooled) tile to the output tensor: one contiguous DMA when it spans all channels,
    else one segment per pixel."""
    ph, pw = geo.pool or (1, 1)
    yo_w, esz = geo.wo // pw, geo.esz
    orow0, orow1 = r0 // ph, r1 // ph
    dst = y.addr + ((n * (geo.ho // ph) + orow0) * yo_w * geo.yc + c0) * esz
    npx = (orow1 - orow0) * yo_w
    if bc == geo.yc:
        return s.dma(store_dir(y), dst, out_buf, npx * bc * esz, deps=[last])
    return s.dma(store_dir(y), dst, out_buf, bc * esz, deps=[last], count=npx, dstride=geo.yc * esz,
                 sstride=bc * esz)


def _task(ctx, geo, q, units, rows, block, x, y, consts: ConvConsts, res, naccs, resident, s: TaskStream,
          wslots: list[int]):
    """One task's stream (into `s`): its run of (block, image, row block) tiles, each loaded,
    multiplied, requantized (and pooled) and stored, the stages of consecutive tiles overlapping.
    `wslots`: the layer's WRAM slots for weight blocks (its first ones are the task's)."""
    st = TaskState(sorted({u[0] for u in units}))
    bufs = _task_buffers(ctx, geo, s, rows, block, naccs, wslots[:_slot_count(resident, len(st.blocks))],
                         consts.zp_row, x.space)
    for i, (cb, n, rb) in enumerate(units):
        c0 = cb * block
        bc = min(geo.co, c0 + block) - c0
        if cb != st.cur_cb:
            _load_block(s, geo, bufs, consts, st, cb, c0, bc, resident)
        r0, r1 = rb * rows, min(geo.ho, (rb + 1) * rows)
        a, b, pt, pb = geo.in_rows(r0, r1)
        slot = i % DOUBLE
        acc = bufs.accs[i % len(bufs.accs)]   # two: the next tile's conv runs while this one is requantized
        lds = _load_tile(s, geo, bufs.inp[slot], x, n, a, b, pt, pb, consts.zp_row,
                         [st.hist_cp[i - DOUBLE] if i >= DOUBLE else None, bufs.fills[slot]], bufs.raw[slot],
                         geo.in_channel(c0))
        mac = _mac(s, geo, q, bufs, st, slot, acc, lds, bc, pt, pb, b - a)
        last = _requantize(s, geo, q, bufs, st, i, acc, mac, res, n, r0, c0, bc, (r1 - r0) * geo.wo)
        out_buf = bufs.out[slot]
        if geo.pool:
            ph, pw = geo.pool
            last = s.emit("vpool", [], mode="max", dt=geo.dt, dst=bufs.pool[slot], src=out_buf, n=1,
                          hi=r1 - r0, wi=geo.wo, c=bc, kh=ph, kw=pw, sh=ph, sw=pw)
            out_buf = bufs.pool[slot]
        st.hist_cp.append(mac)
        st.block_last_cp[st.blocks.index(cb)] = last
        st.hist_st.append(_store_tile(s, geo, y, last, out_buf, n, r0, r1, c0, bc))
    return s.finish()
