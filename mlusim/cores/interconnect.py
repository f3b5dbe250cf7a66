"""Shared bandwidth as a fluid: every transfer in flight gets a max-min fair share of each link.

A Flow crosses one or more Links (a core's DMA port, a cluster's SRAM port, the DRAM). Whenever a
flow starts or finishes, the Fabric advances every flow by the bytes it moved at its old rate and
recomputes all rates by progressive filling, so N cores streaming from DRAM each get 1/N of it
(or their port's peak, if lower) and the total never exceeds the DRAM bandwidth. This costs one
event per start and per finish, never one per cycle or per byte.
"""
from __future__ import annotations

from dataclasses import dataclass

import simpy

EPS = 1e-9
RATES_MEMO = 1 << 14      # flow mixes remembered with their rates (a network repeats a few hundred)


@dataclass(eq=False)
class Link:
    name: str
    bytes_per_cycle: float
    bytes: float = 0.0            # total bytes carried, for reports
    busy: float = 0.0             # cycles with at least one flow on it
    _since: float | None = None
    _count: int = 0


class Flow:
    """One transfer in flight. `kind` numbers its (links, cap) pair: flows of the same kind are
    interchangeable to the rate computation, so a mix of kinds in order determines every rate."""

    __slots__ = ("links", "nbytes", "done", "cap", "remaining", "rate", "finish_at", "label", "started", "kind")

    def __init__(self, links: tuple[Link, ...], nbytes: float, done: simpy.Event, cap: float, kind: int,
                 label: str = "", started: float = 0.0):
        self.links, self.nbytes, self.done, self.cap, self.kind = links, nbytes, done, cap, kind
        self.remaining, self.rate, self.finish_at = nbytes, 0.0, 0.0
        self.label, self.started = label, started


def fair_rates(kinds: list[tuple[tuple[Link, ...], float]]) -> list[float]:
    """Max-min fair rates of flows given as (links, cap), in order, by progressive filling:
    repeatedly take the tightest constraint, either the smallest flow cap or the smallest fair
    share of a link, and freeze the flows it binds. Ties go to the earlier flow or link, so the
    result depends only on the list; the Fabric remembers it per mix of flows."""
    first = kinds[0][0]
    nflows = len(kinds)
    rate = [-1.0] * nflows
    order = sorted(range(nflows), key=lambda i: kinds[i][1])      # stable: ties keep flow order
    if len(first) == 1 and all(lk is first or lk == first for lk, _ in kinds):
        # the common case, every flow on one link (DRAM): water-filling over the flows' caps
        room, n = first[0].bytes_per_cycle, nflows
        for i in order:
            r = rate[i] = min(kinds[i][1], room / n)
            room -= r
            n -= 1
        return rate
    index: dict[Link, int] = {}
    cap: list[float] = []
    count: list[int] = []
    users: list[list[int]] = []
    flow_links: list[list[int]] = []
    for i, (lks, _c) in enumerate(kinds):
        mine = []
        for link in lks:
            j = index.get(link)
            if j is None:
                j = index[link] = len(cap)
                cap.append(link.bytes_per_cycle)
                count.append(1)
                users.append([i])
            else:
                count[j] += 1
                users[j].append(i)
            mine.append(j)
        flow_links.append(mine)
    nlinks = len(cap)
    nxt, left = 0, nflows
    while left:
        best, share = -1, float("inf")
        for j in range(nlinks):
            n = count[j]
            if n and cap[j] < share * n:
                best, share = j, cap[j] / n
        while rate[order[nxt]] >= 0:
            nxt += 1
        head = order[nxt]
        if kinds[head][1] <= share:
            frozen, share = (head,), kinds[head][1]
        else:
            frozen = [i for i in users[best] if rate[i] < 0]
        for i in frozen:
            rate[i] = share
            left -= 1
            for j in flow_links[i]:
                cap[j] -= share
                count[j] -= 1
    return rate


