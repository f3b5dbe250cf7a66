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

Emitting one segment, top to bottom (`lower_segment`):

    segments.place_segment   -> SegmentPlan: jobs, groups, weight sharing, SRAM addresses
    SegmentEmitter.plan_wram -> which layers keep weights in WRAM, which prefetch (dry emits)
    SegmentEmitter.emit_job  -> per job, per image group (`image_group`), per layer or step:
        stage_inputs    the span's inputs GDRAM -> SRAM (seg.staged; wide: split over clusters)
        shared_step     a layer whose weights come staged in SRAM, shared by the jobs (share.py)
        gathered_fc     the last fc split by outputs over every cluster's images (share.gathers)
        plain_layer     any other layer; resident / prefetched weights via its WramSlot
        place           a layer's streams into each core's, then its barriers (wide: exchange)
        stream_input    the next group's float input, during the last layers (prefetch.plan_input)
    SegmentEmitter.kernel    -> the kernel, its SegmentMeta saying where each step ends (for the report)

Such a program needs whole clusters: it is compiled for a core count (multiple of the cluster size)
and refuses fewer cores with the engine's UNION error.
"""

from dataclasses import dataclass, field
from math import ceil, prod
from typing import NamedTuple

import numpy as np

from mlusim.compiler import share, wide
from mlusim.compiler.context import DevTensor, KernelCtx, WramSlot
from mlusim.compiler.kernels.conv import weight_loads as conv_weight_loads
from mlusim.compiler.kernels.linear import as_conv
from mlusim.compiler.layout import input_tensor, space_to_depth
from mlusim.compiler.liveness import VIEWS, aligned, base_value, device_image_bytes, external_inputs, split_bytes
from mlusim.compiler.options import FusionOptions
from mlusim.compiler.prefetch import (chunked, input_loads, insert_between_loads, load_back, plan_input, plan_prefetch,
                                      spread_back, spread_over_layers, weight_loads)
from mlusim.compiler.segments import Segment, SegmentPlan, place_segment
from mlusim.errors import CompileError
from mlusim.isa.encoding import Instr
from mlusim.isa.fields import f32_bits
from mlusim.program import Kernel
from mlusim.segment_meta import DEQUANTIZE_OUTPUT, STAGE_INPUTS, STORE_OUTPUT, SegmentMeta, StepEnd


class StepNode(NamedTuple):
    """What a step's kernel metadata is filed under: its layer's name, plus its slice."""
    name: str
    op: str


@dataclass(kw_only=True)
class JobCtx(KernelCtx):
    """What a kernel generator sees while emitting one job of a segment: a cluster's cores as its
    tasks, a share of DRAM, constants shared by every job, kernels captured instead of appended."""

    parent: KernelCtx
    consts: dict
    captured: list = field(default_factory=list)

    @property
    def graph(self):
        return self.parent.graph

    def const(self, name, arr) -> int:
        return self.const_of(name, lambda: arr)

    def const_of(self, name, make) -> int:
        if name not in self.consts:
            self.consts[name] = self.parent.const(name, make())
        return self.consts[name]

    def tensor(self, *a, **kw):
        return self.parent.tensor(*a, **kw)

    def kernel(self, node, streams, **meta) -> None:
        self.captured.append((node, streams, meta))


@dataclass
class Run:
    """What carries over from one layer to the next while a job's streams are built."""
    loads: dict                                   # layer (or slice) -> its weight DMAs, from a dry emit
    spans: list | None = None                     # per core, (start, end) of the layer emitted last
    ends: list | None = None                      # job 0 only: (step, the barrier it ends at, or None)
    last_barrier: object = None                   # ... the barrier the step before ended at


@dataclass
class Group:
    """One image group of one job being emitted (tasks None: a dry emit that only collects metadata)."""
    jctx: JobCtx
    img: int
    tasks: list | None
    slots: dict                                   # layer -> WRAM address of its resident weights
    base: int                                     # where other layers' WRAM buffers start
    first: bool                                   # the job's first / last image group
    last: bool
    pre: dict                                     # layer (or slice) -> WRAM address of its prefetched weights
    run: Run
    cluster: int = 0                              # which of a wide job's clusters (its channel share)
    peer: int = 0                                 # which of the clusters sharing weights (share.py)
    local: dict = field(default_factory=dict)     # value -> where this group reads it
    metas: list = field(default_factory=list)     # (node, kernel metadata) per layer or step
    window: list = field(default_factory=list)    # spans of the layers the next input streams in during
    hist: list = field(default_factory=list)      # each layer's span per core
    si: int = -1                                  # the step (share.py) being emitted

    @property
    def emitting(self) -> bool:
        return self.tasks is not None


