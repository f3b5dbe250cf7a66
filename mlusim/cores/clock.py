"""The event loop: SimPy's Environment plus one alarm kept beside its event heap.

The fabric re-plans its next wake-up at every transfer start and finish (80k times for a
ResNet-50 at batch 16), and most plans are superseded by another start before they are due. As
SimPy timeouts, each would be pushed onto the heap and popped later only to do nothing. The alarm
holds just the current plan, stamped with the event id a timeout made at that moment would have
drawn, so it fires exactly where that timeout would have in SimPy's order (time, priority, id):
every other event keeps its place, and a superseded plan costs nothing.

The only trace a superseded timeout would have left is the clock: popping it sets `now`, which
shows once the heap has run dry (a deadlock is dated by the last event). `_stale` keeps the latest
such time, so a drained run ends at the same cycle as with real timeouts.

Most events are due at once (an event succeeds: a token arrives, a transfer ends) and are drawn
in id order at the current time, so they wait in a plain FIFO beside the heap (`_soon`); the
heap holds only what is due later or is URGENT. The loop takes the least of the FIFO's head, the
heap's first entry and the alarm, all in SimPy's (time, priority, id) order: the same order as
one heap, without its sifting for three quarters of the events.

An alarm may also be set with its time left open between two bounds (`set_alarm_between`): the
fabric's plan after a transfer starts, which the next start at the same cycle (nine starts in ten)
supersedes. The loop orders it by its lower bound and works the time out only when that bound
would put it first; a superseded open plan is kept until the clock passes its upper bound, and
worked out only if the run drains while it might still be the latest (`_stale`).
"""
from __future__ import annotations

from collections import deque
from heapq import heappop, heappush
from math import inf

import simpy
from simpy.core import BoundClass, EmptySchedule, StopSimulation
from simpy.events import NORMAL, URGENT, EventPriority, _describe_frame


OPEN_MAX = 256          # superseded open plans kept before dropping those the clock has passed


class _Call:
    """What the event loop reads of a succeeded event: its callbacks, and that it is ok."""

    __slots__ = ("callbacks",)
    _ok = True

    def __init__(self, callbacks: list):
        self.callbacks = callbacks


class Signal:
    """An event that succeeds once, with no value, and never fails: what a unit or the issue
    stage sleeps on (a token, a queue slot, a transfer's end). SimPy's Event without the checks
    and attributes nothing here reads; its succeed is SimPy's schedule at the current time."""

    __slots__ = ("env", "callbacks")
    _ok = True
    _value = None

    def __init__(self, env: "Clock"):
        self.env = env
        self.callbacks: list = []

    def succeed(self) -> None:
        env = self.env
        env._soon.append((env._now, NORMAL, next(env._eid), self))


class Wake:
    """A Signal for a plain callback, made once and fired again and again: what a unit run as
    callbacks (cores/units.py) sleeps on, in place of a process waiting on a fresh Signal. Firing
    it takes the place in SimPy's order that the Signal's succeed (or a Timeout, `later`) would
    have, and the loop calls `callback(self)` there, as it would have resumed the process. Only
    its owner arms it, and only while it is not pending, so one object serves every wait."""

    __slots__ = ("env", "callbacks", "_once", "_push", "_eid")
    _ok = True
    _value = None

    def __init__(self, env: "Clock", callback):
        self.env = env
        self._once = [callback]     # the loop empties `callbacks` when it runs them: set anew each time
        self.callbacks: list | None = None
        self._push, self._eid = env._soon.append, env._eid     # (fired 180k times at ResNet-50 b16)

    def succeed(self) -> None:
        self.callbacks = self._once
        self._push((self.env._now, NORMAL, next(self._eid), self))

    def later(self, delay: float) -> None:
        """Fire `delay` from now, where Timeout(delay) made now would (the same heap entry)."""
        env = self.env
        self.callbacks = self._once
        heappush(env._queue, (env._now + delay, NORMAL, next(env._eid), self))


