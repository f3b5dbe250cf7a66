"""Scaling reports: every figure recomputed here from the engine's raw counters, plus the files."""
from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pytest
from conftest import I, program, tensors

from mlusim.cli import main
from mlusim.experiments import (
    LAYER_COLUMNS,
    BuildOptions,
    SCALING_COLUMNS,
    flatten_layers,
    resolve_program,
    scaling,
    scaling_rows,
    write_csv,
)
from mlusim.program import Kernel, Program, TensorDecl
from mlusim.report import summarize
from mlusim.sim import simulate

ROOT = Path(__file__).resolve().parents[1]
MATMUL = str(ROOT / "examples" / "matmul.s")
KIB = 1024


def two_layer_program(tasks: int = 8) -> Program:
    """A conv kernel (3 input channels: 3/64 of the MAC lanes) and a DRAM-streaming kernel."""
    g = tensors(TensorDecl("g", "scratch", "i8", (tasks * 64 * KIB,), -1))
    conv = I("conv", dt="i8", odt="i32", dst=0, src=0x40000, wgt=0, n=1, hi=16, wi=16, ci=3, co=64, kh=3, kw=3,
             pt=1, pb=1, pl=1, pr=1)
    stream = [I("rdsr", rd=1, sr="taskid"), I("muli", rd=2, rs1=1, imm=64 * KIB),
              I("dma", dir="g2n", dst=0, src=(2, g[0].addr), size=64 * KIB)]
    k1 = Kernel("k_conv", "block", tasks, [[conv]], meta={"layer": "conv1", "op": "conv3x3"})
    k2 = Kernel("k_stream", "block", tasks, [stream], meta={"layer": "load", "op": "copy"})
    return Program([k1, k2], g, meta={"batch": 4})


def raw(res):
    """Whole-run counters straight from the RunResult, not via the report."""
    cores = [c for k in res.kernels for c in k.cores.values()]
    return {"macs": sum(c.macs for c in cores), "slots": sum(c.mac_slots for c in cores),
            "mac_busy": sum(c.busy["mac"] for c in cores)}


def test_scaling_rows_match_raw_counters(mlu270):
    prog = two_layer_program()
    peak = mlu270.core.mac_int8_per_cycle
    results = {n: simulate(prog, mlu270, cores=n, timing_only=True) for n in (1, 2, 8)}
    rows = scaling_rows([summarize(results[n]) for n in (1, 2, 8)], batch=4, per_layer=True)
    base = results[1]
    for row, n in zip(rows, (1, 2, 8)):
        res, c = results[n], raw(results[n])
        secs = res.cycles / (mlu270.chip.clock_mhz * 1e6)
        assert row["cores"] == n and row["cycles"] == res.cycles
        assert row["speedup"] == pytest.approx(base.cycles / res.cycles)
        assert row["efficiency"] == pytest.approx(base.cycles / res.cycles / n)
        assert row["throughput_ips"] == pytest.approx(4 / secs)
        assert row["latency_ms"] == pytest.approx(secs * 1e3)
        assert row["mac_utilization"] == pytest.approx(c["macs"] / (res.cycles * peak * n))
        assert row["mapping_efficiency"] == pytest.approx(c["macs"] / (c["slots"] * peak))
        assert row["mapping_efficiency"] == pytest.approx(3 / 64)      # 3 of the 64 input lanes
        assert row["compute_utilization"] == pytest.approx(c["macs"] / (c["mac_busy"] * peak))
        assert row["dram_bytes"] == res.dram_bytes == sum(k.dram_bus_bytes for k in res.kernels)
        assert row["dram_gbps"] == pytest.approx(res.dram_bytes / secs / 1e9)
        assert row["dram_utilization"] == pytest.approx(row["dram_gbps"] / mlu270.dram.bandwidth_gbps)
        layers = row["layers"]
        assert [lr["layer"] for lr in layers] == ["conv1", "load"] and layers[0]["op"] == "conv3x3"
        for lr, k, kb in zip(layers, res.kernels, base.kernels):
            assert lr["cycles"] == k.cycles
            assert lr["speedup"] == pytest.approx(kb.cycles / k.cycles)
            assert lr["efficiency"] == pytest.approx(kb.cycles / k.cycles / n)
    assert rows[0]["speedup"] == 1.0 and rows[0]["efficiency"] == 1.0
    assert rows[2]["speedup"] > 2      # 8 independent tasks do scale


def stream_program(ncores: int, nbytes: int = 256 * KIB) -> Program:
    g = tensors(TensorDecl("g", "scratch", "i8", (ncores * nbytes,), -1))
    stream = [I("rdsr", rd=1, sr="taskid"), I("muli", rd=2, rs1=1, imm=nbytes),
              I("dma", dir="g2n", dst=0, src=(2, g[0].addr), size=nbytes)]
    return program(stream, g, task_dim=ncores)


