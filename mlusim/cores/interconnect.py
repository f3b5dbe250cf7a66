"""Shared bandwidth as a fluid: every transfer in flight gets a max-min fair share of each link.

A Flow crosses one or more Links (a core's DMA port, a cluster's SRAM port, the DRAM). Whenever a
flow starts or finishes, the Fabric advances every flow by the bytes it moved at its old rate and
recomputes all rates by progressive filling, so N cores streaming from DRAM each get 1/N of it
(or their port's peak, if lower) and the total never exceeds the DRAM bandwidth. This costs one
event per start and per finish, never one per cycle or per byte.
"""
from __future__ import annotations

from dataclasses import dataclass
from itertools import compress, repeat
from math import inf
from operator import mul, not_, sub, truediv

from mlusim.cores.clock import Clock, Signal, Wake

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
    """One transfer: what it crosses and moves at most how fast, and the event its end fires. Its
    changing numbers (remaining bytes, rate, finish time) live in the Fabric's parallel lists.
    It is also the event of its start, `delay` after the DMA queue takes it (a descriptor's set-up
    and DRAM latency): its own heap entry, with `callbacks` the fabric's `start_cbs`, so the
    queue sleeps once per transfer. A DMA queue keeps one Flow and refills it for each transfer
    (cores/units.py); `kind` is Fabric.kind_of(links, cap), which the queue keeps per route."""

    __slots__ = ("links", "nbytes", "cap", "done", "callbacks", "kind")
    _ok = True

    def __init__(self, links: tuple[Link, ...], nbytes: float, cap: float, done: Signal | Wake, callbacks=None,
                 kind: int | None = None):
        self.links, self.nbytes, self.cap, self.done, self.callbacks = links, nbytes, cap, done, callbacks
        self.kind = kind        # Fabric.kind_of(links, cap), if the caller knows it


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


def _delay(t: float, q: float) -> float:
    """The delay of a wake-up set at cycle t for a first finish q cycles away: (t + q) - t, or 0
    if q <= 0 (the finish cycle rounded, then taken back to a delay as it always was)."""
    nxt = t + q if q > 0.0 else t
    return nxt - t if nxt > t else 0.0


def _due(t: float, q: float) -> float:
    """Where that wake-up lands, t + _delay(t, q) (written out: a start computes two of these):
    monotone in q, as every rounding step is."""
    nxt = t + q if q > 0.0 else t
    return t + (nxt - t if nxt > t else 0.0)


def _first_finish(plan: tuple[float, list[float], list[float]]) -> float:
    """When the first flow of a plan (cycle, remaining, rates) ends: the least quotient, as
    rounding is monotone (or the cycle itself, if a flow has nothing left). The rates list is the
    plan's mix, so flows appended to `remaining` after it are not looked at."""
    t, rem, rates = plan
    return _due(t, min(map(truediv, rem, rates)))


