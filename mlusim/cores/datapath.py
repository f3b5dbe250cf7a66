"""Where a run's values are computed: in the engine's own thread, or in a child process it feeds.

Why a child: timing never reads a value. Scalar registers are the only values the issue stage
uses, and no instruction loads memory into them, so a run's numerics are its instructions'
semantics applied in the order the units complete them, and nothing the engine decides depends
on them. A forked child applying them in that order computes the same bytes, into memories the
parent shares with it (Memory(shared=True): MAP_SHARED pages), while the parent's engine goes on:
at ResNet-50 b16 on 16 cores the engine's ~1.1 s runs beside the numerics' ~3.6 s instead of
before them. The parent tells the child what completed in batches (a core id and a small number
per instruction, an instruction's arguments once when first seen) and, at the end, waits for it
to store every pending product; memory then holds exactly what the engine's own thread would
have left there. Golden outputs are the same either way (tests/test_datapath.py runs both).
"""
from __future__ import annotations

import ctypes
import fcntl
import gc
import os
import pickle
import select
import signal
import sys
import threading
import time
from array import array
from dataclasses import dataclass

from mlusim.errors import SimulationError
from mlusim.isa.table import BY_OPCODE

BATCH = 3 * 2048        # ints per message: (core, instruction number, remote cluster) per completion
# The stream's pipe (F_SETPIPE_SZ; 64 KB otherwise) bounds how far the engine runs ahead: ~10
# batches, ~20k instructions, ~0.5 s of ResNet-50 b16's numerics. The engine is 3-4x quicker, so
# it waits at the full pipe, and its progress, wall-clock checks and the final wait stay honest.
PIPE_BYTES = 1 << 18
F_SETPIPE_SZ = 1031     # fcntl.F_SETPIPE_SZ (Linux; named in fcntl only from Python 3.10 on some builds)
BUDGET = "wall-clock budget exhausted while the numerics finished (raise --max-seconds)"
FORK_MIN = 20_000       # expected instructions below which a fork costs more than it overlaps


class Inline:
    """The numerics in the engine's thread, as each instruction completes."""

    def __init__(self, gemms):
        self.gemms = gemms

    def run(self, core, op, prep) -> None:
        self.gemms.execute(core, op, prep.args, prep.touched)

    def finish(self) -> None:
        self.gemms.settle()

    def close(self) -> None:
        pass


@dataclass
class JobClusters:
    """What Core.remote_sram reads of a task: its union job's clusters by place. The child's cores
    run no tasks, so a remote copy's target cluster comes with it in the stream."""
    clusters: dict


def can_fork() -> bool:
    """A child may be forked: on Linux, from a process with no other thread (a thread holding a
    lock at the fork would leave it held in the child; Python 3.12 warns of it)."""
    return sys.platform.startswith("linux") and threading.active_count() == 1


