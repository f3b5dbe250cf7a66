"""An IPU core: an in-order issue stage feeding four unit queues that run in parallel.

    stream --> issue (scalar ALU, branches, syncs) --+--> ld queue --> DMA in from GDRAM, on-core moves (IO-DMA)
                                                     +--> mv queue --> DMA in from SRAM (Move-DMA)
                                                     +--> cp queue --> MAC array | vector unit
                                                     +--> st queue --> DMA out
The queues synchronise only through explicit dependency tokens (`wait=`/`sig=` on each
instruction), as in TVM's VTA; a program that forgets one races, one that waits for a token nobody
sends deadlocks and is reported as such. The issue stage is a process; the units are callbacks
on the clock (cores/units.py).
"""
from __future__ import annotations

from dataclasses import dataclass
from operator import itemgetter

from mlusim.cores import dma as dmamod
from mlusim.cores.clock import Signal
from mlusim.cores.interconnect import Link
from mlusim.cores.memory import Memory
from mlusim.cores.queues import InstrQueue, TokenQueue
from mlusim.cores.stats import QUEUES, CoreCounters
from mlusim.cores.task import TaskContext
from mlusim.cores.tracelog import FLOW
from mlusim.cores.units import QIDX, ComputeUnit, DmaUnit
from mlusim.errors import SimulationError
from mlusim.isa.deferred import Touched, touched


UNIT_QUEUE = {"mac": "cp", "vec": "cp"}
SCALAR_FLUSH = 1024     # issue-stage cycles batched into one timeout
PREPARED_MAX = 1 << 15  # prepared instructions a chip remembers (~0.7 KB each; ResNet-50 b16 issues 7,352 distinct)
_VALUES: dict = {}      # opcode (unique: table.py asserts it) -> its fields' values in table order


@dataclass(slots=True, eq=False)
class Prepared:
    """An instruction made ready to issue, remembered chip-wide by content: where it goes, what
    it touches, and what it costs (a compute unit's cycles, or a DMA's plan and the cycles it
    would take with the chip to itself)."""

    queue: str
    args: dict                  # its fields, addresses resolved
    touches: tuple
    unit: str                   # "dma", "mac" or "vec"
    wait: int                   # wait= and sig= masks
    sig: int
    cost: float = 0.0           # compute cycles
    macs: tuple | None = None   # a MAC instruction's counts (Chip.mac_counts)
    plan: dmamod.DmaPlan | None = None
    ends: tuple[str, str] = ("", "")   # a DMA's (source, destination) spaces: its route
    demand: float = 0.0         # a DMA's fixed cycles plus bus bytes at its channel's cap
    dcl: int = 0                # a DMA's far cluster + 1 (s2s to another cluster's SRAM), or 0
    touched: Touched | None = None     # with numerics: what DeferredGemms.execute reads of touches


def _values_getter(op):
    """A function giving an instruction's field values in the table's order: two instructions of
    one opcode are the same instruction exactly when these tuples are equal."""
    names = [f.name for f in op.fields]
    if len(names) == 1:
        return lambda args, n=names[0]: (args[n],)
    return itemgetter(*names) if names else (lambda args: ())


