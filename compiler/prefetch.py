"""Weight prefetch inside a fused segment: the next layer's weights stream into WRAM while this
layer computes.

Inside a segment every layer ends at a sync.cluster, and a sync drains all of a core's queues. So
without help each layer of a job starts by loading its weights from DRAM with nothing to hide
behind: at batch 16 on 16 cores, that exposed load is a third of a ResNet-50 layer3 3x3 conv and
half of a layer4 one. BANG's answer is `__memcpy_async` GDRAM2WRAM for layer k+1 issued during
layer k, into WRAM layer k does not use; that is what this pass emits.

It works on finished instruction streams. A layer whose tasks each hold one weight block (conv's
`wram_resident_bytes`) is emitted with its block at a chosen WRAM address, marked as already loaded
(conv's resident-weights path); its weight-load DMAs, taken once from an emission that loads them,
are cut into chunks and spread through the instructions of the layer before on the same core. They
run on the load queue (the IO-DMA) while that layer's tiles arrive from SRAM on the move queue, so
they overlap its compute; the sync that ends it drains them. The tiler prices a layer that can be
prefetched without its first weight load (conv `_Pricer`, `ctx.prefetch`).

The address is the top of WRAM, or the bottom of the free region when the running layer's
buffers sit at the top; a layer with no room either way loads as before.

The float input of the next image group gets the same treatment (`plan_input`, `input_loads`): a
segment that starts at the graph's input and takes several groups per job copies group r+1's
float images GDRAM -> SRAM during group r's last layers, into SRAM none of them uses. Group r+1's
input layer then quantizes from SRAM instead of waiting on a DRAM that all four clusters hit at the
same moment (at batch 16 on 16 cores that wait was 9% of ResNet-50's first segment).
"""
from __future__ import annotations

from math import ceil

from mlusim.compiler.codegen import queues_of
from mlusim.compiler.liveness import ALIGN, aligned, free_region, lifetimes
from mlusim.isa.encoding import Instr
from mlusim.isa.fields import DIR_NAMES

INPUT_CHUNK = 64 * 1024 # bytes per input prefetch DMA: a few per core, so they spread over several layers
CHUNK = 256 * 1024      # bytes per prefetch DMA (~500 cycles of fixed cost each). 32 KiB chunks measured
                        # up to 6% slower on most zoo runs; two 4-core batch-16 runs were <1% faster


