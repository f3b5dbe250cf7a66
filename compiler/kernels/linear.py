"""Fully connected layers on the MAC array: y = requant(x . W^T + b).

Tasks split the output features (and the batch when it is large); the reduction is chunked when a
weight block would not fit WRAM, with partial sums added on the vector unit (never for an int16
layer whose sum the MAC array rounds to a position: narrower feature blocks instead). Weights are stored in
GDRAM pre-blocked, [feature block][reduction chunk][rows][cols], so every weight load is one
contiguous DMA (a strided one would pay the per-segment cost for every row).
"""
from __future__ import annotations

from math import ceil

import numpy as np

from mlusim.compiler.codegen import Arena, TaskStream, load_dir, store_dir
from mlusim.compiler.context import KernelCtx, dram_rate
from mlusim.compiler.graph import Node
from mlusim.compiler.kernels.requant import float_requant, requant_params, zero_point_bias
from mlusim.compiler.liveness import base_value
from mlusim.compiler.tiling import DOUBLE, Plan, dma_cycles, split, vec_cycles
from mlusim.errors import CompileError


def as_conv(node, row: bool = False):
    """The same layer as a 1x1 conv, over 1x1 images or (`row`) over one image whose pixels are the
    inputs, for a fully connected layer whose input is one pixel of channels (after a global
    average pool): a segment that splits it between clusters (share.gathers) then uses the conv
    tiler, its WRAM slots and prefetch. Same products, same requantization: the same outputs."""
    o, k = node.q["weight"].shape
    m, co = node.shape[:2]
    attrs = dict(node.attrs, stride=(1, 1), padding=(0, 0, 0, 0), groups=1, dilation=(1, 1))
    return Node(node.name, "conv2d", node.inputs, attrs, node.params, (1, co, 1, m) if row else (m, co, 1, 1),
                node.fused, dict(node.q, weight=node.q["weight"].reshape(o, k, 1, 1)))


def one_pixel(g, node) -> bool:
    """Whether a linear layer's input is a single pixel of channels (see as_conv)."""
    src = g.node(base_value(g, node.inputs[0]))
    return node.op == "linear" and len(src.shape) in (2, 4) and src.shape[1] == node.q["weight"].shape[1] and \
        all(d == 1 for d in src.shape[2:])


def _candidates(n: int, lanes: int) -> list[int]:
    out, b = {n}, n
    while b > lanes:
        b = ceil(b / 2 / lanes) * lanes
        out.add(b)
        if b == lanes:
            break
    return sorted(out, reverse=True)


def resident_input(k: int, kc: int, m: int, mc: int) -> bool:
    """One tile of input rows holding the whole reduction: a task loads it once and keeps it for
    every block of features (one buffer, not two), so a 2-byte layer with a whole-reduction sum
    still takes the batch's rows in one pass over its weights."""
    return kc == k and mc >= m