def lower_segment(ctx, seg: Segment, dev: dict, lay: dict, emit, opts: FusionOptions, on_job=None) -> None:
    """Emit `seg` as one UNION1 kernel (UNIONn when wide); `dev` gains the GDRAM tensors of its escaping
    values. `emit(ctx, node, ins, y, x)` is lower._lower_node. `on_job(fraction)` after each job's
    code (a compile's progress: a big segment takes seconds)."""
    sp = place_segment(ctx.graph, ctx.cfg, ctx.tasks, seg, lay, opts)
    em = SegmentEmitter(ctx, sp, dev, lay, emit, opts)
    em.plan_wram()
    streams, layers, ends, macs = [], [], [], 0
    run = Run({}, ends=[])
    for j in range(sp.jobs):
        for cl in range(sp.per_job):
            tasks, metas = em.emit_job(j, cl, run if j == 0 and cl == 0 else Run(run.loads))
            streams.extend(tasks)
            if j == 0 and cl == 0:
                layers = [f"{n.name}: {m.get('tiling', m.get('unit', ''))}".rstrip(": ") for n, m in metas[-1]]
                ends = step_ends(tasks[0], run.ends)
            macs += sum(m.get("macs", 0) for ms in metas for _n, m in ms)
            if on_job is not None:
                on_job((j * sp.per_job + cl + 1) / (sp.jobs * sp.per_job))
    em.finish_dev()
    ctx.kernels.append(em.kernel(streams, layers, macs, ends))


def step_ends(stream: list, marks: list) -> list[StepEnd]:
    """Each marked step's end as the index of its barrier's release among the stream's barriers of
    that kind (the engine records the releases of the job's first cluster: this stream's); the
    last step ends with the job."""
    index, counts = {}, {"sync.cluster": 0, "sync.all": 0}
    for ins in stream:
        m = ins.op.mnemonic
        if m in counts:
            index[id(ins)] = counts[m]
            counts[m] += 1
    ends = [StepEnd(name, "end") if bar is None else
            StepEnd(name, "all" if bar.op.mnemonic == "sync.all" else "cluster", index[id(bar)]) for name, bar in marks]
    return ends[:-1] + [StepEnd(ends[-1].name, "end")] if ends else []     # the last step runs to the job's end


