"""The small synchronisation parts of a core: instruction queues and dependency-token queues.

Both are plain counters/deques that create a SimPy event only when someone actually has to wait,
so an instruction that finds its token ready or its queue slot free costs no event at all.
"""
from __future__ import annotations

from collections import deque

from mlusim.cores.clock import Clock, Signal


class TokenQueue:
    """Dependency tokens from one unit queue to another (TVM VTA's dependence queues)."""

    __slots__ = ("env", "count", "waiter", "name", "sent")

    def __init__(self, env: Clock, name: str):
        self.env = env
        self.count = 0
        self.waiter: Signal | None = None
        self.name = name
        # tracing only: (end, track) of each token's sender, oldest first, for the trace's arrows
        self.sent: deque = deque()

    def push(self) -> None:
        if self.waiter is not None:
            w, self.waiter = self.waiter, None
            w.succeed()
        else:
            self.count += 1

    def wait(self) -> Signal:
        """Only called when count == 0; the push that satisfies it consumes the token."""
        self.waiter = Signal(self.env)
        return self.waiter


class InstrQueue:
    """The bounded FIFO between a core's issue stage and one of its units."""

    __slots__ = ("env", "depth", "items", "item_waiter", "space_waiter")

    def __init__(self, env: Clock, depth: int):
        self.env = env
        self.depth = depth
        self.items: deque = deque()
        self.item_waiter: Signal | None = None
        self.space_waiter: Signal | None = None

    @property
    def full(self) -> bool:
        return len(self.items) >= self.depth

    def put(self, item) -> None:
        self.items.append(item)
        if self.item_waiter is not None:
            w, self.item_waiter = self.item_waiter, None
            w.succeed()

    def wait_item(self) -> Signal:
        self.item_waiter = Signal(self.env)
        return self.item_waiter

    def wait_space(self) -> Signal:
        self.space_waiter = Signal(self.env)
        return self.space_waiter

    def pop(self):
        item = self.items.popleft()
        if self.space_waiter is not None:
            w, self.space_waiter = self.space_waiter, None
            w.succeed()
        return item
