"""Progress without a terminal: plain lines at most once per interval, none for short work; inside
one long (fused) kernel the engine's progress advances; run, compile and sweep all report."""
from __future__ import annotations

import io
import re
from pathlib import Path

import pytest

from conftest import I, program
from mlusim.cli import main
from mlusim.errors import ConfigError
from mlusim.progress import Progress, choose_mode, interval
from mlusim.sim import simulate

ROOT = Path(__file__).resolve().parents[1]
MATMUL = str(ROOT / "examples" / "matmul.s")


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


def test_lines_at_most_once_per_interval_and_none_in_the_first():
    clock, out = Clock(), io.StringIO()
    p = Progress("lines", 5.0, out, clock)
    for t in (1.0, 2.0, 4.9):                   # work shorter than the interval says nothing
        clock.now = 100.0 + t
        p.update("sweep of x", 1, 8, "points")
    assert out.getvalue() == ""
    for step in range(1, 121):                  # 12 s of updates every 0.1 s
        clock.now = 105.0 + step * 0.1
        p.update("sweep of x", step // 10, 12, "points", "detail")
    lines = out.getvalue().splitlines()
    assert len(lines) == 3                      # at 5, 10 and 15 s: never closer than the interval
    assert lines[0] == "mlusim: sweep of x: 0/12 points, detail [5 s]"
    assert lines[2].startswith("mlusim: sweep of x: 10/12 points") and lines[2].endswith("[15 s]")


def test_interval_from_the_environment():
    assert interval({}) == 5.0
    assert interval({"MLUSIM_PROGRESS_SECONDS": "2.5"}) == 2.5
    assert interval({"MLUSIM_PROGRESS_SECONDS": "off"}) is None
    assert interval({"MLUSIM_PROGRESS_SECONDS": "0"}) is None
    for bad in ("soon", "-1", "nan", "inf"):
        with pytest.raises(ConfigError, match="MLUSIM_PROGRESS_SECONDS"):
            interval({"MLUSIM_PROGRESS_SECONDS": bad})
    assert Progress("lines", None).mode == "off"


def test_mode_bar_on_a_terminal_lines_elsewhere():
    class Tty(io.StringIO):
        def isatty(self):
            return True
    assert choose_mode(True, Tty()) == "bar"
    assert choose_mode(True, io.StringIO()) == "lines"
    assert choose_mode(False, Tty()) == "off"


def test_progress_advances_inside_one_long_kernel():
    """A fused network is one kernel: the engine reports a fraction of it every few thousand
    instructions instead of 0/1 until the end."""
    stream = [I("li", rd=1, imm=k % 100) for k in range(60_000)]
    calls = []
    res = simulate(program(stream, []), "mlu270", cores=1, timing_only=True,
                   progress=lambda done, total, cycles: calls.append((done, total, cycles)))
    inside = [c for c in calls if c[0] < 1]
    assert len(inside) >= 3 and all(c[1] == 1 for c in calls)
    fractions = [c[0] for c in inside]
    assert fractions == sorted(fractions) and 0 < fractions[0] < fractions[-1] < 1
    assert abs(fractions[-1] - 49_152 / 60_001) < 0.01     # instructions issued / the kernel's count
    assert calls[-1] == (1, 1, res.cycles)
    assert [c[2] for c in calls] == sorted(c[2] for c in calls)


def cli(capsys, monkeypatch, seconds, *args):
    monkeypatch.setenv("MLUSIM_PROGRESS_SECONDS", seconds)
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def test_run_and_compile_print_lines_when_stderr_is_not_a_terminal(capsys, monkeypatch, tmp_path):
    code, out, err = cli(capsys, monkeypatch, "0.000001", "run", "mnist", "--cores", "1", "--no-cache")
    assert code == 0 and "cycles" in out and "mlusim:" not in out
    lines = err.splitlines()
    assert any(re.fullmatch(r"mlusim: compile mnist for 1 core\(s\) \(calibrating\): \d+/\d+ layers \[\d+ s\]", x)
               for x in lines)
    assert any(x.startswith("mlusim: compile mnist for 1 core(s) (lowering): ") for x in lines)
    # timing only compiles from shapes: nothing to calibrate
    code, out, err = cli(capsys, monkeypatch, "0.000001", "run", "mnist", "--cores", "1", "--timing-only")
    assert code == 0 and "cycles" in out and "(calibrating)" not in err
    lines = err.splitlines()
    assert any(x.startswith("mlusim: compile mnist for 1 core(s) (lowering): ") for x in lines)
    assert any(re.fullmatch(r"mlusim: run mnist on 1 core\(s\): \d+/\d+ kernels, [\d,]+ cycles \[\d+ s\]", x)
               for x in lines)
    code, out2, err = cli(capsys, monkeypatch, "0.000001", "compile", "--model", "mnist", "--cores", "1",
                          "--no-cache", "-o", str(tmp_path / "m.mlu"))
    assert code == 0 and "(calibrating)" in err and "(lowering)" in err
    # a short run under the default interval, and --no-progress, print nothing
    assert cli(capsys, monkeypatch, "", "run", "mnist", "--cores", "1", "--timing-only")[2] == ""
    assert cli(capsys, monkeypatch, "0.000001", "run", "mnist", "--cores", "1", "--timing-only",
               "--no-progress")[2] == ""


def test_sweep_lines_count_points_with_the_total_from_the_start(capsys, monkeypatch):
    code, out, err = cli(capsys, monkeypatch, "0.000001", "sweep", MATMUL, "--set", "dram.bandwidth_gbps=51.2,102.4",
                         "--cores", "1,4", "--jobs", "1")
    assert code == 0
    counts = re.findall(r"^mlusim: sweep of .*matmul\.s: (\d+)/(\d+) points \[\d+ s\]$", err, re.M)
    assert counts[0] == ("0", "4") and counts[-1] == ("4", "4")
