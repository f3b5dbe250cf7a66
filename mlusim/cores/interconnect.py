"""Shared bandwidth as a fluid: every transfer in flight gets a max-min fair share of each link.

A Flow crosses one or more Links (a core's DMA port, a cluster's SRAM port, the DRAM). Whenever a
flow starts or finishes, the Fabric advances every flow by the bytes it moved at its old rate and
recomputes all rates by progressive filling, so N cores streaming from DRAM each get 1/N of it
(or their port's peak, if lower) and the total never exceeds the DRAM bandwidth. This costs one
event per start and per finish, never one per cycle or per byte.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import simpy

EPS = 1e-9


@dataclass(eq=False)
class Link:
    name: str
    bytes_per_cycle: float
    bytes: float = 0.0            # total bytes carried, for reports
    busy: float = 0.0             # cycles with at least one flow on it
    _since: float | None = None
    _count: int = 0


@dataclass(eq=False)
class Flow:
    links: tuple[Link, ...]
    nbytes: float
    done: simpy.Event
    cap: float = float("inf")
    remaining: float = 0.0
    rate: float = 0.0
    finish_at: float = 0.0
    label: str = ""
    started: float = 0.0
    meta: dict = field(default_factory=dict)


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

    def transfer(self, links: tuple[Link, ...], nbytes: float, cap: float = float("inf"),
                 label: str = "") -> simpy.Event:
        """Move nbytes across shared links at no more than `cap` bytes/cycle (the flow's own
        channel); the returned event fires when the last byte arrives."""
        if not links:   # a private path: no contention, a plain delay
            return self.env.timeout(nbytes / cap if nbytes > 0 else 0.0)
        ev = self.env.event()
        if nbytes <= 0:
            ev.succeed()
            return ev
        self._advance()
        f = Flow(links, float(nbytes), ev, cap, float(nbytes), label=label, started=self.env.now)
        for link in links:
            if link._count == 0:
                link._since = self.env.now
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

    def _rates(self) -> None:
        """Max-min fair rates by progressive filling: repeatedly take the tightest constraint, either
        the smallest flow cap or the smallest fair share of a link, and freeze the flows it binds."""
        flows = self.flows
        first = flows[0].links
        if len(first) == 1 and all(f.links is first or f.links == first for f in flows):
            # the common case, every flow on one link (DRAM): water-filling over the flows' caps
            room, n = first[0].bytes_per_cycle, len(flows)
            for f in sorted(flows, key=lambda f: f.cap):
                f.rate = min(f.cap, room / n)
                room -= f.rate
                n -= 1
            return
        cap: dict[Link, float] = {}
        count: dict[Link, int] = {}
        users: dict[Link, list[Flow]] = {}
        for f in self.flows:
            f.rate = -1.0
            for link in f.links:
                if link in cap:
                    count[link] += 1
                    users[link].append(f)
                else:
                    cap[link], count[link], users[link] = link.bytes_per_cycle, 1, [f]
        pending = sorted(self.flows, key=lambda f: f.cap)
        nxt, left = 0, len(pending)
        while left:
            best, share = None, float("inf")
            for link, n in count.items():
                if n and cap[link] < share * n:
                    best, share = link, cap[link] / n
            while pending[nxt].rate >= 0:
                nxt += 1
            if pending[nxt].cap <= share:
                frozen, share = (pending[nxt],), pending[nxt].cap
            else:
                frozen = [f for f in users[best] if f.rate < 0]
            for f in frozen:
                f.rate = share
                left -= 1
                for link in f.links:
                    cap[link] -= share
                    count[link] -= 1

    def _reschedule(self) -> None:
        if not self.flows:
            if self.samples is not None:
                self._sample()
            return
        self._rates()
        if self.samples is not None:
            self._sample()
        now = self.env.now
        for f in self.flows:
            f.finish_at = now + max(f.remaining, 0.0) / f.rate
        nxt = min(f.finish_at for f in self.flows)
        self._gen += 1
        gen = self._gen
        t = self.env.timeout(max(nxt - now, 0.0))
        t.callbacks.append(lambda _ev, g=gen: self._wake(g))

    def _wake(self, gen: int) -> None:
        if gen != self._gen:
            return   # superseded by a later start or finish
        self._advance()
        now = self.env.now
        done = [f for f in self.flows if f.finish_at <= now * (1 + EPS) + EPS]
        for f in done:
            self.flows.remove(f)
            f.remaining = 0.0
            self._finish(f)
        self._reschedule()

    def _sample(self) -> None:
        """Record each link's aggregate rate right after a rate change (tracing only)."""
        use: dict[str, float] = {}
        for f in self.flows:
            for link in f.links:
                use[link.name] = use.get(link.name, 0.0) + f.rate
        now = self.env.now
        for name in sorted(use.keys() | self._in_use.keys()):
            rate = use.get(name, 0.0)
            if self._in_use.get(name, 0.0) != rate:
                self.samples.append((None, name, now, 0.0, rate, "", -1))
        self._in_use = use
