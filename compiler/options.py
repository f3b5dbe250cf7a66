"""The knobs of cluster fusion, passed explicitly from the driver to the planner and the emitter.

Defaults are what the compiler does; tests and experiments turn a feature off (or force a plan)
by passing a different `FusionOptions`, never by setting module globals.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class FusionOptions:
    prefetch: bool = True              # load each layer's weights during the layer before (prefetch.py)
    share: bool = True                 # clusters running side by side share weights through SRAM (share.py)
    share_min_bytes: int = 1 << 20     # ... a layer this big may be cut into slices to find stages
    wide: bool = True                  # the planner may split a span's channels over clusters (wide.py)
    warm_depth: int = 3                # a job's first group loads WRAM-resident weights this many layers ahead
    gather_depth: int = 7              # ... and a gathered fc its weights this many steps ahead (share.gathers)
    segments: tuple | None = None      # a fixed plan (segments.Segment, in order) instead of the cost model's
