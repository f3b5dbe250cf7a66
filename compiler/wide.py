"""Wide segments: a run of conv layers split by output channels across the clusters of a UNIONn
job, each cluster's SRAM holding every layer's whole activation.

Cluster fusion (fusion.py) gives each cluster whole images. Deep in a network that stops paying:
ResNet-50's layer4 has 15 MB of weights, and 16 images of its activations do not fit one cluster's
SRAM, so its jobs either leave clusters idle or load the weights once per cluster. A wide segment
turns it around. A job spans n clusters; cluster c computes output channels [c*C/n, (c+1)*C/n) of
every layer for the job's images, so the job loads each weight byte once; each cluster then copies
its slice into the other clusters' SRAM (s2s with `dcl`, BANG's SRAM2SRAM), so all of them hold the
whole activation the next layer reads:

    per image group, per layer:  conv on the cluster's channels, output -> SRAM    sync.cluster
                                 the slice -> each other cluster (the copies spread
                                 over the cluster's cores)                          sync.all
                                 [a value used after the segment: each core stores a
                                  contiguous 1/(n x cores) of it to GDRAM           sync.all]

fusion.lower_segment emits it (its `cluster` hooks) and segments.wide_cost prices it; this module
holds the code specific to it.
"""
from __future__ import annotations

import numpy as np

from mlusim.compiler.graph import Node
from mlusim.compiler.layout import space_to_depth
from mlusim.compiler.liveness import split_bytes
from mlusim.compiler.tiling import dma_cycles
from mlusim.isa.encoding import Instr

MAX_SEGMENTS = 65535          # the dma instruction's count field


def eligible(span, g=None) -> bool:
    """Only plain convs: their work splits by output channel with nothing shared between slices
    (and not the space-to-depth stem, which lowering regroups by its name)."""
    s2d = space_to_depth(g) if g is not None else None
    return bool(span) and all(n.op == "conv2d" and n.attrs.get("groups", 1) == 1 and not n.attrs.get("pool")
                              and "fscale" not in n.q and not (s2d and s2d["conv"] == n.name) for n in span)


def divides(span, n: int) -> bool:
    return all(x.q["weight"].shape[0] % n == 0 for x in span)


def slice_node(node: Node, c0: int, c1: int) -> Node:
    """Output channels [c0, c1) of a conv: its per-channel weights and quantization parameters cut,
    writing into (and reading its shortcut from) tensors that keep all the channels."""
    co = node.q["weight"].shape[0]
    q = {k: v[c0:c1] if isinstance(v, np.ndarray) and v.ndim >= 1 and v.shape[0] == co else v
         for k, v in node.q.items()}
    shape = (node.shape[0], c1 - c0) + tuple(node.shape[2:])
    at, total = node.attrs.get("out_slice", (0, co))      # a slice of a slice: of the same tensor
    attrs = dict(node.attrs, out_slice=(at + c0, total))
    return Node(f"{node.name}[{c0}:{c1}]", node.op, node.inputs, attrs, node.params, shape, node.fused, q)


def part(node: Node, c: int, n: int) -> Node:
    """Cluster c of n's part of a conv: its c-th n-th of the output channels (slice_node)."""
    co = node.q["weight"].shape[0]
    return slice_node(node, c * co // n, (c + 1) * co // n)


def exchange(tasks: list[list], c: int, n: int, y, esz: int, channels: int, pixels: int, gdram=None,
             first: int = 0) -> None:
    """After cluster c's slice of a layer is in its SRAM at `y.addr`: the barrier, one copy of the
    slice to each other cluster (from different cores), the job-wide barrier, then, for a value
    needed after the segment, a contiguous share of it per core to `gdram`. `first`: the job's
    first cluster in its union task (several jobs in one when they share weights, share.py)."""
    cpc = len(tasks)
    for t in tasks:
        t.append(Instr.make("sync.cluster"))
    cs = channels // n
    off = c * cs * esz
    for k in range(n - 1):
        dest = (c + k + 1) % n
        for p0 in range(0, pixels, MAX_SEGMENTS):
            cnt = min(MAX_SEGMENTS, pixels - p0)
            a = y.addr + p0 * channels * esz + off
            tasks[k % cpc].append(Instr.make("dma", dir="s2s", dst=a, src=a, size=cs * esz, count=cnt,
                                             dstride=channels * esz, sstride=channels * esz, dcl=first + dest + 1))
    for t in tasks:
        t.append(Instr.make("sync.all"))
    if gdram is not None:       # then a second barrier: no later SRAM write, from any core or
        shares = split_bytes(pixels * channels * esz, n * cpc)     # cluster, may land on bytes
        for k in range(cpc):                                          # a store still reads
            a, b = shares[c * cpc + k]
            if b > a:
                tasks[k].append(Instr.make("dma", dir="s2g", dst=gdram.addr + a, src=y.addr + a, size=b - a))
        for t in tasks:
            t.append(Instr.make("sync.all"))


def exchange_cycles(cfg, n: int, nbytes: int, pixels: int) -> float:
    """Cycles of one exchange step for a layer output of `nbytes` over `pixels` positions."""
    return 2 * cfg.cluster.sync_cycles + cfg.chip.chip_sync_cycles + dma_cycles(cfg, nbytes / n, pixels, "sram")