class Fabric:
    """All the links of a chip and the flows on them. The flows in flight are kept in start order
    as parallel lists (each flow's kind and bytes remaining, with the rates of the current mix),
    since every start and finish walks all of them: the walks are C-level maps over plain floats,
    the same operations in the same order as one flow at a time."""

    def __init__(self, env: Clock):
        self.env = env
        self.start_cbs = [self._start]          # every delayed flow's callbacks (the loop only reads them)
        self._wake_cb = self._wake               # the alarm's callback, bound once (set 80k times)
        self.flows: list[Flow] = []
        self.kinds: list[int] = []               # each flow's kind (its (links, cap) pair)
        self.remaining: list[float] = []         # bytes still to move, as of `_last`
        self.rates: list[float] = []             # bytes/cycle of each flow (the memo's list: never mutated)
        self._last = 0.0
        # (cycle, remaining, rates) when the current wake-up was set: its flows' finish times, which
        # it works out only when it fires (most wake-ups are superseded by another start first).
        # Holding the lists is a snapshot: advancing and finishing replace `remaining`, and the
        # only change in place, a start's append, comes with a new plan that supersedes this one.
        self._planned: tuple[float, list[float], list[float]] = (0.0, [], [])
        # Only when tracing: after every rate change, one (None, link name, cycle, 0.0, bytes/cycle in
        # use, "", -1) record per link whose rate may have changed, appended to the chip's trace.
        self.samples: list | None = None
        self._in_use: dict[str, float] = {}
        self._kinds: dict[tuple, int] = {}           # (links, cap) -> kind number
        self._kind_list: list[tuple] = []
        # mixes of flow kinds in start order, numbered: (kinds, rates, largest rate) by number, the
        # number of each mix, and of the mix one more start of a kind makes (a start's O(1) look-up)
        self._mixes: list[tuple[tuple[int, ...], list[float], float]] = []
        self._mix_ids: dict[tuple[int, ...], int] = {}
        self._grown: list[dict[int, int]] = []      # by mix number: a kind started -> the mix it makes
        self.mix = self._mix_id(())
        self._min_rem: float | None = inf       # least of `remaining` (None: not worked out yet)
        self._use_memo: dict[tuple[int, ...], dict[str, float]] = {}    # tracing: mix -> each link's rate

    def kind_of(self, links: tuple[Link, ...], cap: float) -> int:
        """The number of a kind of flow (its links and cap): mixes of flows are numbered by these."""
        sig = (links, cap)
        kind = self._kinds.get(sig)
        if kind is None:
            kind = self._kinds[sig] = len(self._kind_list)
            self._kind_list.append(sig)
        return kind

    # -- internals -------------------------------------------------------------------------------
    def _start(self, flow: Flow) -> None:
        links, nbytes = flow.links, flow.nbytes
        if nbytes <= 0:
            flow.done.succeed()
            return
        env = self.env
        now = env._now
        if now != self._last:
            self._advance(now)
        kind = flow.kind
        if kind is None:
            kind = self.kind_of(links, flow.cap)
        for link in links:
            if link._count == 0:
                link._since = now
            link._count += 1
        nbytes = flow.nbytes = float(nbytes)
        rem = self.remaining
        least = self._min_rem
        if least is None:
            least = min(rem) if rem else inf
        self._min_rem = nbytes if nbytes < least else least
        self.flows.append(flow)
        self.kinds.append(kind)
        rem.append(nbytes)          # see _planned
        mix = self._grown[self.mix].get(kind)
        if mix is None:
            mix = self._grow(kind)
        self.mix = mix
        _, rates, top = self._mixes[mix]
        self.rates = rates
        if self.samples is not None:
            self._sample(self._mixes[mix][0])
        # the first finish lies between where the least remaining bytes at the largest rate and
        # where the new flow alone would put it; worked out only if the event loop needs it first
        plan = self._planned = (now, rem, rates)
        q = self._min_rem / top         # _due(now, q) for both bounds, inline
        low = now + q if q > 0.0 else now
        q = nbytes / rates[-1]
        high = now + q if q > 0.0 else now
        env.set_alarm_between(now + (low - now if low > now else 0.0), now + (high - now if high > now else 0.0),
                              self._wake_cb, _first_finish, plan)

    def _advance(self, now: float) -> None:
        """Every flow's remaining bytes, moved on to `now` at the current rates (r - rate * dt,
        flow by flow, as a new list)."""
        dt = now - self._last
        if dt > 0:
            self.remaining = list(map(sub, self.remaining, map(mul, self.rates, repeat(dt))))
            self._min_rem = None
        self._last = now

    def _mix_id(self, key: tuple[int, ...]) -> int:
        """The number of a mix of flow kinds, its fair_rates worked out the first time (a mix of
        the same kinds in the same order always gets the same rates, bit for bit)."""
        m = self._mix_ids.get(key)
        if m is None:
            if len(self._mixes) >= RATES_MEMO:
                self._mixes.clear()
                self._mix_ids.clear()
                self._grown.clear()         # (the mix numbers change: see _grow)
            kinds = self._kind_list
            rates = fair_rates([kinds[k] for k in key]) if key else []
            m = self._mix_ids[key] = len(self._mixes)
            self._mixes.append((key, rates, max(rates, default=0.0)))
            self._grown.append({})
        return m

    def _grow(self, kind: int) -> int:
        """The mix after a start of `kind` (self.mix is the mix before it)."""
        key = self._mixes[self.mix][0] + (kind,)
        n = len(self._mixes)
        mix = self._mix_id(key)
        if len(self._mixes) >= n:      # the numbers were not reset: remember the step
            self._grown[self.mix][kind] = mix
        return mix

    def _reschedule(self) -> None:
        """New rates after flows finished, and the next wake-up, worked out at once."""
        mix = self.mix = self._mix_id(tuple(self.kinds))
        key, rates, _ = self._mixes[mix]
        self.rates = rates
        self._min_rem = None
        if self.samples is not None:
            self._sample(key)
        if not self.flows:
            return
        now = self.env._now
        self._planned = (now, self.remaining, rates)
        self.env.set_alarm(_delay(now, min(map(truediv, self.remaining, rates))), self._wake_cb)

    def _wake(self) -> None:
        now = self.env._now
        self._advance(now)
        limit = now * (1 + EPS) + EPS
        t, rem, rates = self._planned
        # which flows go on: each one's finish time (moving what it had left at the plan's cycle at
        # its rate) past the limit, worked out in one pass
        going = [t + (r if r > 0.0 else 0.0) / q > limit for r, q in zip(rem, rates)]
        flows = self.flows
        if not all(going):
            if any(going):
                self.flows = list(compress(flows, going))
                self.kinds = list(compress(self.kinds, going))
                self.remaining = list(compress(self.remaining, going))
            else:
                self.flows, self.kinds, self.remaining = [], [], []
            for f in compress(flows, map(not_, going)):     # each finished flow, in start order
                for link in f.links:
                    link.bytes += f.nbytes
                    link._count -= 1
                    if link._count == 0:
                        link.busy += now - link._since
                        link._since = None
                f.done.succeed()
        self._reschedule()

    def _sample(self, key: tuple[int, ...]) -> None:
        """Record each link's aggregate rate right after a rate change (tracing only). A mix of
        flow kinds (`key`) always gets the same rates (_rates), so its per-link sums are
        remembered too."""
        use = self._use_memo.get(key)
        if use is None:
            use = {}
            for f, rate in zip(self.flows, self.rates):
                for link in f.links:
                    use[link.name] = use.get(link.name, 0.0) + rate
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
