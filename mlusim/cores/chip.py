"""The chip: clusters of cores around one DRAM, and the dispatcher that runs kernels on them.

                 +---------------- DRAM (one Link, shared by every flow) ----------------+
                 |                                                                        |
        cluster 0: SRAM (Link) -- core0 core1 core2 core3      cluster 1: ... core4..7   ...
Kernels run one after another; a BLOCK kernel's tasks go to whichever core frees up first, a
UNIONn kernel's task groups go to n whole clusters at a time. Barriers, dependency tokens and
queue slots are the only things a core ever waits on, so when the event queue runs dry with work
left the machine is deadlocked, and we say who waits for what.
"""
from __future__ import annotations

import bisect
import time
from dataclasses import dataclass, field

import simpy

from mlusim.cores.clock import Clock
from mlusim.cores.core import PREPARED_MAX, Core, describe_state
from mlusim.cores.datapath import Forked, Inline
from mlusim.cores.interconnect import Fabric, Link
from mlusim.cores.memory import Memory
from mlusim.cores.stats import CoreCounters, KernelRecord, snapshot
from mlusim.cores.task import Barrier, TaskContext
from mlusim.cores.tracelog import TraceLog
from mlusim.errors import SimulationError
from mlusim.isa.deferred import DeferredGemms
from mlusim.isa.fields import DTYPES
from mlusim.program import Kernel


@dataclass
class Cluster:
    id: int
    sram: Memory
    sram_link: Link
    cores: list[Core] = field(default_factory=list)


INT8_DTYPES = (DTYPES.index("i8"), DTYPES.index("u8"))    # MAC operand codes on the int8 lanes
WALL_CHECK_EVERY = 1 << 14     # instructions between looks at the clock (~0.1 s at ~7 us each)


