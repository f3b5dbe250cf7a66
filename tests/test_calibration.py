"""Calibration against the published MLU370 rows: which rows count and how, and a small fit that
must land in the error band (the full calibration is `mlusim calibrate`, docs/calibration.md)."""
from __future__ import annotations

import json

import pytest

from mlusim.calibration import FITTED, Param, Point, Row, Runner, fit, load_points, mape
from mlusim.cli import main
from mlusim.config import load_config


def test_points_dedupe_and_leave_out_flagged_rows():
    points, skipped = load_points()
    keys = [p.key for p in points]
    assert len(keys) == len(set(keys))
    # a README row repeating a log's throughput is the same run: the point keeps the log's latency
    vgg = next(p for p in points if p.key == "vgg16/S4/b1")
    assert [r.source for r in vgg.rows] == ["latency"] and vgg.measured_ms == pytest.approx(2.0407)
    # README throughput where no log exists (X4): batch / qps
    x4 = next(p for p in points if p.key == "vgg16/X4/b8")
    assert x4.rows[0].source == "batch/qps" and x4.measured_ms == pytest.approx(8e3 / 3566.98)
    assert any("batch_label_contradicted_by_log" in why for _, why in skipped)
    assert not any(p.network == "mobilenetv3_large" and p.board == "S4" and p.batch == 1 and
                   any(r.ms == pytest.approx(1.2459) for r in p.rows) for p in points)


def test_disagreeing_runs_give_the_median():
    p = Point("vgg16", "S4", 1, [Row("vgg16", "S4", 1, ms, "latency", "x") for ms in (1.0, 1.35, 1.4)])
    assert p.measured_ms == 1.35 and p.spread == pytest.approx(0.4 / 1.35)
    assert mape([0.1, -0.3]) == pytest.approx(20.0)


def test_every_fitted_parameter_is_a_config_key_with_its_preset_value_in_the_grid():
    s4 = load_config("mlu370-s4")
    for p in FITTED:
        node = s4
        for part in p.key.split("."):
            node = getattr(node, part)
        assert node in p.grid and p.what.split(":")[0] in ("chip", "runtime")


def test_small_calibration_lands_in_the_band():
    """Two SqueezeNets at batch 1 and 4 on the S4, a two-value grid: the fit may only improve on
    the preset, leaves each network out in turn, and predicts within the band."""
    points = [p for p in load_points(boards=("S4",))[0] if p.network.startswith("squeezenet") and p.batch < 8]
    assert len(points) == 4
    s4 = load_config("mlu370-s4")
    grid = (Param("chip.kernel_launch_cycles", (250, 4000), "runtime: test"),)
    f = fit(points, {"S4": s4}, Runner(), grid)
    assert mape(f.errors(f.best)) <= mape(f.errors(f.before))
    assert set(f.lono) == {"squeezenet1_0", "squeezenet1_1"}
    assert f.cells[f.best]["chip.kernel_launch_cycles"] == 250
    assert mape(f.errors(f.best)) < 35.0 and mape(f.lono_errors()) < 35.0
    # batch 4 runs four clusters side by side: dearer than batch 1, by much less than 4x
    ms = dict(zip([p.key for p in points], f.ms[f.best]))
    assert ms["squeezenet1_1/S4/b1"] < ms["squeezenet1_1/S4/b4"] < 2 * ms["squeezenet1_1/S4/b1"]


def test_cli_json_csv_and_plot(tmp_path, capsys):
    out = tmp_path / "cal.json"
    assert main(["calibrate", "--no-fit", "--networks", "squeezenet1_1", "--boards", "S4", "--batches", "1",
                 "--json", str(out), "--csv", str(tmp_path / "cal.csv")]) == 0
    text = capsys.readouterr().out
    assert "squeezenet1_1" in text and "MAPE" in text
    doc = json.loads(out.read_text())
    assert doc["kind"] == "calibration" and len(doc["points"]) == 1 and doc["points"][0]["simulated_ms"] > 0
    assert (tmp_path / "cal.csv").read_text().count("\n") == 2
    pytest.importorskip("matplotlib")
    assert main(["plot", "calibration", str(out), "-o", str(tmp_path / "fig")]) == 0
    assert (tmp_path / "fig.png").stat().st_size > 0
    assert main(["calibrate", "--boards", "Z9"]) == 2
