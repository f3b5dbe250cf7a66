"""DMA semantics: strided copies between GDRAM, SRAM (this or another cluster's), NRAM and WRAM."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mlusim.isa.fields import DIR_NAMES, DIRECTIONS


def dma_spaces(a) -> tuple[str, str]:
    return DIRECTIONS[DIR_NAMES[a["dir"]]]


def dma_extent(size, stride, count, stride2, count2) -> int:
    return (count2 - 1) * stride2 + (count - 1) * stride + size


def check_dma(a):
    size, cnt, cnt2 = a["size"], a["count"], a["count2"]
    if size == 0 or cnt == 0 or cnt2 == 0:
        return "size, count and count2 must be >= 1"
    if cnt > 1 and a["dstride"] < size:
        return f"destination segments overlap (dstride {a['dstride']} < size {size})"
    if cnt2 > 1 and a["dstride2"] < dma_extent(size, a["dstride"], cnt, 0, 1):
        return "destination blocks overlap (dstride2 smaller than one block)"
    if a["dcl"] and DIR_NAMES[a["dir"]] != "s2s":
        return f"dcl={a['dcl']} (another cluster's SRAM) is only for s2s, not {DIR_NAMES[a['dir']]}"
    return None


def touch_dma(a):
    src_space, dst_space = dma_spaces(a)
    return [(src_space, a["src"], dma_extent(a["size"], a["sstride"], a["count"], a["sstride2"], a["count2"]), "r", 1),
            (dst_space, a["dst"], dma_extent(a["size"], a["dstride"], a["count"], a["dstride2"], a["count2"]), "w", 1)]


@dataclass(slots=True, eq=False)
class DmaPlan:
    """What a DMA's fields fix, worked out once per distinct instruction (ResNet-50 b16 issues
    76k DMAs of a few thousand distinct ones): its spaces, and either one contiguous byte range
    per side (`shape` None: segments laid end to end on both sides are one range) or the
    [count2, count, size] strided views' offsets and strides."""
    src_space: str
    dst_space: str
    dcl: int
    src: int
    dst: int
    nbytes: int
    shape: tuple[int, int, int] | None
    sstrides: tuple[int, int, int]
    dstrides: tuple[int, int, int]
    overlap: bool       # source and destination extents share a byte when in one buffer


def dma_plan(a) -> DmaPlan:
    size, cnt, cnt2 = a["size"], a["count"], a["count2"]
    sst, dst_, sst2, dst2 = a["sstride"], a["dstride"], a["sstride2"], a["dstride2"]
    if cnt == 1 or (sst == size and dst_ == size):        # segments end to end on both sides
        size, cnt = size * cnt, 1
        if cnt2 == 1 or (sst2 == size and dst2 == size):
            size, cnt2 = size * cnt2, 1
    src_space, dst_space = _SPACES[a["dir"]]
    shape = None if cnt == 1 and cnt2 == 1 else (cnt2, cnt, size)
    return DmaPlan(src_space, dst_space, a["dcl"], a["src"], a["dst"], size, shape,
                   (sst2, sst, 1), (dst2, dst_, 1), _overlap(a))


def dma(ctx, a):
    p = ctx.gemms.memo(a, dma_plan)
    s, d = p.src, p.dst
    if p.shape is None and not p.dcl:    # one range: memoryviews copy it (memmove where it overlaps)
        ctx.raw(p.dst_space)[d:d + p.nbytes] = ctx.raw(p.src_space)[s:s + p.nbytes]
        return
    dbuf = ctx.remote_sram(p.dcl - 1) if p.dcl else ctx.mem(p.dst_space)
    sbuf = ctx.mem(p.src_space)
    if p.shape is None:
        dbuf[d:d + p.nbytes] = sbuf[s:s + p.nbytes]
        return
    # [count2, count, size] views by the ndarray constructor on the buffer (the engine checked
    # the extents), ~7x quicker than as_strided, which matters at ~10^5 strided DMAs
    src = np.ndarray(p.shape, np.uint8, sbuf, s, p.sstrides)
    dst = np.ndarray(p.shape, np.uint8, dbuf, d, p.dstrides)
    if p.overlap and dbuf is sbuf:
        src = src.copy()        # the transfer reads its whole source before it writes
    dst[...] = src


_SPACES = tuple(DIRECTIONS[d] for d in DIR_NAMES)      # by the dir field's value


def _overlap(a) -> bool:
    """Whether a strided copy's source and destination extents share a byte (one buffer)."""
    s_end = a["src"] + dma_extent(a["size"], a["sstride"], a["count"], a["sstride2"], a["count2"])
    d_end = a["dst"] + dma_extent(a["size"], a["dstride"], a["count"], a["dstride2"], a["count2"])
    return a["src"] < d_end and a["dst"] < s_end
