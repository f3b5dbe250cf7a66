"""Cluster fusion: a run of layers as one UNION1 kernel whose activations stay in cluster SRAM.

Layer-at-a-time code sends every activation through DRAM twice (stored by its producer, loaded by
its consumer); at batch 16 that traffic, not the MAC array, sets ResNet-50's time. CNML's fusion
mode answers with the cluster: its four cores share 2 MiB of SRAM, enough for a few images' worth
of one block's activations. So a *segment* of consecutive layers runs as one kernel of jobs; a job
is one cluster working through the segment for one or more groups of images in turn:

    job j (4 tasks on one cluster), for each of its image groups:
        [segment inputs GDRAM -> SRAM, when they fit ("staged")]        } sync.cluster after each
        layer 1: the usual tiles, input from SRAM or GDRAM, output to SRAM } step: every core drains,
        ...                                                                } so the next layer sees
        layer k: input from SRAM, output to GDRAM                          } all rows

Weights come from GDRAM once per job and image group, except conv weights that stay resident in
WRAM from a job's first group to its last. The segment's inputs and outputs cross DRAM once.
`plan_segments` (segments.py) picks where segments start and end and their group sizes with a cost model
(compute on a cluster's MAC arrays vs. DRAM bytes), a dynamic program over the points where a
single value is live; layers it leaves out run layer-at-a-time as before. docs/fusion.md has the
whole story and the measurements.

Such a program needs whole clusters: it is compiled for a core count (multiple of the cluster size)
and refuses fewer cores with the engine's UNION error.
"""
from __future__ import annotations

from math import ceil, prod

import numpy as np
from typing import NamedTuple

from mlusim.compiler import share, wide
from mlusim.compiler.liveness import (VIEWS, _base, aligned, device_image_bytes, escaping, external_inputs, split_bytes,
                                      sram_plan)
from mlusim.compiler.segments import (ELIGIBLE, JOB_LAYER_OVERHEAD, KERNEL_OVERHEAD, TILED, Segment,  # noqa: F401
                                      _dram_rate, job_shape, layer_cost, node_weight_bytes, plan_segments,
                                      segment_cost, shares, tiler_cost)
from mlusim.errors import CompileError
from mlusim.isa.encoding import Instr
from mlusim.isa.fields import f32_bits
from mlusim.program import Kernel

PREFETCH = True               # load each layer's weights during the layer before (prefetch.py)
SHARE = True                  # clusters running side by side share weights through SRAM (share.py)
SHARE_MIN_BYTES = 1 << 20     # ... of layers with this many bytes of weights or more
WARM_DEPTH = 3                # a job's first group loads WRAM-resident weights this many layers ahead
GATHER_DEPTH = 7              # ... and a gathered fc its weights this many steps ahead (share.gathers)


class StepNode(NamedTuple):
    """What a step's kernel metadata is filed under: its layer's name, plus its slice."""
    name: str
    op: str




# ---- lowering a segment -----------------------------------------------------------------------------
class JobCtx:
    """What a kernel generator sees while emitting one job of a segment: a cluster's cores as its
    tasks, a share of DRAM, constants shared by every job, kernels captured instead of appended."""

    def __init__(self, parent, tasks: int, dram_share: float, consts: dict):
        self.parent, self.cfg, self.graph = parent, parent.cfg, parent.graph
        self.tasks, self.dram_share, self._consts = tasks, dram_share, consts
        self.captured: list = []
        self.wram_slots: dict = {}    # node -> (WRAM address, already loaded) of weights kept across groups
        self.wram_base = 0            # where other layers' WRAM buffers start
        self.prefetch = PREFETCH      # tilers may count on their weights arriving during the layer before
        self.weight_home: dict = {}   # node -> SRAM address its weights are staged at (share.py)
        self.weights_ready: set = set()   # nodes whose weights were loaded into their WRAM slot ahead

    def const(self, name, arr) -> int:
        if name not in self._consts:
            self._consts[name] = self.parent.const(name, arr)
        return self._consts[name]

    def tensor(self, *a, **kw):
        return self.parent.tensor(*a, **kw)

    def kernel(self, node, streams, **meta) -> None:
        self.captured.append((node, streams, meta))


