"""One host-memory budget for everything mlusim allocates on a user's behalf.

A 500-byte input can ask for gigabytes: a kernel that claims 10^8 image groups, an assembler fill
of 2^28 elements, a batch of 10^9 images, a sweep of 10^8 points, a trace of every instruction. Each
place that would allocate in proportion to a number it read checks the bytes it is about to use
against this budget first, and refuses with one line naming what and how much, before the
allocation. The budget is MLUSIM_HOST_MEM_GIB GiB (default 8, a third of the 24 GiB machines the
project targets; `mlusim --mem-gib N` sets it for one command and its worker processes). A
`Ledger` adds up the allocations of one load (every tensor of a model file) against it.
"""
from __future__ import annotations

import math
import os

from mlusim.errors import ConfigError, MlusimError, SimulationError

ENV = "MLUSIM_HOST_MEM_GIB"
DEFAULT_GIB = 8.0
MAX_GIB = 1 << 20          # 1 PiB: beyond any host; a larger value is a typo, not a machine


def cap_bytes(env: dict | None = None) -> int:
    """The budget in bytes; a value that is not a number of GiB in (0, MAX_GIB] is a ConfigError."""
    text = (os.environ if env is None else env).get(ENV, "")
    if not text.strip():
        return int(DEFAULT_GIB * 1024**3)
    try:
        gib = float(text) if text.isascii() else math.nan
    except ValueError:
        gib = math.nan
    if not math.isfinite(gib) or not 0 < gib <= MAX_GIB:
        raise ConfigError(f"{ENV}={text[:40]!r}: must be a number of GiB in (0, {MAX_GIB:,}]")
    return int(gib * 1024**3)


def size(nbytes: float) -> str:
    """Bytes in the largest unit that keeps a digit before the point."""
    for unit, scale in (("TiB", 1024**4), ("GiB", 1024**3), ("MiB", 1024**2), ("KiB", 1024)):
        if nbytes >= scale:
            return f"{nbytes / scale:,.1f} {unit}"
    return f"{nbytes:,.0f} bytes"


def check(nbytes: float, what: str, error: type[MlusimError] = SimulationError, hint: str = "",
          cap: float | None = None) -> None:
    """Refuse (with `error`) before allocating `nbytes` for `what` if that is over the budget (or `cap`)."""
    try:
        cap = cap_bytes() if cap is None else cap
    except ConfigError as e:
        raise error(str(e)) from None
    if nbytes > cap:
        raise error(f"{what} needs about {size(nbytes)} of host memory, over the cap of {size(cap)} "
                    f"(set {ENV}{'; ' + hint if hint else ''})")


class Ledger:
    """Allocations of one job (say, every constant of one model file) added up against the budget."""

    def __init__(self, error: type[MlusimError] = SimulationError, hint: str = ""):
        self.total, self.error, self.hint = 0, error, hint

    def take(self, nbytes: float, what: str) -> None:
        check(self.total + nbytes, what if not self.total else f"{what} (with {size(self.total)} before it)",
              self.error, self.hint)
        self.total += nbytes
