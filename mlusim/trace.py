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
from operator import itemgetter
from pathlib import Path

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
    """Cycles -> integer nanoseconds, and nanoseconds -> the JSON microsecond text."""

    def __init__(self, mhz: float):
        self.k = 1000.0 / mhz

    def ns(self, cycles: float) -> int:
        return round(cycles * self.k)


def _us(ns: int) -> str:
    return repr(ns / 1000)


def _kernel_events(res, clock: _Clock, out: list) -> None:
    for k in res.kernels:
        t0, t1 = clock.ns(k.start), clock.ns(k.end)
        args = {"task_type": k.task_type, "tasks": k.task_dim, "cycles": round(k.cycles, 3)}
        args.update((str(a), v) for a, b in k.meta.items() if (v := _arg(b)) is not None)
        out.append((t0, -1 - (t1 - t0), f'{{"ph":"X","pid":0,"tid":0,"ts":{_us(t0)},"dur":{_us(t1 - t0)},'
                                         f'"name":{json.dumps(k.name)},"cat":"kernel","args":{json.dumps(args, separators=SEP)}}}'))


def _layer_events(res, clock: _Clock, out: list) -> set[int]:
    """Layer slices per cluster (a job's steps nested in the job); returns the clusters used."""
    cpc = res.config.chip.cores_per_cluster
    used: set[int] = set()

    def slice_(cl: int, name: str, t0: float, t1: float, cat: str, args: dict) -> None:
        a, b = clock.ns(t0), clock.ns(t1)
        out.append((a, -1 - (b - a), f'{{"ph":"X","pid":0,"tid":{LAYERS_TID + cl},"ts":{_us(a)},"dur":{_us(b - a)},'
                                     f'"name":{json.dumps(name)},"cat":"{cat}","args":{json.dumps(args, separators=SEP)}}}'))
        used.add(cl)

    for rec in res.kernels:
        jobs = job_steps(rec)
        if not jobs:
            name = str(rec.meta.get("layer", rec.name)) if isinstance(rec.meta, dict) else rec.name
            for cl in sorted({cid // cpc for cid, c in rec.cores.items() if c.tasks}):
                slice_(cl, name, rec.start, rec.end, "layer", {"kernel": rec.name})
            continue
        for job, steps in jobs:
            for cl in job.get("clusters", [0]):
                slice_(cl, f"job {job['job']}", job["start"], job["end"], "job", {"kernel": rec.name})
                for name, t0, t1 in steps:
                    slice_(cl, name, t0, t1, "layer", {"kernel": rec.name, "job": job["job"]})
    return used


def _counter_events(samples: list, clock: _Clock, gbps: float, out: list) -> None:
    """One counter per link; samples at the same nanosecond keep the last value and unchanged
    values are dropped, so each counter's timestamps strictly increase."""
    series: dict[str, list] = {}
    for _, link, t, _z, rate, _k, _pc in samples:
        s = series.setdefault(link, [])
        ns = clock.ns(t)
        v = round(rate * gbps, 3)
        if s and s[-1][0] == ns:
            s[-1][1] = v
        else:
            s.append([ns, v])
    for link, s in series.items():
        label = json.dumps(_link_label(link))
        last = None
        for ns, v in s:
            if v != last:
                out.append((ns, 0, f'{{"ph":"C","pid":0,"tid":0,"ts":{_us(ns)},"name":{label},"args":{{"GB/s":{v!r}}}}}'))
                last = v


def _flow_events(flows: list, clock: _Clock, out: list) -> None:
    """Each arrow as a flow start inside the sending slice (its last nanosecond) and a flow end
    bound to the enclosing receiving slice; ids number the arrows."""
    for i, (_, t_out, c_out, tr_out, t_in, c_in, tr_in, at_end) in enumerate(flows):
        a = max(0, clock.ns(t_out) - 1)
        b = clock.ns(t_in) - (1 if at_end else 0)
        name = '"barrier"' if tr_out == "issue" else '"token"'
        out.append((a, 0, f'{{"ph":"s","id":{i},"pid":{c_out + 1},"tid":{TID[tr_out]},"ts":{_us(a)},'
                          f'"name":{name}}}'))
        out.append((max(0, b), 0, f'{{"ph":"f","bp":"e","id":{i},"pid":{c_in + 1},"tid":{TID[tr_in]},'
                                  f'"ts":{_us(max(0, b))},"name":{name}}}'))


def _slice_events(res, clock: _Clock, out: list) -> tuple[set[int], list, list]:
    """Instruction and wait slices; returns the cores seen, the link samples and the arrows."""
    cores: set[int] = set()
    samples, flows = [], []
    names: dict[str, str] = {}
    k = clock.k
    for r in res.trace:
        core = r[0]
        if core is None:
            samples.append(r)
            continue
        if core == FLOW:
            flows.append(r)
            continue
        cores.add(core)
        _, track, t0, t1, name, _kernel, pc = r
        a, b = round(t0 * k), round(t1 * k)
        jn = names.get(name)
        if jn is None:
            jn = names[name] = json.dumps(name) + (',"cat":"stall"' if track == "issue" or
                                                   name.startswith("wait ") else "")
        out.append((a, -1 - (b - a), f'{{"ph":"X","pid":{core + 1},"tid":{TID[track]},"ts":{_us(a)},'
                                     f'"dur":{_us(b - a)},"name":{jn},"args":{{"pc":{pc}}}}}'))
    return cores, samples, flows


def _lines(res):
    """The run's timeline as JSON event texts, metadata first, then sorted by timestamp."""
    cfg = res.config
    mhz = cfg.chip.clock_mhz
    clock = _Clock(mhz)
    cpc = cfg.chip.cores_per_cluster
    out: list = []
    cores, samples, flows = _slice_events(res, clock, out)
    _counter_events(samples, clock, cfg.clock_hz / 1e9, out)
    _flow_events(flows, clock, out)
    _kernel_events(res, clock, out)
    clusters = _layer_events(res, clock, out)
    out.sort(key=itemgetter(0, 1))    # stable: a job before its first layer of the same span
    yield from _meta("process_name", 0, 0, f"chip ({cfg.name} @ {mhz:g} MHz)", 0)
    yield from _meta("thread_name", 0, 0, "kernels", 0)
    for cl in sorted(clusters):
        yield from _meta("thread_name", 0, LAYERS_TID + cl, f"layers, cluster {cl}", LAYERS_TID + cl)
    for core in sorted(cores):
        yield from _meta("process_name", core + 1, 0, f"core {core} (cluster {core // cpc})", core + 1)
        for unit, label in TRACKS:
            yield from _meta("thread_name", core + 1, TID[unit], label, TID[unit])
    for e in out:
        yield e[2]


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
    return json.loads('{"traceEvents":[' + ",".join(_lines(res)) + '],"displayTimeUnit":"ns","otherData":'
                      + _other(res) + "}")


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
        with (gzip.open(path, "wt", encoding="utf-8", compresslevel=6) if gz else
              open(path, "w", encoding="utf-8")) as f:
            f.write('{"traceEvents":[\n')
            chunk: list[str] = []
            for line in _lines(res):
                chunk.append(line)
                if len(chunk) == CHUNK:
                    f.write(("," if n else "") + ",\n".join(chunk))
                    n += len(chunk)
                    chunk = []
            if chunk:
                f.write(("," if n else "") + ",\n".join(chunk))
                n += len(chunk)
            f.write('\n],"displayTimeUnit":"ns","otherData":' + _other(res) + "}\n")
    except OSError as e:
        raise MlusimError(f"{path}: cannot write trace: {e.strerror}") from None
    return n
