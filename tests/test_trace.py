"""Chrome/Perfetto traces: slices that nest on every track, sorted events, counters with increasing
timestamps, JSON-typed args, gzip, per-layer markers inside fused kernels, paired flow arrows, and
agreement with the engine's counters."""
from __future__ import annotations

import bisect
import gzip
import json
from pathlib import Path

import pytest
from conftest import I, program, tensors

from mlusim.cli import main
from mlusim.compiler.driver import compile_model
from mlusim.experiments import resolve_program
from mlusim.program import TensorDecl
from mlusim.report import summarize
from mlusim.sim import simulate
from mlusim.trace import TID, chrome_trace, trace_path, write_trace

ROOT = Path(__file__).resolve().parents[1]
MATMUL = str(ROOT / "examples" / "matmul.s")
TASKS = 8


def barrier_program():
    """Two union tasks per cluster that stall on tokens and barriers: every kind of slice. Each task
    passes two tokens (ld -> cp, cp -> st) and meets one cluster barrier."""
    g = tensors(TensorDecl("g", "scratch", "i8", (TASKS * 65536,), -1))
    s = [I("rdsr", rd=1, sr="taskid"), I("muli", rd=2, rs1=1, imm=65536),
         I("dma", dir="g2n", dst=0, src=(2, g[0].addr), size=65536, sig="cp"),
         I("vrelu", dt="i8", dst=0x10000, src=0, n=65536, wait="ld", sig="st"),
         I("dma", dir="n2g", dst=(2, g[0].addr), src=0x10000, size=65536, wait="cp"),
         I("sync.cluster")]
    return program(s, g, task_type="union1", task_dim=TASKS)


def queue_program():
    """The compute queue waits for a load while the vector unit still runs the instruction before:
    the wait and that instruction overlap in time, so they must be on different tracks."""
    g = tensors(TensorDecl("g", "scratch", "i8", (1 << 17,), -1))
    s = [I("dma", dir="g2n", dst=0, src=g[0].addr, size=1 << 17, sig="cp"),
         I("vrelu", dt="i8", dst=0x20000, src=0x20000, n=1 << 16)]
    s += [I("addi", rd=1, rs1=1, imm=1)] * 100        # the issue stage reaches the next one later
    s += [I("vrelu", dt="i8", dst=0, src=0, n=1 << 10, wait="ld")]
    return program(s, g)


PROGRAMS = {"matmul": lambda: resolve_program(MATMUL), "barrier": barrier_program, "queue": queue_program}
CORES = {"matmul": 4, "barrier": 8, "queue": 1}


def lenet_run():
    """LeNet-5, batch 4 on 8 cores: one fused segment whose two jobs run on clusters 0 and 1."""
    prog = compile_model("lenet5", batch=4, tasks=8).program
    return simulate(prog, cores=8, timing_only=True, trace=True)


@pytest.fixture(scope="module", params=["matmul", "barrier", "queue", "lenet5"])
def traced(request):
    if request.param == "lenet5":
        res = lenet_run()
    else:
        prog = PROGRAMS[request.param]()
        res = simulate(prog, "mlu270", cores=CORES[request.param], timing_only=True, trace=True)
    return res, chrome_trace(res)


def ns(us: float) -> int:
    """A timestamp back to the integer nanoseconds it was written from."""
    return round(us * 1000)


def tracks(tr: dict) -> dict:
    """Complete events per (pid, tid) track as (start ns, end ns, event), sorted by start."""
    out: dict = {}
    for e in tr["traceEvents"]:
        if e["ph"] == "X":
            out.setdefault((e["pid"], e["tid"]), []).append((ns(e["ts"]), ns(e["ts"]) + ns(e["dur"]), e))
    for spans in out.values():
        spans.sort(key=lambda s: (s[0], -s[1]))
    return out


def test_slices_nest_on_every_track(traced):
    """Two slices on one track are disjoint or one holds the other: every slice starting inside
    another also ends inside it."""
    _res, tr = traced
    by_track = tracks(tr)
    assert len(by_track) >= 3
    for key, spans in by_track.items():
        starts = [s[0] for s in spans]
        for a0, a1, a in spans:
            for b0, b1, b in spans[bisect.bisect_right(starts, a0):bisect.bisect_left(starts, a1)]:
                assert b1 <= a1, (key, a, b)


def test_events_are_sorted_and_counters_strictly_increase(traced):
    _res, tr = traced
    evs = tr["traceEvents"]
    meta = [i for i, e in enumerate(evs) if e["ph"] == "M"]
    assert meta == list(range(len(meta)))          # metadata first
    ts = [e["ts"] for e in evs[len(meta):]]
    assert ts == sorted(ts)
    counters: dict = {}
    for e in evs:
        if e["ph"] == "C":
            counters.setdefault((e["pid"], e["name"]), []).append(e["ts"])
    assert counters
    for series in counters.values():
        assert all(a < b for a, b in zip(series, series[1:]))


