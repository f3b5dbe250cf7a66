"""Kernels the detection and squeeze-excitation networks add: leaky ReLU in the integers, nearest
upsampling as strided DMA copies, and the channel scale x * s[n, c] of a squeeze-excitation block.

All three use existing vector instructions (vcast, vrequant, vmax, vrow) and DMA descriptors; none
needs a new one. Leaky ReLU with slope a < 1 is max(x, a*x) for every x, so in the same scale
it is vmax of x and x requantized by a (zero point: zp + max(x - zp, rne((x - zp) * a))), exact
against the reference's formula."""
from __future__ import annotations

from math import ceil

import numpy as np

from mlusim.compiler.codegen import Arena, TaskStream, load_dir, store_dir
from mlusim.compiler.kernels.eltwise import requant_kernel
from mlusim.compiler.tiling import DOUBLE, split
from mlusim.errors import CompileError


def _dt(node) -> tuple[str, int]:
    return ("i16", 2) if node.q["dtype"] == "int16" else ("i8", 1)


def lower_leaky(ctx, node, x, y) -> None:
    """vcast to int32, vrequant by the slope (bias -zp, then + zp), vmax with the input."""
    def then(s, src, dst, n, dt):
        return s.emit("vmax", [], dt=dt, dst=dst, a=dst, b=src, n=n)

    requant_kernel(ctx, node, x, y, node.q.get("in_zp", 0), dict(zp=node.q.get("zp", 0)), then)


def lower_upsample(ctx, node, x, y) -> None:
    """Nearest upsampling by f in NHWC: for each of the f*f output phases (dy, dx), one 2-D strided
    copy GDRAM -> GDRAM puts every input pixel's C channels at output pixel (f*i+dy, f*j+dx). The
    copies (split by rows when there are fewer than tasks) run on the tasks' store queues."""
    n, h, w, c = x.shape
    f = node.attrs["scale"]
    _, esz = _dt(node)
    wo = w * f
    if h > 65535 or w > 65535:
        raise CompileError(f"node '{node.name}' (upsample): {h}x{w} is over a DMA descriptor's 65535 segments")
    units = [(img, dy, dx) for img in range(n) for dy in range(f) for dx in range(f)]
    parts = max(1, min(h, ceil(ctx.tasks / len(units))))
    work = [(u, r0, r1) for u in units for r0, r1 in split(h, parts)]
    streams = []
    for t0, t1 in split(len(work), min(ctx.tasks, len(work))):
        s = TaskStream()
        for (img, dy, dx), r0, r1 in work[t0:t1]:
            src = x.addr + ((img * h + r0) * w) * c * esz
            dst = y.addr + (((img * h + r0) * f + dy) * wo + dx) * c * esz
            s.dma("g2g", dst, src, c * esz, count=w, sstride=c * esz, dstride=f * c * esz,
                  count2=r1 - r0, sstride2=w * c * esz, dstride2=f * wo * c * esz)
        streams.append(s.finish())
    ctx.kernel(node, streams, unit="dma")


def lower_channel_mul(ctx, node, x, sc, y) -> None:
    """y[n, h, w, c] = requant(x[n, h, w, c] * s[n, c]): per task a run of (image, pixel chunk)
    units; each image's scale vector is loaded and widened once, then every chunk is widened,
    multiplied row by row against it (vrow, b indexed by column) and requantized."""
    q = node.q
    dt, esz = _dt(node)
    n, h, w, c = x.shape
    cfg = ctx.cfg
    per_pixel = c * (DOUBLE * 2 * esz + 4)
    fixed = c * (esz + 4) + 12 + 4 * 64
    cap = (cfg.nram_bytes - fixed) // per_pixel
    if cap < 1:
        raise CompileError(f"node '{node.name}' (mul): one pixel of {c} channels does not fit NRAM of {cfg.name}")
    chunks_per_img = max(ceil(h * w / cap), ceil(ctx.tasks / n) if h * w >= ctx.tasks else 1)
    units = [(img, a, b) for img in range(n) for a, b in split(h * w, chunks_per_img) if b > a]
    p_addr = ctx.const(f"{node.name}.params", np.array([[0, q["mult"], q["shift"]]], np.int32))
    streams = []
    for t0, t1 in split(len(units), min(ctx.tasks, len(units))):
        s = TaskStream()
        nram = Arena("nram", cfg.nram_bytes)
        most = max(b - a for _, a, b in units[t0:t1])
        bin_ = [nram.alloc(most * c * esz, "x chunk") for _ in range(DOUBLE)]
        bout = [nram.alloc(most * c * esz, "y chunk") for _ in range(DOUBLE)]
        wide = nram.alloc(most * c * 4, "int32")
        s_raw, s_wide, par = nram.alloc(c * esz, "scale"), nram.alloc(c * 4, "scale int32"), nram.alloc(12, "params")
        pl = s.dma("g2n", par, p_addr, 12)
        cur, widen, readers, stores = None, None, [], []
        for i, (img, a, b) in enumerate(units[t0:t1]):
            slot, m = i % DOUBLE, (b - a) * c
            if img != cur:
                ls = s.dma(load_dir(sc), s_raw, sc.addr + img * c * esz, c * esz, deps=[widen])
                widen = s.emit("vcast", [ls], sdt=dt, ddt="i32", dst=s_wide, src=s_raw, n=c)
                cur = img
            ld = s.dma(load_dir(x), bin_[slot], x.addr + (img * h * w + a) * c * esz, m * esz,
                       deps=[readers[i - DOUBLE] if i >= DOUBLE else None])
            readers.append(s.emit("vcast", [ld], sdt=dt, ddt="i32", dst=wide, src=bin_[slot], n=m))
            s.emit("vrow", [], op="mul", dt="i32", dst=wide, a=wide, b=s_wide, rows=b - a, cols=c, axis="col")
            rq = s.emit("vrequant", [pl, stores[i - DOUBLE] if i >= DOUBLE else None], odt=dt, dst=bout[slot],
                        src=wide, params=par, c=1, n=m, zp=q.get("zp", 0), lo=q["lo"], hi=q["hi"])
            stores.append(s.dma(store_dir(y), y.addr + (img * h * w + a) * c * esz, bout[slot], m * esz, deps=[rq]))
        streams.append(s.finish())
    ctx.kernel(node, streams, unit="vector")
