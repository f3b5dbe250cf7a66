"""Weights shared between clusters through SRAM: each weight byte crosses DRAM once per chip.

A segment whose clusters all run the same layers at the same time for different images (ResNet-50's
layer3 and layer4 at batch 16: four one-cluster jobs of four images) loads every layer's weights
once per cluster, and at batch 16 on 16 cores that DRAM traffic, not the MAC array, sets its time:
50 MiB of weight reads for 13 MiB of weights. The MLU270 has no cache and no multicast, but it has
SRAM2SRAM between clusters. So the clusters run as one UNIONn job, each of the P clusters reads 1/P
of a layer's weights from DRAM and hands its part to the others, L = 2 or 1 steps ahead (a software
pipeline over the segment's steps, as BANG code would write it with async copies):

    step j-L:  g2s  this cluster's 1/P of W_j -> stage S_j      (a share per core, after the
                                                                 step's first load)
               s2s  that part -> S_j of every other cluster      (each waits for its copy's token;
                                                                 PASS_AT of the way through)
               sync.all                                         (every step ends at one)
    L = 2:     step j-1 copies S_j -> WRAM (s2w, the Move-DMA) beside its own tiles (prefetch.py)
    L = 1:     step j copies S_j -> WRAM at its start, then a sync.all (S_j may be refilled)

A step is a layer, or a slice of one: a layer whose weights find no stage is cut by output channels
into 2, 4, ... slices (wide.slice_node). S_j must be SRAM no value uses in steps j-L..j, clear of
S_{j-1} when L = 2. plan() looks for stages in the gaps the SRAM plan leaves; pin_stages() places
the hard ones in the SRAM plan itself. A layer with no room keeps the per-cluster path.
"""
from __future__ import annotations

from dataclasses import dataclass

from mlusim.compiler.liveness import (VIEWS, aligned, device_image_bytes, escaping, group_bytes, lifetimes, lowest_fit,
                                      split_bytes, sram_plan)
from mlusim.compiler.codegen import QBIT, queues_of
from mlusim.compiler.kernels.linear import one_pixel
from mlusim.compiler.layout import space_to_depth
from mlusim.compiler.prefetch import CHUNK     # bytes per g2s, as per prefetch DMA
from mlusim.compiler.tiling import split
from mlusim.isa.encoding import Instr
from mlusim.isa.fields import DIR_NAMES

MIN_BYTES = 64 * 1024       # smaller layers load once per cluster: staging them costs more barriers and
                            # copies than their DRAM reads (LeNet-5 and MNIST at batch 16 ran slower)
PASS_AT = 0.9               # where in a step its s2s passes go (fraction of its loads; measured 2/3 .. 0.95)


@dataclass
class Step:
    """One layer, or one output-channel slice of it, of a segment's image group."""
    node: str
    k: int                                # its index in the segment's nodes
    slice: tuple[int, int] | None = None  # [c0, c1) of the layer's output channels
    stage: int | None = None              # SRAM address its weights are staged at (None: not shared)
    nbytes: int = 0                       # bytes of its weights
    lead: int = 0                         # steps ahead its copies go: 2 (WRAM prefetch in the step
                                          # before) or 1 (the step loads its weights at its start)


def eligible(node, g) -> bool:
    """Convs whose tiler takes staged weights as the graph holds them: not depthwise (those load
    into NRAM), nor the space-to-depth stem (lowering regroups its weights)."""
    w = node.q.get("weight") if node.op == "conv2d" else None
    s2d = space_to_depth(g)
    return w is not None and not (node.attrs.get("groups", 1) > 1 and w.shape[1] == 1) and \
        not (s2d and s2d["conv"] == node.name)