def test_args_are_json_values(traced):
    """Numbers, strings and lists of them, never a Python repr of a list or dict."""
    _res, tr = traced

    def plain(v):
        if isinstance(v, list):
            return all(plain(x) for x in v)
        if isinstance(v, str):
            return v[:2] not in ("['", "[]", "{'", "{}", "('")
        return isinstance(v, (int, float, bool))

    for e in tr["traceEvents"]:
        for k, v in e.get("args", {}).items():
            assert plain(v), (k, v, e)
    kernels = [e for e in tr["traceEvents"] if e.get("cat") == "kernel"]
    assert kernels and all(isinstance(e["args"]["tasks"], int) for e in kernels)


def test_flow_events_are_paired_and_bound_to_slices(traced):
    """Every arrow has one start and one end with the same id and name, each inside one slice on
    its own track (the start in the sending slice, the end in the receiving one)."""
    _res, tr = traced
    by_track = tracks(tr)
    ends: dict = {"s": {}, "f": {}}
    for e in tr["traceEvents"]:
        if e["ph"] in ("s", "f"):
            assert e["id"] not in ends[e["ph"]], e
            ends[e["ph"]][e["id"]] = e
            t = ns(e["ts"])
            holder = [x for a, b, x in by_track[(e["pid"], e["tid"])] if a <= t < b]
            assert len(holder) == 1, (e, holder)
            # a token joins instructions, a barrier arrow the barrier waits
            assert (holder[0].get("cat") == "stall") == (e["name"] == "barrier"), (e, holder)
            if e["ph"] == "f":
                assert e["bp"] == "e"
    assert ends["s"] and ends["s"].keys() == ends["f"].keys()
    for i, s in ends["s"].items():
        f = ends["f"][i]
        assert s["name"] == f["name"] and s["ts"] <= f["ts"] + 1e-3


def test_compute_queue_waits_have_their_own_track():
    res = simulate(queue_program(), "mlu270", cores=1, timing_only=True, trace=True)
    spans = tracks(chrome_trace(res))
    wait = next(s for s in spans[(1, TID["cp"])] if s[2]["name"] == "wait ld token")
    first = spans[(1, TID["vec"])][0]
    assert first[0] < wait[0] < first[1] < wait[1]        # overlapping in time, on separate tracks
    assert all(s[2].get("cat") != "stall" for s in spans[(1, TID["vec"])])


