"""Figures: files are real PNG/SVG, the roofline's arithmetic, and the plot command's errors."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest.importorskip("matplotlib")

from mlusim.cli import main
from mlusim.experiments import resolve_program, scaling
from mlusim.plot import plot_roofline, plot_speedup, plot_sweep, roofline_points
from mlusim.report import summarize
from mlusim.sim import simulate

ROOT = Path(__file__).resolve().parents[1]
MATMUL = str(ROOT / "examples" / "matmul.s")


def check_files(paths):
    png, svg = paths
    assert png.suffix == ".png" and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000
    assert svg.suffix == ".svg" and "<svg" in svg.read_text()[:2000]


def test_speedup_plot_and_reproducible_svg(tmp_path):
    rows = scaling(MATMUL, "mlu270", [1, 2, 4])
    check_files(plot_speedup(rows, tmp_path / "a"))
    plot_speedup(rows, tmp_path / "b")
    assert (tmp_path / "a.svg").read_bytes() == (tmp_path / "b.svg").read_bytes()
    assert "ideal (linear)" in (tmp_path / "a.svg").read_text()


def test_roofline_points_and_roofs(tmp_path, mlu270):
    s = summarize(simulate(resolve_program(MATMUL), mlu270, cores=4, timing_only=True))
    pts, roofs = roofline_points(s)
    k = s["kernels"][0]
    assert pts[0]["intensity"] == pytest.approx(2 * k["macs"] / k["dram_bus_bytes"])
    assert pts[0]["gops"] == pytest.approx(2 * k["macs"] / (k["cycles"] / 1e9) / 1e9)
    assert roofs["peak_gops"] == pytest.approx(4 * mlu270.core.mac_int8_per_cycle * 2 * mlu270.clock_hz / 1e9)
    assert roofs["dram_gbps"] == mlu270.dram.bandwidth_gbps
    assert pts[0]["gops"] <= min(roofs["peak_gops"], roofs["dram_gbps"] * pts[0]["intensity"])  # under the roof
    check_files(plot_roofline(s, tmp_path / "roof"))


def test_sweep_plot_rejects_unknown_columns(tmp_path):
    rows = [{"dram.bandwidth_gbps": b, "cores": 4, "latency_ms": 1 / b, "error": None} for b in (1.0, 2.0, 4.0)]
    check_files(plot_sweep(rows, "dram.bandwidth_gbps", "latency_ms", tmp_path / "s"))
    from mlusim.errors import MlusimError

    with pytest.raises(MlusimError, match="no column 'nope'"):
        plot_sweep(rows, "nope", "latency_ms", tmp_path / "t")


def test_plot_command_from_reports(capsys, tmp_path):
    sj, wj, rj = tmp_path / "s.json", tmp_path / "w.json", tmp_path / "r.json"
    assert main(["run", MATMUL, "--cores", "1,2,4", "--timing-only", "--json", str(sj)]) == 0
    assert main(["run", MATMUL, "--cores", "4", "--timing-only", "--json", str(rj)]) == 0
    assert main(["sweep", MATMUL, "--set", "dram.bandwidth_gbps=51.2,102.4", "--cores", "1,4", "--jobs", "1",
                 "--json", str(wj)]) == 0
    capsys.readouterr()
    for args in (["speedup", str(sj)], ["speedup", str(wj)], ["roofline", str(sj), "--cores", "2"],
                 ["roofline", str(rj)], ["sweep", str(wj), "--x", "dram.bandwidth_gbps", "--y", "dram_gbps"]):
        out = tmp_path / args[0]
        assert main(["plot", *args, "-o", str(out)]) == 0
        check_files([out.with_suffix(".png"), out.with_suffix(".svg")])
    assert json.loads(wj.read_text())["kind"] == "sweep"


@pytest.mark.parametrize("args,needle", [
    (["speedup", "R"], "needs a report of several core counts"),
    (["sweep", "R", "--x", "cores"], "needs a sweep report"),
    (["roofline", "missing.json"], "no such file"),
])
def test_plot_errors_are_one_line(capsys, tmp_path, args, needle):
    r = tmp_path / "r.json"
    assert main(["run", MATMUL, "--cores", "4", "--timing-only", "--json", str(r)]) == 0
    capsys.readouterr()
    code = main(["plot", *[str(r) if a == "R" else a for a in args], "-o", str(tmp_path / "x")])
    err = capsys.readouterr().err
    assert code == 2 and needle in err and err.count("\n") == 1
