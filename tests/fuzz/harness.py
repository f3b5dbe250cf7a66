"""Shared machinery of the fuzz suite: example budgets, the clean-failure property, hang guards.

The property every fuzz test checks is the one the CLI relies on: for any input, mlusim either
succeeds or raises an MlusimError whose message is one printable line. Anything else (another
exception type, a hang, a side effect of loading) is a bug. These helpers make that property one
call, so each test reads as "what input" rather than "how to check".

Budgets: every property test declares its CI example count. MLUSIM_FUZZ_EXAMPLES=N is the long
opt-in mode: the cheapest properties run N examples and every other one the same multiple of its
CI count (the run takes about N / MAX_CI times the CI time). MLUSIM_FUZZ_SEED=S explores another
deterministic sequence; MLUSIM_FUZZ_STATS=FILE appends per-kind case counts (one JSON line per
process) so that a run can report how many cases of each input kind it tried.
"""
from __future__ import annotations

import atexit
import contextlib
import json
import os
import signal
import threading
from collections import Counter

from hypothesis import HealthCheck, seed, settings

from mlusim.errors import MlusimError

LONG_EXAMPLES = int(os.environ.get("MLUSIM_FUZZ_EXAMPLES", "0") or 0)
SEED = os.environ.get("MLUSIM_FUZZ_SEED")
# Hang guards scale with the work: in long mode an example may be a slow one, not a hung one.
HANG_SCALE = float(os.environ.get("MLUSIM_FUZZ_HANG_SCALE", "1"))

COUNTS: Counter = Counter()


def count(kind: str, n: int = 1) -> None:
    """Record that `n` cases of input kind `kind` were tried (reported via MLUSIM_FUZZ_STATS)."""
    COUNTS[kind] += n


def _dump_counts() -> None:
    path = os.environ.get("MLUSIM_FUZZ_STATS")
    if path and COUNTS:
        with open(path, "a") as fh:
            fh.write(json.dumps(dict(COUNTS)) + "\n")


atexit.register(_dump_counts)


# The largest CI budget of any property. Long mode scales every property by the same factor
# (MLUSIM_FUZZ_EXAMPLES / MAX_CI), so the cheapest reach N examples and the expensive ones
# (nine simulations per example) keep the cost ratio they have in CI.
MAX_CI = 2000


def examples(ci: int) -> int:
    return max(ci, LONG_EXAMPLES * ci // MAX_CI)


def fuzz(ci: int):
    """Decorator: hypothesis settings for a property with `ci` examples in CI (deterministic)."""
    def wrap(fn):
        s = settings(max_examples=examples(ci), deadline=None, derandomize=SEED is None, database=None,
                     print_blob=False,
                     suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                            HealthCheck.filter_too_much, HealthCheck.large_base_example,
                                            HealthCheck.function_scoped_fixture])
        fn = s(fn)
        return seed(int(SEED))(fn) if SEED is not None else fn
    return wrap


class Hang(AssertionError):
    """The code under test ran past its guard: a hang, or a budget that does not bite."""


@contextlib.contextmanager
def no_hang(seconds: float, what: str = "call"):
    """Fail with Hang if the body runs longer than `seconds` (SIGALRM, repeated until it gets out;
    main thread only, which is where pytest and pytest-xdist run tests)."""
    if threading.current_thread() is not threading.main_thread():  # pragma: no cover
        yield
        return
    seconds *= HANG_SCALE

    def fire(_sig, _frame):
        raise Hang(f"{what} still running after {seconds:.0f} s")

    old = signal.signal(signal.SIGALRM, fire)
    # Re-fire every second: SimPy turns an exception in one process into that process's failure
    # and may run other ready processes (say, a sibling core's task loop) before it surfaces.
    signal.setitimer(signal.ITIMER_REAL, seconds, 1.0)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def assert_clean_error(e: BaseException, prefix: str | None = None) -> str:
    msg = str(e)
    assert isinstance(e, MlusimError), f"{type(e).__name__} is not an MlusimError: {msg}"
    assert msg and "\n" not in msg and "\r" not in msg and msg.isprintable(), f"not one printable line: {msg!r}"
    if prefix is not None:
        assert msg.startswith(prefix), f"message does not start with {prefix!r}: {msg}"
    return msg


def check_outcome(fn, *args, timeout: float = 30, kind: str | None = None, **kw):
    """Run fn(*args, **kw) under a hang guard: returns (result, None) or (None, MlusimError).
    Any other exception propagates, which fails the test with its traceback."""
    if kind:
        count(kind)
    with no_hang(timeout, getattr(fn, "__name__", "call")):
        try:
            return fn(*args, **kw), None
        except MlusimError as e:
            assert_clean_error(e)
            if kind:
                count(kind + " (rejected)")
            return None, e
