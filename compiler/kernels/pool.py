"""Pooling kernels: max and average pooling over row tiles, and global average pooling.

Average pooling never divides: the vector unit sums the window into int32 and the requantize
step's multiplier already includes 1/(kh*kw) (or 1/(H*W) for global pooling). An input zero point
zp becomes the requantize bias -zp * count, since sum(q - zp) = sum(q) - zp * count; that needs
every window to cover `count` real inputs, so padded average pooling of an asymmetric input is
refused (its border windows would need per-position corrections). Max pooling needs nothing:
the maximum commutes with the affine map q -> (q - zp) * s.
"""
from __future__ import annotations

from math import ceil

import numpy as np

from mlusim.compiler.codegen import Arena, TaskStream, load_dir, store_dir
from mlusim.compiler.kernels.requant import float_requant
from mlusim.compiler.tiling import DOUBLE, Plan, choose, dma_cycles, row_candidates, split, vec_cycles
from mlusim.errors import CompileError


def _rows_in(r, k, s):
    return (r - 1) * s + k


def lower_pool(ctx, node, x, y) -> None:
    n, h, w, c = x.shape
    _, ho, wo, _ = y.shape
    kh, kw = node.attrs["kernel"]
    sh, sw = node.attrs["stride"]
    pt, pb, pl, pr = node.attrs["padding"]
    is_avg = node.op == "avgpool"
    esz = 2 if node.q["dtype"] == "int16" else 1
    dt = "i16" if esz == 2 else "i8"
    cfg = ctx.cfg

    def price(rows):
        tin = min(_rows_in(rows, kh, sh), h + pt + pb) * w * c * esz
        tout = rows * wo * c * esz
        sizes = [tin] * DOUBLE + [tout] * DOUBLE + ([rows * wo * c * 4, 12] if is_avg else [])
        if not Arena("nram", cfg.nram_bytes).fits(*sizes):
            return None
        units = n * ceil(ho / rows)
        tasks = min(units, ctx.tasks)
        per = ceil(units / tasks)
        cp = vec_cycles(cfg, rows * wo * c * kh * kw * (4 if is_avg else esz)) + (vec_cycles(cfg, tout * 4) if is_avg else 0)
        return Plan(rows, c, tasks, per * max(dma_cycles(cfg, tin), cp, dma_cycles(cfg, tout)), units)

    plan = choose([(r,) for r in row_candidates(ho)], price)
    if plan is None:
        raise CompileError(f"node '{node.name}' ({node.op}): one output row does not fit NRAM of {cfg.name}")
    zin = node.q.get("in_zp", 0)
    if is_avg and zin and any(node.attrs["padding"]):
        raise CompileError(f"node '{node.name}' (avgpool): padded average pooling of an input with zero point "
                           f"{zin} is not supported")
    p_addr = ctx.const(f"{node.name}.params", np.array([[-zin * kh * kw, node.q["mult"], node.q["shift"]]],
                                                       np.int32)) if is_avg else None
    units = [(i, rb) for i in range(n) for rb in range(ceil(ho / plan.rows))]
    streams = []
    for t0, t1 in split(len(units), plan.tasks):
        s = TaskStream()
        nram = Arena("nram", cfg.nram_bytes)
        rows = plan.rows
        tin = min(_rows_in(rows, kh, sh), h + pt + pb) * w * c * esz
        bin_ = [nram.alloc(tin, "input tile") for _ in range(DOUBLE)]
        bout = [nram.alloc(rows * wo * c * esz, "output tile") for _ in range(DOUBLE)]
        acc = nram.alloc(rows * wo * c * 4, "sums") if is_avg else None
        par = nram.alloc(12, "params") if is_avg else None
        pload = s.dma("g2n", par, p_addr, 12) if is_avg else None
        readers, stores = [], []
        for i, (img, rb) in enumerate(units[t0:t1]):
            r0, r1 = rb * rows, min(ho, (rb + 1) * rows)
            start, end = r0 * sh - pt, (r1 - 1) * sh - pt + kh
            a, b = max(start, 0), min(end, h)
            slot = i % DOUBLE
            ld = s.dma(load_dir(x), bin_[slot], x.addr + (img * h + a) * w * c * esz, (b - a) * w * c * esz,
                       deps=[readers[i - DOUBLE] if i >= DOUBLE else None])
            free = stores[i - DOUBLE] if i >= DOUBLE else None
            geo = dict(n=1, hi=b - a, wi=w, c=c, kh=kh, kw=kw, sh=sh, sw=sw, pt=max(0, -start),
                       pb=max(0, end - h), pl=pl, pr=pr)
            if is_avg:
                pool = s.emit("vpool", [ld], mode="sum", dt=dt, dst=acc, src=bin_[slot], **geo)
                last = s.emit("vrequant", [pload, free], odt=dt, dst=bout[slot], src=acc, params=par, c=1,
                              n=(r1 - r0) * wo * c, lo=node.q["lo"], hi=node.q["hi"], zp=node.q.get("zp", 0))
            else:
                pool = last = s.emit("vpool", [ld, free], mode="max", dt=dt, dst=bout[slot], src=bin_[slot], **geo)
            readers.append(pool)
            stores.append(s.dma(store_dir(y), y.addr + (img * ho + r0) * wo * c * esz, bout[slot], (r1 - r0) * wo * c * esz,
                                deps=[last]))
        streams.append(s.finish())
    ctx.kernel(node, streams, tiling=plan.describe(), unit="vector")