class Chip:
    def __init__(self, cfg, gdram_bytes: int, numerics: bool = True, max_instructions: int = 20_000_000,
                 trace: bool = False, ncores: int | None = None, max_seconds: float | None = None,
                 trace_limit: int = 1 << 62, shared_memory: bool = False):
        self.cfg = cfg
        self.env = Clock()
        self.numerics = numerics
        self.gemms = DeferredGemms()    # conv products computed when first touched, stacked
        # where completed instructions' semantics run (cores/datapath.py): here unless a forked
        # child is given them (`shared_memory`: memories it can write for us)
        self.datapath: Inline | Forked = Inline(self.gemms)
        self.shared_memory = shared_memory
        self.fabric = Fabric(self.env)
        self.dram = Link("dram", cfg.dram_bytes_per_cycle)
        self.gdram = Memory("gdram", gdram_bytes, shared_memory)
        # prepared instructions (Core._prepare) by content, shared by every core and kernel
        self.prepared: dict = {}
        self.prepared_ins: dict = {}   # id(Instr) -> (Instr, the same), for those with no base register
        self.hazards: dict = {}        # Core._hazard's memo: pairs of prepared touches -> overlap?
        self.dma_plans: dict = {}      # dma.plan_cached's memo
        self.executed = 0
        self.last_activity = 0.0       # when an instruction last completed (dates a deadlock)
        # `max_instructions` is the next count at which the engine calls `over_budget`: the budget
        # itself, or (with a wall-clock budget) a checkpoint to look at the clock, so the
        # per-instruction cost stays one comparison.
        self.instruction_limit = max_instructions
        self.max_seconds = max_seconds
        self.deadline = None if max_seconds is None else time.monotonic() + max_seconds
        # the wall clock and a trace's length are looked at every WALL_CHECK_EVERY instructions
        self.max_instructions = max_instructions if max_seconds is None and not trace \
            else min(max_instructions, WALL_CHECK_EVERY)
        self.trace: TraceLog | None = TraceLog(trace_limit) if trace else None
        if trace:
            self.fabric.samples = self.trace    # link bandwidth samples go into the same trace
        self.record: KernelRecord | None = None
        self.progress = None            # run_kernels' callback, also called at each checkpoint
        self.kernel_at = (0, 1, 0, 1)   # (kernels done, kernels, `executed` at its start, its expected count)
        self.set_weights([])
        cpc = cfg.chip.cores_per_cluster
        self.clusters = [Cluster(c, Memory("sram", cfg.sram_bytes, shared_memory),
                                 Link(f"cluster{c}.sram", cfg.cluster.sram_bandwidth_bytes_per_cycle))
                         for c in range(cfg.chip.clusters)]
        self.cores: list[Core] = []
        for i in range(cfg.chip.cores if ncores is None else ncores):   # idle cores are not modelled
            cl = self.clusters[i // cpc]
            core = Core(self, i, cl)
            cl.cores.append(core)
            self.cores.append(core)

    def memories(self) -> list[Memory]:
        return [self.gdram] + [c.sram for c in self.clusters] + [m for c in self.cores for m in (c.nram, c.wram)]

    def forget_prepared(self) -> None:
        """Drop the prepared-instruction and hazard memos (thousands of small objects a finished
        run no longer needs, which the cyclic collector would otherwise walk once more)."""
        self.prepared.clear()
        self.prepared_ins.clear()
        self.hazards.clear()
        self.dma_plans.clear()
        self.gemms.forget()

    def remember(self, ins, prepared) -> None:
        """Remember a prepared instruction by its Instr object's identity (Instr hashes by content,
        which costs more than the content key; the entry holds the Instr, so no other object can
        take its id while remembered)."""
        if len(self.prepared_ins) >= PREPARED_MAX:
            self.prepared_ins.clear()
        self.prepared_ins[id(ins)] = (ins, prepared)

    # ---- accounting (called by cores) ----------------------------------------------------------
    def set_weights(self, ranges: list[tuple[int, int]]) -> None:
        """GDRAM [start, end) ranges of the program's constant tensors: DMA reads from them are
        counted as weights traffic."""
        self.weight_ranges = sorted(ranges)
        self.weight_starts = [a for a, _ in self.weight_ranges]

    def is_weights(self, addr: int) -> bool:
        i = bisect.bisect_right(self.weight_starts, addr) - 1
        return i >= 0 and addr < self.weight_ranges[i][1]

    def mac_counts(self, a: dict, op, cycles: float) -> tuple[int, int, int]:
        """What a MAC instruction adds to its core's counters when it completes: useful MACs, of
        which on 16-bit operands, and MAC slots (array cycles past start-up)."""
        from mlusim.isa.timing import useful_macs

        macs = useful_macs(op.mnemonic, a)
        startup = self.cfg.core.startup_cycles.conv if op.mnemonic == "conv" else self.cfg.core.startup_cycles.matmul
        return macs, 0 if a["dt"] in INT8_DTYPES else macs, int(cycles - startup)

    def check_budget(self, core: Core, pc: int, ins) -> None:
        self.over_budget(core.where(pc, ins))

    def over_budget(self, where: str) -> None:
        """`executed` passed `max_instructions`: the instruction budget is spent, or it is time to
        look at the wall clock and the trace's length (every WALL_CHECK_EVERY instructions, off the
        per-instruction path)."""
        if self.executed > self.instruction_limit:
            raise SimulationError(f"{where}: instruction budget of {self.instruction_limit:,} "
                                  f"executed instructions exhausted (a runaway loop? raise --max-instructions)")
        if self.deadline is not None and time.monotonic() > self.deadline:
            raise SimulationError(f"{where}: wall-clock budget of {self.max_seconds:g} s exhausted after "
                                  f"{self.executed:,} instructions (raise --max-seconds)")
        if self.trace is not None:
            self.trace.check()
        if self.progress is not None:       # inside a kernel: how far, by instructions issued
            done, total, start, expect = self.kernel_at
            self.progress(done + min(0.99, (self.executed - start) / expect), total, self.env.now)
        self.max_instructions = min(self.instruction_limit, self.executed + WALL_CHECK_EVERY)

    # ---- dispatch ------------------------------------------------------------------------------
    def run_kernels(self, kernels: list[Kernel], ncores: int, records: list[KernelRecord], progress=None):
        """SimPy process: every kernel in order on cores 0..ncores-1; `progress(done, total, cycles)`
        is called after each kernel, and every WALL_CHECK_EVERY instructions inside one with a
        fractional `done` (a fused network is one kernel: it would sit at 0/1 until the end)."""
        env = self.env
        active = self.cores[:ncores]
        self.progress = progress
        if progress is not None:
            self.max_instructions = min(self.max_instructions, self.executed + WALL_CHECK_EVERY)
        for idx, k in enumerate(kernels):
            self.kernel_at = (idx, len(kernels), self.executed, expected_instructions(k))
            rec = KernelRecord(k.name, k.task_type, k.task_dim, env.now, meta=dict(k.meta))
            records.append(rec)
            self.record = rec
            for core in active:
                core.counters = CoreCounters(core.id)
            yield env.timeout(self.cfg.chip.kernel_launch_cycles)
            n = k.clusters_per_job
            if n == 0:
                procs = self._dispatch_block(k, active)
            else:
                procs = self._dispatch_union(k, active, n)
            yield simpy.AllOf(env, procs)
            rec.end = env.now
            rec.cores = {c.id: c.counters for c in active}
            if progress is not None:
                progress(idx + 1, len(kernels), env.now)
        self.datapath.finish()     # memory holds every result at the end

    def _task(self, core: Core, ctx: TaskContext):
        self.executed += 1          # a task dispatch counts, so kernels of empty tasks meet the budget too
        if self.executed > self.max_instructions:
            self.over_budget(f"kernel '{ctx.kernel.name}' task {ctx.taskid}")
        t0 = self.env.now
        yield from core.run_task(ctx)
        core.counters.active += self.env.now - t0

    def _dispatch_block(self, k: Kernel, active: list[Core]):
        env = self.env
        cpc = self.cfg.chip.cores_per_cluster
        all_b = Barrier(env, k.task_dim, self.cfg.chip.chip_sync_cycles, f"sync.all of kernel '{k.name}'")
        nxt = [0]

        def worker(core: Core):
            while nxt[0] < k.task_dim:
                t = nxt[0]
                nxt[0] += 1
                ctx = TaskContext(k, t, k.task_dim, core.id % cpc, core.id // cpc, cpc, 0, None, all_b)
                yield from self._task(core, ctx)

        return [env.process(worker(c)) for c in active]

    def _dispatch_union(self, k: Kernel, active: list[Core], n: int):
        env = self.env
        cpc = self.cfg.chip.cores_per_cluster
        ids = {c.id for c in active}
        full = [cl for cl in self.clusters if len(cl.cores) == cpc and all(c.id in ids for c in cl.cores)]
        groups = [full[i:i + n] for i in range(0, len(full) - n + 1, n)]
        if not groups:
            raise SimulationError(f"kernel '{k.name}' is {k.task_type.upper()} and needs {n} whole "
                                  f"cluster(s) of {cpc} cores; {len(active)} core(s) give {len(full)}")
        job_size = n * cpc
        if k.task_dim % job_size:
            raise SimulationError(f"kernel '{k.name}': task_dim {k.task_dim} is not a multiple of "
                                  f"{job_size} ({k.task_type.upper()} x {cpc} cores per cluster)")
        njobs = k.task_dim // job_size
        nxt = [0]

        def group_worker(group):
            while nxt[0] < njobs:
                j = nxt[0]
                nxt[0] += 1
                ctrs = [c.counters for cl in group for c in cl.cores]
                job = {"job": j, "clusters": [cl.id for cl in group], "start": env.now, "end": None,
                       "syncs": [], "all_syncs": [],
                       "start_counts": snapshot(ctrs), "sync_counts": [], "all_sync_counts": []}
                self.record.jobs.append(job)
                cl_b = [Barrier(env, cpc, self.cfg.cluster.sync_cycles, f"sync.cluster of cluster {cl.id}",
                                job["syncs"] if ci == 0 else None,
                                (lambda out=job["sync_counts"], c=ctrs: out.append(snapshot(c))) if ci == 0 else None)
                        for ci, cl in enumerate(group)]
                all_b = Barrier(env, job_size, self.cfg.chip.chip_sync_cycles,
                                f"sync.all of union job {j} of kernel '{k.name}'", job["all_syncs"],
                                lambda out=job["all_sync_counts"], c=ctrs: out.append(snapshot(c)))
                procs = []
                for ci, cl in enumerate(group):
                    for cj, core in enumerate(cl.cores):
                        t = j * job_size + ci * cpc + cj
                        ctx = TaskContext(k, t, k.task_dim, cj, ci, cpc, n, cl_b[ci], all_b, group)
                        procs.append(env.process(self._task(core, ctx)))
                yield simpy.AllOf(env, procs)
                job["end"] = env.now
                job["end_counts"] = snapshot(ctrs)

        return [env.process(group_worker(g)) for g in groups]

    def waits(self) -> list[str]:
        """What every busy core is waiting on, for a deadlock report."""
        out = []
        for c in self.cores:
            busy = {u: s for u, s in c.state.items() if s != "idle"}
            if busy:
                task = f"task {c.task.taskid} of '{c.task.kernel.name}'" if c.task else "no task"
                parts = "; ".join(f"{u}: {describe_state(s)}" for u, s in busy.items())
                out.append(f"core {c.id} ({task}): {parts}")
        return out


def expected_instructions(k: Kernel) -> int:
    """What `executed` grows by over the kernel if no instruction runs twice: every task's stream
    and its dispatch (a loop runs more; progress then stops short of the kernel's end)."""
    if k.task_stream is None:
        return max(1, k.task_dim * (len(k.streams[0]) + 1))
    return max(1, k.task_dim + sum(len(k.streams[s]) for s in k.task_stream))


def host_bytes_estimate(gdram_bytes: int, cfg, numerics: bool) -> int:
    if not numerics:
        return 0
    return gdram_bytes + cfg.chip.cores * (cfg.nram_bytes + cfg.wram_bytes) + cfg.chip.clusters * cfg.sram_bytes

