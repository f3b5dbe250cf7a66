"""Progress on stderr: a rich bar on a terminal, a plain line every few seconds anywhere else.

rich draws nothing when stderr is not a terminal (nohup, CI logs, a pipe), so a long run, compile
or sweep used to be silent until it ended. There a line such as

    mlusim: run resnet50 on 4 core(s): kernel 3/12 (41% of it), 1,234,567 cycles [35 s]

goes to stderr at most once per interval (MLUSIM_PROGRESS_SECONDS, default 5; `off` for none),
and never for work that ends within its first interval. Callers report as often as they like
(every kernel, layer or point; the engine every few thousand instructions): `update` costs one
clock read unless a line is due.
"""
from __future__ import annotations

import math
import os
import sys
import time
from collections.abc import Callable
from typing import TextIO

from mlusim.errors import ConfigError

DEFAULT_SECONDS = 5.0
ENV = "MLUSIM_PROGRESS_SECONDS"
MODES = ("bar", "lines", "off")


def interval(env: dict | None = None) -> float | None:
    """Seconds between progress lines from MLUSIM_PROGRESS_SECONDS (default 5); None: `off` or 0."""
    text = (os.environ if env is None else env).get(ENV, "").strip()
    if not text:
        return DEFAULT_SECONDS
    if text.lower() in ("off", "0", "none", "no"):
        return None
    try:
        v = float(text)
    except ValueError:
        v = -1.0
    if not (math.isfinite(v) and v > 0):
        raise ConfigError(f"{ENV}={text[:40]!r}: expected a number of seconds between progress lines, or 'off'")
    return v


def choose_mode(wanted: bool, stream: TextIO | None = None) -> str:
    """`--progress/--no-progress` -> a bar on a terminal, lines elsewhere, or off."""
    if not wanted:
        return "off"
    return "bar" if (stream or sys.stderr).isatty() else "lines"


def command_progress(wanted: bool) -> "Progress":
    """A command's Progress: `--progress/--no-progress` and MLUSIM_PROGRESS_SECONDS, on stderr."""
    return Progress(choose_mode(wanted), interval())


BAR_SECONDS = 0.1   # between redraws of the bar


class Progress:
    """One command's progress: `update(what, done, total, unit, detail)` as often as the work
    likes; `what` names the current piece ("run mnist on 4 core(s)", "sweep"); a new `what` starts
    a new bar. `stop` ends the bar (before the command prints its report)."""

    def __init__(self, mode: str, every: float | None = DEFAULT_SECONDS, stream: TextIO | None = None,
                 clock: Callable[[], float] = time.monotonic):
        if mode not in MODES:
            raise ValueError(f"progress mode {mode!r}: one of {', '.join(MODES)}")
        self.mode = "off" if mode == "lines" and every is None else mode
        self.every, self.stream, self.clock = every, stream or sys.stderr, clock
        self.start = self.last = clock()
        self.bar = self.task = None
        self.what: str | None = None

    def update(self, what: str, done: float, total: float | None, unit: str, detail: str = "") -> None:
        if self.mode == "lines":
            now = self.clock()
            if now - self.last >= self.every:
                self.last = now
                self._line(what, done, total, unit, detail, now)
        elif self.mode == "bar":
            self._bar(what, done, total, unit, detail)

    def _line(self, what: str, done: float, total: float | None, unit: str, detail: str, now: float) -> None:
        count = f"{math.floor(done):,}/{total:,.0f}" if total else f"{math.floor(done):,}"
        text = f"mlusim: {what}: {count} {unit}" + (f", {detail}" if detail else "") + f" [{now - self.start:.0f} s]"
        try:
            print(text, file=self.stream, flush=True)
        except (OSError, ValueError):    # a closed or full stderr: progress is not worth failing for
            self.mode = "off"

    def _bar(self, what: str, done: float, total: float | None, unit: str, detail: str) -> None:
        if self.bar is None:
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn
            from rich.progress import Progress as RichProgress

            self.bar = RichProgress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                    TextColumn("{task.fields[unit]}"), TimeElapsedColumn(),
                                    console=Console(file=self.stream), transient=True,
                                    # drawn on our updates, by no thread of its own: a run forks its
                                    # numerics only from a single-threaded process (cores/datapath.py)
                                    auto_refresh=False)
            self.bar.start()
        if what != self.what:
            if self.task is not None:
                self.bar.remove_task(self.task)
            self.task, self.what = self.bar.add_task(what, total=total, unit=unit), what
        now = self.clock()
        draw = now - self.last >= BAR_SECONDS      # as often as rich's own refresh thread would
        if draw:
            self.last = now
        self.bar.update(self.task, completed=done, total=total, unit=f"{unit}, {detail}" if detail else unit,
                        refresh=draw)

    def stop(self) -> None:
        if self.bar is not None:
            self.bar.stop()
            self.bar = self.task = self.what = None

    # ---- the callbacks the pieces of mlusim take ---------------------------------------------
    def simulated(self, what: str, done: float, total: int, cycles: float) -> None:
        """simulate's `progress(kernels_done, kernels_total, cycles)`, with `what` to name the run;
        kernels_done is fractional inside a kernel (how far the engine estimates it is)."""
        if self.mode == "lines" and self.clock() - self.last < self.every:
            return      # the common case: no line due, no text to build
        detail = f"{cycles:,.0f} cycles"
        whole = math.floor(done)
        if whole < done < total:
            detail = f"{(done - whole) * 100:.0f}% into kernel {whole + 1}, {detail}"
        self.update(what, done, total, "kernels", detail)

    def compiling(self, what: str) -> Callable[[str, int, int], None]:
        """The compiler's `progress(phase, layers_done, layers_total)`."""
        def report(phase: str, done: int, total: int) -> None:
            self.update(f"{what} ({phase})", done, total, "layers")
        return report
