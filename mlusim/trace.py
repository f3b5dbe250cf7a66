"""Chrome trace / Perfetto JSON timelines of a run, to see overlap, stalls and layers in ui.perfetto.dev.

`simulate(..., trace=True)` keeps compact records (mlusim/cores/tracelog.py); this module lays them
out only when the trace is written:

  process "chip" (pid 0)     tid 0 the kernels; tid 1 + c "layers, cluster c": each layer as a slice
                             (inside a fused kernel, one per job and step, nested in a "job N"
                             slice; names as in the per-layer report); one counter per DRAM and
                             cluster SRAM link, in GB/s
  process "core N" (pid N+1) one track per pipe or queue (TRACKS): the issue stage (queue-full
                             stalls, barrier waits), each DMA queue (token waits, transfers), the
                             compute queue (its token waits), the MAC array and the vector unit
                             (their instructions)

Every track runs one thing at a time, so its slices never partly overlap (the format's rule); the
only nesting is a layer inside its job. Arrows (flow events "s"/"f", bound to the enclosing slices)
run from an instruction to the one that took its dependency token ("token"), and from the last core
to reach a barrier to each core it released ("barrier"). Events are sorted by timestamp (metadata
first); a counter's timestamps strictly increase. Timestamps are microseconds at the config's clock,
exact to the nanosecond: cycles become integer nanoseconds once, written as ns / 1000. A name ending
in `.gz` writes gzip.
"""
from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np

from mlusim.cores.tracelog import FLOW
from mlusim.errors import MlusimError
from mlusim.layers import job_steps

TRACKS = (("issue", "issue stage"), ("ld", "load DMA queue"), ("cp", "compute queue (token waits)"),
          ("mac", "MAC array"), ("vec", "vector unit"), ("st", "store DMA queue"),
          ("mv", "move DMA queue (SRAM loads)"))
TID = {u: i for i, (u, _) in enumerate(TRACKS)}
LAYERS_TID = 1          # + cluster id, in the chip process
CHUNK = 20_000          # events per write
SEP = (",", ":")


def _meta(kind: str, pid: int, tid: int, name: str, sort: int) -> list[str]:
    base = f'"pid":{pid},"tid":{tid},"ts":0'
    return [f'{{"ph":"M",{base},"name":"{kind}","args":{{"name":{json.dumps(name)}}}}}',
            f'{{"ph":"M",{base},"name":"{kind.replace("_name", "_sort_index")}","args":{{"sort_index":{sort}}}}}']


def _link_label(name: str) -> str:
    if name == "dram":
        return "DRAM (GB/s)"
    if name.endswith(".sram"):
        return f"SRAM {name[:-5]} (GB/s)"
    return f"{name} (GB/s)"


def _arg(v):
    """A kernel meta value as a JSON value (numbers, strings, lists of them), or None to leave
    it out (nested structures, such as a fused segment's plan, are shown by the layer tracks)."""
    if v is None or isinstance(v, (bool, int, float, str)):
        return v
    if isinstance(v, (list, tuple)) and all(x is None or isinstance(x, (bool, int, float, str)) for x in v):
        return list(v)
    return None


class _Clock:
    """Cycles -> integer nanoseconds, one formula for every event (so nesting survives rounding)."""

    def __init__(self, mhz: float):
        self.k = 1000.0 / mhz

    def ns(self, cycles: float) -> int:
        return round(cycles * self.k)

    def ns_array(self, cycles: list) -> np.ndarray:
        return np.rint(np.array(cycles, dtype=np.float64) * self.k).astype(np.int64)


def _us(ns: int) -> str:
    return repr(ns / 1000)


class _Texts:
    """The few events formatted as they are made (kernels, layers, counters), each with its sort
    key: start nanosecond and, for a slice, minus 1 minus its duration (longer slices first)."""

    def __init__(self):
        self.ts: list[int] = []
        self.order: list[int] = []
        self.text: list[str] = []

    def add(self, ts: int, order: int, text: str) -> None:
        self.ts.append(ts)
        self.order.append(order)
        self.text.append(text)

    def slice(self, pid: int, tid: int, a: int, b: int, name: str, cat: str, args: dict) -> None:
        self.add(a, -1 - (b - a), f'{{"ph":"X","pid":{pid},"tid":{tid},"ts":{_us(a)},"dur":{_us(b - a)},"name":'
                                  f'{json.dumps(name)},"cat":"{cat}","args":{json.dumps(args, separators=SEP)}}}')


