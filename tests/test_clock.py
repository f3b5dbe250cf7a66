"""The clock's alarm fires exactly where a SimPy timeout set at the same moment would."""
from __future__ import annotations

import random

import pytest
import simpy

from mlusim.cores.clock import Clock


class TimeoutPlans:
    """The plain SimPy way: every plan is a timeout; superseded ones fire and do nothing."""

    def __init__(self, env):
        self.env, self.current = env, None

    def plan(self, delay, callback):
        t = self.current = self.env.timeout(delay)
        t.callbacks.append(lambda ev: ev is self.current and callback())


class AlarmPlans:
    def __init__(self, env):
        self.env = env

    def plan(self, delay, callback):
        self.env.set_alarm(delay, callback)


class OpenPlans:
    """Plans set with their time open between bounds, worked out only when the loop needs it."""

    def __init__(self, env, seed):
        self.env, self.rng = env, random.Random(seed + 1000)

    def plan(self, delay, callback):
        env, rng = self.env, self.rng
        due = env.now + delay
        low = max(env.now, due - rng.choice([0, 0.5, 1, delay]))
        high = due + rng.choice([0, 1, 4])
        env.set_alarm_between(low, high, callback, lambda t: t, due)


def scenario(env, plans, seed: int, stuck: bool = False) -> list:
    """Workers sleeping on coinciding integer times, re-planning one shared wake-up as they go."""
    rng = random.Random(seed)
    log = []

    def wake():
        log.append(("wake", env.now))
        if rng.random() < 0.5:
            plans.plan(rng.choice([0, 1, 2, 3]), wake)

    def worker(i):
        for _ in range(30):
            yield env.timeout(rng.choice([0, 1, 2]))
            log.append((i, env.now))
            if rng.random() < 0.4:
                plans.plan(rng.choice([0, 1, 2, 5]), wake)
        if stuck:
            yield env.event()       # never fires: the run drains

    procs = [env.process(worker(i)) for i in range(4)]
    main = simpy.AllOf(env, procs)
    try:
        env.run(until=main)
    except RuntimeError as e:
        assert "No scheduled events left" in str(e)
        log.append(("drained", env.now))
    return log


@pytest.mark.parametrize("seed", range(20))
def test_alarm_keeps_simpy_order(seed):
    plain = simpy.Environment()
    clock = Clock()
    assert scenario(clock, AlarmPlans(clock), seed) == scenario(plain, TimeoutPlans(plain), seed)


@pytest.mark.parametrize("seed", range(20))
def test_open_alarm_keeps_simpy_order(seed):
    plain = simpy.Environment()
    clock = Clock()
    assert scenario(clock, OpenPlans(clock, seed), seed) == scenario(plain, TimeoutPlans(plain), seed)


@pytest.mark.parametrize("seed", range(10))
def test_drained_run_ends_where_superseded_timeouts_would_leave_it(seed, monkeypatch):
    plain = simpy.Environment()
    expect = scenario(plain, TimeoutPlans(plain), seed, stuck=True)
    assert expect[-1][0] == "drained"
    clock = Clock()
    assert scenario(clock, AlarmPlans(clock), seed, stuck=True) == expect
    for keep in (256, 2):       # superseded open plans kept, and pruned or resolved early
        clock = Clock()
        monkeypatch.setattr("mlusim.cores.clock.OPEN_MAX", keep)
        assert scenario(clock, OpenPlans(clock, seed), seed, stuck=True) == expect


def test_step_and_peek_see_the_alarm():
    clock = Clock()
    rang = []
    clock.timeout(5)
    clock.set_alarm(3, lambda: rang.append(clock.now))
    assert clock.peek() == 3
    clock.step()
    assert rang == [3] and clock.now == 3 and clock.peek() == 5
    clock.set_alarm(10, lambda: rang.append(clock.now))
    clock.set_alarm(1, lambda: rang.append(clock.now))     # replaces the one at 13
    clock.step()
    clock.step()
    assert rang == [3, 4] and clock.now == 5
    assert clock.peek() == 13      # only the superseded plan's time is left: a drained run ends there
    clock.step()
    assert clock.now == 13 and clock.peek() == float("inf")


