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

    def transfer(self, links: tuple[Link, ...], nbytes: float, label: str = "") -> simpy.Event:
        """Start moving nbytes across links; the returned event fires when the last byte arrives."""
        ev = self.env.event()
        if nbytes <= 0 or not links:
            ev.succeed()
            return ev
        self._advance()
        f = Flow(links, float(nbytes), ev, float(nbytes), label=label, started=self.env.now)
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
        """Progressive filling: raise all rates together; freeze flows at their tightest link."""
        cap: dict[Link, float] = {}
        users: dict[Link, list[Flow]] = {}
        for f in self.flows:
            for link in f.links:
                if link not in cap:
                    cap[link] = link.bytes_per_cycle
                    users[link] = []
                users[link].append(f)
        unfrozen = set(self.flows)
        while unfrozen:
            best, share = None, float("inf")
            for link, fl in users.items():
                n = sum(1 for f in fl if f in unfrozen)
                if n:
                    s = cap[link] / n
                    if s < share:
                        best, share = link, s
            if best is None:  # pragma: no cover - every flow crosses at least one link
                break
            for f in users[best]:
                if f in unfrozen:
                    f.rate = share
                    unfrozen.discard(f)
                    for link in f.links:
                        cap[link] -= share

    def _reschedule(self) -> None:
        if not self.flows:
            return
        self._rates()
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