def plan_linear(ctx: KernelCtx, node, m: int, k: int, o: int, esz: int):
    cfg = ctx.cfg
    lanes_ci = cfg.core.mac_ci_lanes_int8 if esz == 1 else cfg.core.mac_ci_lanes_int16
    lanes_co = cfg.core.mac_co_lanes

    def price(bo, kc, mc):
        chunks = ceil(k / kc)
        kept = resident_input(k, kc, m, mc)
        nram = [mc * kc * esz] * (1 if kept else DOUBLE) + [mc * bo * 4] * (2 if chunks > 1 else 1) + \
            [mc * bo * esz] * DOUBLE + [bo * 16]
        if not Arena("nram", cfg.nram_bytes).fits(*nram) or \
                DOUBLE * bo * kc * esz > cfg.wram_bytes - ctx.wram_base:
            return None
        units = ceil(m / mc) * ceil(o / bo)
        tasks = min(units, ctx.tasks)
        per = ceil(units / tasks)
        ld = chunks * (0 if kept else dma_cycles(cfg, mc * kc * esz, mc if kc < k else 1)) + \
            chunks * dma_cycles(cfg, bo * kc * esz)
        cp = chunks * (cfg.core.startup_cycles.matmul + mc * ceil(kc / lanes_ci) * ceil(bo / lanes_co)) + \
            (chunks - 1) * vec_cycles(cfg, mc * bo * 4) + vec_cycles(cfg, mc * bo * 4)
        st = dma_cycles(cfg, mc * bo * esz, mc if bo < o else 1)
        task = per * max(ld, cp, st) + ld / chunks
        dram = (o * k * esz * ceil(m / mc) + m * k * esz * ceil(o / bo)) / dram_rate(cfg, None, ctx.dram_share)
        return Plan(mc, bo, tasks, max(task, dram), units), kc

    best = None
    # an int16 layer's sum at a position (quant.acc_position) rounds once per matmul: its whole
    # reduction goes in one, so the output never depends on the chunking (narrower feature blocks
    # instead, down to what WRAM holds)
    whole = node.q.get("acc_pos", 0) < 0
    bos = _candidates(o, lanes_co) + ([b for b in (32, 16, 8, 4, 2, 1) if b < min(o, lanes_co)] if whole else [])
    for bo in bos:
        for kc in ([k] if whole else _candidates(k, lanes_ci)):
            for mc in sorted({m, ceil(m / 2), ceil(m / 4), 1}, reverse=True):
                r = price(bo, kc, mc)
                if r and (best is None or r[0].cost < best[0].cost):
                    best = r
    if best is None:
        raise CompileError(f"node '{node.name}' (linear): no tiling of [{m}, {k}] x [{o}, {k}] fits the "
                           f"scratchpads of {cfg.name}")
    return best


def blocked_weight(weight: np.ndarray, bo: int, kc: int, columns: np.ndarray | None,
                   zeros: bool = False) -> tuple[np.ndarray, dict]:
    """The weight pre-blocked for GDRAM, and each block's byte offset: block (ob, kb) is rows
    [o0, o1) x cols [k0, k1), contiguous. Every block is copied (or, with `columns`, gathered:
    input column j takes weight column columns[j]) straight into place, so no other whole copy
    of the weight ever exists (VGG-16's fc6 is 103 MB). `zeros`: the weight is all zeros (shape-only
    placeholders), and so is the blocked one, left untouched."""
    o, k = weight.shape
    blocked = (np.zeros if zeros else np.empty)(weight.size, weight.dtype)
    offsets, at = {}, 0
    for ob in range(ceil(o / bo)):
        rows = weight[ob * bo:(ob + 1) * bo]
        for kb in range(ceil(k / kc)):
            k0, k1 = kb * kc, min(k, (kb + 1) * kc)
            dst = blocked[at:at + rows.shape[0] * (k1 - k0)].reshape(rows.shape[0], k1 - k0)
            if zeros:       # zeros already, and no page written
                pass
            elif columns is None:
                dst[:] = rows[:, k0:k1]
            else:       # mode "clip": an unbuffered gather into dst (the indices are in range)
                np.take(rows, columns[k0:k1], axis=1, out=dst, mode="clip")
            offsets[(ob, kb)] = at * weight.itemsize
            at += dst.size
    return blocked, offsets