def test_bound_separates_dram_contention_from_a_cores_dma_channel(mlu270):
    one = summarize(simulate(stream_program(1), mlu270, cores=1, timing_only=True))
    many = summarize(simulate(stream_program(16), mlu270, cores=16, timing_only=True))
    # one core cannot saturate DRAM (its channel is capped below it): its DMA queue is the limit
    assert mlu270.dma.core_bandwidth_bytes_per_cycle < mlu270.dram_bytes_per_cycle
    assert one["kernels"][0]["bound"] == "dma" and one["bound"] == "dma"
    # sixteen cores share the DRAM: the DMA queues are busy waiting for it, the bound is dram
    k = many["kernels"][0]
    assert k["bound"] == "dram" and k["bound_share"] > 0.8
    cand = k["busy_candidates"]
    assert cand["dram"] == pytest.approx(k["dram_bus_bytes"] / mlu270.dram_bytes_per_cycle)
    assert cand["dma"] < cand["dram"]


def test_compute_kernel_is_mac_bound_and_a_serial_chain_is_latency_bound(mlu270):
    conv = I("conv", dt="i8", odt="i32", dst=0, src=0x40000, wgt=0, n=1, hi=16, wi=16, ci=256, co=256, kh=3, kw=3)
    s = summarize(simulate(program([conv], []), mlu270, cores=1, timing_only=True))
    assert s["kernels"][0]["bound"] == "mac"
    s = summarize(simulate(resolve_program(MATMUL), mlu270, cores=1, timing_only=True))
    k = s["kernels"][0]      # load, then matmul, then store, with nothing to overlap
    assert k["bound"] == "latency" and k["bound_share"] < 0.5
    assert k["bound_share"] == pytest.approx(max(k["busy_candidates"].values()) / k["cycles"])


def test_scaling_api_from_a_spec_and_interrupt_keeps_the_finished_rows(mlu270):
    rows = scaling(MATMUL, "mlu270", [1, 2, 4])
    assert [r["cores"] for r in rows] == [1, 2, 4]
    assert rows[1]["cycles"] < rows[0]["cycles"]

    def stop(done, total, cycles):
        raise KeyboardInterrupt

    rows = scaling(two_layer_program(), mlu270, [1, 2], progress=stop)
    assert len(rows) == 1 and rows[0]["interrupted"] is True


def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_csv_has_units_and_percent_columns_equal_json_fractions(tmp_path, mlu270):
    rows = scaling(two_layer_program(), mlu270, [1, 4], per_layer=True)
    write_csv(rows, tmp_path / "s.csv")
    write_csv(flatten_layers(rows), tmp_path / "l.csv", LAYER_COLUMNS)
    got = read_csv(tmp_path / "s.csv")
    assert list(got[0])[:len(SCALING_COLUMNS)] == [h for _, h, _ in SCALING_COLUMNS]
    for h in ("Total Cycles", "Latency (ms)", "Throughput (images/s)", "DRAM BW (GB/s)", "Parallel Efficiency %",
              "Overall Util %"):
        assert h in got[0]
    for r, c in zip(rows, got):
        assert float(c["Total Cycles"]) == pytest.approx(r["cycles"])
        assert float(c["Parallel Efficiency %"]) == pytest.approx(100 * r["efficiency"])
        assert float(c["Overall Util %"]) == pytest.approx(100 * r["mac_utilization"])
        assert float(c["DRAM BW (GB/s)"]) == pytest.approx(r["dram_gbps"])
        assert c["Bound"] == r["bound"]
    layers = read_csv(tmp_path / "l.csv")
    assert len(layers) == 4 and [x["Layer"] for x in layers] == ["conv1", "load", "conv1", "load"]
    assert all(x["LayerID"] in ("0", "1") and x["Cores"] in ("1", "4") for x in layers)


def cli(capsys, *args):
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def test_run_with_several_core_counts_prints_one_table_and_writes_files(capsys, tmp_path):
    j, c = tmp_path / "s.json", tmp_path / "s.csv"
    code, out, err = cli(capsys, "run", MATMUL, "--cores", "1,2,4", "--timing-only", "--per-layer",
                         "--json", str(j), "--csv", str(c))
    assert code == 0, err
    assert out.count("speedup") >= 2 and "efficiency" in out and "per layer" in out
    assert "cores (share of total cycles)" not in out     # no detailed report per run, one table
    doc = json.loads(j.read_text())
    assert doc["kind"] == "scaling" and doc["cores"] == [1, 2, 4] and len(doc["runs"]) == 3
    assert doc["rows"][2]["speedup"] == pytest.approx(doc["runs"][0]["cycles"] / doc["runs"][2]["cycles"])
    assert len(read_csv(c)) == 3 and len(read_csv(tmp_path / "s_layers.csv")) == 3