class Process(simpy.Process):
    """SimPy's Process with its resume pared down for the engine's hot path: the generator's
    send and the resume callback are bound once, and a failed event (which no engine process
    waits on) is handed to SimPy's own resume. Ending, failing and bad yields behave as SimPy's."""

    def __init__(self, env: "Clock", generator):
        super().__init__(env, generator)
        self._send = generator.send
        self._callback = self._resume

    def _resume(self, event) -> None:
        if not event._ok:
            return simpy.Process._resume(self, event)
        env = self.env
        env._active_proc = self
        while True:
            try:
                event = self._send(event._value)
            except StopIteration as e:
                self._ok = True
                self._value = e.args[0] if len(e.args) else None
                env.schedule(self)
                event = None
                break
            except BaseException as e:
                self._ok = False
                e.__traceback__ = e.__traceback__.tb_next
                self._value = e
                env.schedule(self)
                event = None
                break
            try:
                callbacks = event.callbacks
            except AttributeError:      # as SimPy
                if hasattr(event, "callbacks"):
                    raise
                descr = _describe_frame(self._generator.gi_frame)
                raise RuntimeError(f'\n{descr}Invalid yield value "{event}"') from None
            if callbacks is not None:
                callbacks.append(self._callback)
                break
            if not event._ok:        # already processed, and failed: SimPy's handling from here
                return simpy.Process._resume(self, event)
        self._target = event
        env._active_proc = None


