"""A core's four unit queues as callbacks on the clock: three DMA queues and the compute queue.

Each unit takes its queue's head in program order, waits for the dependency tokens it names, then
runs it: a DMA queue one transfer at a time, the compute queue handing its head to the MAC array
or the vector unit once nothing running conflicts with it. They were SimPy processes; now each
wait is a `Wake` whose firing calls the unit back at the place in the event order where the
process would have resumed, so every event keeps its (time, priority, id) order and the run its
cycles, while a wake-up costs a call instead of a generator resume through Process (a ResNet-50
at batch 16 wakes its units 180k times).
"""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from heapq import heappush

from simpy.events import NORMAL

from mlusim.cores.clock import Wake
from mlusim.cores.interconnect import Flow
from mlusim.cores.stats import QUEUES

QIDX = {q: i for i, q in enumerate(QUEUES)}
# a unit's state while it waits for a token, as (TOKEN_WAIT, other queue, (ins, prep, pc, task)):
# formatted only for a deadlock report (core.describe_state)
TOKEN_WAIT = "waits for a token from {0} (pc {1[2]} `{1[0].op.mnemonic}`, task {1[3].taskid})"
# the compute queue's state while its head waits for a running instruction, as (BLOCKED, head, Running)
BLOCKED = "pc {0[2]} `{0[0].op.mnemonic}` waits for pc {1.pc} on the {1.unit} unit"


@dataclass(slots=True, eq=False)
class Running:
    """A compute instruction started on its unit. It is also the event of its end: the clock
    calls `callbacks` (ComputeUnit._finished) then."""

    unit: str
    ins: object
    prep: object                   # core.Prepared
    pc: int
    task: object                   # task.TaskContext
    start: float
    callbacks: list
    done: Wake | None = None       # the compute queue's wake-up, if its head waits for this one
    finished: bool = False
    end: float = 0.0               # tracing: when it completed
    got: list | None = None        # tracing: (end, track) of the slices whose tokens it took

    _ok = True                     # read by the event loop, as of a succeeded event


# for each queue and each value of a wait= / sig= field: the other queues it names, in QUEUES order
_OTHERS = {q: [tuple(o for o in QUEUES if o != q and m >> QIDX[o] & 1) for m in range(1 << len(QUEUES))]
           for q in QUEUES}


def token_tables(tokens: dict, qname: str) -> tuple[list, list]:
    """For each value of a wait= / sig= field: the (other queue, token queue) pairs a unit on
    `qname` takes tokens from, and the token queues it signals."""
    waits, sigs = [], []
    for others in _OTHERS[qname]:
        waits.append(tuple([(o, tokens[o, qname]) for o in others]))
        sigs.append(tuple([tokens[qname, o] for o in others]))
    return waits, sigs


def send_tokens(queues: tuple) -> None:
    """A finished instruction's tokens, one per queue: to the queue's waiter, or counted."""
    for tq in queues:
        w = tq.waiter
        if w is None:
            tq.count += 1
        else:
            tq.waiter = None
            w.succeed()


def stamp_tokens(queues: tuple, stamp: tuple) -> None:
    """Tracing: where the tokens just sent came from, (cycle, unit), for the trace's arrows (a
    waiter woken by send_tokens runs later, so it finds its stamp there)."""
    for tq in queues:
        tq.sent.append(stamp)


class Unit:
    """What both kinds of unit do: wait for an item, take its tokens (waiting for those not sent
    yet), then `_proceed` with it."""

    def __init__(self, core, qname: str):
        self.core, self.qname = core, qname
        self.env, self.chip = core.env, core.chip
        self.iq = core.iq[qname]
        self.items, self.state = self.iq.items, core.state
        self.waits, self.sigs = token_tables(core.tokens, qname)
        self.woken = Wake(self.env, self._next)        # an item arrived
        self.token = Wake(self.env, self._token)       # the token waited for arrived
        self.cur: tuple = ()           # (ins, prep, pc, task) of the instruction at hand
        self.got: list | None = None   # tracing: where its tokens came from
        self.pairs: tuple = ()         # the tokens it takes, and which one it waits for since when
        self.at, self.since = 0, 0.0
        self.env.start(self._next)     # where env.process(generator) would have started it

    def _pop(self) -> bool:
        """Take the queue's head and its tokens; False if a token is still to come (`_token`
        carries on when it does)."""
        iq = self.iq
        item = self.cur = iq.items.popleft()
        if iq.space_waiter is not None:
            w, iq.space_waiter = iq.space_waiter, None
            w.succeed()
        wait = item[1].wait
        self.got = None
        if wait:
            pairs = self.pairs = self.waits[wait]
            if len(pairs) == 1 and self.chip.trace is None:    # the common case, _take inline
                other, tq = pairs[0]
                if tq.count:
                    tq.count -= 1
                    return True
                self.state[self.qname] = (TOKEN_WAIT, other, item)
                self.at, self.since = 0, self.env._now
                tq.waiter = self.token
                return False
            if self.chip.trace is not None:
                self.got = []
            return self._take(0)
        return True

    def _take(self, start: int) -> bool:
        """Take one token from each queue in `pairs[start:]` (in order); False at the first not
        sent yet, which the unit then waits for."""
        pairs, got = self.pairs, self.got
        for i in range(start, len(pairs)):
            other, tq = pairs[i]
            if tq.count:
                tq.count -= 1
            else:
                self.state[self.qname] = (TOKEN_WAIT, other, self.cur)
                self.at, self.since = i, self.env._now
                tq.waiter = self.token     # the push that fires it consumes the token
                return False
            if got is not None:
                got.append(tq.sent.popleft())
        return True

    def _token(self, _event) -> None:
        """The token waited for came: count the stall, take the rest, carry on."""
        now, t0, q = self.env._now, self.since, self.qname
        ctr = self.core.counters
        ctr.token_stall[q] += now - t0
        if q == "cp":     # starved: neither compute unit still running
            ctr.cp_starved += max(0.0, now - max(t0, self.busy_until))
        other, tq = self.pairs[self.at]
        trace = self.chip.trace
        if trace is not None:
            _, _, pc, task = self.cur
            trace.append((self.core.id, q, t0, now, f"wait {other} token", task.kernel.name, pc))
            self.got.append(tq.sent.popleft())
        if self.at + 1 == len(self.pairs) or self._take(self.at + 1):
            self._proceed()

    def _next(self, _event=None) -> None:
        raise NotImplementedError

    def _proceed(self) -> None:
        raise NotImplementedError