def test_run_cores_all_and_single_count_keeps_the_detailed_report(capsys, tmp_path):
    code, out, _ = cli(capsys, "run", MATMUL, "--cores", "all", "--timing-only", "--csv", str(tmp_path / "a.csv"))
    assert code == 0
    assert [int(r["Cores"]) for r in read_csv(tmp_path / "a.csv")] == [1, 2, 4, 8, 16]
    code, out, _ = cli(capsys, "run", MATMUL, "--cores", "4", "--timing-only")
    assert code == 0 and "cores (share of total cycles)" in out and "bytes moved by DMA" in out


def test_duplicate_core_counts_are_one_line_errors(capsys):
    code, _, err = cli(capsys, "run", MATMUL, "--cores", "2,2", "--timing-only")
    assert code == 2 and "twice" in err and err.count("\n") == 1


def test_json_has_no_nan(tmp_path, mlu270):
    from mlusim.experiments import write_json

    write_json({"x": math.nan, "y": [1.0, math.inf]}, tmp_path / "n.json")
    assert json.loads((tmp_path / "n.json").read_text()) == {"x": None, "y": [1.0, None]}


def test_ctrl_c_during_run_prints_the_partial_report_and_table(capsys, monkeypatch):
    from mlusim.commands import run as runcmd

    def progress(self, done, total, cycles):
        if self.counts[self.run] == 2:     # the 2-core run is interrupted in its first kernel
            raise KeyboardInterrupt
    monkeypatch.setattr(runcmd.RunProgress, "__call__", progress)
    prog = ROOT / "examples" / "matmul.s"
    code, out, err = cli(capsys, "run", str(prog), "--cores", "1,2,4", "--timing-only")
    assert code == 130
    assert "2 (interrupted)" in out and "\n      4 " not in out     # the table stops at the interrupted run
    code, out, err = cli(capsys, "run", str(prog), "--cores", "2", "--timing-only")
    assert code == 130 and "INTERRUPTED: partial report" in out


def test_zoo_model_is_compiled_for_each_core_count(capsys, tmp_path, mlu270):
    """A 1-core row must time a 1-core program, not the 16-core tiling run on one core."""
    from mlusim.experiments import compiles_on_the_fly

    assert compiles_on_the_fly("lenet5") and not compiles_on_the_fly(MATMUL)
    rows = scaling("lenet5", mlu270, cores=[1, 4])
    for r in rows:
        prog = resolve_program("lenet5", mlu270, cores=r["cores"])
        assert r["cycles"] == simulate(prog, mlu270, cores=r["cores"], timing_only=True).cycles
    j = tmp_path / "z.json"
    code, out, err = cli(capsys, "run", "lenet5", "--cores", "1,4", "--batch", "2", "--timing-only", "--json", str(j))
    assert code == 0, err
    doc = json.loads(j.read_text())
    for n, run in zip((1, 4), doc["runs"]):
        prog = resolve_program("lenet5", mlu270, cores=n, options=BuildOptions(batch=2))
        assert run["cycles"] == simulate(prog, mlu270, cores=n, timing_only=True).cycles
    assert doc["batch"] == 2


def test_batch_on_a_compiled_program_is_a_one_line_error(capsys):
    code, _, err = cli(capsys, "run", MATMUL, "--batch", "4", "--timing-only")
    assert code == 2 and "already compiled" in err and err.count("\n") == 1


def conv_pipeline(steps: int = 8, serial: bool = False) -> Program:
    """64 KiB input tiles double-buffered into NRAM under a conv that takes a little less time
    than a tile's load; `serial`: each load also waits for the conv before it (no overlap)."""
    conv = dict(dt="i8", odt="f16", n=1, hi=6, wi=6, ci=256, co=256, kh=3, kw=3, pt=1, pb=1, pl=1, pr=1)
    tile = 64 * KIB
    g = tensors(TensorDecl("x", "scratch", "i8", (steps * tile,), -1),
                TensorDecl("w", "scratch", "i8", (256 * 9 * 256,), -1))
    x, w = g
    s = [I("dma", dir="g2w", dst=0, src=w.addr, size=w.nbytes)]
    for i in range(steps + 1):
        if i < steps:
            s.append(I("dma", dir="g2n", dst=(i % 2) * tile, src=x.addr + i * tile, size=tile, sig="cp",
                       wait="cp" if i >= 2 or (serial and i) else "none"))
        if i >= 1:
            j = i - 1
            s.append(I("conv", dst=2 * tile, src=(j % 2) * tile, wgt=0, **conv, wait="ld", sig="ld"))
    return program(s, g)


