"""Scratchpads and DRAM as byte arrays with enforced bounds.

In timing-only runs the arrays are never allocated; bounds and alignment are still checked, so a
program that faults with numerics on faults identically without them.
"""
from __future__ import annotations

import mmap

import numpy as np


class Memory:
    """One address space: NRAM or WRAM of a core, SRAM of a cluster, or the chip's GDRAM."""

    def __init__(self, name: str, size: int, shared: bool = False):
        self.name = name
        self.size = size
        self.shared = shared        # in pages a forked child writes for us (cores/datapath.py)
        self._buf: np.ndarray | None = None

    @property
    def buf(self) -> np.ndarray:
        if self._buf is None:
            # Allocated on first touch: a 16-core chip has 32 scratchpads, most programs use few.
            # Either way the pages are the kernel's zero page until written.
            if self.shared:
                self._buf = np.frombuffer(mmap.mmap(-1, max(self.size, 1)), np.uint8)[:self.size]
            else:
                self._buf = np.zeros(self.size, dtype=np.uint8)
        return self._buf

    def fault(self, addr: int, nbytes: int, align: int) -> str | None:
        """Why an access of nbytes at addr is illegal here, or None."""
        if addr < 0 or addr + nbytes > self.size:
            return (f"{self.name.upper()} range [{addr:#x}, {addr + nbytes:#x}) is outside "
                    f"{self.name.upper()} of {self.size:#x} bytes")
        if align > 1 and addr % align:
            return f"{self.name.upper()} address {addr:#x} is not {align}-byte aligned"
        return None
