"""The small synchronisation parts of a core: instruction queues and dependency-token queues.

Both are plain counters/deques with a slot for whoever waits, so an instruction that finds its
token ready or its queue slot free costs no event at all. The issue stage and the units
(cores/units.py) work on them inline: a token pushed goes to the waiter if there is one (and is
consumed by it), else it is counted; an item put wakes the unit waiting for one.
"""
from __future__ import annotations

from collections import deque

from mlusim.cores.clock import Clock, Signal, Wake


class TokenQueue:
    """Dependency tokens from one unit queue to another (TVM VTA's dependence queues)."""

    __slots__ = ("env", "count", "waiter", "name", "sent")

    def __init__(self, env: Clock, name: str):
        self.env = env
        self.count = 0
        self.waiter: Wake | None = None     # the unit waiting for a token (only while count == 0)
        self.name = name
        # tracing only: (end, track) of each token's sender, oldest first, for the trace's arrows
        self.sent: deque = deque()


class InstrQueue:
    """The bounded FIFO between a core's issue stage and one of its units."""

    __slots__ = ("env", "depth", "items", "item_waiter", "space_waiter")

    def __init__(self, env: Clock, depth: int):
        self.env = env
        self.depth = depth
        self.items: deque = deque()
        self.item_waiter: Wake | None = None        # the unit, while the queue is empty
        self.space_waiter: Signal | None = None     # the issue stage, while the queue is full

    def wait_space(self) -> Signal:
        self.space_waiter = Signal(self.env)
        return self.space_waiter