class DmaUnit(Unit):
    """A DMA queue's engine, one transfer at a time in program order."""

    def __init__(self, core, qname: str):
        super().__init__(core, qname)
        self.fabric = core.chip.fabric
        self.routes: dict = {}      # (source, destination) -> links, cap and flow kind
        self.done = Wake(self.env, self._done)      # the transfer's end
        # the transfer at hand, as the fabric's flow and the event of its start: one transfer runs
        # at a time and its flow has left the fabric before `_done` starts the next, so one serves all
        self.flow = Flow((), 0.0, 0.0, self.done, None, None)
        self.start_cbs = self.fabric.start_cbs
        self.t0, self.demand = 0.0, 0.0

    def _next(self, _event=None) -> None:
        """Take the queue's head, and start it if its tokens are there (the common case inline)."""
        iq = self.iq
        if not iq.items:
            self.state[self.qname] = "idle"
            iq.item_waiter = self.woken
            return
        item = iq.items[0]
        wait = item[1].wait
        if wait:
            pairs = self.waits[wait]
            tq = pairs[0][1]
            if not (tq.count and len(pairs) == 1 and self.chip.trace is None):
                if self._pop():
                    self._proceed()
                return
            tq.count -= 1
        iq.items.popleft()
        if iq.space_waiter is not None:
            w, iq.space_waiter = iq.space_waiter, None
            w.succeed()
        self.cur = item
        self.got = None
        self._proceed()

    def _proceed(self) -> None:
        """Start the transfer at hand: through the fabric, or on-core as a plain delay."""
        prep = self.cur[1]
        plan = prep.plan
        env = self.env
        now = self.t0 = env._now
        route = self.routes.get(prep.ends)
        if route is None:
            links, cap = self.core.route(plan.src, plan.dst)
            route = self.routes[prep.ends] = (links, cap, self.fabric.kind_of(links, cap) if links else None)
        links, cap, kind = route
        demand = prep.demand
        if prep.dcl:         # to another cluster's SRAM: through both clusters' SRAM ports
            links, cap = self.core._far_route(self.cur[3].clusters[prep.dcl - 1])
            demand = plan.fixed_cycles + plan.bus_bytes / cap
            kind = self.fabric.kind_of(links, cap)
        self.demand = demand
        if links:       # Fabric.transfer_after, inline: the flow is the event of its start
            flow = self.flow
            flow.links, flow.nbytes, flow.cap, flow.kind = links, plan.bus_bytes, cap, kind
            flow.callbacks = self.start_cbs
            heappush(env._queue, (now + plan.fixed_cycles, NORMAL, next(env._eid), flow))
        else:   # on-core move: nothing shared, one event
            self.done.later(demand)

    def _done(self, _event) -> None:
        """The transfer ended: count it, run its numerics, send its tokens, take the next."""
        core, chip, q = self.core, self.chip, self.qname
        ins, prep, pc, task = self.cur
        plan, ctr = prep.plan, core.counters
        r = chip.record                 # its bytes: the kernel's and the core's
        r.bytes_read[plan.src] += plan.payload
        r.bytes_written[plan.dst] += plan.payload
        bus = plan.gdram_read + plan.gdram_write
        r.dram_bus_bytes += bus
        ctr.dram_bus_bytes += bus
        if plan.read_key:
            ctr.traffic[plan.read_key] += plan.payload
        if plan.write_key:
            ctr.traffic[plan.write_key] += plan.payload
        ctr.dma_demand[q] += self.demand
        now = self.env._now
        ctr.busy[q] += now - self.t0
        chip.last_activity = now
        trace = chip.trace
        if trace is not None:
            trace.append((core.id, q, self.t0, now, ins.op.mnemonic, task.kernel.name, pc))
            if self.got:
                core._flows_in(self.got, now, q)
        if chip.numerics:
            chip.datapath.run(core, ins.op, prep)
        if prep.sig:
            send_tokens(self.sigs[prep.sig])
            if trace is not None:
                stamp_tokens(self.sigs[prep.sig], (now, q))
        core.inflight -= 1
        if not core.inflight and core.drain_waiter is not None:
            w, core.drain_waiter = core.drain_waiter, None
            w.succeed()
        self._next()


