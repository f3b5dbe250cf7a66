"""Chrome/Perfetto traces: schema, tracks that never overlap, and agreement with the counters."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import I, program, tensors

from mlusim.cli import main
from mlusim.experiments import resolve_program
from mlusim.program import TensorDecl
from mlusim.sim import simulate
from mlusim.trace import TID, chrome_trace

ROOT = Path(__file__).resolve().parents[1]
MATMUL = str(ROOT / "examples" / "matmul.s")


def barrier_program():
    """Two union tasks per cluster that stall on tokens and barriers: every kind of slice."""
    g = tensors(TensorDecl("g", "scratch", "i8", (8 * 65536,), -1))
    s = [I("rdsr", rd=1, sr="taskid"), I("muli", rd=2, rs1=1, imm=65536),
         I("dma", dir="g2n", dst=0, src=(2, g[0].addr), size=65536, sig="cp"),
         I("vrelu", dt="i8", dst=0x10000, src=0, n=65536, wait="ld", sig="st"),
         I("dma", dir="n2g", dst=(2, g[0].addr), src=0x10000, size=65536, wait="cp"),
         I("sync.cluster")]
    return program(s, g, task_type="union1", task_dim=8)


@pytest.fixture(scope="module", params=["matmul", "barrier"])
def traced(request):
    prog = resolve_program(MATMUL) if request.param == "matmul" else barrier_program()
    res = simulate(prog, "mlu270", cores=4 if request.param == "matmul" else 8, timing_only=True, trace=True)
    return res, chrome_trace(res)


def test_every_event_has_the_required_fields(traced):
    _res, tr = traced
    assert tr["traceEvents"]
    for e in tr["traceEvents"]:
        for key in ("ph", "ts", "dur", "pid", "tid", "name"):
            assert key in e, (key, e)
        assert e["ph"] in ("X", "M", "C")
        assert e["ts"] >= 0 and e["dur"] >= 0
    json.dumps(tr)     # serialisable as is


def test_slices_on_one_track_never_overlap(traced):
    _res, tr = traced
    tracks: dict = {}
    for e in tr["traceEvents"]:
        if e["ph"] == "X":
            tracks.setdefault((e["pid"], e["tid"]), []).append(e)
    assert len(tracks) >= 4
    for evs in tracks.values():
        evs.sort(key=lambda e: e["ts"])
        for a, b in zip(evs, evs[1:]):
            assert a["ts"] + a["dur"] <= b["ts"] + 1e-6, (a, b)


def test_slices_add_up_to_the_counters(traced):
    res, tr = traced
    mhz = res.config.chip.clock_mhz
    totals = res.totals()
    for cid, c in totals.items():
        for unit in ("ld", "mac", "vec", "st"):
            busy = sum(e["dur"] for e in tr["traceEvents"] if e["ph"] == "X" and e["pid"] == cid + 1
                       and e["tid"] == TID[unit] and e["cat"] == "instr")
            assert busy * mhz == pytest.approx(c.busy[unit], abs=1e-3)
        waits = sum(e["args"]["cycles"] for e in tr["traceEvents"] if e["ph"] == "X" and e["pid"] == cid + 1
                    and e["cat"] == "stall" and e["tid"] != TID["issue"])
        assert waits == pytest.approx(sum(c.token_stall.values()))
        issue = sum(e["args"]["cycles"] for e in tr["traceEvents"] if e["ph"] == "X" and e["pid"] == cid + 1
                    and e["tid"] == TID["issue"])
        assert issue == pytest.approx(c.issue_stall + c.sync_wait)
    if res.kernels[0].task_type == "union1":      # token waits and barrier waits are on the tracks
        stalls = {e["name"] for e in tr["traceEvents"] if e.get("cat") == "stall"}
        assert {"wait ld token", "wait cp token", "sync.cluster"} <= stalls
    kernels = [e for e in tr["traceEvents"] if e["ph"] == "X" and e["cat"] == "kernel"]
    assert [k["name"] for k in kernels] == [k.name for k in res.kernels]
    assert kernels[-1]["ts"] + kernels[-1]["dur"] == pytest.approx(res.cycles / mhz)


def test_dram_counter_never_exceeds_the_bandwidth_and_returns_to_zero(traced):
    res, tr = traced
    dram = [e for e in tr["traceEvents"] if e["ph"] == "C" and e["name"] == "DRAM (GB/s)"]
    assert dram and max(e["args"]["GB/s"] for e in dram) <= res.config.dram.bandwidth_gbps * (1 + 1e-9)
    assert max(e["args"]["GB/s"] for e in dram) > 0 and dram[-1]["args"]["GB/s"] == 0
    # bytes = integral of the rate over time: the counter accounts for every DRAM bus byte
    area = sum(a["args"]["GB/s"] * 1e9 * (b["ts"] - a["ts"]) * 1e-6 for a, b in zip(dram, dram[1:]))
    assert area == pytest.approx(res.dram_bytes, rel=1e-4)


def test_tracing_does_not_change_the_timing():
    prog = barrier_program()
    a = simulate(prog, "mlu270", cores=8, timing_only=True)
    b = simulate(prog, "mlu270", cores=8, timing_only=True, trace=True)
    assert a.cycles == b.cycles and a.trace is None and b.trace


def test_cli_trace_files(capsys, tmp_path):
    code = main(["run", MATMUL, "--cores", "1,4", "--timing-only", "--trace", str(tmp_path / "t.json")])
    out, err = capsys.readouterr()
    assert code == 0, err
    for n in (1, 4):
        tr = json.loads((tmp_path / f"t.{n}cores.json").read_text())
        names = {e["args"]["name"] for e in tr["traceEvents"] if e["ph"] == "M" and e["name"] == "process_name"}
        assert {f"core {c} (cluster 0)" for c in range(n)} <= names
        assert any(e["ph"] == "X" and e["name"] == "matmul (matmul)" for e in tr["traceEvents"])
