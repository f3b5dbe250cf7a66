"""What every kernel generator receives: one typed context, and the device tensors it reads and writes.

A kernel generator (compiler/kernels/) emits one layer's task streams. Where it runs decides a few
things it must know: how many tasks it may use, what share of DRAM they get, where in WRAM its
buffers may start, whether a fused segment keeps or prefetches its weights (compiler/fusion.py),
or stages them in SRAM (compiler/share.py). `KernelCtx` carries exactly that, with defaults for a
plain layer-at-a-time kernel; the two places that emit code subclass it: `lower.LowerCtx` (a
whole program) and `fusion.JobCtx` (one job of a fused segment). The tilers' cost model prices
with a bare `KernelCtx` (it emits nothing).
"""
from __future__ import annotations

from dataclasses import dataclass, field

from mlusim.compiler.relocate import StreamMemo


@dataclass
class DevTensor:
    """Where a graph tensor lives on the device and how it is laid out."""

    name: str
    addr: int
    shape: tuple[int, ...]           # device shape (NHWC for images)
    dtype: str
    flat_from: tuple[int, int, int] | None = None   # (C, H, W) when this is a flattened NHWC image
    space: str = "gdram"             # "sram": held in the cluster's SRAM inside a fused segment


@dataclass(frozen=True)
class WramSlot:
    """A layer's weight block kept at a fixed WRAM address (one block per task): across a job's
    image groups (`loaded`: by an earlier group), or prefetched during the layer before
    (prefetch.py; `loaded`: its DMAs were placed there)."""

    addr: int
    loaded: bool
    prefetched: bool = False


@dataclass
class KernelCtx:
    """The context a kernel generator receives; see the module docstring."""

    cfg: object
    tasks: int
    dram_share: float = 1.0          # of the chip's DRAM bandwidth, for this kernel's tasks together
    prefetch: bool = False           # tilers may count on their weights arriving during the layer before
    wram_base: int = 0               # where this kernel's WRAM buffers start (below: other layers' blocks)
    wram_slots: dict[str, WramSlot] = field(default_factory=dict)   # node -> its resident weight block
    weight_home: dict[str, int] = field(default_factory=dict)       # node -> SRAM address of its staged weights
    weights_ready: set[str] = field(default_factory=set)            # nodes whose weights are in their slot already
    streams_memo: StreamMemo | None = None     # the compile's emitted task streams (relocate.py); None: not kept
    dry: bool = False                # only the kernel's metadata is wanted (a fused segment's dry run):
                                     # a generator may pass no streams
    cfg_repr: str | None = field(default=None, repr=False, compare=False)   # repr(cfg), if the caller has it

    def cfg_key(self) -> str:
        """The config as the tilers' memo keys hold it (by value: its repr), worked out once per
        context (a repr is ~13 us, and a fused segment's job looks a plan up per layer emission),
        or given (`cfg_repr`: the segment planner makes a context per price it asks for)."""
        if self.cfg_repr is None:
            self.cfg_repr = repr(self.cfg)
        return self.cfg_repr

    def const(self, name: str, arr) -> int:
        raise NotImplementedError("this context only prices tilings")

    def const_of(self, name: str, make) -> int:
        """const(name, make()); a context that holds `name` already need not call `make` (a fused
        segment's job context: it emits each layer once per job and image group)."""
        return self.const(name, make())

    def kernel(self, node, streams: list, **meta) -> None:
        raise NotImplementedError("this context only prices tilings")


def dram_rate(cfg, cores: int | None = None, share: float = 1.0, tasks: int = 1) -> float:
    """DRAM bytes per cycle each of `tasks` tasks sees when together they hold `share` of the
    chip's DRAM bandwidth and each runs on `cores` cores: an even part of that share, or the cores'
    DMA channels, whichever is lower (cores=None: the DRAM alone limits). The one formula the
    tilers and the fusion cost model price DRAM traffic with."""
    rate = cfg.dram_bytes_per_cycle * share / tasks
    return rate if cores is None else min(rate, cores * cfg.dma.core_bandwidth_bytes_per_cycle)
