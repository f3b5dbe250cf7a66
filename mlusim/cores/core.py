"""An IPU core: an in-order issue stage feeding three unit queues that run in parallel.

    stream --> issue (scalar ALU, branches, syncs) --+--> ld queue --> DMA in   (IO-DMA, Move-DMA)
                                                     +--> cp queue --> MAC array | vector unit
                                                     +--> st queue --> DMA out
The three queues synchronise only through explicit dependency tokens (`wait=`/`sig=` on each
instruction), as in TVM's VTA; a program that forgets one races, one that waits for a token nobody
sends deadlocks and is reported as such.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import simpy

from mlusim.cores import dma as dmamod
from mlusim.cores.interconnect import Link
from mlusim.cores.memory import Memory
from mlusim.cores.queues import InstrQueue, TokenQueue
from mlusim.cores.stats import QUEUES, CoreCounters
from mlusim.errors import SimulationError

if TYPE_CHECKING:
    from mlusim.cores.chip import Chip, TaskContext

QIDX = {q: i for i, q in enumerate(QUEUES)}
UNIT_QUEUE = {"mac": "cp", "vec": "cp"}
SCALAR_FLUSH = 1024     # issue-stage cycles batched into one timeout


class Core:
    def __init__(self, chip: "Chip", core_id: int, cluster):
        cfg = chip.cfg
        self.chip, self.env, self.cfg = chip, chip.env, cfg
        self.id = core_id
        self.cluster = cluster
        self.nram = Memory("nram", cfg.nram_bytes, chip.numerics)
        self.wram = Memory("wram", cfg.wram_bytes, chip.numerics)
        # Each DMA queue has its own channel (read and write channels are separate, as in AXI), so a
        # channel's port limits are caps on that one flow; only DRAM and cluster SRAM are contended.
        d = cfg.dma
        self.port_caps = {"gdram": d.core_bandwidth_bytes_per_cycle, "sram": d.sram_bandwidth_bytes_per_cycle,
                          "move": d.move_bandwidth_bytes_per_cycle}
        self._routes: dict = {}
        self.iq = {q: InstrQueue(self.env, cfg.core.queue_depth) for q in QUEUES}
        self.tokens = {(a, b): TokenQueue(self.env, f"{a}->{b}") for a in QUEUES for b in QUEUES if a != b}
        self.inflight = 0
        self.drain_waiter: simpy.Event | None = None
        self.regs = [0] * 32
        self.task: TaskContext | None = None
        self.counters = CoreCounters(core_id)
        self.state = {"issue": "idle", "ld": "idle", "cp": "idle", "st": "idle"}
        self.spaces = {"nram": self.nram, "wram": self.wram, "sram": cluster.sram, "gdram": chip.gdram}
        for q in QUEUES:
            self.env.process(self._unit(q))

    # ---- what semantics see ------------------------------------------------------------------
    def mem(self, space: str):
        return self.spaces[space].buf

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
                if ends & {"nram", "wram"}:
                    caps.append(self.port_caps["sram"])
            hit = self._routes[key] = (tuple(links), min(caps) if caps else float("inf"))
        return hit

    # ---- the issue stage -----------------------------------------------------------------------
    def where(self, pc: int, ins) -> str:
        from mlusim.isa.asm import format_instr

        t = self.task
        return (f"kernel '{t.kernel.name}' task {t.taskid} on core {self.id}, pc {pc} "
                f"`{format_instr(ins, pc).strip()}`")

    def _prepare(self, ins, pc: int):
        """Resolve register-relative addresses, check every access, price the instruction.
        The result depends only on the instruction and its resolved addresses, so it is cached."""
        op = ins.op
        args = ins.args
        regs = self.regs
        key: tuple = (id(ins),)
        for name, bits in op.addr_fields:
            v = args[name]
            if v >> bits:
                key += (regs[v >> bits] + (v & ((1 << bits) - 1)),)
        cache = self.chip.prepared_cache
        hit = cache.get(key)
        if hit is not None and hit[0] is ins:
            return hit[1]
        if len(key) == 1:
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
        for space, addr, nbytes, _rw, align in touches:
            fault = self.spaces[space].fault(addr, nbytes, align)
            if fault:
                raise SimulationError(f"{self.where(pc, ins)}: {fault}")
        if op.unit == "dma":
            plan = dmamod.plan(a, self.cfg)
            prepared = (plan.queue, a, plan, touches)
        else:
            prepared = (UNIT_QUEUE[op.unit], a, op.cycles(a, self.cfg), touches)
        if (a["wait"] | a["sig"]) >> QIDX[prepared[0]] & 1:
            raise SimulationError(f"{self.where(pc, ins)}: runs on the {prepared[0]} queue and cannot "
                                  f"wait for or signal its own queue")
        if len(cache) < 200_000:
            cache[key] = (ins, prepared)
        return prepared

    def run_task(self, task: "TaskContext"):
        """SimPy process body: issue one task's stream, then wait until everything it issued is done."""
        env, chip = self.env, self.chip
        self.task = task
        self.regs = [0] * 32
        for tq in self.tokens.values():   # each task starts with empty dependency queues
            tq.count = 0
        stream = task.kernel.stream_of(task.taskid)
        ctr = self.counters
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
            qname, a, cost, touches = self._prepare(ins, pc)
            iq = self.iq[qname]
            if iq.full:
                self.state["issue"] = f"waits for a free {qname} queue slot (pc {pc})"
                t0 = env.now
                yield iq.wait_space()
                ctr.issue_stall += env.now - t0
                if chip.trace is not None:
                    chip.trace.append((self.id, "issue", t0, env.now - t0, f"{qname} queue full",
                                       task.kernel.name, pc))
            self.inflight += 1
            iq.put((ins, a, cost, touches, pc, task))
            pc += 1
        if pending:
            yield env.timeout(pending)
        self.state["issue"] = "draining at end of task"
        yield from self._drain()
        self.state["issue"] = "idle"

    def _drain(self):
        """Wait until every issued instruction has completed (its time is the units' busy time)."""
        if self.inflight:
            self.drain_waiter = self.env.event()
            yield self.drain_waiter

    def _sync(self, mnemonic: str, pc: int, ins):
        self.state["issue"] = f"drains queues for `{mnemonic}` (pc {pc})"
        yield from self._drain()
        if mnemonic == "sync":
            return
        barrier = self.task.barrier(mnemonic, self)
        if barrier is None:
            raise SimulationError(f"{self.where(pc, ins)}: sync.cluster is illegal in a BLOCK kernel")
        t0 = self.env.now
        ev = barrier.arrive(self, pc)
        self.state["issue"] = f"waits at {barrier.describe()} (pc {pc})"
        yield ev
        self.counters.sync_wait += self.env.now - t0
        if self.chip.trace is not None:
            self.chip.trace.append((self.id, "issue", t0, self.env.now - t0, mnemonic, self.task.kernel.name, pc))

    # ---- the three units -----------------------------------------------------------------------
    def _unit(self, qname: str):
        env, chip = self.env, self.chip
        iq = self.iq[qname]
        while True:
            if not iq.items:
                self.state[qname] = "idle"
                yield iq.wait_item()
            ins, a, cost, touches, pc, task = iq.pop()
            ctr = self.counters
            wait = a["wait"]
            if wait:
                for other in QUEUES:
                    if wait >> QIDX[other] & 1:
                        tq = self.tokens[(other, qname)]
                        if tq.count:
                            tq.count -= 1
                        else:
                            self.state[qname] = (f"waits for a token from {other} (pc {pc} "
                                                 f"`{ins.op.mnemonic}`, task {task.taskid})")
                            t0 = env.now
                            yield tq.wait()
                            ctr.token_stall[qname] += env.now - t0
                            if chip.trace is not None:
                                chip.trace.append((self.id, qname if ins.op.unit == "dma" else ins.op.unit, t0,
                                                   env.now - t0, f"wait {other} token", task.kernel.name, pc))
            self.state[qname] = f"executes pc {pc} `{ins.op.mnemonic}`"
            t0 = env.now
            op = ins.op
            if op.unit == "dma":
                unit = qname
                links, cap = self.route(cost.src, cost.dst)
                if links:
                    yield env.timeout(cost.fixed_cycles)
                    yield chip.fabric.transfer(links, cost.bus_bytes, cap)
                else:   # on-core move: nothing shared, one event
                    yield env.timeout(cost.fixed_cycles + cost.bus_bytes / cap)
                chip.account_dma(cost)
                ctr.dma_demand[qname] += cost.fixed_cycles + cost.bus_bytes / cap
            else:
                unit = op.unit
                yield env.timeout(cost)
                if unit == "mac":
                    chip.account_mac(self, a, op, cost)
            dur = env.now - t0
            ctr.busy[unit] += dur
            chip.last_activity = env.now
            if chip.trace is not None:
                chip.trace.append((self.id, unit, t0, dur, op.mnemonic, task.kernel.name, pc))
            if chip.numerics:
                op.execute(self, a)
            sig = a["sig"]
            if sig:
                for other in QUEUES:
                    if sig >> QIDX[other] & 1:
                        self.tokens[(qname, other)].push()
            self.inflight -= 1
            if not self.inflight and self.drain_waiter is not None:
                w, self.drain_waiter = self.drain_waiter, None
                w.succeed()