def plan(g, nodes, group: int, lay: dict, addrs: dict[str, int], capacity: int, lanes: int,
         min_bytes: int = 0, max_slices: int = 16, parts: int = 1, keep: frozenset = frozenset(),
         stage: bool = False, pinned: dict | None = None, memo: dict | None = None) -> list[Step]:
    """The span's steps: which layers share their weights, in how many slices, staged where.
    parts: a wide segment's clusters per job, each staging its channel share (wide.py); keep:
    values used after the span that sram_plan placed in SRAM all the same; stage: the span's
    inputs were copied into SRAM before its first layer (sram_plan's `stage`); pinned: layers whose
    slices and stages sram_plan placed (pin_stages), name -> (slices, addresses, lead); memo:
    the planner's cache (lifetimes)."""
    life = lifetimes(g, nodes, stage, keep=keep or parts > 1, memo=memo)
    # each placed value's (start, end, first layer, last layer), laid out once: fit asks per slice
    placed = [(addrs[v], addrs[v] + group_bytes(lay[v], group), f, l_) for v, (f, l_) in life.items() if v in addrs]

    def busy(k0: int, k1: int) -> list[tuple[int, int]]:
        return [(a, e) for a, e, f, l_ in placed if f <= k1 and l_ >= k0]

    def fit(n, k: int, before: list[Step], r: int, lead: int) -> list[Step] | None:
        """Its steps as r slices filled `lead` steps ahead, if every stage finds room."""
        w, co = n.q["weight"].nbytes // parts, n.q["weight"].shape[0] // parts
        s = w // r                                  # whole output channels: exact
        out: list[Step] = []
        for i in range(r):
            prev = before + out
            # filled two steps ahead, the stage is written while the step before's is read
            k0 = prev[-lead].k if len(prev) >= lead else k
            taken = busy(k0, k) + ([(prev[-1].stage, prev[-1].stage + aligned(prev[-1].nbytes))]
                                   if lead > 1 and prev and prev[-1].stage is not None else [])
            at = lowest_fit(taken, aligned(s), capacity)
            if at is None:
                return None
            out.append(Step(n.name, k, (i * co // r, (i + 1) * co // r) if r > 1 else None, at, s, lead))
        return out

    def staged(n, k: int, before: list[Step]) -> list[Step] | None:
        """Whole and two steps ahead (the WRAM copy hides behind the step before) when it fits;
        a layer of `min_bytes` or more (too big for the per-cluster prefetch) also in the fewest
        slices that fit, or one step ahead."""
        if not eligible(n, g) or n.q["weight"].nbytes // parts < MIN_BYTES:
            return None
        if n.name in (pinned or {}):      # its slices take turns in its stages (pin_stages)
            r, ats, lead = pinned[n.name]
            co, w = n.q["weight"].shape[0] // parts, n.q["weight"].nbytes // parts
            return [Step(n.name, k, (i * co // r, (i + 1) * co // r) if r > 1 else None, ats[i % len(ats)], w // r,
                         lead) for i in range(r)]
        whole = fit(n, k, before, 1, 2)
        if whole or n.q["weight"].nbytes // parts < min_bytes:
            return whole
        co, r = n.q["weight"].shape[0] // parts, 1
        while r == 1 or r <= max_slices and co % (r * lanes) == 0:
            for lead in (2, 1):
                out = fit(n, k, before, r, lead)
                if out:
                    return out
            r *= 2
        return None

    steps: list[Step] = []
    for k, n in enumerate(nodes):
        if n.op not in VIEWS:
            steps += staged(n, k, steps) or [Step(n.name, k)]
    return steps


def schedule(g, nodes, group: int, lay: dict, cfg, staged: bool, parts: int, sram: tuple, extra: dict,
             min_bytes: int, memo: dict | None = None) -> tuple[tuple, list[Step], frozenset]:
    """The steps of a segment whose clusters share weights and the SRAM plan they go with, as
    lowering builds them: plan() in the gaps of `sram` (sram_plan's result, with the `extra`
    buffers); a sliced last layer's output kept in SRAM when it escapes (it then leaves in one
    contiguous copy); then pin_stages. Returns (SRAM plan, steps, kept). fusion.py lowers what this
    says and segments.py prices it, so the planner sees the slices the code will have. `memo`:
    sram_plan's (the planner's cache)."""
    real = [n for n in nodes if n.op not in VIEWS]
    cap, lanes = cfg.sram_bytes, cfg.core.mac_co_lanes
    steps = plan(g, nodes, group, lay, sram[0], cap, lanes, min_bytes, parts=parts, stage=staged, memo=memo)
    kept: frozenset = frozenset()
    if parts == 1 and real[-1].name in escaping(g, nodes) and sum(s.node == real[-1].name for s in steps) > 1:
        again = sram_plan(g, nodes, group, cap, lay, staged, keep=frozenset({real[-1].name}), extra=extra, memo=memo)
        if again is not None:
            sram, kept = again, frozenset({real[-1].name})
            steps = plan(g, nodes, group, lay, sram[0], cap, lanes, min_bytes, parts=parts, keep=kept, stage=staged,
                         memo=memo)
    if steps:   # fewer slices where their stage fits beside the values when planned with them
        pins, _bufs, again = pin_stages(g, nodes, steps, parts, lambda more: sram_plan(
            g, nodes, group, cap, lay, staged, keep=kept or parts > 1, extra={**extra, **more}, memo=memo),
            more=min_bytes // 2)
        if again is not None:
            sram = again
            steps = plan(g, nodes, group, lay, sram[0], cap, lanes, min_bytes, parts=parts, keep=kept, stage=staged,
                         pinned=pins, memo=memo)
    return sram, steps, kept


def barrier_after_weights(stream: list[Instr]) -> tuple[list[Instr], int]:
    """The stream with a job-wide barrier after its last weight copy out of the stage, and the
    index just after it: from there on the stage may be refilled (the next layer's g2s here, the
    other clusters' s2s after this layer), since every core of every cluster has read it."""
    s2w = DIR_NAMES.index("s2w")
    last = next((i for i in range(len(stream) - 1, -1, -1)
                 if stream[i].op.mnemonic == "dma" and stream[i].args["dir"] == s2w), -1)
    return stream[:last + 1] + [Instr.make("sync.all")] + stream[last + 1:], last + 2


def copies(w_addr: int, nbytes: int, stage: int, peer: int, dests: list[int], cores: int
           ) -> list[tuple[list[Instr], list[Instr]]]:
    """Per core: its g2s copies of a share of this cluster's part of the weights into the stage,
    and its s2s passes of them to every other cluster (`dests`: each peer's cluster in the union
    task). Each copy signals the store queue and the first pass of it waits for that token, so the
    passes can sit in the stream right behind."""
    peers = len(dests)
    a, b = split_bytes(nbytes, peers)[peer]
    out = []
    for c0, c1 in split_bytes(b - a, cores):
        lo, hi = a + c0, a + c1
        g2s, s2s = [], []
        for o in range(lo, hi, CHUNK):
            n = min(hi, o + CHUNK) - o
            g2s.append(Instr.make("dma", dir="g2s", dst=stage + o, src=w_addr + o, size=n, sig=QBIT["st"]))
            s2s += [Instr.make("dma", dir="s2s", dst=stage + o, src=stage + o, size=n, dcl=dests[(peer + k) % peers] + 1,
                               wait=QBIT["ld"] if k == 1 else 0) for k in range(1, peers)]
        out.append((g2s, s2s))
    return out


def gathers(g, last, esc: set, peers: int, per_job: int) -> bool:
    """Whether the span's last layer is a fully connected layer over one pixel (ResNet's fc after
    its pool) that the clusters split by outputs instead: each gathers every cluster's images (a
    few KiB) and computes 1/P of the outputs for all of them, so each cluster reads 1/P of the
    weights straight into WRAM and none is staged or passed on. Small layers (LeNet-5's) stay
    per cluster: their weights cost less than the gather."""
    return peers > 1 and per_job == 1 and last.name in esc and one_pixel(g, last) and \
        last.q["weight"].shape[0] >= peers and last.q["weight"].nbytes >= MIN_BYTES


def gather_buffer(g, nodes, lay: dict, group: int, peers: int, last) -> dict:
    """The SRAM buffer (sram_plan `extra`) the gathered fc reads all the images from and writes its
    result to, alive during the fc only."""
    return {f"gather:{last.name}": ((device_image_bytes(lay[last.inputs[0]]) + device_image_bytes(lay[last.name]))
                                    * group * peers, len(nodes) - 1, len(nodes) - 1)}


def gather(src: int, nbytes: int, at: int, peer: int, dests: list[int], cores: int) -> list[list[Instr]]:
    """Per core: its share of this cluster's `nbytes` at `src` copied to `at + peer * nbytes` in the
    SRAM of every cluster in `dests` (this one's too), then the job-wide barrier after which every
    cluster holds all the images at `at`."""
    return [[Instr.make("dma", dir="s2s", dst=at + peer * nbytes + a, src=src + a, size=b - a, dcl=d + 1)
             for d in dests if b > a] + [Instr.make("sync.all")] for a, b in split_bytes(nbytes, cores)]


def dequantized(y: int, out: int, rows: int, cols: int, chans: tuple[int, int], dt: str, scale_bits: int, zp: int,
                cores: int) -> list[list[Instr]]:
    """Per core, after the cluster's barrier: its share of the rows of channels `chans` of the
    gathered fc's integer result ([rows, cols] at SRAM `y`) dequantized into the program's float32
    output at GDRAM `out`. The segment then writes the output itself, instead of a kernel of its
    own reading it back (a launch and two DRAM latencies)."""
    esz = 2 if dt == "i16" else 1
    c0, c1 = chans
    nb = c1 - c0
    per = []
    for r0, r1 in split(rows, cores):
        mine = [Instr.make("sync.cluster")]
        if r1 > r0:
            f = aligned((r1 - r0) * nb * esz)
            mine += [Instr.make("dma", dir="s2n", dst=0, src=y + (r0 * cols + c0) * esz, size=nb * esz, count=r1 - r0,
                                dstride=nb * esz, sstride=cols * esz), Instr.make("sync"),
                     Instr.make("vdequant", sdt=dt, odt="f32", dst=f, src=0, n=(r1 - r0) * nb, scale=scale_bits, zp=zp),
                     Instr.make("sync"),
                     Instr.make("dma", dir="n2g", dst=out + (r0 * cols + c0) * 4, src=f, size=nb * 4, count=r1 - r0,
                                dstride=cols * 4, sstride=nb * 4)]
        per.append(mine)
    return per


def untokened(instrs: list[Instr]) -> list[Instr]:
    """The same copies without their tokens, for where a barrier orders them instead."""
    return [Instr.make(i.op.mnemonic, **{k: v for k, v in i.args.items() if k not in ("wait", "sig")})
            for i in instrs]


def ahead(stream: list[Instr], start: int, g2s: list[Instr], s2s: list[Instr]) -> None:
    """Put a later step's copies into this step's stream (from `start`): right after its first
    load or move, and the passes PASS_AT of the way through its loads, by when the copies have
    landed, so the passes hardly hold the store queue up. The tokens pair up in order with any
    other load -> store tokens, so a step that has its own gets the passes at its end instead,
    behind a drain of the core."""
    queues = queues_of(stream[start:])
    pos = [start + k for k, q in enumerate(queues) if q in ("ld", "mv")]
    own = any((q == "ld" and i.args["sig"] & QBIT["st"]) or (q == "st" and i.args["wait"] & QBIT["ld"])
              for q, i in zip(queues, stream[start:]))
    first = pos[0] + 1 if pos else start
    if own:
        stream[first:first] = untokened(g2s)
        stream += [Instr.make("sync")] + untokened(s2s)
        return
    later = pos[int(len(pos) * PASS_AT)] + 1 if pos else len(stream)
    stream[later:later] = s2s
    stream[first:first] = g2s


def pin_stages(g, nodes, steps: list[Step], parts: int, replan, more: int = 1 << 60) -> tuple[dict, dict, tuple | None]:
    """Fewer slices for the sliced layers, last first, by placing each one's stage in the SRAM
    plan next to the values (replan(extra) is sram_plan with those buffers) instead of in the gaps
    the values leave: ResNet-50's layer4 3x3 convs then take two slices instead of four. Returns
    the pins (name -> (slices, stage addresses, lead)), the buffers, and the plan, None if
    nothing changed. Layers of `more` bytes or more that found no stage in the gaps try here too."""
    index = {n.name: k for k, n in enumerate(nodes)}
    real = [n for n in nodes if n.op not in VIEWS]
    back = {n.name: [real[max(0, i - d)].name for d in (0, 1, 2)] for i, n in enumerate(real)}
    # last first: measured better than heaviest first or in layer order on ResNet-50 b16/16
    # (2.036 vs 2.110 and 2.120 M cycles)
    shared = {s.node for s in steps if s.stage is not None}
    sliced = sorted({s.node for s in steps if s.slice} | {n.name for n in real if eligible(n, g) and n.name not in shared
                                                          and n.q["weight"].nbytes // parts >= more},
                    key=lambda v: -index[v])
    pins: dict = {}
    extra: dict = {}
    plan = None
    for v in sliced:
        r = max(2, sum(s.node == v for s in steps))     # (a layer not shared yet: tried whole first)
        w = g.node(v).q["weight"].nbytes // parts
        for fewer, lead in ((r // 2 ** i, lead) for i in range(r.bit_length() - 1, 0, -1) for lead in (2, 1)):
            # two stages taking turns, filled two steps ahead (the copy to WRAM hides behind the
            # step before), or one filled the step before; alive from the layer that fills it
            bufs = {f"stage:{v}:{b}": (w // fewer, index[back[v][lead]], index[v]) for b in range(lead)}
            trial = dict(extra, **bufs)
            again = replan(trial)
            if again is not None:
                extra, plan = trial, again
                pins[v] = (fewer, lead)
                break
    if plan is None:
        return {}, {}, None
    return {v: (r, [plan[0][f"stage:{v}:{b}"] for b in range(lead)], lead) for v, (r, lead) in pins.items()}, \
        extra, plan