class SegmentEmitter:
    """Emits one segment from its SegmentPlan; each optimisation is one method (see the module doc)."""

    def __init__(self, ctx, sp: SegmentPlan, dev: dict, lay: dict, emit, opts: FusionOptions):
        self.ctx, self.sp, self.dev, self.lay, self.emit, self.opts = ctx, sp, dev, lay, emit, opts
        self.g, self.cfg, self.seg = ctx.graph, ctx.cfg, sp.seg
        self.cpc = self.cfg.chip.cores_per_cluster
        self.consts: dict = {}
        self.made: dict[str, DevTensor] = {}      # the float output, when the gathered fc writes it
        self.slots: dict[str, int] = {}           # layer -> WRAM address of weights resident across groups
        self.base = 0                             # where other layers' WRAM buffers start
        self.pre: dict[str, int] = {}             # layer (or slice) -> WRAM address it is prefetched to
        self.fin = None     # (indices of the layers it rides along with, SRAM address) of the input prefetch
        self.chunks: dict[str, tuple[list, list]] = {}   # layer -> (its run.loads, those chunked)
        self.copied: dict[tuple[int, int, int], list | None] = {}   # (step, peer, cluster) -> copies()
        self.x_float = None
        for n in sp.nodes:
            if n.op == "input":
                self.x_float = input_tensor(ctx, n, lay[n.name].shape)
            elif n.name in sp.escaping and n.op not in VIEWS:
                full = lay[n.name]
                t = ctx.activation(n, full.shape, full.dtype, role="scratch")
                t.flat_from = full.flat_from
                dev[n.name] = t

    def job_ctx(self, dry: bool = False) -> JobCtx:
        """dry: for a Group without tasks (only its layers' metadata is read)."""
        return JobCtx(cfg=self.cfg, tasks=self.cpc, dram_share=self.sp.dram_share, prefetch=self.opts.prefetch,
                      parent=self.ctx, consts=self.consts, streams_memo=self.ctx.streams_memo, dry=dry)

    def dry(self, slots: dict, base: int, cluster: int = 0) -> list:
        """One image group emitted without streams: every layer's kernel metadata."""
        return self.image_group(Group(self.job_ctx(dry=True), 0, None, slots, base, True, True, {}, Run({}), cluster))

    # ---- WRAM placement: resident weights, the gathered fc's slot, prefetch, the input prefetch -----
    def plan_wram(self) -> None:
        """Which layers keep their weights in WRAM across a job's image groups: a dry run of one group
        says each conv's per-task weight block; keep them in layer order while three quarters of WRAM
        last (the rest holds other layers' blocks and prefetches; at batch 16 this measured as fast as
        half, or faster, on every zoo model). Then the gathered fc's slot, and, from a dry run with
        the real WRAM base, whose weights stream in during the layer before."""
        sp, cfg = self.sp, self.cfg
        if sp.rounds > 1:
            for n, meta in self.dry({}, 0):
                size = aligned(meta.get("wram_resident_bytes", 0))
                if size and self.base + size <= cfg.wram_bytes * 3 // 4:
                    self.slots[n.name], self.base = self.base, self.base + size
        if sp.gathered is not None:
            self.gather_slot()
        dry = self.dry(self.slots, self.base)
        for cl in range(1, sp.per_job if sp.peers > 1 else 1):    # every cluster's weight constants, for share.copies
            self.dry(self.slots, self.base, cl)
        if self.opts.prefetch:
            self.pre = plan_prefetch(dry, cfg.wram_bytes, self.base, set(self.slots), wrap=sp.rounds > 1)
        # whether, and where in SRAM, the next group's float input streams in during a group's last layers
        if self.opts.prefetch and self.x_float is not None and sp.rounds > 1 and not self.seg.wide \
                and not self.seg.staged:
            self.fin = plan_input(self.g, sp.nodes, sp.group, self.lay, sp.addrs, cfg.sram_bytes,
                                  device_image_bytes(self.x_float) * sp.group)

    def gather_slot(self) -> None:
        """The gathered fc's weights get a WRAM slot of their own (one block per core), or, with no
        tiling of one weight block per core, the fc goes back to per cluster."""
        sp, gath = self.sp, self.sp.gathered
        x = self.lay[gath.inputs[0]]
        xs = DevTensor("", sp.addrs[base_value(self.g, gath.inputs[0])], (sp.group,) + tuple(x.shape[1:]), x.dtype,
                       None, "sram")
        try:
            dry = Group(self.job_ctx(dry=True), 0, None, {}, self.base, True, True, {}, Run({}))
            meta = self.gathered_fc(dry, gath, xs)
        except CompileError:
            sp.gathered, meta = None, {}
            if not sp.steps_of:
                sp.peers, sp.steps = 1, []
        size = aligned(meta.get("wram_resident_bytes", 0))
        if size and self.base + size <= self.cfg.wram_bytes // 4:
            self.slots[gath.name], self.base = self.base, self.base + size

    # ---- one job ---------------------------------------------------------------------------------------
    def emit_job(self, j: int, cl: int, run: Run) -> tuple[list[list], list]:
        """Job j's streams on its cluster `cl` (of a wide job): its image groups in turn, one stream
        per core; and each group's layer metadata."""
        sp = self.sp
        jctx = self.job_ctx()
        tasks: list[list] = [[] for _ in range(self.cpc)]
        metas = []
        for r in range(sp.rounds):
            img = (j * sp.rounds + r) * sp.group
            metas.append(self.image_group(Group(jctx, img, tasks, self.slots, self.base, r == 0, r == sp.rounds - 1,
                                                self.pre, run, cl, j)))
        return tasks, metas

    def gslice(self, t: DevTensor, img: int) -> DevTensor:
        """Images [img, img + group) of a batch tensor in GDRAM (NHWC: one contiguous run)."""
        return DevTensor(t.name, t.addr + img * device_image_bytes(t), (self.sp.group,) + tuple(t.shape[1:]), t.dtype,
                         t.flat_from)

    def image_group(self, gr: Group) -> list:
        """Emit every layer for images [img, img + group); returns the layers' kernel metadata."""
        sp, seg = self.sp, self.seg
        if gr.emitting and sp.peers > 1:
            self.first_copies(gr)
        if seg.staged:
            self.stage_inputs(gr)
        for k, n in enumerate(sp.nodes):
            ins = [gr.local[i] if i in gr.local else self.gslice(self.dev[i], gr.img) for i in n.inputs]
            full = self.lay[n.name]
            shape = (sp.group,) + tuple(full.shape[1:])
            if n.op in VIEWS:
                gr.local[n.name] = DevTensor(ins[0].name, ins[0].addr, shape, ins[0].dtype, full.flat_from,
                                             ins[0].space)
                continue
            y = self.gslice(self.dev[n.name], gr.img) \
                if n.name in sp.escaping and not seg.wide and n.name not in sp.kept else \
                DevTensor(f"{n.name}.sram", sp.addrs[n.name], shape, full.dtype, full.flat_from, "sram")
            gr.local[n.name] = y
            node = wide.part(n, gr.cluster, seg.wide) if seg.wide else n
            for stp in sp.steps_of.get(n.name) or [None]:
                gr.si += 1
                if stp is not None:          # weights staged in SRAM, shared between clusters (share.py)
                    self.shared_step(gr, n, node, stp, ins, y)
                elif n is sp.gathered:
                    gr.metas.append((n, self.gathered_fc(gr, n, ins[0])))
                else:
                    self.plain_layer(gr, k, n, node, ins, y)
        if gr.window and gr.emitting:
            self.stream_input(gr)
        return gr.metas

    # ---- placing a layer's streams ---------------------------------------------------------------------
    def place(self, gr: Group, st, final: bool, meet: bool = False) -> list[tuple[int, int]]:
        """Append a layer's streams, each core's followed by its barrier (`meet`: a job-wide one
        too, for clusters sharing weights, which go step by step together); where they sit."""
        spans = []
        for c in range(self.cpc):
            at = len(gr.tasks[c])
            if c < len(st):
                gr.tasks[c].extend(st[c])
            spans.append((at, len(gr.tasks[c])))
            if not final and not self.seg.wide:
                gr.tasks[c].append(Instr.make("sync.cluster"))
            if not final and meet:
                gr.tasks[c].append(Instr.make("sync.all"))
        return spans

    def mark(self, gr: Group, name: str) -> None:
        """For the report (job 0 only): step `name` ends at the last barrier its first core met since
        the step before (sync.all in a wide segment, whose steps end job-wide; else sync.cluster),
        or, with none, at the job's end."""
        if gr.run.ends is None or not gr.emitting:
            return
        kind, bar = "sync.all" if self.seg.wide else "sync.cluster", None
        for ins in reversed(gr.tasks[0]):
            if ins is gr.run.last_barrier:
                break
            if ins.op.mnemonic == kind:
                bar = gr.run.last_barrier = ins
                break
        gr.run.ends.append((name, bar))

    def exchange(self, gr: Group, n, y, full) -> None:
        """A wide job's step end: the cluster's channel slice to every other cluster (wide.exchange)."""
        seg, sp = self.seg, self.sp
        wide.exchange(gr.tasks, gr.cluster, seg.wide, y, 2 if full.dtype == "i16" else 1, full.shape[-1],
                      sp.group * prod(full.shape[1:-1]),
                      self.gslice(self.dev[n.name], gr.img) if n.name in sp.escaping else None, self.first_cl(gr))

    def first_cl(self, gr: Group) -> int:
        """This job's first cluster in the union task."""
        return gr.peer * self.sp.per_job if self.sp.peers > 1 else 0

    def capture_loads(self, gr: Group, u, ins, y, at: int) -> None:
        """Once per layer (or slice) `u`: the DMAs that bring its weights into WRAM at `at`,
        taken from a dry emit, for run.loads (to be placed in earlier layers' streams)."""
        if u.name not in gr.run.loads:
            gr.jctx.wram_slots = {u.name: WramSlot(at, False)}
            s2d = space_to_depth(self.g)
            if u.op == "conv2d" and not (s2d and s2d["conv"] == u.name):     # without emitting the rest
                res = ins[1] if u.attrs.get("residual") else None
                gr.run.loads[u.name] = conv_weight_loads(gr.jctx, u, ins[0], y, res)
                return
            self.emit(gr.jctx, u, ins, y, None)
            gr.run.loads[u.name] = weight_loads(gr.jctx.captured.pop()[1])

    def pieces(self, gr: Group, name: str) -> list[list[Instr]]:
        """Each core's weight loads of layer `name` (run.loads) cut into prefetch-sized DMAs, cut
        once: every job and image group places the same pieces (an Instr is never changed once
        made, so streams may share it)."""
        loads = gr.run.loads.get(name)
        if loads is None:
            return []
        if name not in self.chunks or self.chunks[name][0] is not loads:
            self.chunks[name] = (loads, chunked(loads))
        return self.chunks[name][1]

    # ---- input staging ----------------------------------------------------------------------------------
    def stage_inputs(self, gr: Group) -> None:
        """Copy the span's inputs into SRAM, a share per core, then meet. A wide job's clusters each
        read 1/n from DRAM and pass it on."""
        sp, seg, cpc, tasks = self.sp, self.seg, self.cpc, gr.tasks
        n_cl = seg.wide or 1
        sent = []
        for v in external_inputs(self.g, sp.nodes):
            src, full = self.gslice(self.dev[v], gr.img), self.lay[v]
            y = DevTensor(f"{v}.sram", sp.addrs[v], src.shape, full.dtype, full.flat_from, "sram")
            parts = split_bytes(device_image_bytes(full) * sp.group, cpc * n_cl)
            for c in range(cpc):
                a, b = parts[gr.cluster * cpc + c]
                if b > a and tasks is not None:
                    tasks[c].append(Instr.make("dma", dir="g2s", dst=y.addr + a, src=src.addr + a, size=b - a))
                    sent += [(c, y.addr + a, b - a)]
            gr.local[v] = y
        if tasks is None:
            return
        for c in range(cpc):
            tasks[c].append(Instr.make("sync.cluster"))
        for k in range(1, n_cl):          # each core's share to every other cluster of the job
            for c, at, size in sent:
                tasks[c].append(Instr.make("dma", dir="s2s", dst=at, src=at, size=size,
                                           dcl=self.first_cl(gr) + (gr.cluster + k) % n_cl + 1))
        for c in range(cpc):
            if seg.wide:        # every step of a wide job ends at a job-wide barrier
                tasks[c].append(Instr.make("sync.all"))
        self.mark(gr, STAGE_INPUTS)

    # ---- weights shared between clusters (share.py) -----------------------------------------------------
    def copies(self, gr: Group, i: int):
        """Each core's (g2s, s2s) of step i's weights, if it shares them; made once per step and
        cluster (every image group places the same copies, which nothing changes)."""
        key = (i, gr.peer, gr.cluster)
        if key not in self.copied:
            self.copied[key] = self.make_copies(gr, i)
        return self.copied[key]

    def make_copies(self, gr: Group, i: int):
        steps, seg, sp = self.sp.steps, self.seg, self.sp
        if not 0 <= i < len(steps) or steps[i].stage is None:
            return None
        stp = steps[i]
        name = wide.part(self.g.node(stp.node), gr.cluster, seg.wide).name if seg.wide else stp.node
        name += f"[{stp.slice[0]}:{stp.slice[1]}]" if stp.slice else ""
        return share.copies(self.consts[f"{name}.weight"], stp.nbytes, stp.stage, gr.peer,
                            [p * sp.per_job + gr.cluster for p in range(sp.peers)], self.cpc)

    def ahead(self, gr: Group, i: int, st, cut) -> None:
        """Into step i's streams: the copies and passes of the weights staged during it."""
        steps = self.sp.steps
        for j in (i + 1, i + 2):
            if 0 <= j < len(steps) and steps[j].lead == j - i:
                for c, (g2s, s2s) in enumerate(self.copies(gr, j) or []):
                    share.ahead(st[c], cut[c], g2s, s2s)

    def first_copies(self, gr: Group) -> None:
        """The first two steps' weights at the group's start: nothing to hide them behind."""
        steps = self.sp.steps
        first_ = [i for i in (0, 1) if i < len(steps) and i - steps[i].lead < 0 and self.copies(gr, i)]
        for c in range(self.cpc):
            for i in first_:
                gr.tasks[c] += share.untokened(self.copies(gr, i)[c][0])
            gr.tasks[c].append(Instr.make("sync"))
            for i in first_:
                gr.tasks[c] += share.untokened(self.copies(gr, i)[c][1])
            gr.tasks[c].append(Instr.make("sync.all"))

    def shared_step(self, gr: Group, n, node, stp, ins, y) -> None:
        """A layer (or slice) whose weights are staged in SRAM: SRAM -> WRAM copies during the step
        before when prefetched (lead 2), else at its start and a barrier before the stage is reused."""
        sp, seg, cpc, jctx = self.sp, self.seg, self.cpc, gr.jctx
        u = wide.slice_node(node, *stp.slice) if stp.slice else node
        key = n.name + (f"[{stp.slice[0]}:{stp.slice[1]}]" if stp.slice else "")  # any cluster's
        jctx.wram_slots, jctx.wram_base, jctx.weight_home = {}, gr.base, {u.name: stp.stage}
        early = key in gr.pre and stp.lead > 1 and gr.run.spans is not None and gr.emitting
        if early:       # its SRAM -> WRAM copies
            self.capture_loads(gr, u, ins, y, gr.pre[key])
        if key in gr.pre:          # (a lead-1 step loads itself, but into its planned slot)
            jctx.wram_slots = {u.name: WramSlot(gr.pre[key], early, True)}
        self.emit(jctx, u, ins, y, None)
        jctx.weight_home = {}
        _node, st, meta = jctx.captured.pop()
        gr.metas.append((StepNode(key, u.op), meta))
        if not gr.emitting:
            return
        if early:           # during the step before, on the Move-DMA
            for c, loads in enumerate(self.pieces(gr, u.name)):
                insert_between_loads(gr.tasks[c], *gr.run.spans[c], loads)
            st, cut = [list(st[c]) if c < len(st) else [] for c in range(cpc)], [0] * cpc
        else:               # at its start, then a barrier before the stage is reused
            st, cut = zip(*(share.barrier_after_weights(st[c] if c < len(st) else []) for c in range(cpc)))
        self.ahead(gr, gr.si, st, cut)
        last_step = stp is sp.steps_of[n.name][-1]
        final = gr.last and n is sp.real[-1] and last_step
        meet = not (seg.wide and last_step)     # else: the exchange's
        gr.run.spans = [(a + cut[c], b) for c, (a, b) in enumerate(self.place(gr, st, final, meet))]
        gr.hist.append(gr.run.spans)
        if seg.wide and last_step:
            self.exchange(gr, n, y, self.lay[n.name])
        if n.name in sp.kept and final:         # the kept output, out contiguously
            out = self.gslice(self.dev[n.name], gr.img)
            for c, (a, b) in enumerate(split_bytes(device_image_bytes(self.lay[n.name]) * sp.group, cpc)):
                gr.tasks[c].append(Instr.make("sync.cluster"))
                if b > a:
                    gr.tasks[c].append(Instr.make("dma", dir="s2g", dst=out.addr + a, src=y.addr + a, size=b - a))
        self.mark(gr, n.name)
        if n.name in sp.kept and final:
            self.mark(gr, STORE_OUTPUT)

    # ---- the gathered fc (share.gathers) ----------------------------------------------------------------
    def gathered_fc(self, gr: Group, n, x: DevTensor) -> dict:
        """Emit the gathered fc of `gr.peer`'s cluster: its images passed to every cluster, then its
        1/P of the outputs for all the images, the weights loaded opts.gather_depth steps ahead into
        their own WRAM slot. Returns the kernel metadata."""
        sp, cfg, cpc, jctx, tasks = self.sp, self.cfg, self.cpc, gr.jctx, gr.tasks
        peers, group, slots = sp.peers, sp.group, gr.slots
        at, row = sp.addrs[f"gather:{n.name}"], device_image_bytes(x) * group
        u = as_conv(wide.part(n, gr.peer, peers), row=True)
        o, k = n.q["weight"].shape
        m, dt = group * peers, self.dev[n.name].dtype
        # the images as the pixels of one row: a tile of them all, each core a block of the outputs
        xs = DevTensor(f"{n.name}.gathered", at, (1, 1, m, k), x.dtype, None, "sram")
        # the program's output: into SRAM, then dequantized into the float output by the segment
        final = n.name == self.g.output and not self.g.extra_outputs and dt != "f32" and \
            ceil(m / cpc) * ceil(o / peers) * (4 + (2 if dt == "i16" else 1)) <= cfg.nram_bytes
        y = DevTensor(f"{n.name}.sram", at + row * peers, (1, 1, m, o), dt, None, "sram") if final else \
            DevTensor(self.dev[n.name].name, self.dev[n.name].addr, (1, 1, m, o), dt, None)
        jctx.wram_base, jctx.weights_ready = self.base, {u.name}
        if tasks is not None and n.name in slots:
            self.capture_loads(gr, u, [xs], y, slots[n.name])
        jctx.wram_slots = {u.name: WramSlot(slots[n.name], True)} if n.name in slots else {}
        self.emit(jctx, u, [xs], y, None)
        _node, st, meta = jctx.captured.pop()
        jctx.weights_ready = set()
        if tasks is None:
            return meta
        if n.name in slots:
            spread_back(tasks, gr.hist, gr.run.loads[u.name], self.opts.gather_depth)
        if final and "output" not in self.made:
            shape = self.lay[n.name].shape
            self.made["output"] = DevTensor("output", self.ctx.tensor("output", "output", "f32", shape).addr, shape, "f32")
        c0 = u.attrs["out_slice"][0]
        deq = share.dequantized(y.addr, self.made["output"].addr, m, o, (c0, c0 + u.shape[1]), dt,
                                f32_bits(float(np.float32(n.q["scale"]))), n.q.get("zp", 0), cpc) if final else None
        for c, cps in enumerate(share.gather(x.addr, row, at, gr.peer, list(range(peers)), cpc)):
            tasks[c] += cps + (list(st[c]) if c < len(st) else []) + (deq[c] if deq else [])
        self.mark(gr, n.name)
        if final:
            self.mark(gr, DEQUANTIZE_OUTPUT)
        return meta

    # ---- any other layer: resident or prefetched weights ------------------------------------------------
    def plain_layer(self, gr: Group, k: int, n, node, ins, y) -> None:
        """A layer with its own weight loads: kept in WRAM across groups (`slots`; in a job's first
        group loaded opts.warm_depth layers ahead), prefetched during the layer before (`pre`), or
        loaded as its tiler plans."""
        sp, jctx, cpc = self.sp, gr.jctx, self.cpc
        jctx.wram_slots = {node.name: WramSlot(gr.slots[n.name], not gr.first)} if n.name in gr.slots else {}
        jctx.wram_base = 0 if n.name in gr.slots else gr.base
        # weights that stay in WRAM arrive during the layer before in a job's first group
        warm = n.name in gr.slots and gr.first and gr.run.spans is not None and gr.emitting
        early = (n.name in gr.pre or warm) and gr.run.spans is not None and gr.emitting
        if early:        # its weight DMAs
            self.capture_loads(gr, node, ins, y, gr.slots[n.name] if warm else gr.pre[n.name])
        if n.name in gr.pre:
            jctx.wram_slots = {node.name: WramSlot(gr.pre[n.name], early, True)}
        elif warm:
            jctx.wram_slots = {node.name: WramSlot(gr.slots[n.name], True)}
        x_in = self.gslice(self.x_float, gr.img) if n.op == "input" else None
        if x_in is not None and self.fin and not gr.first:       # streamed in during the group before
            x_in = DevTensor("input.sram", self.fin[1], x_in.shape, "f32", None, "sram")
        self.emit(jctx, node, ins, y, x_in)
        _node, st, meta = jctx.captured.pop()
        gr.metas.append((n, meta))
        if not gr.emitting:
            return
        pieces = self.pieces(gr, node.name)
        if warm:            # opts.warm_depth layers ahead
            load_back(gr.tasks, gr.hist, pieces, self.opts.warm_depth)
        elif early:         # stream them in during the layer before
            for c, loads in enumerate(pieces):
                insert_between_loads(gr.tasks[c], *gr.run.spans[c], loads)
        st = [list(st[c]) if c < len(st) else [] for c in range(cpc)]
        self.ahead(gr, gr.si, st, [0] * cpc)
        gr.run.spans = self.place(gr, st, gr.last and n is sp.real[-1], sp.peers > 1 and not self.seg.wide)
        gr.hist.append(gr.run.spans)
        if self.seg.wide:
            self.exchange(gr, n, y, self.lay[n.name])
        self.mark(gr, n.name)
        if self.fin and k in self.fin[0] and not gr.last:
            gr.window.append(gr.run.spans)

    # ---- the next group's float input (prefetch.plan_input) ---------------------------------------------
    def stream_input(self, gr: Group) -> None:
        """The next group's float input, a share per core, spread over the window's layers."""
        src = self.gslice(self.x_float, gr.img + self.sp.group).addr
        for c, part in enumerate(split_bytes(device_image_bytes(self.x_float) * self.sp.group, self.cpc)):
            spans = [w[c] for w in gr.window]
            counts = spread_over_layers(gr.tasks[c], spans, input_loads(self.fin[1], src, part))
            a, b = gr.run.spans[c]      # the last layer's: the next group's first prefetch goes there
            before = sum(counts[:-1]) if spans[-1] == (a, b) else sum(counts)
            gr.run.spans[c] = (a + before, b + sum(counts))

    # ---- the kernel ------------------------------------------------------------------------------------
    def finish_dev(self) -> None:
        """The gathered fc's float output, and views of escaping values used outside, into `dev`."""
        g, dev = self.g, self.dev
        dev.update({self.sp.gathered.name: self.made["output"]} if self.made else {})  # (lower() adds no dequantize)
        for n in self.sp.nodes:
            if n.op in VIEWS and base_value(g, n.name) in dev:
                b, full = dev[base_value(g, n.name)], self.lay[n.name]
                dev[n.name] = DevTensor(b.name, b.addr, full.shape, b.dtype, full.flat_from)

    def kernel(self, streams: list, layers: list, macs: int, ends: list[StepEnd]) -> Kernel:
        sp, seg, cfg = self.sp, self.seg, self.cfg
        nodes, gath, peers = sp.nodes, sp.gathered, sp.peers
        name = f"{nodes[0].name}..{nodes[-1].name}" if len(nodes) > 1 else nodes[0].name
        fused = [f"{n.name}" for n in nodes if n.op not in VIEWS]
        what = f"{sp.jobs} job(s) of " + (f"{sp.rounds} x " if sp.rounds > 1 else "") + f"{sp.group} image(s), " + \
            (f"{sp.per_job} clusters each, every layer's channels split between them" if seg.wide
             else "one cluster each") + \
            (f", side by side in one UNION{sp.clusters} task sharing {len(sp.steps_of)} layers' weights through SRAM"
             if peers > 1 else "") + (f", {gath.name} split by outputs over the gathered images" if gath else "")
        tiling = f"{what}; SRAM {sp.peak / 1024:,.0f} KiB of {cfg.sram_bytes // 1024:,} KiB" \
            + (", inputs staged in SRAM" if seg.staged else "") \
            + (f", {len(self.slots)} layers' weights resident in WRAM ({self.base / 1024:,.0f} KiB)"
               if self.slots else "") \
            + (f", {len(self.pre)} layers' weights prefetched during the layer before" if self.pre else "") \
            + (f", next images' input streamed into SRAM during {len(self.fin[0])} of the last layers"
               if self.fin else "")
        seg_meta = SegmentMeta(
            layers=layers, group=sp.group, jobs=sp.jobs, groups_per_job=sp.rounds, sram_peak=sp.peak,
            layer_names=[n.name for n in sp.real for _ in (sp.steps_of.get(n.name) or [0])]   # a slice: a step each
            + ([STORE_OUTPUT] if sp.kept else []) + ([DEQUANTIZE_OUTPUT] if self.made else []),
            staged=seg.staged, wide=seg.wide, shared_by=peers, input_prefetch=bool(self.fin),
            wram_resident=sorted(self.slots), wram_resident_bytes=self.base, prefetched=sorted(self.pre),
            staged_weights=sorted(sp.steps_of), stored=[n.name for n in sp.real if n.name in sp.escaping]
            if seg.wide else [], ends=ends)
        meta = {"layer": name, "op": "segment", "fused": fused, "macs": macs, "unit": "mac", "tiling": tiling,
                "segment": seg_meta.to_dict()}
        clusters = sp.clusters if peers > 1 else sp.per_job
        return Kernel(name, f"union{clusters}", len(streams), streams, list(range(len(streams))), meta)