class ComputeUnit(Unit):
    """The compute queue, handing its head to the MAC array or the vector unit once that unit is
    free and nothing running on the other one conflicts with it (the two are separate pipes, as
    the WFU and NFU are). Completion is recorded in program order, so tokens and drains behave
    exactly as for a strictly in-order queue."""

    def __init__(self, core):
        super().__init__(core, "cp")
        self.running: dict = {"mac": None, "vec": None}    # what each compute unit runs now
        self.rob: deque = deque()                          # compute instructions in program order
        self.busy_until = 0.0         # when the last compute instruction issued so far finishes
        self.unblocked = Wake(self.env, self._unblocked)   # what the head waited for ended
        self._finished_cbs = [self._finished]              # each Running's callbacks: one shared list

    def _next(self, _event=None) -> None:
        """Start queue heads while their tokens are there and nothing running blocks them (the
        common case of the tokens inline)."""
        iq = self.iq
        items = iq.items
        waits = self.waits
        while items:
            item = items[0]
            wait = item[1].wait
            if wait:
                pairs = waits[wait]
                tq = pairs[0][1]
                if not (tq.count and len(pairs) == 1 and self.chip.trace is None):
                    if self._pop() and self._place():
                        continue
                    return
                tq.count -= 1
            items.popleft()
            if iq.space_waiter is not None:
                w, iq.space_waiter = iq.space_waiter, None
                w.succeed()
            self.cur = item
            self.got = None
            if not self._place():
                return
        self.state["cp"] = "idle"
        iq.item_waiter = self.woken

    def _proceed(self) -> None:
        if self._place():
            self._next()

    def _unblocked(self, _event) -> None:
        self._proceed()

    def _place(self) -> bool:
        """Start the instruction at hand on its unit; False if something running keeps it
        waiting (`_unblocked` tries again when that ends)."""
        ins, prep, pc, task = self.cur
        unit = prep.unit
        running = self.running
        # what keeps it from starting: the instruction running on its own unit, or one on the other
        # unit whose memory it overlaps with a write; the MAC array is looked at first
        mac, vec = running["mac"], running["vec"]
        if mac is not None and (unit == "mac" or self.core._hazard(mac.prep.touches, prep.touches)):
            block = mac
        elif vec is not None and (unit == "vec" or self.core._hazard(vec.prep.touches, prep.touches)):
            block = vec
        else:       # start it: the record is the event of its end, one per instruction (its own heap entry)
            env = self.env
            now = env._now
            rec = running[unit] = Running(unit, ins, prep, pc, task, now, self._finished_cbs, None, False, 0.0,
                                          self.got or None)
            self.rob.append(rec)
            end = now + prep.cost
            if end > self.busy_until:
                self.busy_until = end
            heappush(env._queue, (end, NORMAL, next(env._eid), rec))
            return True
        self.state["cp"] = (BLOCKED, self.cur, block)
        block.done = self.unblocked
        return False

    def _finished(self, rec: Running) -> None:
        core, env, chip = self.core, self.env, self.chip
        unit, prep = rec.unit, rec.prep
        ctr = core.counters
        if unit == "mac":
            macs, macs_int16, slots = prep.macs
            ctr.macs += macs
            ctr.macs_int16 += macs_int16
            ctr.mac_slots += slots
        ctr.busy[unit] += prep.cost
        now = env._now
        chip.last_activity = now
        trace = chip.trace
        if trace is not None:
            trace.append((core.id, unit, rec.start, now, rec.ins.op.mnemonic, rec.task.kernel.name, rec.pc))
            rec.end = now
            if rec.got:
                core._flows_in(rec.got, now, unit)
        if chip.numerics:
            chip.datapath.run(core, rec.ins.op, prep)
        rec.finished = True
        if self.running[unit] is rec:
            self.running[unit] = None
        if rec.done is not None:
            rec.done.succeed()
        rob = self.rob
        sigs = self.sigs
        while rob and rob[0].finished:          # retire in program order
            done = rob.popleft()
            sig = done.prep.sig
            if sig:
                send_tokens(sigs[sig])
                if trace is not None:
                    stamp_tokens(sigs[sig], (done.end, done.unit))
            core.inflight -= 1
        if not core.inflight and core.drain_waiter is not None:
            w, core.drain_waiter = core.drain_waiter, None
            w.succeed()
