"""Board power calibration: the linear fit recovers known parameters, keeps them physical, and a
small fit on published S4 runs lands in the band (the full one is `mlusim calibrate`, docs/energy.md)."""
from __future__ import annotations

import json

import pytest

from mlusim import power_calibration as pc
from mlusim.calibration import Param, Runner, fit, load_points
from mlusim.cli import main
from mlusim.config import load_config

KEYS = [k for k, _ in pc.FITTED]


def synthetic(values: dict, chip: float = 8.0):
    terms = [pc.Terms(1e-3, c, d, o) for c, d, o in
             [(1, 2, 0.2), (4, 8, 1.0), (4, 9, 1.3), (1, 1, 0.3), (4, 3, 1.1), (2.4, 3.5, 0.6), (4.6, 4.7, 2.4)]]
    return terms, [pc.predict(t, values, chip) for t in terms]


def test_solve_recovers_the_parameters_that_made_the_watts():
    truth = {"energy.board_static_w": 17.0, "energy.cluster_static_w": 0.8, "energy.onchip_scale": 6.0}
    terms, watts = synthetic(truth)
    got = pc.solve(terms, watts, 8.0)
    assert got == pytest.approx(truth, rel=1e-9)
    assert pc.mape([pc.predict(t, got, 8.0) for t in terms], watts) == pytest.approx(0, abs=1e-9)


def test_solve_keeps_every_parameter_non_negative():
    """Watts that fall as clusters rise would want a negative cluster power: it stays at zero and
    the others fit the rest."""
    terms = [pc.Terms(1e-3, c, 0.0, o) for c, o in [(1, 0.1), (4, 0.5), (2, 1.0), (4, 2.0)]]
    watts = [30.0, 28.0, 31.0, 32.0]
    got = pc.solve(terms, watts, 0.0)
    assert min(got.values()) >= 0 and got["energy.cluster_static_w"] == 0
    assert got["energy.board_static_w"] > 20


def test_small_power_calibration_lands_in_the_band():
    """Two SqueezeNets at batch 1 and 4 on the S4: the power fit may only improve the squared
    relative error on the presets, leaves each network out in turn, and predicts within 20%;
    batch 4 keeps four clusters busy and draws more than batch 1."""
    points = [p for p in load_points(boards=("S4",))[0] if p.network.startswith("squeezenet") and p.batch < 8]
    s4 = load_config("mlu370-s4")
    tf = fit(points, {"S4": s4}, Runner(), (Param("chip.kernel_launch_cycles", (250,), "runtime: test"),))
    pf = pc.from_time_fit(tf, {"S4": s4}, Runner())
    assert len(pf.keys) == 4 and set(pf.lono) == {"squeezenet1_0", "squeezenet1_1"}

    def sq(values):
        return sum((p / m - 1) ** 2 for p, m in zip(pf.predicted(values), pf.measured))
    assert sq(pf.after) <= sq(pf.before) + 1e-12
    assert min(pf.after.values()) >= 0
    doc = pc.document(pf, "S4")
    assert doc["mape"] < 20 and doc["mape_left_out"] < 20
    by = {p["point"]: p for p in doc["points"]}
    one, four = by["squeezenet1_1/S4/b1"], by["squeezenet1_1/S4/b4"]
    assert one["clusters_busy"] < 1.5 and 3.5 < four["clusters_busy"] < 4.5
    assert four["simulated_w"] > one["simulated_w"]
    assert one["measured_w"] == pytest.approx(28.297)


def test_cli_reports_power(tmp_path, capsys):
    out, csv = tmp_path / "cal.json", tmp_path / "cal.csv"
    assert main(["calibrate", "--no-fit", "--networks", "squeezenet1_1", "--boards", "S4", "--batches", "1",
                 "--json", str(out), "--csv", str(csv)]) == 0
    text = capsys.readouterr().out
    assert "board power" in text and "power MAPE" in text
    p = json.loads(out.read_text())["power"]
    assert [q["point"] for q in p["points"]] == ["squeezenet1_1/S4/b1"] and p["points"][0]["simulated_w"] > 0
    assert [q["key"] for q in p["parameters"]] == KEYS
    assert all(q["before"] == q["after"] for q in p["parameters"])      # --no-fit: the presets as they are
    head, row = csv.read_text().splitlines()
    assert "measured_w" in head.split(",") and "28.297" in row
    assert main(["calibrate", "--no-fit", "--networks", "squeezenet1_1", "--boards", "X4", "--batches", "1"]) == 0
    assert "no selected point published it" in capsys.readouterr().out
