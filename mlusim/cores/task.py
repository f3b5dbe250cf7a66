"""What a task sees while it runs (BANG's taskId, coreId, ...) and the barriers it meets.

Kept apart from the chip so that a core can hold its task without knowing the chip's dispatcher.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import simpy

from mlusim.program import Kernel


class Barrier:
    def __init__(self, env: simpy.Environment, parties: int, cost: float, name: str, releases: list | None = None,
                 on_release: Callable[[], None] | None = None):
        self.env, self.parties, self.cost, self.name = env, parties, cost, name
        self.arrived: list[tuple[int, int]] = []
        self.event = env.event()
        self.releases = releases      # when given, each release time is appended
        self.on_release = on_release  # and this is called (the chip snapshots the job's counters)

    def describe(self) -> str:
        return f"{self.name} ({len(self.arrived)}/{self.parties} arrived)"

    def _release(self, ev: simpy.Event) -> None:
        if self.releases is not None:
            self.releases.append(self.env.now)
        if self.on_release is not None:    # after the waiting cores resumed and counted their wait
            ev.callbacks.append(lambda _e: self.on_release())
        ev.succeed()

    def arrive(self, core_id: int, pc: int) -> simpy.Event:
        self.arrived.append((core_id, pc))
        ev = self.event
        if len(self.arrived) == self.parties:
            self.arrived, self.event = [], self.env.event()   # reusable: next round starts fresh
            self.env.timeout(self.cost).callbacks.append(lambda _e: self._release(ev))
        return ev


@dataclass
class TaskContext:
    """What a running task can see about itself (BANG's taskId, coreId, ...) and its barriers."""

    kernel: Kernel
    taskid: int
    taskdim: int
    coreid: int
    clusterid: int
    coredim: int
    clusterdim: int
    cluster_barrier: Barrier | None = None
    all_barrier: Barrier | None = None
    clusters: list | None = None          # a union job's clusters, in clusterid order (remote s2s)

    def barrier(self, mnemonic: str) -> Barrier | None:
        return self.cluster_barrier if mnemonic == "sync.cluster" else self.all_barrier