def test_barrier_program_has_one_arrow_per_token_and_per_released_core():
    res = simulate(barrier_program(), "mlu270", cores=8, timing_only=True, trace=True)
    tr = chrome_trace(res)
    names = [e["name"] for e in tr["traceEvents"] if e["ph"] == "s"]
    cpc = res.config.chip.cores_per_cluster
    assert names.count("token") == 2 * TASKS
    assert names.count("barrier") == (TASKS // cpc) * (cpc - 1)      # the last core releases the others
    tids = {(e["tid"], e["name"]) for e in tr["traceEvents"] if e["ph"] in ("s", "f")}
    assert {(TID["ld"], "token"), (TID["vec"], "token"), (TID["st"], "token"), (TID["issue"], "barrier")} == tids


def test_layer_markers_match_the_per_layer_report():
    """Inside the fused kernel each job's steps are slices named as the per-layer report's rows,
    nested in the job's slice, on the layers track of the cluster that ran the job; the first
    start and last end of each name are the report's."""
    res = lenet_run()
    tr = chrome_trace(res)
    rows = {r["layer"]: r for r in summarize(res)["layers"]}
    names = {e["args"]["name"]: e["tid"] for e in tr["traceEvents"] if e["ph"] == "M" and e["name"] == "thread_name"
             and e["pid"] == 0}
    assert {"layers, cluster 0", "layers, cluster 1"} <= names.keys()
    layer_tracks = {names["layers, cluster 0"], names["layers, cluster 1"]}
    layers = [e for e in tr["traceEvents"] if e.get("cat") == "layer"]
    jobs = [e for e in tr["traceEvents"] if e.get("cat") == "job"]
    assert {e["tid"] for e in layers} == layer_tracks and len(jobs) == 2
    assert {e["name"] for e in layers} == rows.keys()
    seg = next(e for e in tr["traceEvents"] if e.get("cat") == "kernel" and e["args"].get("op") == "segment")
    assert isinstance(seg["args"]["fused"], list) and "conv1" in seg["args"]["fused"]     # a list, not its repr
    assert sum(1 for r in rows.values() if r["fused"]) >= 5
    mhz = res.config.chip.clock_mhz
    for name, r in rows.items():
        mine = [e for e in layers if e["name"] == name]
        assert min(ns(e["ts"]) for e in mine) == round(r["start"] * 1000 / mhz)
        assert max(ns(e["ts"]) + ns(e["dur"]) for e in mine) == round(r["end"] * 1000 / mhz)
    for e in layers:
        if e["args"].get("job") is not None:
            job = next(j for j in jobs if j["tid"] == e["tid"])
            assert ns(job["ts"]) <= ns(e["ts"]) and ns(e["ts"]) + ns(e["dur"]) <= ns(job["ts"]) + ns(job["dur"])


def test_slices_add_up_to_the_counters(traced):
    """Busy slices give the units' busy cycles, wait slices the token and barrier stalls (each
    slice rounded to the nanosecond: half a nanosecond per slice at most)."""
    res, tr = traced
    k = res.config.chip.clock_mhz / 1000       # cycles per nanosecond
    for cid, c in res.totals().items():
        mine = [e for e in tr["traceEvents"] if e["ph"] == "X" and e["pid"] == cid + 1]

        def total(keep):
            sel = [e for e in mine if keep(e)]
            return sum(ns(e["dur"]) for e in sel) * k, len(sel) * k

        for unit in ("ld", "mac", "vec", "st"):
            busy, tol = total(lambda e: e["tid"] == TID[unit] and e.get("cat") != "stall")
            assert busy == pytest.approx(c.busy[unit], abs=tol + 1e-6)
        waits, tol = total(lambda e: e.get("cat") == "stall" and e["tid"] != TID["issue"])
        assert waits == pytest.approx(sum(c.token_stall.values()), abs=tol + 1e-6)
        issue, tol = total(lambda e: e["tid"] == TID["issue"])
        assert issue == pytest.approx(c.issue_stall + c.sync_wait, abs=tol + 1e-6)
    if res.kernels[0].task_type == "union1" and res.kernels[0].name == "k":
        stalls = {e["name"] for e in tr["traceEvents"] if e.get("cat") == "stall"}
        assert {"wait ld token", "wait cp token", "sync.cluster"} <= stalls
    kernels = [e for e in tr["traceEvents"] if e.get("cat") == "kernel"]
    assert [e["name"] for e in kernels] == [k.name for k in res.kernels]
    assert ns(kernels[-1]["ts"] + kernels[-1]["dur"]) == round(res.cycles * 1000 / res.config.chip.clock_mhz)


def test_dram_counter_never_exceeds_the_bandwidth_and_returns_to_zero(traced):
    res, tr = traced
    dram = [e for e in tr["traceEvents"] if e["ph"] == "C" and e["name"] == "DRAM (GB/s)"]
    assert dram and max(e["args"]["GB/s"] for e in dram) <= res.config.dram.bandwidth_gbps * (1 + 1e-9)
    assert max(e["args"]["GB/s"] for e in dram) > 0 and dram[-1]["args"]["GB/s"] == 0
    # bytes = integral of the rate over time: the counter accounts for every DRAM bus byte
    area = sum(a["args"]["GB/s"] * 1e9 * (b["ts"] - a["ts"]) * 1e-6 for a, b in zip(dram, dram[1:]))
    assert area == pytest.approx(res.dram_bytes, rel=1e-3)


def test_gzip_when_the_name_ends_in_gz(traced, tmp_path):
    res, tr = traced
    n = write_trace(res, tmp_path / "t.json.gz")
    assert (tmp_path / "t.json.gz").read_bytes()[:2] == b"\x1f\x8b"
    with gzip.open(tmp_path / "t.json.gz", "rt", encoding="utf-8") as f:
        back = json.load(f)
    assert back == tr and n == len(tr["traceEvents"])
    write_trace(res, tmp_path / "t.json")
    assert json.loads((tmp_path / "t.json").read_text()) == tr


def test_tracing_does_not_change_the_timing():
    prog = barrier_program()
    a = simulate(prog, "mlu270", cores=8, timing_only=True)
    b = simulate(prog, "mlu270", cores=8, timing_only=True, trace=True)
    assert a.cycles == b.cycles and a.trace is None and b.trace


def test_trace_path_numbers_one_file_per_core_count():
    assert trace_path("t.json") == Path("t.json")
    assert trace_path("d/t.json", 4) == Path("d/t.4cores.json")
    assert trace_path("t.json.gz", 16) == Path("t.16cores.json.gz")
    assert trace_path("t", 2) == Path("t.2cores.json")


def test_cli_trace_files(capsys, tmp_path):
    code = main(["run", MATMUL, "--cores", "1,4", "--timing-only", "--trace", str(tmp_path / "t.json.gz")])
    out, err = capsys.readouterr()
    assert code == 0, err
    for n in (1, 4):
        with gzip.open(tmp_path / f"t.{n}cores.json.gz", "rt", encoding="utf-8") as f:
            tr = json.load(f)
        names = {e["args"]["name"] for e in tr["traceEvents"] if e["ph"] == "M" and e["name"] == "process_name"}
        assert {f"core {c} (cluster 0)" for c in range(n)} <= names
        assert any(e["ph"] == "X" and e["name"] == "matmul" and e["tid"] == TID["mac"] for e in tr["traceEvents"])
        assert f"t.{n}cores.json.gz" in out