def lower_gap(ctx, node, x, y) -> None:
    """Per image: sum rows blocks into int32 per channel, then one requantize to the mean."""
    n, h, w, c = x.shape
    esz = 2 if node.q["dtype"] == "int16" else 1
    dt = "i16" if esz == 2 else "i8"
    cfg = ctx.cfg
    rows = h
    while rows > 1 and not Arena("nram", cfg.nram_bytes).fits(*([rows * w * c * esz] * DOUBLE), c * 4, c * 4, c * esz, 12, 4):
        rows = ceil(rows / 2)
    if not Arena("nram", cfg.nram_bytes).fits(*([rows * w * c * esz] * DOUBLE), c * 4, c * 4, c * esz, 12):
        raise CompileError(f"node '{node.name}' (gap): one row of {w} x {c} does not fit NRAM of {cfg.name}")
    bias = -node.q.get("in_zp", 0) * h * w
    fscale = "fscale" in node.q
    p_addr = ctx.const(f"{node.name}.params", np.array([[bias, 1, 0] if fscale else
                                                        [bias, node.q["mult"], node.q["shift"]]], np.int32))
    fs_addr = ctx.const(f"{node.name}.scale", node.q["fscale"]) if fscale else None
    streams = []
    for t0, t1 in split(n, min(n, ctx.tasks)):
        s = TaskStream()
        nram = Arena("nram", cfg.nram_bytes)
        bin_ = [nram.alloc(rows * w * c * esz, "rows") for _ in range(DOUBLE)]
        acc, part = nram.alloc(c * 4, "sum"), nram.alloc(c * 4, "partial sum")
        out, par = nram.alloc(c * esz, "mean"), nram.alloc(12, "params")
        pload = s.dma("g2n", par, p_addr, 12)
        if fscale:
            fs = nram.alloc(4, "scale")
            pload = s.dma("g2n", fs, fs_addr, 4)
        readers, last_store = [], None
        k = 0
        for img in range(t0, t1):
            first = True
            for r0 in range(0, h, rows):
                r1 = min(h, r0 + rows)
                slot = k % DOUBLE
                ld = s.dma(load_dir(x), bin_[slot], x.addr + (img * h + r0) * w * c * esz, (r1 - r0) * w * c * esz,
                           deps=[readers[k - DOUBLE] if k >= DOUBLE else None])
                geo = dict(n=1, hi=r1 - r0, wi=w, c=c, kh=r1 - r0, kw=w, sh=1, sw=1)
                if first:
                    red = s.emit("vpool", [ld], mode="sum", dt=dt, dst=acc, src=bin_[slot], **geo)
                else:
                    s.emit("vpool", [ld], mode="sum", dt=dt, dst=part, src=bin_[slot], **geo)
                    red = s.emit("vadd", [], dt="i32", dst=acc, a=acc, b=part, n=c)
                readers.append(red)
                first = False
                k += 1
            if fscale:     # one scale for every channel: columns of one
                rq = float_requant(s, [pload, last_store], node.q, acc, out, par, fs, c, 1, dt)
            else:
                rq = s.emit("vrequant", [pload, last_store], odt=dt, dst=out, src=acc, params=par, c=1, n=c,
                            lo=node.q["lo"], hi=node.q["hi"], zp=node.q.get("zp", 0))
            last_store = s.dma(store_dir(y), y.addr + img * c * esz, out, c * esz, deps=[rq])
        streams.append(s.finish())
    ctx.kernel(node, streams, tiling=f"{rows} rows per partial sum", unit="vector")
