"""Chrome trace / Perfetto JSON timelines of a run, to see overlap and stalls in ui.perfetto.dev.

`simulate(..., trace=True)` keeps one record per executed unit instruction and per stall:

    (core, unit, t0, dur, name, kernel, pc)   unit: ld | mac | vec | st | mv | issue; cycles
    (None, link, t, 0.0, bytes_per_cycle, "", -1)   a DRAM or SRAM link's aggregate rate from t on

and this module lays them out as tracks: process "chip" holds the kernel track and one counter per
shared link (DRAM, each cluster's SRAM, in GB/s); process "core N" holds one track per unit of the
core: issue (queue-full stalls, barrier waits), load DMA, MAC array, vector unit, store DMA, move
DMA (SRAM loads). A
unit's slices are its instructions ("conv (layer3)") and its dependency-token waits
("wait ld token"), so gaps and waits on a track are exactly where that unit was idle or stalled.
Timestamps and durations are microseconds at the config's clock (Chrome trace convention).
"""
from __future__ import annotations

import json
from pathlib import Path

from mlusim.errors import MlusimError, SimulationError

TRACKS = (("issue", "issue stage"), ("ld", "load DMA"), ("mac", "MAC array"), ("vec", "vector unit"),
          ("st", "store DMA"), ("mv", "move DMA (SRAM loads)"))
TID = {u: i for i, (u, _) in enumerate(TRACKS)}
DIGITS = 6      # microseconds rounded to picoseconds: finer than any clock, stable in JSON


def _meta(kind: str, pid: int, tid: int, name: str, sort: int) -> list[dict]:
    base = {"ph": "M", "ts": 0, "dur": 0, "pid": pid, "tid": tid}
    return [{**base, "name": kind, "args": {"name": name}},
            {**base, "name": kind.replace("_name", "_sort_index"), "args": {"sort_index": sort}}]


def _link_label(name: str) -> str:
    if name == "dram":
        return "DRAM (GB/s)"
    if name.endswith(".sram"):
        return f"SRAM {name[:-5]} (GB/s)"
    return f"{name} (GB/s)"


class TraceLog(list):
    """The run's trace records, refusing to grow past `limit`: a traced runaway loop would
    otherwise hold every instruction it ran (190 bytes each, measured) until the host gives out.
    simulate() sizes the limit from the memory budget left after the run's own arrays."""

    def __init__(self, limit: int):
        super().__init__()
        self.limit = limit

    def append(self, record) -> None:  # type: ignore[override]
        if len(self) >= self.limit:
            from mlusim.budget import ENV

            raise SimulationError(f"--trace: {self.limit:,} events fill this run's share of the host memory cap "
                                  f"({EVENT_HOST_BYTES} bytes each; set {ENV}, or trace fewer instructions with "
                                  f"--max-instructions)")
        super().append(record)


EVENT_HOST_BYTES = 200


def _events(res):
    """The run's timeline, one Chrome trace event (a dict) at a time."""
    cfg = res.config
    mhz = cfg.chip.clock_mhz
    gbps = cfg.clock_hz / 1e9     # bytes/cycle -> GB/s
    cpc = cfg.chip.cores_per_cluster

    def us(cycles: float) -> float:
        return round(cycles / mhz, DIGITS)

    yield from _meta("process_name", 0, 0, f"chip ({cfg.name} @ {mhz:g} MHz)", 0)
    yield from _meta("thread_name", 0, 0, "kernels", 0)
    for k in res.kernels:
        ts, end = us(k.start), us(k.end)
        yield {"ph": "X", "name": k.name, "cat": "kernel", "ts": ts, "dur": round(end - ts, DIGITS),
               "pid": 0, "tid": 0, "args": {"task_type": k.task_type, "tasks": k.task_dim,
                                             "cycles": k.cycles, **{str(a): str(b) for a, b in k.meta.items()}}}
    cores_seen: set[int] = set()
    for core, unit, t0, dur, name, kernel, pc in res.trace:
        if core is None:    # a link's rate changed
            yield {"ph": "C", "name": _link_label(unit), "ts": us(t0), "dur": 0, "pid": 0, "tid": 0,
                   "args": {"GB/s": round(name * gbps, 6)}}
            continue
        cores_seen.add(core)
        ts, end = us(t0), us(t0 + dur)
        wait = name.startswith("wait ") or unit == "issue"
        e = {"ph": "X", "name": name if wait else f"{name} ({kernel})", "cat": "stall" if wait else "instr",
             "ts": ts, "dur": round(end - ts, DIGITS), "pid": core + 1, "tid": TID[unit],
             "args": {"kernel": kernel, "pc": pc, "cycles": dur}}
        if wait:
            e["cname"] = "grey"
        yield e
    for core in sorted(cores_seen):
        yield from _meta("process_name", core + 1, 0, f"core {core} (cluster {core // cpc})", core + 1)
        for unit, label in TRACKS:
            yield from _meta("thread_name", core + 1, TID[unit], label, TID[unit])


def _other(res) -> dict:
    cfg = res.config
    return {"config": cfg.name, "clock_mhz": cfg.chip.clock_mhz, "cores": res.cores, "cycles": res.cycles,
            "units": "ts and dur in microseconds; counters in GB/s", "interrupted": res.interrupted}


def chrome_trace(res) -> dict:
    """The run's timeline as a Chrome trace dict ({"traceEvents": [...], ...})."""
    if res.trace is None:
        raise MlusimError("the run was not traced: simulate(..., trace=True)")
    return {"traceEvents": list(_events(res)), "displayTimeUnit": "ns", "otherData": _other(res)}


def write_trace(res, path: str | Path) -> int:
    """Write the timeline JSON, one event at a time (host memory stays that of the records);
    returns the number of events."""
    if res.trace is None:
        raise MlusimError("the run was not traced: simulate(..., trace=True)")
    n = 0
    try:
        with open(path, "w", encoding="utf-8") as f:
            f.write('{"traceEvents":[')
            for e in _events(res):
                f.write(("," if n else "") + json.dumps(e, separators=(",", ":")))
                n += 1
            f.write('],"displayTimeUnit":"ns","otherData":' + json.dumps(_other(res), separators=(",", ":")) + "}")
    except OSError as e:
        raise MlusimError(f"{path}: cannot write trace: {e.strerror}") from None
    return n