class Clock(simpy.Environment):
    def __init__(self) -> None:
        super().__init__()
        # SimPy binds env.timeout, env.event, ... once per environment, but only those its own class
        # declares: bind the inherited ones too, or each use goes through a descriptor
        for name, obj in vars(simpy.Environment).items():
            if isinstance(obj, BoundClass):
                setattr(self, name, getattr(self, name))
        self.process = lambda generator: Process(self, generator)
        # the current plan: (time, NORMAL, event id, callback), or while its time is open
        # (lower bound, NORMAL, event id, callback, resolve, plan, upper bound)
        self._alarm: tuple | None = None
        self._stale = 0.0                     # latest time of a superseded plan
        self._open: list[tuple] = []          # superseded open plans that may still be the latest
        self._open_low = 0.0                  # the highest lower bound among them, once kept
        self._soon: deque = deque()           # heap entries due now at NORMAL priority, in id order

    def schedule(self, event, priority=NORMAL, delay=0) -> None:
        """SimPy's schedule: an entry due now at NORMAL priority goes to the FIFO (its id is the
        largest drawn so far, so it is the FIFO's last in SimPy's order too)."""
        if delay == 0 and priority == NORMAL:
            self._soon.append((self._now, NORMAL, next(self._eid), event))
        else:
            heappush(self._queue, (self._now + delay, priority, next(self._eid), event))

    def signal(self) -> Signal:
        return Signal(self)

    def start(self, callback) -> None:
        """Call `callback(event)` where env.process would first resume a generator made now: its
        Initialize event, an URGENT entry at the current time."""
        heappush(self._queue, (self._now, URGENT, next(self._eid), _Call([callback])))

    def set_alarm(self, delay: float, callback) -> None:
        """Call `callback()` `delay` from now, where a Timeout(delay) made now would fire;
        replaces the alarm set before, if it has not fired."""
        if self._alarm is not None:
            self._supersede(self._alarm)
        # shaped like a heap entry (time, priority, id, ...): ids are unique, so comparing it with
        # the heap's first entry decides by SimPy's order and never looks at the callback
        self._alarm = (self._now + delay, NORMAL, next(self._eid), callback)

    def set_alarm_between(self, low: float, high: float, callback, resolve, plan) -> None:
        """`set_alarm` for a time known to lie in [low, high] (absolute cycles) that `resolve(plan)`
        works out exactly, as the delay passed to set_alarm now would have given it; `plan` must
        keep its value after the alarm is replaced."""
        old = self._alarm
        if old is not None and (len(old) == 4 or old[6] > self._stale and old[6] > self._open_low):
            self._supersede(old)        # (an open plan that cannot be the latest leaves nothing)
        self._alarm = (low, NORMAL, next(self._eid), callback, resolve, plan, high)

    def _supersede(self, old: tuple) -> None:
        """Remember what a replaced plan leaves: its time, if later than any before (a drained run
        ends there). An open plan is kept unresolved, unless it cannot be the latest: its upper
        bound is at most the stale time or a lower bound kept before (that plan ends later)."""
        if len(old) == 4:
            if old[0] > self._stale:
                self._stale = old[0]
            return
        if old[6] <= self._stale or old[6] <= self._open_low:
            return
        self._open.append(old)
        if old[0] > self._open_low:
            self._open_low = old[0]
        if len(self._open) >= OPEN_MAX:
            self._prune_open()

    def _prune_open(self) -> None:
        """Drop kept open plans the clock has passed (they cannot date a drained run), and
        resolve the rest if many remain."""
        now = self._now
        self._open = [p for p in self._open if p[6] > now]
        if len(self._open) >= OPEN_MAX // 2:
            self._settle()

    def _settle(self) -> None:
        """Work out every kept open plan's time into `_stale` (the run drained, or too many)."""
        for p in self._open:
            t = p[4](p[5])
            if t > self._stale:
                self._stale = t
        self._open.clear()

    def call_later(self, delay: float, callback) -> None:
        """`callback(event)` `delay` from now, exactly where Timeout(delay) with that callback
        would run: the same heap entry, with a bare event in place of the Timeout object."""
        heappush(self._queue, (self._now + delay, NORMAL, next(self._eid), _Call([callback])))

    def peek(self) -> float:
        t = self._now if self._soon else super().peek()
        alarm = self._alarm
        if alarm is not None:
            if len(alarm) > 4:
                alarm = self._resolve(alarm)
            return min(t, alarm[0])
        if t == inf:
            self._settle()
            if self._stale > self._now:
                return self._stale
        return t

    def _next(self):
        """Take the next entry in SimPy's order: ring the alarm and return None, or return the
        event popped from the FIFO or the heap; EmptySchedule when nothing is left."""
        queue, soon, alarm = self._queue, self._soon, self._alarm
        if soon and not (queue and queue[0] < soon[0]):
            if alarm is not None and alarm < soon[0]:
                self._ring(alarm)
                return None
            return soon.popleft()[3]
        if alarm is not None and (not queue or alarm < queue[0]):
            self._ring(alarm)
            return None
        if not queue:
            self._drained()
            raise EmptySchedule
        self._now, _, _, event = heappop(queue)
        return event

    def step(self) -> None:
        """SimPy's step, with the FIFO and the alarm taking their turns."""
        if not self._queue and not self._soon and self._alarm is None:
            self._settle()
            if self._stale > self._now:
                self._now = self._stale       # what popping the superseded timeouts would leave
                return
        event = self._next()
        if event is None:
            return
        callbacks, event.callbacks = event.callbacks, None
        for callback in callbacks:
            callback(event)
        if not event._ok and not hasattr(event, "_defused"):
            exc = type(event._value)(*event._value.args)
            exc.__cause__ = event._value
            raise exc

    def _ring(self, alarm: tuple) -> None:
        """The alarm's turn by its time: call it, or if its time is open, work that out first (the
        loop then compares it again)."""
        if len(alarm) > 4:
            self._resolve(alarm)
            return
        self._alarm = None
        self._now = alarm[0]
        alarm[3]()

    def _resolve(self, alarm: tuple) -> tuple:
        exact = self._alarm = (alarm[4](alarm[5]), NORMAL, alarm[2], alarm[3])
        return exact

    def _drained(self) -> None:
        """Nothing is left to run: the clock stops where popping the superseded timeouts would."""
        self._settle()
        if self._stale > self._now:
            self._now = self._stale

    def run(self, until=None):
        """SimPy's run; until an event, as one loop with SimPy's step inlined (the engine's
        hundreds of thousands of events each save a method call)."""
        if not isinstance(until, simpy.Event) or until.callbacks is None:
            return super().run(until)
        until.callbacks.append(StopSimulation.callback)
        try:
            self._loop()
        except StopSimulation as exc:
            return exc.args[0]
        except EmptySchedule:
            raise RuntimeError(f'No scheduled events left but "until" event was not triggered: {until}') from None

    def _loop(self) -> None:
        queue, soon = self._queue, self._soon
        popleft = soon.popleft
        while True:
            alarm = self._alarm
            if soon and not (queue and queue[0] < soon[0]):
                if alarm is not None and alarm < soon[0]:
                    self._ring(alarm)
                    continue
                event = popleft()[3]
            elif alarm is not None and (not queue or alarm < queue[0]):
                self._ring(alarm)
                continue
            else:
                try:
                    self._now, _, _, event = heappop(queue)
                except IndexError:
                    self._drained()
                    raise EmptySchedule from None
            callbacks, event.callbacks = event.callbacks, None
            try:
                for callback in callbacks:
                    callback(event)
            except StopSimulation:     # as SimPy: the remaining callbacks run when the run resumes
                event.callbacks = callbacks[callbacks.index(callback) + 1:]
                self.schedule(event, EventPriority(URGENT - 1))
                raise
            if not event._ok and not hasattr(event, "_defused"):
                exc = type(event._value)(*event._value.args)
                exc.__cause__ = event._value
                raise exc
