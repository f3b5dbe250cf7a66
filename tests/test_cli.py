"""The command line: reports, files written, and one-line errors with exit code 2."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from mlusim.cli import main

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = str(ROOT / "examples" / "matmul.s")


def cli(capsys, *args):
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def test_run_assembly_prints_the_report(capsys, tmp_path):
    x = np.random.default_rng(3).integers(-128, 128, (256, 256), dtype=np.int8)
    np.save(tmp_path / "a.npy", x)
    code, out, err = cli(capsys, "run", EXAMPLE, "--cores", "4", "--input", str(tmp_path / "a.npy"),
                         "--output", str(tmp_path / "c.npy"), "--json", str(tmp_path / "r.json"))
    assert code == 0, err
    assert "mlu270 @ 1000 MHz, 4 core(s)" in out and "MAC utilization" in out and "bound" in out
    rep = json.loads((tmp_path / "r.json").read_text())
    assert rep["cores"] == 4 and rep["cycles"] > 0 and rep["kernels"][0]["name"] == "matmul"
    from mlusim.isa.asm import assemble_program

    b = assemble_program(Path(EXAMPLE).read_text()).tensor("b").data
    assert np.array_equal(np.load(tmp_path / "c.npy"), x.astype(np.int64) @ b.astype(np.int64).T)


def test_asm_inspect_disasm_run_model(capsys, tmp_path):
    model = str(tmp_path / "m.mlu")
    assert cli(capsys, "asm", EXAMPLE, "-o", model)[0] == 0
    code, out, _ = cli(capsys, "inspect", model)
    assert code == 0 and "matmul" in out and "const" in out
    code, out, _ = cli(capsys, "disasm", model)
    assert code == 0 and "matmul   dt=i8" in out and ".kernel matmul block tasks=4" in out
    code, out, _ = cli(capsys, "run", model, "--cores", "1,2,4", "--timing-only")
    assert code == 0 and out.count("cycles =") == 3


def test_config_commands(capsys):
    code, out, _ = cli(capsys, "config", "list")
    assert code == 0 and "mlu270" in out and "mlu370" in out
    code, out, _ = cli(capsys, "config", "show", "mlu220", "--set", "dram.bandwidth_gbps=10")
    assert code == 0 and "bandwidth_gbps:" in out and "10.0" in out and "[GB/s]" in out


def test_set_changes_the_simulated_cycles(capsys, tmp_path):
    j1, j2 = tmp_path / "1.json", tmp_path / "2.json"
    cli(capsys, "run", EXAMPLE, "--cores", "4", "--timing-only", "--json", str(j1))
    cli(capsys, "run", EXAMPLE, "--cores", "4", "--timing-only", "--json", str(j2),
        "--set", "dram.bandwidth_gbps=25.6")
    assert json.loads(j2.read_text())["cycles"] > json.loads(j1.read_text())["cycles"]


@pytest.mark.parametrize("args,needle", [
    (["run", EXAMPLE, "--cores", "17"], "exceeds the chip's 16 cores"),
    (["run", EXAMPLE, "--cores", "x"], "expected N"),
    (["run", "nosuch.mlu"], "no such model file"),
    (["run", EXAMPLE, "--config", "mlu999"], "unknown config preset"),
    (["run", EXAMPLE, "--set", "core.nram=1"], "unknown key 'core.nram'"),
    (["run", EXAMPLE, "--input", "missing.npy"], "no such input file"),
    (["run", EXAMPLE, "--set", "core.nram_kib=200", "--set", "core.nram_reserved_kib=190"], "outside NRAM"),
    (["config", "show", "nope"], "unknown config preset"),
])
def test_errors_are_one_line_and_exit_2(capsys, args, needle):
    code, out, err = cli(capsys, *args)
    assert code == 2
    assert err.startswith("mlusim: error: ") and needle in err and err.count("\n") == 1


def test_bad_input_shape(capsys, tmp_path):
    np.save(tmp_path / "a.npy", np.zeros((3, 3), np.int8))
    code, _, err = cli(capsys, "run", EXAMPLE, "--input", str(tmp_path / "a.npy"))
    assert code == 2 and "shape [3, 3] != declared [256, 256]" in err


def test_console_script_and_module_entry_point(tmp_path):
    r = subprocess.run([sys.executable, "-m", "mlusim", "run", str(tmp_path / "x.mlu")], capture_output=True, text=True)
    assert r.returncode == 2 and "Traceback" not in r.stderr and "no such model file" in r.stderr
    r = subprocess.run([sys.executable, "-m", "mlusim", "--version"], capture_output=True, text=True)
    assert r.returncode == 0 and "mlusim" in r.stdout


def test_import_is_light():
    code = "import sys, mlusim; print(any(m in sys.modules for m in ('numpy', 'simpy', 'yaml', 'rich')))"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.stdout.strip() == "False"
