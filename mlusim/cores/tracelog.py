"""The engine's trace records (`simulate(..., trace=True)`), kept as plain tuples appended to one list
so that tracing costs the hot path a tuple and an append; mlusim/trace.py lays them out as a
timeline only when the trace is written.

    (core, track, t0, t1, name, kernel, pc)       a slice: an instruction, a token or barrier wait
    (None, link, t, 0.0, bytes_per_cycle, "", -1)  a DRAM or SRAM link's aggregate rate from t on
    (FLOW, t_out, core_out, track_out, t_in, core_in, track_in, in_at_end)
                                                   an arrow: the slice ending at t_out released the
                                                   one containing t_in (its end if in_at_end)

Times are cycles. Tracks: issue (queue-full stalls, barrier waits), ld / st / mv (a DMA queue's
token waits and transfers), cp (the compute queue's token waits), mac, vec (the two compute pipes).
Each track runs one thing at a time, so its slices never overlap.
"""
from __future__ import annotations

from mlusim.errors import SimulationError

FLOW = -1               # first field of an arrow record
# host bytes per record: ~175 held while simulating, ~345 at the peak of writing (the sort keys and a
# chunk of formatted events besides the records; tracemalloc, ResNet-18 batch 4 on 16 cores)
EVENT_HOST_BYTES = 350


class TraceLog(list):
    """The run's trace records, refusing to grow past `limit`: a traced runaway loop would
    otherwise hold every instruction it ran until the host gives out. simulate() sizes the limit
    from the memory budget left after the run's own arrays. The chip calls `check` every few
    thousand instructions (off the per-record path), so a run overshoots by at most that many."""

    def __init__(self, limit: int):
        super().__init__()
        self.limit = limit

    def check(self) -> None:
        if len(self) > self.limit:
            from mlusim.budget import ENV

            raise SimulationError(f"--trace: {self.limit:,} events fill this run's share of the host memory cap "
                                  f"({EVENT_HOST_BYTES} bytes each; set {ENV}, or trace fewer instructions with "
                                  f"--max-instructions)")