def _kernel_events(res, clock: _Clock, out: _Texts) -> None:
    for k in res.kernels:
        args = {"task_type": k.task_type, "tasks": k.task_dim, "cycles": round(k.cycles, 3)}
        args.update((str(a), v) for a, b in k.meta.items() if (v := _arg(b)) is not None)
        out.slice(0, 0, clock.ns(k.start), clock.ns(k.end), k.name, "kernel", args)


def _layer_events(res, clock: _Clock, out: _Texts) -> set[int]:
    """Layer slices per cluster (a job's steps nested in the job); returns the clusters used."""
    cpc = res.config.chip.cores_per_cluster
    used: set[int] = set()

    def slice_(cl: int, name: str, t0: float, t1: float, cat: str, args: dict) -> None:
        out.slice(0, LAYERS_TID + cl, clock.ns(t0), clock.ns(t1), name, cat, args)
        used.add(cl)

    for rec in res.kernels:
        jobs = job_steps(rec)
        if not jobs:
            name = str(rec.meta.get("layer", rec.name)) if isinstance(rec.meta, dict) else rec.name
            for cl in sorted({cid // cpc for cid, c in rec.cores.items() if c.tasks}):
                slice_(cl, name, rec.start, rec.end, "layer", {"kernel": rec.name})
            continue
        for job, steps in jobs:
            for cl in job["clusters"]:
                slice_(cl, f"job {job['job']}", job["start"], job["end"], "job", {"kernel": rec.name})
                for name, t0, t1 in steps:
                    slice_(cl, name, t0, t1, "layer", {"kernel": rec.name, "job": job["job"]})
    return used


def _counter_events(samples: list, clock: _Clock, gbps: float, out: _Texts) -> None:
    """One counter per link; samples at the same nanosecond keep the last value and unchanged
    values are dropped, so each counter's timestamps strictly increase."""
    codes: dict[str, int] = {}
    link = np.array([codes.setdefault(r[1], len(codes)) for r in samples], dtype=np.int64)
    ns = clock.ns_array([r[2] for r in samples])
    gb = np.round(np.array([r[4] for r in samples], dtype=np.float64) * gbps, 3)
    for name, code in codes.items():
        sel = link == code
        t, v = ns[sel], gb[sel]
        last = np.append(t[1:] != t[:-1], True)          # the last sample of each nanosecond
        t, v = t[last], v[last]
        changed = np.insert(v[1:] != v[:-1], 0, True)
        label = json.dumps(_link_label(name))
        for tt, vv in zip(t[changed].tolist(), v[changed].tolist()):
            out.add(tt, 0, f'{{"ph":"C","pid":0,"tid":0,"ts":{_us(tt)},"name":{label},"args":{{"GB/s":{vv!r}}}}}')


class _Timeline:
    """Every event's sort key in numpy arrays, and what to format it from: the engine's slice and
    arrow records themselves (most events; kept as references, so a trace being written holds
    little beyond its records) or the text of the rest. Event numbers: slices [0, S), arrow starts
    [S, S + F), arrow ends [S + F, S + 2F), texts after."""

    def __init__(self, res, clock: _Clock):
        slices, samples, flows = [], [], []
        for r in res.trace:
            core = r[0]
            (samples if core is None else flows if core == FLOW else slices).append(r)
        self.slices, self.flows = slices, flows
        self.cores = {r[0] for r in slices}
        a = clock.ns_array([r[2] for r in slices])
        b = clock.ns_array([r[3] for r in slices])
        f_out = np.maximum(clock.ns_array([r[1] for r in flows]) - 1, 0)      # the sender's last ns
        f_in = np.maximum(clock.ns_array([r[4] for r in flows]) - np.array([r[7] for r in flows], dtype=np.int64), 0)
        self.texts = _Texts()
        _counter_events(samples, clock, res.config.clock_hz / 1e9, self.texts)
        _kernel_events(res, clock, self.texts)
        self.clusters = _layer_events(res, clock, self.texts)
        t = self.texts
        self.ts = np.concatenate([a, f_out, f_in, np.array(t.ts, dtype=np.int64)])
        self.key = np.concatenate([a - b - 1, np.zeros(2 * len(flows), dtype=np.int64),
                                   np.array(t.order, dtype=np.int64)])

    def chunks(self):
        """The event texts in timestamp order (ties: longer slices first, then as made), in lists
        of up to CHUNK."""
        order = np.lexsort((self.key, self.ts))
        n_s, n_f = len(self.slices), len(self.flows)
        slices, flows, texts = self.slices, self.flows, self.texts.text
        heads: dict[tuple, str] = {}     # (core, track, name) -> the start of its slices' text
        for lo in range(0, len(order), CHUNK):
            idx = order[lo:lo + CHUNK]
            chunk: list[str] = []
            add = chunk.append
            for j, ts, key in zip(idx.tolist(), self.ts[idx].tolist(), self.key[idx].tolist()):
                if j < n_s:
                    r = slices[j]
                    head = heads.get((r[0], r[1], r[4]))
                    if head is None:
                        head = heads[(r[0], r[1], r[4])] = (
                            f'{{"ph":"X","pid":{r[0] + 1},"tid":{TID[r[1]]},"name":{json.dumps(r[4])}'
                            + (',"cat":"stall"' if r[1] == "issue" or r[4].startswith("wait ") else ""))
                    add(f'{head},"ts":{ts / 1000!r},"dur":{(-1 - key) / 1000!r},"args":{{"pc":{r[6]}}}}}')
                elif j < n_s + 2 * n_f:
                    i = j - n_s if j < n_s + n_f else j - n_s - n_f
                    r = flows[i]
                    name = '"barrier"' if r[3] == "issue" else '"token"'
                    if j < n_s + n_f:
                        add(f'{{"ph":"s","id":{i},"pid":{r[2] + 1},"tid":{TID[r[3]]},"ts":{ts / 1000!r},'
                            f'"name":{name}}}')
                    else:
                        add(f'{{"ph":"f","bp":"e","id":{i},"pid":{r[5] + 1},"tid":{TID[r[6]]},'
                            f'"ts":{ts / 1000!r},"name":{name}}}')
                else:
                    add(texts[j - n_s - 2 * n_f])
            yield chunk


def _chunks(res):
    """The run's timeline as lists of JSON event texts, metadata first, then sorted by timestamp."""
    cfg = res.config
    mhz = cfg.chip.clock_mhz
    cpc = cfg.chip.cores_per_cluster
    tl = _Timeline(res, _Clock(mhz))
    meta = _meta("process_name", 0, 0, f"chip ({cfg.name} @ {mhz:g} MHz)", 0) + _meta("thread_name", 0, 0, "kernels", 0)
    for cl in sorted(tl.clusters):
        meta += _meta("thread_name", 0, LAYERS_TID + cl, f"layers, cluster {cl}", LAYERS_TID + cl)
    for core in sorted(tl.cores):
        meta += _meta("process_name", core + 1, 0, f"core {core} (cluster {core // cpc})", core + 1)
        for unit, label in TRACKS:
            meta += _meta("thread_name", core + 1, TID[unit], label, TID[unit])
    yield meta
    yield from tl.chunks()


def _other(res) -> str:
    cfg = res.config
    return json.dumps({"config": cfg.name, "clock_mhz": cfg.chip.clock_mhz, "cores": res.cores, "cycles": res.cycles,
                       "units": "ts and dur in microseconds (exact to the nanosecond); counters in GB/s",
                       "interrupted": res.interrupted}, separators=(",", ":"))


def _check(res) -> None:
    if res.trace is None:
        raise MlusimError("the run was not traced: simulate(..., trace=True)")


def chrome_trace(res) -> dict:
    """The run's timeline as a Chrome trace dict ({"traceEvents": [...], ...}), parsed from the
    very text write_trace writes."""
    _check(res)
    return json.loads('{"traceEvents":[' + ",".join(",".join(c) for c in _chunks(res) if c)
                      + '],"displayTimeUnit":"ns","otherData":' + _other(res) + "}")


def trace_path(path: str | Path, cores: int | None = None) -> Path:
    """Where a trace goes: `path`, or with a core count (one file per count of a scaling run)
    run.json -> run.4cores.json and run.json.gz -> run.4cores.json.gz."""
    p = Path(path)
    if cores is None:
        return p
    name = p.name
    for ext in (".json.gz", ".json", ".gz"):
        if name.endswith(ext):
            return p.with_name(f"{name[:-len(ext)]}.{cores}cores{ext}")
    return p.with_name(f"{name}.{cores}cores.json")


def write_trace(res, path: str | Path) -> int:
    """Write the timeline JSON (gzip if `path` ends in .gz); returns the number of events."""
    _check(res)
    n = 0
    try:
        gz = str(path).endswith(".gz")
        with (gzip.open(path, "wt", encoding="utf-8", compresslevel=1) if gz else
              open(path, "w", encoding="utf-8")) as f:
            f.write('{"traceEvents":[\n')
            for chunk in _chunks(res):
                if chunk:
                    f.write((",\n" if n else "") + ",\n".join(chunk))
                    n += len(chunk)
            f.write('\n],"displayTimeUnit":"ns","otherData":' + _other(res) + "}\n")
    except OSError as e:
        raise MlusimError(f"{path}: cannot write trace: {e.strerror}") from None
    return n