class Forked:
    """The numerics in a forked child. `chip`'s memories must be shared (Memory(shared=True)) and
    hold the run's inputs and constants: the child is forked here, with a copy of everything else."""

    def __init__(self, chip):
        self.deadline = chip.deadline       # time.monotonic() of the run's wall-clock budget, or None
        for m in chip.memories():
            m.buf                                   # allocate every space before the fork: shared
        _trim_heap()
        stream_r, stream_w = os.pipe()
        status_r, status_w = os.pipe()
        try:
            fcntl.fcntl(stream_w, F_SETPIPE_SZ, PIPE_BYTES)
        except OSError:                             # a smaller pipe only means shorter strides
            pass
        try:
            self.pid = os.fork()
        except OSError:
            for fd in (stream_r, stream_w, status_r, status_w):
                os.close(fd)
            raise
        if self.pid == 0:                           # pragma: no cover - the child (coverage runs in the parent)
            os.close(stream_w)
            os.close(status_r)
            _child(chip, stream_r, status_w)
        os.close(stream_r)
        os.close(status_w)
        self.stream = stream_w
        self.status = status_r
        self.known: dict[int, tuple[int, object]] = {}     # id(Prepared) -> (number, the Prepared)
        self.new: list = []
        self.items: list[int] = []

    def run(self, core, op, prep) -> None:
        hit = self.known.get(id(prep))
        if hit is None:
            hit = self.known[id(prep)] = (len(self.known), prep)
            self.new.append((hit[0], op.opcode, prep.args, prep.touched))
        dcl = prep.dcl
        self.items += (core.id, hit[0], core.task.clusters[dcl - 1].id if dcl else -1)
        if len(self.items) >= BATCH:
            self._send()

    def _send(self) -> None:
        self._put((self.new, array("i", self.items).tobytes()))
        self.new, self.items = [], []

    def _put(self, msg) -> None:
        """Write `msg` to the child, waiting while the pipe is full (not past the deadline)."""
        data = memoryview(pickle.dumps(msg, pickle.HIGHEST_PROTOCOL))
        try:
            while data:
                if self.deadline is not None:
                    self._writable()
                data = data[os.write(self.stream, data):]
        except BrokenPipeError:         # the child is gone: what it said, or how it died
            self._result()
            raise SimulationError(_death(self.status_code)) from None

    def _writable(self) -> None:
        if not select.select([], [self.stream], [], max(0.0, self.deadline - time.monotonic()))[1]:
            self.close()
            raise SimulationError(BUDGET)

    def finish(self) -> None:
        """Send what is left and wait until the child has stored every result."""
        self._send()
        self._put(None)
        self._close_stream()
        left = None if self.deadline is None else max(0.0, self.deadline - time.monotonic())
        if not select.select([self.status], [], [], left)[0]:
            self.close()
            raise SimulationError(BUDGET)
        self._result()

    def _result(self) -> None:
        raw = b""
        while chunk := os.read(self.status, 1 << 16):
            raw += chunk
        self._reap()
        msg = pickle.loads(raw) if raw else None
        if msg != "ok":
            raise SimulationError(f"the numerics process failed: {msg}" if isinstance(msg, str)
                                  else _death(self.status_code))

    def _reap(self) -> None:
        if self.pid:
            self.status_code = os.waitpid(self.pid, 0)[1]
            self.pid = 0
            os.close(self.status)

    def close(self) -> None:
        """Stop the child if it still runs (the run ended early: an error, Ctrl-C, a budget)."""
        if self.pid:
            try:
                os.kill(self.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self._reap()
        self._close_stream()

    def _close_stream(self) -> None:
        if self.stream >= 0:
            os.close(self.stream)
            self.stream = -1

    status_code = 0


def _trim_heap() -> None:
    """Give the C heap's free pages back before the fork: a free page both processes later reuse
    would be copied for one of them. VGG-16 b16/16 peak, both processes' PSS summed: 550 -> 464 MB
    (the run's own, one process: 443 MB)."""
    try:
        libc = ctypes.CDLL(None)
        libc.malloc_trim(0)
    except (OSError, AttributeError):       # not glibc: its heap keeps them
        pass


def _death(status: int) -> str:
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        why = " (out of memory?)" if sig == signal.SIGKILL else ""
        return f"the numerics process was killed by signal {signal.Signals(sig).name}{why}"
    return f"the numerics process exited with status {os.WEXITSTATUS(status)} before finishing"


def _child(chip, stream_fd: int, status_fd: int) -> None:  # pragma: no cover - runs in the child
    """Apply the stream's instructions in order, store every pending product, say how it went."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)    # Ctrl-C is the parent's to handle
    gc.freeze()         # the inherited heap is never garbage here: collections skip it (and its pages stay shared)
    code = 0
    try:
        msg = _apply(chip, os.fdopen(stream_fd, "rb", buffering=PIPE_BYTES))
    except BaseException as e:      # noqa: BLE001 - whatever it is, the parent reports it
        msg, code = f"{type(e).__name__}: {e}", 1
    try:
        os.write(status_fd, pickle.dumps(msg))
    finally:
        os._exit(code)


def _apply(chip, stream) -> str | None:  # pragma: no cover - runs in the child
    gemms, cores, clusters = chip.gemms, chip.cores, chip.clusters
    defs: list = []
    while True:
        try:
            msg = pickle.load(stream)
        except EOFError:
            return None                             # the parent stopped early: nothing to finish
        if msg is None:
            gemms.settle()
            return "ok"
        new, raw = msg
        for _, opcode, args, touched in new:
            defs.append((BY_OPCODE[opcode], args, touched))
        items = array("i")
        items.frombytes(raw)
        for i in range(0, len(items), 3):
            core = cores[items[i]]
            op, args, touched = defs[items[i + 1]]
            remote = items[i + 2]
            if remote >= 0:
                core.task = JobClusters({args["dcl"] - 1: clusters[remote]})
            gemms.execute(core, op, args, touched)