def plan_prefetch(metas, wram_bytes: int, base: int, resident: set[str], wrap: bool = True) -> dict[str, int]:
    """WRAM address of each layer whose weights are prefetched, from one image group's kernel
    metadata `metas` [(node, meta)] emitted with the real WRAM base (`base`: where the resident
    slots end). A layer's block must clear the WRAM the layer before it uses; the first layer's
    "before" is the last one (of the previous image group; none when `wrap` is false: a job of one
    group), and the second layer's prefetch runs during the first, so the first is decided last,
    against both."""
    def used(n, meta) -> tuple[int, int]:
        if n.name in resident or (n.op != "linear" and "wram_bytes_used" not in meta):
            return base, base              # no WRAM above `base` (resident blocks live below it)
        return base, (wram_bytes if n.op == "linear" else base + meta["wram_bytes_used"])

    def clear(at: int, size: int, span: tuple[int, int]) -> bool:
        lo, hi = span
        return lo == hi or at + size <= lo or at >= hi

    order = [n.name for n, _ in metas]
    spans = {n.name: used(n, meta) for n, meta in metas}
    plan: dict[str, int] = {}
    if len(order) < 2:
        return plan
    for k in list(range(1, len(metas))) + ([0] if wrap else []):
        n, meta = metas[k]
        size = aligned(meta.get("wram_resident_bytes", 0))
        if not size or n.name in resident or base + size > wram_bytes:
            continue
        others = [spans[order[k - 1]]] + ([spans[order[1]]] if k == 0 and order[1] in plan else [])
        for at in ((wram_bytes - size) // ALIGN * ALIGN, base):
            if all(clear(at, size, s) for s in others):
                plan[n.name] = at
                spans[n.name] = (at, at + size)
                break
    return plan


def weight_loads(streams: list[list[Instr]]) -> list[list[Instr]]:
    """Each task's loads into WRAM (GDRAM -> WRAM, or SRAM -> WRAM when staged there: share.py) in
    `streams`, as fresh instructions without dependency tokens (the prefetched copies need none:
    the sync before their layer orders them)."""
    into = {DIR_NAMES.index("g2w"), DIR_NAMES.index("s2w")}
    return [[Instr.make("dma", dir=DIR_NAMES[i.args["dir"]], dst=i.args["dst"], src=i.args["src"], size=i.args["size"])
             for i in st if i.op.mnemonic == "dma" and i.args["dir"] in into and i.args["count"] == 1
             and i.args["count2"] == 1] for st in streams]


def chunks(ins: Instr, size: int = CHUNK) -> list[Instr]:
    a = ins.args
    n = a["size"]
    k = max(1, ceil(n / size))
    step = aligned(-(-n // k))
    return [Instr.make("dma", dir=DIR_NAMES[a["dir"]], dst=a["dst"] + o, src=a["src"] + o, size=min(step, n - o))
            for o in range(0, n, step)]


def chunked(loads: list[list[Instr]]) -> list[list[Instr]]:
    """Each core's weight loads cut into prefetch-sized DMAs."""
    return [[p for ld in mine for p in chunks(ld)] for mine in loads]


def insert_between_loads(stream: list[Instr], start: int, end: int, loads: list[Instr], behind_ld: bool = False) -> None:
    """Spread `loads` over stream[start:end] (one core's instructions of the running layer) after
    its load and move-queue instructions from the second on, evenly (issue is in order: a burst
    would fill the load queue and stall the instructions behind it); when the layer has no such
    instructions they all go at its end, before its sync."""
    if not loads:
        return
    queues = queues_of(stream[start:end])
    pos = [start + k for k, q in enumerate(queues) if q in ("ld", "mv")][1:]
    if behind_ld:      # nothing of the layer may queue behind them on ld
        lds = [start + k for k, q in enumerate(queues) if q == "ld"]
        pos = [i for i in pos if not lds or i >= lds[-1]]
    at: dict[int, list[Instr]] = {}
    if pos:
        for j, ins in enumerate(loads):
            at.setdefault(pos[min(len(pos) - 1, j * len(pos) // len(loads))], []).append(ins)
    else:
        at[end - 1] = list(loads)
    for i in sorted(at, reverse=True):
        stream[i + 1:i + 1] = at[i]


def plan_input(g, nodes, group: int, lay: dict, addrs: dict[str, int], capacity: int, nbytes: int
               ) -> tuple[list[int], int] | None:
    """(the layers to copy during, SRAM address) for the next group's float input: the longest
    run of last layers beside which `nbytes` fit, clear of the input layer's own output too (it
    is written while the buffer is read); of those layers the store-light ones. None without
    any: MobileNetV2's window is one 1x1 conv, and copying behind its stores measured slower
    than not prefetching."""
    size = aligned(nbytes)
    life = lifetimes(g, nodes)
    for k0 in range(1, len(nodes)):
        at = free_region(g, nodes, group, lay, addrs, capacity, size, k0, also=(nodes[0].name,), life=life)
        if at is not None:
            light = [k for k in range(k0, len(nodes)) if store_light(nodes[k])]
            return (light, at) if light else None
    return None


def store_light(node) -> bool:
    """A layer the input copies may ride along with: a MAC-bound conv (kernel 3x3 or larger, no
    shortcut join), long enough for a copy to finish before its closing barrier and light on the
    DMA queues. Measured on ResNet-50 b16/16: with `g2s` on the store queue and the copies spread
    over every layer, they held up the residual 1x1 convs' stores and saved a tenth as much; on the
    load queue (now) and every layer, they held up those convs' parameter loads and saved a third
    less than behind the 3x3 convs alone."""
    w = node.q.get("weight") if node.op == "conv2d" else None
    return w is not None and w.ndim == 4 and w.shape[2] * w.shape[3] > 1 and not node.attrs.get("residual")


def input_loads(dst: int, src: int, part: tuple[int, int]) -> list[Instr]:
    """One core's GDRAM -> SRAM copies of bytes [a, b) of the next group's input, in chunks."""
    a, b = part
    return [Instr.make("dma", dir="g2s", dst=dst + o, src=src + o, size=min(b, o + INPUT_CHUNK) - o)
            for o in range(a, b, INPUT_CHUNK)]


def spread_over_layers(stream: list[Instr], spans: list[tuple[int, int]], loads: list[Instr]) -> list[int]:
    """Share `loads` out over the layers whose (start, end) in `stream` are `spans`, in order;
    returns how many went into each (later spans first, so earlier ones keep their indices)."""
    k = len(spans)
    counts = [(i + 1) * len(loads) // k - i * len(loads) // k for i in range(k)]
    for i in reversed(range(k)):
        lo = i * len(loads) // k
        insert_between_loads(stream, *spans[i], loads[lo:lo + counts[i]], behind_ld=True)
    return counts


def load_back(tasks: list[list[Instr]], hist: list[list[tuple[int, int]]], loads: list[list[Instr]],
              depth: int) -> None:
    """Each core's `loads` into the layer `depth` layers back (`hist`: per layer, each core's span,
    moved along): a job's first image group loads its WRAM-resident weights that far ahead, so
    each layer carries about one layer's worth and no layer waits on DRAM for its own."""
    at = max(0, len(hist) - depth)
    for c, mine in enumerate(loads):
        _insert_into(tasks[c], hist, at, c, mine)


def spread_back(tasks: list[list[Instr]], hist: list[list[tuple[int, int]]], loads: list[list[Instr]],
                depth: int, size: int = CHUNK // 4) -> None:
    """Each core's `loads`, cut into `size`-byte DMAs, spread evenly over the last `depth` layers
    (`hist`, moved along): a big load far ahead (fusion.py's gathered fc) then takes a little of
    each layer's DRAM time instead of most of one's."""
    at = max(0, len(hist) - depth)
    n = len(hist) - at
    for c, mine in enumerate(loads):
        pieces = [p for ld in mine for p in chunks(ld, size)]
        for i in range(n):
            _insert_into(tasks[c], hist, at + i, c, pieces[i * len(pieces) // n:(i + 1) * len(pieces) // n])


def _insert_into(stream: list[Instr], hist: list[list[tuple[int, int]]], i: int, c: int, loads: list[Instr]) -> None:
    """`loads` between layer i's loads in core c's stream; that span and the later ones move along."""
    a, b = hist[i][c]
    insert_between_loads(stream, a, b, loads)
    hist[i][c] = (a, b + len(loads))
    for h in hist[i + 1:]:
        h[c] = (h[c][0] + len(loads), h[c][1] + len(loads))