class Core:
    def __init__(self, chip, core_id: int, cluster):
        cfg = chip.cfg
        self.chip, self.env, self.cfg = chip, chip.env, cfg
        self.id = core_id
        self.cluster = cluster
        self.nram = Memory("nram", cfg.nram_bytes, chip.shared_memory)
        self.wram = Memory("wram", cfg.wram_bytes, chip.shared_memory)
        # Each DMA queue has its own channel (read and write channels are separate, as in AXI), so a
        # channel's port limits are caps on that one flow; only DRAM and cluster SRAM are contended.
        d = cfg.dma
        self.port_caps = {"gdram": d.core_bandwidth_bytes_per_cycle, "sram": d.sram_bandwidth_bytes_per_cycle,
                          "move": d.move_bandwidth_bytes_per_cycle}
        self._routes: dict = {}
        self.iq = {q: InstrQueue(self.env, cfg.core.queue_depth) for q in QUEUES}
        self.tokens = {(a, b): TokenQueue(self.env, f"{a}->{b}") for a in QUEUES for b in QUEUES if a != b}
        self.inflight = 0
        self.drain_waiter: Signal | None = None
        self.regs = [0] * 32
        self.task: TaskContext | None = None
        self.counters = CoreCounters(core_id)
        self.state = {"issue": "idle", **{q: "idle" for q in QUEUES}}
        self.gemms = chip.gemms         # conv products stored when first touched (isa/deferred.py)
        self.spaces = {"nram": self.nram, "wram": self.wram, "sram": cluster.sram, "gdram": chip.gdram}
        self.space_sizes = {name: m.size for name, m in self.spaces.items()}
        self._bufs: dict = {}           # space -> its bytes, once asked for (mem)
        self._raw: dict = {}            # space -> a memoryview of them (raw)
        # the units, started in this order as their processes were (cores/units.py)
        self.units = [ComputeUnit(self) if q == "cp" else DmaUnit(self, q) for q in QUEUES]

    # ---- what semantics see ------------------------------------------------------------------
    def mem(self, space: str):
        """A space's bytes (allocated on first use: Memory.buf), remembered: semantics ask
        280k times at ResNet-50 b16."""
        buf = self._bufs.get(space)
        if buf is None:
            buf = self._bufs[space] = self.spaces[space].buf
        return buf

    def raw(self, space: str) -> memoryview:
        """mem(space) as a memoryview: a slice copy between two (memmove where they overlap) costs
        half what one between ndarray slices does, for DMAs of a few hundred bytes to a few KB."""
        view = self._raw.get(space)
        if view is None:
            view = self._raw[space] = memoryview(self.mem(space))
        return view

    def remote_sram(self, k: int):
        """SRAM of the union job's k-th cluster (an s2s with `dcl`)."""
        return self.task.clusters[k].sram.buf

    def _check_remote(self, k: int, pc: int, ins) -> None:
        t = self.task
        if not t.clusters or k >= len(t.clusters):
            have = f"its union job has {len(t.clusters)} cluster(s)" if t.clusters else "it is not in a union job"
            raise SimulationError(f"{self.where(pc, ins)}: copies to cluster {k} of the job, but {have}")

    def set_reg(self, rd: int, value: int) -> None:
        if rd:
            self.regs[rd] = value

    def special(self, name: str) -> int:
        return getattr(self.task, name)

    # ---- routing -------------------------------------------------------------------------------
    def route(self, src: str, dst: str) -> tuple[tuple[Link, ...], float]:
        """The shared links a DMA between two spaces crosses, and its channel's own rate cap."""
        key = (src, dst)
        hit = self._routes.get(key)
        if hit is None:
            ends = {src, dst}
            links: list[Link] = []
            caps = []
            if ends <= {"nram", "wram"}:
                caps.append(self.port_caps["move"])
            if "gdram" in ends:
                links.append(self.chip.dram)
                caps.append(self.port_caps["gdram"])
            if "sram" in ends:
                links.append(self.cluster.sram_link)
                if ends & {"nram", "wram"} or ends == {"sram"}:
                    # a core's DMA channel to SRAM, and an SRAM->SRAM copy in the cluster (s2s
                    # without dcl): the same Move-DMA channel as a copy to another cluster's SRAM
                    caps.append(self.port_caps["sram"])
            hit = self._routes[key] = (tuple(links), min(caps) if caps else float("inf"))
        return hit

    # ---- the issue stage -----------------------------------------------------------------------
    def where(self, pc: int, ins) -> str:
        from mlusim.isa.encoding import format_instr

        t = self.task
        return (f"kernel '{t.kernel.name}' task {t.taskid} on core {self.id}, pc {pc} "
                f"`{format_instr(ins, pc).strip()}`")

    def _prepare(self, ins, pc: int):
        """Resolve register-relative addresses, check every access, price the instruction.
        The result depends only on the instruction's fields and its resolved addresses (every core
        has memories of the same sizes), so the chip remembers it by content: a network's tasks
        and cores issue the same few thousand instructions over and over. One that uses no base
        register is also remembered by the Instr itself (`chip.prepared_ins`, which run_task looks
        at first), sparing its content key the next time."""
        op = ins.op
        args = ins.args
        regs = self.regs
        values = _VALUES.get(op.opcode)
        if values is None:
            values = _VALUES[op.opcode] = _values_getter(op)
        key: tuple = (op.opcode, values(args))
        for name, bits in op.addr_fields:
            v = args[name]
            if v >> bits:
                key += (regs[v >> bits] + (v & ((1 << bits) - 1)),)
        chip = self.chip
        cache = chip.prepared
        hit = cache.get(key)
        if hit is not None:
            if len(key) == 2:
                chip.remember(ins, hit)
            return hit
        if len(key) == 2:
            a = args
        else:
            a = dict(args)
            for name, bits in op.addr_fields:
                v = args[name]
                a[name] = regs[v >> bits] + (v & ((1 << bits) - 1))
        msg = op.check(a) if op.check else None
        if msg:
            raise SimulationError(f"{self.where(pc, ins)}: {msg}")
        touches = op.touches(a)
        sizes = self.space_sizes
        for space, addr, nbytes, _rw, align in touches:
            if addr < 0 or addr + nbytes > sizes[space] or (align > 1 and addr % align):
                raise SimulationError(f"{self.where(pc, ins)}: {self.spaces[space].fault(addr, nbytes, align)}")
        if op.unit == "dma":
            plans = chip.dma_plans
            if len(plans) >= PREPARED_MAX:
                plans.clear()
            plan = dmamod.plan_cached(a, self.cfg, plans, chip.is_weights)
            cap = self.route(plan.src, plan.dst)[1]     # the same for every core: ports are per core
            prepared = Prepared(plan.queue, a, touches, "dma", a["wait"], a["sig"], plan=plan,
                                ends=(plan.src, plan.dst), demand=plan.fixed_cycles + plan.bus_bytes / cap,
                                dcl=a["dcl"])
        else:
            cycles = op.cycles(a, self.cfg)
            prepared = Prepared(UNIT_QUEUE[op.unit], a, touches, op.unit, a["wait"], a["sig"], cost=cycles,
                                macs=self.chip.mac_counts(a, op, cycles) if op.unit == "mac" else None)
        if chip.numerics:
            prepared.touched = touched(touches)
        if (a["wait"] | a["sig"]) >> QIDX[prepared.queue] & 1:
            raise SimulationError(f"{self.where(pc, ins)}: runs on the {prepared.queue} queue and cannot "
                                  f"wait for or signal its own queue")
        if len(cache) >= PREPARED_MAX:
            cache.clear()
        cache[key] = prepared
        if len(key) == 2:
            chip.remember(ins, prepared)
        return prepared

    def run_task(self, task: TaskContext):
        """SimPy process body: issue one task's stream, then wait until everything it issued is done."""
        env, chip = self.env, self.chip
        self.task = task
        self.regs = [0] * 32
        for tq in self.tokens.values():   # each task starts with empty dependency queues
            tq.count = 0
            tq.sent.clear()
        stream = task.kernel.stream_of(task.taskid)
        ctr = self.counters
        prepared_ins = chip.prepared_ins
        iqs = self.iq
        scalar_cost = self.cfg.core.startup_cycles.scalar
        pc, n, pending = 0, len(stream), 0.0
        ctr.tasks += 1
        while pc < n:
            ins = stream[pc]
            op = ins.op
            unit = op.unit
            ctr.instructions[unit] += 1
            chip.executed += 1
            if chip.executed > chip.max_instructions:     # one comparison per instruction: no loop escapes
                chip.check_budget(self, pc, ins)
            if unit == "scalar":
                delta = op.execute(self, ins.args)
                pending += scalar_cost
                pc += 1 if delta is None else delta
                if pending >= SCALAR_FLUSH:
                    yield env.timeout(pending)
                    pending = 0.0
                continue
            if pending:
                yield env.timeout(pending)
                pending = 0.0
            if unit == "sync":
                yield from self._sync(op.mnemonic, pc, ins)
                pc += 1
                continue
            hit = prepared_ins.get(id(ins))
            prep = hit[1] if hit is not None and hit[0] is ins else self._prepare(ins, pc)
            qname = prep.queue
            if prep.dcl:
                self._check_remote(prep.dcl - 1, pc, ins)
            iq = iqs[qname]
            items = iq.items
            if len(items) >= iq.depth:
                self.state["issue"] = ("waits for a free {} queue slot (pc {})", qname, pc)
                t0 = env.now
                yield iq.wait_space()
                ctr.issue_stall += env.now - t0
                if chip.trace is not None:
                    chip.trace.append((self.id, "issue", t0, env.now, f"{qname} queue full", task.kernel.name, pc))
            self.inflight += 1
            items.append((ins, prep, pc, task))     # put: wake the unit if it waits
            w = iq.item_waiter
            if w is not None:
                iq.item_waiter = None
                w.succeed()
            pc += 1
        if pending:
            yield env.timeout(pending)
        self.state["issue"] = "draining at end of task"
        yield from self._drain()
        self.state["issue"] = "idle"

    def _drain(self):
        """Wait until every issued instruction has completed (its time is the units' busy time)."""
        if self.inflight:
            self.drain_waiter = Signal(self.env)
            yield self.drain_waiter

    def _sync(self, mnemonic: str, pc: int, ins):
        self.state["issue"] = f"drains queues for `{mnemonic}` (pc {pc})"
        yield from self._drain()
        if mnemonic == "sync":
            return
        barrier = self.task.barrier(mnemonic)
        if barrier is None:
            raise SimulationError(f"{self.where(pc, ins)}: sync.cluster is illegal in a BLOCK kernel")
        t0 = self.env.now
        waiting = [c for c, _ in barrier.arrived] if self.chip.trace is not None else ()  # whom I may release
        ev = barrier.arrive(self.id, pc)
        self.state["issue"] = f"waits at {barrier.describe()} (pc {pc})"
        yield ev
        now = self.env.now
        self.counters.sync_wait += now - t0
        trace = self.chip.trace
        if trace is not None:
            trace.append((self.id, "issue", t0, now, mnemonic, self.task.kernel.name, pc))
            if len(waiting) + 1 == barrier.parties:      # the last to arrive released the others
                for c in waiting:
                    trace.append((FLOW, now, self.id, "issue", now, c, "issue", True))

    def _flows_in(self, got: list, t: float, track: str) -> None:
        """Tracing: arrows from the slices whose tokens the instruction ending at `t` on `track`
        took (bound by its end: a viewer ties an arrow to the slice open at the arrow's time)."""
        trace = self.chip.trace
        for t_out, track_out in got:
            trace.append((FLOW, t_out, self.id, track_out, t, self.id, track, True))

    def _far_route(self, far) -> tuple[tuple[Link, ...], float]:
        """Links and cap of an s2s to another cluster's SRAM: both clusters' SRAM ports."""
        mine = self.cluster.sram_link
        return (mine,) + ((far.sram_link,) if far.sram_link is not mine else ()), self.port_caps["sram"]

    def _hazard(self, t1, t2) -> bool:
        """_hazard of two prepared instructions' touches, remembered per pair (the memo holds the
        tuples, so their ids stay theirs while remembered)."""
        memo = self.chip.hazards
        key = (id(t1), id(t2))
        hit = memo.get(key)
        if hit is None:
            if len(memo) >= PREPARED_MAX:
                memo.clear()
            hit = memo[key] = (t1, t2, _hazard(t1, t2))
        return hit[2]


def describe_state(s) -> str:
    """A unit's state as text: the engine stores hot-path states as (format, *values) and formats
    them only when someone asks (a deadlock report)."""
    return s if isinstance(s, str) else s[0].format(*s[1:])


def _hazard(t1, t2) -> bool:
    """Do two instructions' memory accesses overlap with at least one write?"""
    for s1, a1, n1, rw1, _ in t1:
        for s2, a2, n2, rw2, _ in t2:
            if s1 == s2 and a1 < a2 + n2 and a2 < a1 + n1 and "w" in (rw1, rw2):
                return True
    return False