class Fabric:
    """All the links of a chip and the flows on them."""

    def __init__(self, env: simpy.Environment):
        self.env = env
        self.flows: list[Flow] = []
        self._last = 0.0
        self._gen = 0
        # Only when tracing: after every rate change, one (None, link name, cycle, 0.0, bytes/cycle in
        # use, "", -1) record per link whose rate may have changed, appended to the chip's trace.
        self.samples: list | None = None
        self._in_use: dict[str, float] = {}
        self._kinds: dict[tuple, int] = {}           # (links, cap) -> kind number
        self._kind_list: list[tuple] = []
        self._memo: dict[tuple[int, ...], list[float]] = {}
        self._use_memo: dict[tuple[int, ...], dict[str, float]] = {}    # tracing: mix -> each link's rate

    def transfer(self, links: tuple[Link, ...], nbytes: float, cap: float = float("inf"),
                 label: str = "") -> simpy.Event:
        """Move nbytes across shared links at no more than `cap` bytes/cycle (the flow's own
        channel); the returned event fires when the last byte arrives."""
        env = self.env
        if not links:   # a private path: no contention, a plain delay
            return env.timeout(nbytes / cap if nbytes > 0 else 0.0)
        ev = env.event()
        if nbytes <= 0:
            ev.succeed()
            return ev
        now = env.now
        dt = now - self._last
        if dt > 0:
            for f in self.flows:
                f.remaining -= f.rate * dt
        self._last = now
        sig = (links, cap)
        kind = self._kinds.get(sig)
        if kind is None:
            kind = self._kinds[sig] = len(self._kind_list)
            self._kind_list.append(sig)
        f = Flow(links, float(nbytes), ev, cap, kind, label, now)
        for link in links:
            if link._count == 0:
                link._since = now
            link._count += 1
        self.flows.append(f)
        self._reschedule()
        return ev

    # -- internals -------------------------------------------------------------------------------
    def _advance(self) -> None:
        now = self.env.now
        dt = now - self._last
        if dt > 0:
            for f in self.flows:
                f.remaining -= f.rate * dt
        self._last = now

    def _finish(self, f: Flow) -> None:
        now = self.env.now
        for link in f.links:
            link.bytes += f.nbytes
            link._count -= 1
            if link._count == 0:
                link.busy += now - link._since
                link._since = None
        f.done.succeed()

    def _rates(self) -> tuple[int, ...]:
        """Every flow's rate: fair_rates of the current mix, remembered per mix (a mix of the same
        kinds in the same order always gets the same rates, bit for bit). Returns the mix."""
        flows = self.flows
        key = tuple([f.kind for f in flows])
        rates = self._memo.get(key)
        if rates is None:
            kinds = self._kind_list
            rates = fair_rates([kinds[k] for k in key])
            if len(self._memo) >= RATES_MEMO:
                self._memo.clear()
            self._memo[key] = rates
        for f, r in zip(flows, rates):
            f.rate = r
        return key

    def _reschedule(self) -> None:
        flows = self.flows
        if not flows:
            if self.samples is not None:
                self._sample(())
            return
        key = self._rates()
        if self.samples is not None:
            self._sample(key)
        now = self.env.now
        nxt = float("inf")
        for f in flows:
            rem = f.remaining
            t = f.finish_at = now + (rem if rem > 0.0 else 0.0) / f.rate
            if t < nxt:
                nxt = t
        self._gen += 1
        gen = self._gen
        t = self.env.timeout(nxt - now if nxt > now else 0.0)
        t.callbacks.append(lambda _ev, g=gen: self._wake(g))

    def _wake(self, gen: int) -> None:
        if gen != self._gen:
            return   # superseded by a later start or finish
        self._advance()
        now = self.env.now
        limit = now * (1 + EPS) + EPS
        flows = self.flows
        done = [f for f in flows if f.finish_at <= limit]
        if done:
            self.flows = flows = [f for f in flows if f.finish_at > limit]
            for f in done:
                f.remaining = 0.0
                self._finish(f)
        self._reschedule()

    def _sample(self, key: tuple[int, ...]) -> None:
        """Record each link's aggregate rate right after a rate change (tracing only). A mix of
        flow kinds (`key`) always gets the same rates (_rates), so its per-link sums are
        remembered too."""
        flows = self.flows
        use = self._use_memo.get(key)
        if use is None:
            use = {}
            for f in flows:
                for link in f.links:
                    use[link.name] = use.get(link.name, 0.0) + f.rate
            if len(self._use_memo) >= RATES_MEMO:
                self._use_memo.clear()
            self._use_memo[key] = use
        old = self._in_use
        if use == old:
            return
        now = self.env.now
        for name, rate in use.items():
            if old.get(name, 0.0) != rate:
                self.samples.append((None, name, now, 0.0, rate, "", -1))
        for name, rate in old.items():
            if name not in use and rate:
                self.samples.append((None, name, now, 0.0, 0.0, "", -1))
        self._in_use = use