def lower_segment(ctx, seg: Segment, dev: dict, lay: dict, emit) -> None:
    """Emit `seg` as one UNION1 kernel (UNIONn when wide); `dev` gains the GDRAM tensors of its escaping values.
    `emit(ctx, node, ins, y, x)` is lower._lower_node."""
    from mlusim.compiler.lower import DevTensor, input_tensor
    from mlusim.compiler.prefetch import (chunked, input_loads, insert_between_loads, load_back, plan_input,
                                          plan_prefetch, spread_back, spread_over_layers, weight_loads)

    g, cfg = ctx.graph, ctx.cfg
    cpc = cfg.chip.cores_per_cluster
    nodes = g.nodes[seg.start:seg.end]
    real = [n for n in nodes if n.op not in VIEWS]
    batch = g.input.shape[0]
    group = seg.group
    clusters = min(ctx.tasks // cpc, cfg.chip.clusters)
    per_job = seg.wide or 1                 # clusters per job
    jobs, rounds = job_shape(batch, group, clusters // per_job)
    esc = escaping(g, nodes)
    # clusters that run the same layers side by side share their weights through SRAM (share.py)
    peers = jobs if shares(jobs, rounds, clusters, per_job) else 1
    # a last fc over one pixel is split by outputs instead, over every cluster's images gathered
    # into each cluster's SRAM (share.gathers)
    gath = real[-1] if share.gathers(g, real[-1], esc, peers, per_job) else None
    gbuf = share.gather_buffer(g, nodes, lay, group, peers, gath) if gath else {}
    plan = sram_plan(g, nodes, group, cfg.sram_bytes, lay, seg.staged, keep=bool(seg.wide), extra=gbuf)
    if plan is None and gath:
        gath, gbuf = None, {}
        plan = sram_plan(g, nodes, group, cfg.sram_bytes, lay, seg.staged, keep=bool(seg.wide))
    if plan is None:
        raise CompileError(f"segment {nodes[0].name}..{nodes[-1].name}: {group} image(s) of activations do not "
                           f"fit SRAM of {cfg.sram_bytes:,} B")
    addrs, peak = plan
    x_float = None
    for n in nodes:
        if n.op == "input":
            x_float = input_tensor(ctx, n, lay[n.name].shape)
        elif n.name in esc and n.op not in VIEWS:
            full = lay[n.name]
            t = ctx.activation(n, full.shape, full.dtype, role="scratch")
            t.flat_from = full.flat_from
            dev[n.name] = t
    consts: dict = {}
    dshare = 1.0 / (min(jobs, clusters // per_job) * per_job)     # of DRAM, per cluster

    fin = None      # (indices of the layers it rides along with, SRAM address) of the input prefetch, planned below
    steps: list = []
    kept: frozenset = frozenset()     # a sliced last layer's output, kept in SRAM (share.schedule)
    if peers > 1:
        (addrs, peak), steps, kept = share.schedule(g, nodes, group, lay, cfg, seg.staged, per_job, (addrs, peak),
                                                    gbuf, SHARE_MIN_BYTES)
    steps_of: dict[str, list] = {}
    for stp in steps:
        if stp.stage is not None:
            steps_of.setdefault(stp.node, []).append(stp)
    if not steps_of and not gath:   # nothing worth sharing: independent jobs, no job-wide barriers
        peers, steps = 1, []

    made: dict[str, DevTensor] = {}     # the float output, when the gathered fc writes it

    def capture_loads(jctx, u, ins, y, at: int, run: dict) -> None:
        """Once per layer (or slice) `u`: the DMAs that bring its weights into WRAM at `at`,
        taken from a dry emit, for run["loads"] (to be placed in earlier layers' streams)."""
        if u.name not in run["loads"]:
            jctx.wram_slots = {u.name: (at, False)}
            emit(jctx, u, ins, y, None)
            run["loads"][u.name] = weight_loads(jctx.captured.pop()[1])

    def gathered(jctx, n, x: DevTensor, tasks, hist, run, peer: int, slots: dict) -> dict:
        """Emit the gathered fc of `peer`'s cluster (share.gathers): its images passed to every
        cluster, then its 1/P of the outputs for all the images, the weights loaded GATHER_DEPTH
        steps ahead into their own WRAM slot. Returns the kernel metadata."""
        from mlusim.compiler.kernels.linear import as_conv

        at, row = addrs[f"gather:{n.name}"], device_image_bytes(x) * group
        u = as_conv(wide.share(n, peer, peers), row=True)
        o, k = n.q["weight"].shape
        m, dt = group * peers, dev[n.name].dtype
        # the images as the pixels of one row: a tile of them all, each core a block of the outputs
        xs = DevTensor(f"{n.name}.gathered", at, (1, 1, m, k), x.dtype, None, "sram")
        # the program's output: into SRAM, then dequantized into the float output by the segment
        final = n.name == g.output and not g.extra_outputs and dt != "f32" and \
            ceil(m / cpc) * ceil(o / peers) * (4 + (2 if dt == "i16" else 1)) <= cfg.nram_bytes
        y = DevTensor(f"{n.name}.sram", at + row * peers, (1, 1, m, o), dt, None, "sram") if final else \
            DevTensor(dev[n.name].name, dev[n.name].addr, (1, 1, m, o), dt, None)
        jctx.wram_base, jctx.weights_ready = base, {u.name}
        if tasks is not None and n.name in slots:
            capture_loads(jctx, u, [xs], y, slots[n.name], run)
        jctx.wram_slots = {u.name: (slots[n.name], True)} if n.name in slots else {}
        emit(jctx, u, [xs], y, None)
        _node, st, meta = jctx.captured.pop()
        jctx.weights_ready = set()
        if tasks is not None:
            if n.name in slots:
                spread_back(tasks, hist, run["loads"][u.name], GATHER_DEPTH)
            if final and "output" not in made:
                made["output"] = DevTensor("output", ctx.tensor("output", "output", "f32", lay[n.name].shape).addr,
                                           lay[n.name].shape, "f32")
            c0 = u.attrs["out_slice"][0]
            deq = share.dequantized(y.addr, made["output"].addr, m, o, (c0, c0 + u.shape[1]), dt,
                                    f32_bits(float(np.float32(n.q["scale"]))), n.q.get("zp", 0), cpc) if final else None
            for c, cps in enumerate(share.gather(x.addr, row, at, peer, list(range(peers)), cpc)):
                tasks[c] += cps + (list(st[c]) if c < len(st) else []) + (deq[c] if deq else [])
        return meta

    def gslice(t: DevTensor, img: int) -> DevTensor:
        """Images [img, img + group) of a batch tensor in GDRAM (NHWC: one contiguous run)."""
        return DevTensor(t.name, t.addr + img * device_image_bytes(t), (group,) + tuple(t.shape[1:]), t.dtype,
                         t.flat_from)

    def image_group(jctx, img: int, tasks: list[list] | None, slots: dict, base: int, first: bool, last: bool,
                    pre: dict | None = None, run: dict | None = None, cluster: int = 0, peer: int = 0):
        """Emit every layer for images [img, img + group); returns the layers' kernel metadata.
        pre: WRAM addresses of prefetched weights (prefetch.py); run["spans"]: where in each core's
        stream the layer emitted last sits, to take the next layer's weight loads. cluster: which
        of a wide job's clusters this is (its channel share of every layer); peer: which of the
        clusters sharing weights (share.py)."""
        pre, run = pre or {}, run if run is not None else {"spans": None, "loads": {}}
        local: dict[str, DevTensor] = {}
        metas = []
        window: list[list[tuple[int, int]]] = []       # spans of the layers the next input streams in during

        def place(st, final: bool, meet: bool = False) -> list[tuple[int, int]]:
            """Append a layer's streams, each core's followed by its barrier (`meet`: a job-wide one
            too, for clusters sharing weights, which go step by step together); where they sit."""
            spans = []
            for c in range(cpc):
                at = len(tasks[c])
                if c < len(st):
                    tasks[c].extend(st[c])
                spans.append((at, len(tasks[c])))
                if not final and not seg.wide:
                    tasks[c].append(Instr.make("sync.cluster"))
                if not final and meet:
                    tasks[c].append(Instr.make("sync.all"))
            return spans

        def copies(i: int):
            """Each core's (g2s, s2s) of step i's weights, if it shares them."""
            if not 0 <= i < len(steps) or steps[i].stage is None:
                return None
            stp = steps[i]
            name = wide.share(g.node(stp.node), cluster, seg.wide).name if seg.wide else stp.node
            name += f"[{stp.slice[0]}:{stp.slice[1]}]" if stp.slice else ""
            return share.copies(consts[f"{name}.weight"], stp.nbytes, stp.stage, peer,
                                [p * per_job + cluster for p in range(peers)], cpc)

        def ahead(i: int, st, cut) -> None:
            """Into step i's streams: the copies and passes of the weights staged during it."""
            for j in (i + 1, i + 2):
                if 0 <= j < len(steps) and steps[j].lead == j - i:
                    for c, (g2s, s2s) in enumerate(copies(j) or []):
                        share.ahead(st[c], cut[c], g2s, s2s)

        def met() -> None:
            """For the report: how many job-wide barriers a wide job has met when a step ends."""
            if tasks is not None:
                run.setdefault("all_syncs_at", []).append(sum(i.op.mnemonic == "sync.all" for i in tasks[0]))

        hist: list[list[tuple[int, int]]] = []        # each layer's span per core, in this group
        si = -1         # the step (share.py) being emitted
        first_cl = peer * per_job if peers > 1 else 0    # this job's first cluster in the union task
        if tasks is not None and peers > 1:    # the first two steps' weights: nothing to hide behind
            first_ = [i for i in (0, 1) if i < len(steps) and i - steps[i].lead < 0 and copies(i)]
            for c in range(cpc):
                for i in first_:
                    tasks[c] += share.untokened(copies(i)[c][0])
                tasks[c].append(Instr.make("sync"))
                for i in first_:
                    tasks[c] += share.untokened(copies(i)[c][1])
                tasks[c].append(Instr.make("sync.all"))

        if seg.staged:     # copy the span's inputs into SRAM, a share per core, then meet
            n_cl = seg.wide or 1   # a wide job's clusters each read 1/n from DRAM and pass it on
            sent = []
            for v in external_inputs(g, nodes):
                src, full = gslice(dev[v], img), lay[v]
                y = DevTensor(f"{v}.sram", addrs[v], src.shape, full.dtype, full.flat_from, "sram")
                parts = split_bytes(device_image_bytes(full) * group, cpc * n_cl)
                for c in range(cpc):
                    a, b = parts[cluster * cpc + c]
                    if b > a and tasks is not None:
                        tasks[c].append(Instr.make("dma", dir="g2s", dst=y.addr + a, src=src.addr + a, size=b - a))
                        sent += [(c, y.addr + a, b - a)]
                local[v] = y
            if tasks is not None:
                for c in range(cpc):
                    tasks[c].append(Instr.make("sync.cluster"))
                for k in range(1, n_cl):          # each core's share to every other cluster of the job
                    for c, at, size in sent:
                        tasks[c].append(Instr.make("dma", dir="s2s", dst=at, src=at, size=size,
                                                   dcl=first_cl + (cluster + k) % n_cl + 1))
                for c in range(cpc):
                    if seg.wide:        # every step of a wide job ends at a job-wide barrier
                        tasks[c].append(Instr.make("sync.all"))
        if seg.wide and seg.staged and first:
            met()
        for k, n in enumerate(nodes):
            ins = [local[i] if i in local else gslice(dev[i], img) for i in n.inputs]
            full = lay[n.name]
            shape = (group,) + tuple(full.shape[1:])
            if n.op in VIEWS:
                local[n.name] = DevTensor(ins[0].name, ins[0].addr, shape, ins[0].dtype, full.flat_from, ins[0].space)
                continue
            y = gslice(dev[n.name], img) if n.name in esc and not seg.wide and n.name not in kept else \
                DevTensor(f"{n.name}.sram", addrs[n.name], shape, full.dtype, full.flat_from, "sram")
            local[n.name] = y
            node = wide.share(n, cluster, seg.wide) if seg.wide else n

            def exchange(n=n, y=y, full=full):
                wide.exchange(tasks, cluster, seg.wide, y, 2 if full.dtype == "i16" else 1, full.shape[-1],
                              group * prod(full.shape[1:-1]), gslice(dev[n.name], img) if n.name in esc else None,
                              first_cl)

            for stp in steps_of.get(n.name) or [None]:
                si += 1
                if stp is not None:          # weights staged in SRAM, shared between clusters (share.py)
                    u = wide.slice_node(node, *stp.slice) if stp.slice else node
                    key = n.name + (f"[{stp.slice[0]}:{stp.slice[1]}]" if stp.slice else "")  # any cluster's
                    jctx.wram_slots, jctx.wram_base, jctx.weight_home = {}, base, {u.name: stp.stage}
                    early = key in pre and stp.lead > 1 and run["spans"] is not None and tasks is not None
                    if early:       # its SRAM -> WRAM copies
                        capture_loads(jctx, u, ins, y, pre[key], run)
                    if key in pre:          # (a lead-1 step loads itself, but into its planned slot)
                        jctx.wram_slots = {u.name: (pre[key], early, "prefetched")}
                    emit(jctx, u, ins, y, None)
                    jctx.weight_home = {}
                    _node, st, meta = jctx.captured.pop()
                    metas.append((StepNode(key, u.op), meta))
                    if tasks is not None:
                        if early:           # during the step before, on the Move-DMA
                            for c, loads in enumerate(chunked(run["loads"][u.name])):
                                insert_between_loads(tasks[c], *run["spans"][c], loads)
                            st, cut = [list(st[c]) if c < len(st) else [] for c in range(cpc)], [0] * cpc
                        else:               # at its start, then a barrier before the stage is reused
                            st, cut = zip(*(share.barrier_after_weights(st[c] if c < len(st) else [])
                                            for c in range(cpc)))
                        ahead(si, st, cut)
                        final = last and n is real[-1] and stp is steps_of[n.name][-1]
                        meet = not (seg.wide and stp is steps_of[n.name][-1])     # else: the exchange's
                        run["spans"] = [(a + cut[c], b) for c, (a, b) in enumerate(place(st, final, meet))]
                        hist.append(run["spans"])
                        if seg.wide and stp is steps_of[n.name][-1]:
                            exchange()
                        if n.name in kept and final:         # the kept output, out contiguously
                            out = gslice(dev[n.name], img)
                            for c, (a, b) in enumerate(split_bytes(device_image_bytes(full) * group, cpc)):
                                tasks[c].append(Instr.make("sync.cluster"))
                                if b > a:
                                    tasks[c].append(Instr.make("dma", dir="s2g", dst=out.addr + a, src=y.addr + a,
                                                               size=b - a))
                    continue
                if n is gath:
                    metas.append((n, gathered(jctx, n, ins[0], tasks, hist, run, peer, slots)))
                    continue
                jctx.wram_slots = {node.name: (slots[n.name], not first)} if n.name in slots else {}
                jctx.wram_base = 0 if n.name in slots else base
                # weights that stay in WRAM arrive during the layer before in a job's first group
                warm = n.name in slots and first and run["spans"] is not None and tasks is not None
                early = (n.name in pre or warm) and run["spans"] is not None and tasks is not None
                if early:        # its weight DMAs
                    capture_loads(jctx, node, ins, y, slots[n.name] if warm else pre[n.name], run)
                if n.name in pre:
                    jctx.wram_slots = {node.name: (pre[n.name], early, "prefetched")}
                elif warm:
                    jctx.wram_slots = {node.name: (slots[n.name], True)}
                x_in = gslice(x_float, img) if n.op == "input" else None
                if x_in is not None and fin and not first:       # streamed in during the group before
                    x_in = DevTensor("input.sram", fin[1], x_in.shape, "f32", None, "sram")
                emit(jctx, node, ins, y, x_in)
                _node, st, meta = jctx.captured.pop()
                metas.append((n, meta))
                if tasks is not None:
                    pieces = chunked(run["loads"].get(node.name, []))
                    if warm:            # WARM_DEPTH layers ahead
                        load_back(tasks, hist, pieces, WARM_DEPTH)
                    elif early:         # stream them in during the layer before
                        for c, loads in enumerate(pieces):
                            insert_between_loads(tasks[c], *run["spans"][c], loads)
                    st = [list(st[c]) if c < len(st) else [] for c in range(cpc)]
                    ahead(si, st, [0] * cpc)
                    run["spans"] = place(st, last and n is real[-1], peers > 1 and not seg.wide)
                    hist.append(run["spans"])
                    if seg.wide:
                        exchange()
                    if fin and k in fin[0] and not last:
                        window.append(run["spans"])
            if seg.wide and first:
                met()
        if window and tasks is not None:     # the next group's float input, a share per core
            src = gslice(x_float, img + group).addr
            for c, part in enumerate(split_bytes(device_image_bytes(x_float) * group, cpc)):
                spans = [w[c] for w in window]
                counts = spread_over_layers(tasks[c], spans, input_loads(fin[1], src, part))
                a, b = run["spans"][c]      # the last layer's: the next group's first prefetch goes there
                before = sum(counts[:-1]) if spans[-1] == (a, b) else sum(counts)
                run["spans"][c] = (a + before, b + sum(counts))
        return metas

    # which layers keep their weights in WRAM across a job's image groups: a dry run of one group
    # says each conv's per-task weight block; keep them in layer order while three quarters of WRAM
    # last (the rest holds other layers' blocks and prefetches; at batch 16 this measured as fast as
    # half, or faster, on every zoo model)
    slots: dict[str, int] = {}
    base = 0
    if rounds > 1:
        for n, meta in image_group(JobCtx(ctx, cpc, dshare, consts), 0, None, {}, 0, True, True):
            size = aligned(meta.get("wram_resident_bytes", 0))
            if size and base + size <= cfg.wram_bytes * 3 // 4:
                slots[n.name], base = base, base + size
    if gath is not None:    # the gathered fc's weights get a WRAM slot of their own (one block per core)
        x = lay[gath.inputs[0]]
        try:
            meta = gathered(JobCtx(ctx, cpc, dshare, consts), gath, DevTensor("", addrs[_base(g, gath.inputs[0])],
                            (group,) + tuple(x.shape[1:]), x.dtype, None, "sram"), None, [], {"loads": {}}, 0, {})
        except CompileError:    # no tiling with one weight block per core: per cluster, as before
            gath, meta = None, {}
            if not steps_of:
                peers, steps = 1, []
        size = aligned(meta.get("wram_resident_bytes", 0))
        if size and base + size <= cfg.wram_bytes // 4:
            slots[gath.name], base = base, base + size
    # whose weights stream in during the layer before: a dry run with the real WRAM base
    dry = image_group(JobCtx(ctx, cpc, dshare, consts), 0, None, slots, base, True, True)
    for cl in range(1, per_job if peers > 1 else 1):    # every cluster's weight constants, for share.copies
        image_group(JobCtx(ctx, cpc, dshare, consts), 0, None, slots, base, True, True, cluster=cl)
    pre = plan_prefetch(dry, cfg.wram_bytes, base, set(slots), wrap=rounds > 1) if PREFETCH else {}
    # whether, and where in SRAM, the next group's float input streams in during a group's last layers
    fin = plan_input(g, nodes, group, lay, addrs, cfg.sram_bytes, device_image_bytes(x_float) * group) \
        if PREFETCH and x_float is not None and rounds > 1 and not seg.wide and not seg.staged else None
    streams: list[list] = []
    macs, layers, loads = 0, [], {}
    for j, cl in ((j, cl) for j in range(jobs) for cl in range(per_job)):
        jctx = JobCtx(ctx, cpc, dshare, consts)
        tasks: list[list] = [[] for _ in range(cpc)]
        run: dict = {"spans": None, "loads": loads}
        if j == 0 and cl == 0:
            first_run = run
        for r in range(rounds):
            img = (j * rounds + r) * group
            for n, meta in image_group(jctx, img, tasks, slots, base, r == 0, r == rounds - 1, pre, run, cl, j):
                if j == 0 and cl == 0 and r == rounds - 1:
                    layers.append(f"{n.name}: {meta.get('tiling', meta.get('unit', ''))}".rstrip(": "))
                macs += meta.get("macs", 0)
        streams.extend(tasks)
    dev.update({gath.name: made["output"]} if made else {})     # (lower() adds no dequantize kernel)
    for n in nodes:           # a view of an escaping value, used outside, aliases it
        if n.op in VIEWS and _base(g, n.name) in dev:
            b, full = dev[_base(g, n.name)], lay[n.name]
            dev[n.name] = DevTensor(b.name, b.addr, full.shape, b.dtype, full.flat_from)
    name = f"{nodes[0].name}..{nodes[-1].name}" if len(nodes) > 1 else nodes[0].name
    fused = [f"{n.name}" for n in nodes if n.op not in VIEWS]
    what = f"{jobs} job(s) of " + (f"{rounds} x " if rounds > 1 else "") + f"{group} image(s), " + \
        (f"{per_job} clusters each, every layer's channels split between them" if seg.wide else "one cluster each") + \
        (f", side by side in one UNION{clusters} task sharing {len(steps_of)} layers' weights through SRAM"
         if peers > 1 else "") + (f", {gath.name} split by outputs over the gathered images" if gath else "")
    ctx.kernels.append(_kernel(name, streams, clusters if peers > 1 else per_job, {
        "layer": name, "op": "segment", "fused": fused, "macs": macs, "unit": "mac",
        "tiling": f"{what}; SRAM {peak / 1024:,.0f} KiB of {cfg.sram_bytes // 1024:,} KiB"
                  + (", inputs staged in SRAM" if seg.staged else "")
                  + (f", {len(slots)} layers' weights resident in WRAM ({base / 1024:,.0f} KiB)" if slots else "")
                  + (f", {len(pre)} layers' weights prefetched during the layer before" if pre else "")
                  + (f", next images' input streamed into SRAM during {len(fin[0])} of the last layers"
                     if fin else ""),
        "segment": {"layers": layers, "layer_names": [n.name for n in real    # a sliced layer's slices each end at a barrier
                                   for _ in (steps_of.get(n.name) or [0])] + (["(store output)"] if kept else [])
                                   + (["(dequantize output)"] if made else []),
                    "group": group, "jobs": jobs,
                    "groups_per_job": rounds, "sram_peak": peak,
                    "staged": seg.staged, "wram_resident": sorted(slots), "wram_resident_bytes": base,
                    "prefetched": sorted(pre), "wide": seg.wide, "input_prefetch": bool(fin),
                    "shared_by": peers, "staged_weights": sorted(steps_of),
                    "stored": [n.name for n in real if n.name in esc] if seg.wide else [],
                    "all_syncs_at": first_run.get("all_syncs_at", [])}}))


def _kernel(name, streams, clusters_per_job, meta):
    return Kernel(name, f"union{clusters_per_job}", len(streams), streams, list(range(len(streams))), meta)