def test_call_later_runs_where_a_timeout_callback_would():
    def order(env, later):
        log = []
        for i, d in enumerate([2, 0, 2, 1, 0, 2]):
            if i % 2:
                later(env, d, lambda _e, i=i: log.append((i, env.now)))
            else:
                env.timeout(d).callbacks.append(lambda _e, i=i: log.append((i, env.now)))
        env.run()
        return log

    clock = Clock()
    plain = simpy.Environment()
    expect = order(plain, lambda env, d, cb: env.timeout(d).callbacks.append(cb))
    assert order(clock, lambda env, d, cb: env.call_later(d, cb)) == expect


def relay(env, make, seed: int) -> list:
    """Workers hand signals to each other at coinciding times, beside timeouts of 0 and more and
    processes started mid-run (URGENT initialisations): the due-now FIFO keeps SimPy's order."""
    rng = random.Random(seed)
    log, waiting = [], []

    def worker(i):
        for _ in range(25):
            r = rng.random()
            if r < 0.3 and waiting:
                waiting.pop(rng.randrange(len(waiting))).succeed()
            elif r < 0.5:
                ev = make(env)
                waiting.append(ev)
                yield ev
            elif r < 0.55:
                env.process(child(i))
            else:
                yield env.timeout(rng.choice([0, 0, 1, 2]))
            log.append((i, env.now))

    def child(i):
        log.append(("child", i, env.now))
        yield env.timeout(0)
        log.append(("child done", i, env.now))

    procs = [env.process(worker(i)) for i in range(5)]
    for _ in range(40):      # release whoever still waits, one by one, until everyone is done
        env.run(until=env.timeout(3) if not all(p.triggered for p in procs) else None)
        for ev in waiting:
            ev.succeed()
        waiting.clear()
    return log


@pytest.mark.parametrize("seed", range(20))
def test_signals_and_due_now_events_keep_simpy_order(seed):
    from mlusim.cores.clock import Signal

    plain = simpy.Environment()
    clock = Clock()
    assert relay(clock, Signal, seed) == relay(plain, lambda env: env.event(), seed)


def wake_relay(env, seed: int, callbacks: bool) -> list:
    """Units that log a step, then poke a waiting unit, wait to be poked, or sleep: as SimPy
    processes on Signals and Timeouts, or as callbacks on `Wake`s started by `Clock.start`. One
    random stream drawn in execution order, so any change in the order changes the log."""
    from mlusim.cores.clock import Wake

    rng = random.Random(seed)
    log, waiting = [], []

    def decide():
        r = rng.random()
        if r < 0.3 and waiting:
            waiting.pop(rng.randrange(len(waiting))).succeed()
            return "sleep", 0
        if r < 0.55:
            return "wait", None
        return "sleep", rng.choice([0, 0, 1, 2])

    def process(i):
        for step in range(25):
            log.append((i, step, env.now))
            kind, delay = decide()
            if kind == "wait":
                ev = env.event()
                waiting.append(ev)
                yield ev
            else:
                yield env.timeout(delay)

    class Unit:
        def __init__(self, i):
            self.i, self.step, self.wake = i, 0, Wake(env, self.resume)
            env.start(self.resume)

        def resume(self, _event):
            if self.step == 25:
                return
            log.append((self.i, self.step, env.now))
            self.step += 1
            kind, delay = decide()
            if kind == "wait":
                waiting.append(self.wake)
            else:
                self.wake.later(delay)

    for i in range(6):
        if callbacks and i % 3:
            Unit(i)
        else:
            env.process(process(i))
    env.run()
    return log


@pytest.mark.parametrize("seed", range(20))
def test_callback_units_on_wakes_keep_simpy_order(seed):
    assert wake_relay(Clock(), seed, True) == wake_relay(simpy.Environment(), seed, False)