def test_cp_wait_counts_only_cycles_the_compute_units_starve(mlu270):
    """The compute queue issues ahead of its units: the next conv waits for its tile's token while
    the previous conv still runs. Those waits overlap MAC work; cp wait is only the idle part."""
    res = simulate(conv_pipeline(), mlu270, cores=1, timing_only=True)
    c = res.totals()[0]
    share = summarize(res)["per_core"][0]["share"]
    raw_wait = 100 * c.token_stall["cp"] / res.cycles
    assert share["mac"] > 50 and share["mac"] + raw_wait > 110     # the raw waits overlap MAC work
    assert share["cp_wait"] == pytest.approx(100 * c.cp_starved / res.cycles)
    # the MAC array is the only compute unit used, so its idle time is starvation, less launch/issue
    assert share["cp_wait"] <= 100 - share["mac"]
    assert share["cp_wait"] == pytest.approx(100 - share["mac"], abs=5)
    # serial: nothing overlaps; the starved time grows by the loads now waited for
    ser = simulate(conv_pipeline(serial=True), mlu270, cores=1, timing_only=True)
    cs = ser.totals()[0]
    assert cs.cp_starved > c.cp_starved and cs.cp_starved + cs.busy["mac"] <= ser.cycles
    assert cs.cp_starved == pytest.approx(ser.cycles - cs.busy["mac"], rel=0.05)


def per_layer_lines(out: str) -> dict[tuple[str, int], str]:
    """(layer, cores) -> the cycles cell of `mlusim run --cores A,B --per-layer`'s per-layer table:
    a layer's first row is `name [op] cores cycles ...`, the next ones `cores cycles ...`."""
    import re

    body = out[out.index("per layer"):out.index("speedup       cycles")]
    got, name = {}, None
    for line in body.splitlines()[1:]:
        cells = line.split()
        if len(cells) < 3:
            continue
        if not cells[0].isdigit():
            name, cells = cells[0], cells[1:] if cells[1].isdigit() else cells[2:]
        if cells[0].isdigit() and re.fullmatch(r"[0-9,]+", cells[1]):
            got[(name, int(cells[0]))] = cells[1]
    return got


def test_per_layer_table_csv_and_json_agree_and_align_by_name(capsys, tmp_path):
    """ResNet-18 fuses its layers into one segment on 4 cores but not on 1: rows still meet under
    the same layer name and LayerID, in the table, the CSV and the JSON."""
    j, c = tmp_path / "s.json", tmp_path / "s.csv"
    code, out, err = cli(capsys, "run", "resnet18", "--resolution", "32", "--cores", "1,4", "--per-layer",
                         "--timing-only", "--json", str(j), "--csv", str(c))
    assert code == 0, err
    doc = json.loads(j.read_text())
    one, four = ({lr["layer"]: lr for lr in r["layers"]} for r in doc["rows"])
    assert not any(lr["fused"] for lr in one.values()) and sum(lr["fused"] for lr in four.values()) > 15
    for name, lr in four.items():
        if name in one:
            assert lr["layer_id"] == one[name]["layer_id"]
            assert lr["speedup"] == pytest.approx(one[name]["cycles"] / lr["cycles"])
    table = per_layer_lines(out)
    csv_rows = {(r["Layer"], int(r["Cores"])): r for r in read_csv(tmp_path / "s_layers.csv")}
    for row in doc["rows"]:
        for lr in row["layers"]:
            key = (lr["layer"], row["cores"])
            assert table[key] == f"{lr['cycles']:,.0f}", key
            assert int(csv_rows[key]["Total Cycles"]) == round(lr["cycles"])        # whole cycles in CSV
            assert int(csv_rows[key]["LayerID"]) == lr["layer_id"]
            assert float(csv_rows[key]["DRAM Filter Reads (B)"]) == lr["dram_weights_read"]
            assert int(csv_rows[key]["Stall Cycles"]) == round(lr["stall_cycles"])
    assert table[("stem.conv", 4)] == f"{four['stem.conv']['cycles']:,.0f}"     # not the segment's cycles


def test_single_run_per_layer_table_matches_the_json(capsys, tmp_path):
    j = tmp_path / "r.json"
    code, out, err = cli(capsys, "run", "resnet18", "--resolution", "32", "--cores", "4", "--per-layer",
                         "--timing-only", "--json", str(j))
    assert code == 0, err
    layers = json.loads(j.read_text())["layers"]
    body = out[out.index("per layer:"):]
    for lr in layers:
        line = next(x for x in body.splitlines() if x.split()[:2] == [str(lr["layer_id"]), lr["layer"]])
        assert f"{lr['cycles']:,.0f}" in line.split() and f"{lr['stall_cycles']:,.0f}" in line.split()
    assert "LayerID" not in out and "IFMAP" in out      # the legend names SCALE-Sim's operands