def lower_linear(ctx: KernelCtx, node, x, y, weight: np.ndarray, columns: np.ndarray | None = None) -> None:
    """`columns`: the weight column each input column takes, when the input is flattened in
    another order than the weight's (see blocked_weight)."""
    q = node.q
    m, k = x.shape
    o = weight.shape[0]
    esz = 2 if q["dtype"] == "int16" else 1
    dt = "i16" if esz == 2 else "i8"
    plan, kc = plan_linear(ctx, node, m, k, o, esz)
    mc, bo = plan.rows, plan.block
    blocked, offsets = blocked_weight(weight, bo, kc, columns, q["zero_weights"])
    w_addr = ctx.const(f"{node.name}.weight", blocked)
    params = requant_params(q, zero_point_bias(node, q["bias"], weight, q.get("in_zp", 0)))
    p_addr = ctx.const(f"{node.name}.params", params)
    fs_addr = ctx.const(f"{node.name}.scales", q["fscale"]) if "fscale" in q else None
    units = [(ob, mb) for ob in range(ceil(o / bo)) for mb in range(ceil(m / mc))]
    nk = ceil(k / kc)
    streams = []
    for t0, t1 in split(len(units), plan.tasks):
        s = TaskStream()
        nram = Arena("nram", ctx.cfg.nram_bytes)
        wram = Arena("wram", ctx.cfg.wram_bytes, base=ctx.wram_base)
        kept = resident_input(k, kc, m, mc)
        bx = [nram.alloc(mc * kc * esz, "input chunk")] * DOUBLE if kept else \
            [nram.alloc(mc * kc * esz, "input chunk") for _ in range(DOUBLE)]
        lx_kept = None
        bw = [wram.alloc(bo * kc * esz, "weight chunk") for _ in range(DOUBLE)]
        acc = nram.alloc(mc * bo * 4, "accumulator")
        tmp = nram.alloc(mc * bo * 4, "partial") if nk > 1 else None
        bout = [nram.alloc(mc * bo * esz, "output") for _ in range(DOUBLE)]
        bpar = nram.alloc(bo * 12, "params")
        bfs = nram.alloc(bo * 4, "scales") if fs_addr is not None else None
        readers, stores, par_users = [], [], []
        j = 0
        for u, (ob, mb) in enumerate(units[t0:t1]):
            o0, o1 = ob * bo, min(o, (ob + 1) * bo)
            m0, m1 = mb * mc, min(m, (mb + 1) * mc)
            nb, nm = o1 - o0, m1 - m0
            pl = s.dma("g2n", bpar, p_addr + o0 * 12, nb * 12, deps=[par_users[-1] if par_users else None])
            if bfs is not None:
                pl = s.dma("g2n", bfs, fs_addr + o0 * 4, nb * 4, deps=[par_users[-1] if par_users else None])
            for kb in range(nk):
                k0, k1 = kb * kc, min(k, (kb + 1) * kc)
                nkc = k1 - k0
                slot = j % DOUBLE
                free = readers[j - DOUBLE] if j >= DOUBLE else None
                src = x.addr + (m0 * k + k0) * esz
                if kept:
                    if lx_kept is None:
                        lx_kept = s.dma(load_dir(x), bx[slot], src, nm * k * esz)
                    lx = lx_kept
                elif nkc == k:
                    lx = s.dma(load_dir(x), bx[slot], src, nm * k * esz, deps=[free])
                else:
                    lx = s.dma(load_dir(x), bx[slot], src, nkc * esz, deps=[free], count=nm, dstride=nkc * esz,
                               sstride=k * esz)
                lw = s.dma("g2w", bw[slot], w_addr + offsets[(ob, kb)], nb * nkc * esz, deps=[free])
                mm = s.emit("matmul", [lx, lw], dt=dt, odt="i32", dst=acc if kb == 0 else tmp, a=bx[slot],
                            b=bw[slot], m=nm, k=nkc, n=nb, pos=q.get("acc_pos", 0))
                readers.append(mm)
                if kb:
                    s.emit("vadd", [], dt="i32", dst=acc, a=acc, b=tmp, n=nm * nb)
                j += 1
            slot = u % DOUBLE
            rdeps = [pl, stores[u - DOUBLE] if u >= DOUBLE else None]
            if bfs is not None:
                rq = float_requant(s, rdeps, q, acc, bout[slot], bpar, bfs, nm, nb, dt)
            else:
                rq = s.emit("vrequant", rdeps, odt=dt, dst=bout[slot], src=acc, params=bpar, c=nb, n=nm * nb,
                            lo=q["lo"], hi=q["hi"], zp=q.get("zp", 0))
            par_users.append(rq)
            dst = y.addr + (m0 * o + o0) * esz
            if nb == o:
                st = s.dma(store_dir(y), dst, bout[slot], nm * nb * esz, deps=[rq])
            else:
                st = s.dma(store_dir(y), dst, bout[slot], nb * esz, deps=[rq], count=nm, dstride=o * esz, sstride=nb * esz)
            stores.append(st)
        streams.append(s.finish())
    ctx.kernel(node, streams, macs=m * k * o, tiling=f"{mc} rows x {bo} features x {kc} reduction per step, "
               f"{len(units)} tiles over {plan.tasks} tasks", unit="mac")
