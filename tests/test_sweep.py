"""Sweeps: the cross product, the values in every column, bad specs, local processes and Dask."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from mlusim.cli import main
from mlusim.config import load_config
from mlusim.errors import ConfigError
from mlusim.experiments import resolve_program
from mlusim.programs import BuildOptions
from mlusim.runs import execute, plan_digest, prepare
from mlusim.sim import simulate
from mlusim.sweep import SweepError, columns, load_sweep_file, parse_set, points, sweep

ROOT = Path(__file__).resolve().parents[1]
MATMUL = str(ROOT / "examples" / "matmul.s")
PARAMS = {"dram.bandwidth_gbps": [25.6, 102.4], "core.nram_kib": [192, 512]}


@pytest.fixture(scope="module")
def local_rows():
    return sweep(MATMUL, "mlu270", PARAMS, [1, 4], jobs=1)


def test_cross_product_order_columns_and_values(local_rows):
    rows = local_rows
    assert len(rows) == 2 * 2 * 2
    expect = [(bw, nram, n) for bw in (25.6, 102.4) for nram in (192, 512) for n in (1, 4)]
    assert [(r["dram.bandwidth_gbps"], r["core.nram_kib"], r["cores"]) for r in rows] == expect
    prog = resolve_program(MATMUL)
    for r in rows:
        if r["core.nram_kib"] == 192:     # 64 KiB of usable NRAM cannot hold the 64 KiB result tile + A
            assert r["error"] and "outside NRAM" in r["error"] and "cycles" not in r
            continue
        assert r["error"] is None
        cfg = load_config("mlu270", {"dram.bandwidth_gbps": r["dram.bandwidth_gbps"], "core.nram_kib": 512})
        res = simulate(prog, cfg, cores=r["cores"], timing_only=True)
        assert r["cycles"] == res.cycles           # the point ran with exactly its config
        assert r["dram_utilization"] == pytest.approx(r["dram_gbps"] / r["dram.bandwidth_gbps"])
    ok = [r for r in rows if not r["error"]]
    slow, fast = ok[1], ok[3]     # 4 cores at 25.6 and 102.4 GB/s
    assert slow["cycles"] > fast["cycles"] and slow["bound"] == "dram"
    # speedup and efficiency are relative to the first core count of the same hardware point
    assert ok[1]["speedup"] == pytest.approx(ok[0]["cycles"] / ok[1]["cycles"])
    assert ok[1]["efficiency"] == pytest.approx(ok[1]["speedup"] / 4)
    assert ok[0]["speedup"] == 1.0


def test_local_processes_give_the_same_rows(local_rows):
    assert sweep(MATMUL, "mlu270", PARAMS, [1, 4], jobs=2) == local_rows


def test_dask_cluster_gives_the_same_rows(local_rows):
    distributed = pytest.importorskip("distributed")
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=False, host="127.0.0.1",
                                  protocol="tcp", dashboard_address=None) as cluster:
        assert cluster.scheduler_address.startswith("tcp://127.0.0.1:")
        seen = []
        rows = sweep(MATMUL, "mlu270", PARAMS, [1, 4], cluster=cluster.scheduler_address,
                     progress=lambda done, total, row: seen.append((done, total)))
    assert rows == local_rows
    assert seen[0] == (0, 8) and seen[-1] == (8, 8) and len(seen) == 9    # the total is known before any point


def test_parse_set_types_values_and_cross_product():
    p = parse_set(["dram.bandwidth_gbps=51.2,102.4", "core.nram_kib=256,512,1024", "chip.clock_mhz=1000"])
    assert p == {"dram.bandwidth_gbps": [51.2, 102.4], "core.nram_kib": [256, 512, 1024], "chip.clock_mhz": [1000]}
    pts = points(p)
    assert len(pts) == 6 and pts[0] == {"dram.bandwidth_gbps": 51.2, "core.nram_kib": 256, "chip.clock_mhz": 1000}
    assert pts[-1]["dram.bandwidth_gbps"] == 102.4 and pts[-1]["core.nram_kib"] == 1024
    heads = [h for _, h, _ in columns(list(p))]
    assert heads[:4] == ["dram.bandwidth_gbps (GB/s)", "core.nram_kib (KiB)", "chip.clock_mhz (MHz)", "Cores"]


@pytest.mark.parametrize("params,needle", [
    ({"core.nram": [1]}, "unknown config key 'core.nram' (did you mean 'core.nram_kib'?)"),
    ({"dram.bandwidth_gbps": [51.2, -1]}, "sweep point dram.bandwidth_gbps=-1"),
    ({"dram.bandwidth_gbps": ["fast"]}, "expected a number"),
    ({"dram.bandwidth_gbps": []}, "non-empty list"),
])
def test_bad_sweep_specs_fail_before_running(params, needle):
    with pytest.raises(ConfigError) as e:
        sweep(MATMUL, "mlu270", params, [1], jobs=1)
    assert needle in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize("text,needle", [
    ("set: {dram.bandwidth_gbps: [1, 2]}\nspeed: 3\n", "unknown key 'speed'"),
    ("set: [1, 2]\n", "expected a mapping"),
    ("cores: [0]\n", "cores: expected a positive integer"),
    ("set: {dram.bandwidth_gbps: [[1]]}\n", "non-empty list of scalar values"),
    ("- 1\n", "a sweep file is a mapping"),
])
def test_bad_sweep_files(tmp_path, text, needle):
    f = tmp_path / "s.yaml"
    f.write_text(text)
    with pytest.raises(SweepError) as e:
        load_sweep_file(f)
    assert needle in str(e.value)


def cli(capsys, *args):
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_sweep_file_equals_command_line_and_writes_csv_json(capsys, tmp_path):
    f = tmp_path / "sweep.yaml"
    f.write_text(f"program: {MATMUL}\nconfig: mlu270\ncores: [1, 4]\nset:\n  dram.bandwidth_gbps: [51.2, 204.8]\n")
    code, out, err = cli(capsys, "sweep", "--file", str(f), "--jobs", "1", "--json", str(tmp_path / "a.json"),
                         "--csv", str(tmp_path / "a.csv"))
    assert code == 0, err
    assert "dram.bandwidth_gbps" in out and "4 point(s)" in out
    code, out, err = cli(capsys, "sweep", MATMUL, "--set", "dram.bandwidth_gbps=51.2,204.8", "--cores", "1,4",
                         "--jobs", "1", "--json", str(tmp_path / "b.json"))
    assert code == 0, err
    a, b = (json.loads((tmp_path / n).read_text()) for n in ("a.json", "b.json"))
    assert a["kind"] == "sweep" and a["rows"] == b["rows"]
    with open(tmp_path / "a.csv", newline="") as fh:
        got = list(csv.DictReader(fh))
    assert [(r["dram.bandwidth_gbps (GB/s)"], r["Cores"]) for r in got] == [("51.2", "1"), ("51.2", "4"),
                                                                             ("204.8", "1"), ("204.8", "4")]
    assert float(got[3]["Total Cycles"]) == pytest.approx(a["rows"][3]["cycles"])


@pytest.mark.parametrize("args,needle", [
    (["sweep", MATMUL, "--set", "dram.bandwith_gbps=1,2"], "did you mean 'dram.bandwidth_gbps'"),
    (["sweep", MATMUL, "--set", "dram.bandwidth_gbps=1,,2"], "empty value"),
    (["sweep", MATMUL, "--set", "dram.bandwidth_gbps"], "expected path.to.key=VALUE"),
    (["sweep", MATMUL, "--set", "core.nram_kib=0", "--cores", "1"], "must be > 0"),
    (["sweep", MATMUL, "--cores", "32", "--jobs", "1"], "every sweep point failed"),
    (["sweep"], "no program"),
    (["sweep", MATMUL, "--cluster", "tcp://127.0.0.1:1", "--cluster-timeout", "0.5", "--cores", "1"],
     "cannot reach the Dask scheduler"),
])
def test_cli_sweep_errors_are_one_line(capsys, args, needle):
    code, out, err = cli(capsys, *args)
    assert code == 2
    assert err.startswith("mlusim: error: ") and needle in err and err.count("\n") == 1


def test_ctrl_c_keeps_the_finished_points_and_the_cli_writes_them(capsys, tmp_path, monkeypatch):
    from mlusim.sweep import Interrupted

    def stop_after_three(done, total, row):
        if done == 3:
            raise KeyboardInterrupt
    with pytest.raises(Interrupted) as e:
        sweep(MATMUL, "mlu270", {"dram.bandwidth_gbps": [25.6, 51.2, 102.4]}, [1, 4], jobs=1,
              progress=stop_after_three)
    assert [r["point"] for r in e.value.rows] == [0, 1, 2]

    import mlusim.sweep as sw
    real = sw.run_point

    def interrupted_third(task, blob=None):
        if task["index"] == 2:
            raise KeyboardInterrupt
        return real(task, blob)
    monkeypatch.setattr(sw, "run_point", interrupted_third)
    code, out, err = cli(capsys, "sweep", MATMUL, "--set", "dram.bandwidth_gbps=25.6,51.2", "--cores", "1,4",
                         "--jobs", "1", "--csv", str(tmp_path / "p.csv"))
    assert code == 130 and "interrupted" in err
    with open(tmp_path / "p.csv", newline="") as fh:
        assert len(list(csv.DictReader(fh))) == 2


def test_zoo_model_points_are_compiled_for_their_config_and_core_count():
    rows = sweep("lenet5", "mlu270", {"dram.bandwidth_gbps": [25.6, 102.4]}, [1, 4], jobs=1)
    assert [r["error"] for r in rows] == [None] * 4
    for r in rows:
        cfg = load_config("mlu270", {"dram.bandwidth_gbps": r["dram.bandwidth_gbps"]})
        prog = resolve_program("lenet5", cfg, cores=r["cores"])
        assert r["cycles"] == simulate(prog, cfg, cores=r["cores"], timing_only=True).cycles


R18 = BuildOptions(resolution=32)
BANDWIDTHS = [25.6, 102.4, 819.2]


def test_default_sweep_recompiles_and_marks_where_the_plan_changed():
    """ResNet-18 is re-planned for each DRAM bandwidth (the cost model picks other tilings and
    fusions): each row says which program it ran and whether that changed from the row before."""
    rows = sweep("resnet18", "mlu270", {"dram.bandwidth_gbps": BANDWIDTHS}, [4], jobs=1, options=R18)
    for r in rows:
        cfg = load_config("mlu270", {"dram.bandwidth_gbps": r["dram.bandwidth_gbps"]})
        prep = prepare("resnet18", cfg, 4, R18)
        assert r["plan"] == plan_digest(prep)
        assert r["cycles"] == execute(prep, cfg, 4).cycles
    assert [r["replanned"] for r in rows] == [False] + [a["plan"] != b["plan"] for a, b in zip(rows, rows[1:])]
    assert any(r["replanned"] for r in rows)


def test_hold_program_compiles_once_and_varies_only_the_hardware(capsys, tmp_path, monkeypatch):
    import tempfile

    private = tmp_path / "tmp"      # held files of tests running beside this one stay out of the count
    private.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(private))
    rows = sweep("resnet18", "mlu270", {"dram.bandwidth_gbps": BANDWIDTHS}, [4], jobs=1, options=R18,
                 hold_program=True)
    held = resolve_program("resnet18", load_config("mlu270"), 4, R18)     # the base config's program
    assert len({r["plan"] for r in rows}) == 1 and not any(r["replanned"] for r in rows)
    for r in rows:
        cfg = load_config("mlu270", {"dram.bandwidth_gbps": r["dram.bandwidth_gbps"]})
        assert r["cycles"] == simulate(held, cfg, cores=4, timing_only=True).cycles
    cycles = [r["cycles"] for r in rows]
    assert cycles == sorted(cycles, reverse=True)          # one program: more bandwidth is never slower
    before = set(Path(tempfile.gettempdir()).glob("mlusim-held-*"))
    assert tempfile.gettempdir() == str(private)
    code = main(["sweep", "resnet18", "--resolution", "32", "--hold-program", "--set",
                 "dram.bandwidth_gbps=25.6,819.2", "--cores", "4", "-j", "1", "--csv", str(tmp_path / "h.csv")])
    assert code == 0
    got = list(csv.DictReader(open(tmp_path / "h.csv")))
    assert [r["Replanned"] for r in got] == ["false", "false"] and got[0]["Plan"] == got[1]["Plan"]
    assert set(Path(tempfile.gettempdir()).glob("mlusim-held-*")) == before        # held files removed


def test_hold_program_refuses_the_per_cluster_schedule():
    with pytest.raises(SweepError, match="per cluster"):
        sweep("resnet18", "mlu370-s4", {"dram.bandwidth_gbps": [51.2]}, [4], jobs=1, options=R18, hold_program=True)
