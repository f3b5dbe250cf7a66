"""Regression tests for bugs the fuzz suite found in the engine, the program model, simulate() and
the CLI subcommands (all fixed; docs/robustness.md lists them)."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from numpy.lib import format as npf

from mlusim.cli import main
from mlusim.errors import MlusimError, ProgramError, SimulationError
from mlusim.program import Kernel, Program, TensorDecl, task_type_clusters
from mlusim.sim import simulate

from .harness import no_hang
from .programs import I

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = str(ROOT / "examples" / "matmul.s")


def prog(stream, task_dim=1, tensors=()):
    return Program([Kernel("k", "block", task_dim, [stream])], list(tensors))


@pytest.mark.parametrize("barrier", ["sync", "sync.all"])
def test_sync_loop_hits_the_instruction_budget(barrier):
    with no_hang(3, "sync loop"), pytest.raises(SimulationError, match="instruction budget"):
        simulate(prog([I(barrier), I("jmp", target=-1)]), "mlu270", cores=1, max_instructions=1000)


def test_many_empty_tasks_hit_the_instruction_budget():
    with no_hang(3, "empty tasks"), pytest.raises(SimulationError, match="instruction budget"):
        simulate(prog([], task_dim=10**8), "mlu270", cores=4, max_instructions=1000)


def test_branch_outside_the_stream_is_a_clean_error():
    with pytest.raises(MlusimError, match="outside the stream"):
        simulate(prog([I("nop"), I("jmp", target=-5)]), "mlu270", cores=1, max_instructions=100)


@pytest.mark.parametrize("limit", [-1.0, float("nan")])
def test_bad_cycle_budget_is_refused(limit):
    with pytest.raises(SimulationError, match="max-cycles"):
        simulate(prog([I("nop")]), "mlu270", cores=1, max_cycles=limit)


def test_deadlock_is_reported_as_a_deadlock_under_a_cycle_budget():
    with pytest.raises(SimulationError, match="deadlock"):
        simulate(prog([I("vset", dt="i8", dst=0, n=4, wait="ld")]), "mlu270", cores=1, max_cycles=1e6)


def _cli(env_extra, *args):
    env = {**os.environ, **env_extra}
    return subprocess.run([sys.executable, "-m", "mlusim", *args], capture_output=True, text=True, env=env,
                          timeout=120)


def test_bad_host_memory_cap_variable_is_a_clean_error():
    r = _cli({"MLUSIM_HOST_MEM_GIB": "lots"}, "run", EXAMPLE, "--timing-only")
    assert r.returncode == 2 and "Traceback" not in r.stderr and "MLUSIM_HOST_MEM_GIB" in r.stderr, r.stderr


def test_host_memory_message_shows_a_nonzero_estimate():
    t = [TensorDecl("x", "scratch", "i8", (1 << 20,), 0)]
    with pytest.raises(SimulationError) as e:
        simulate(prog([I("nop")], tensors=t), "mlu270", cores=1, host_cap_gib=0.001)
    assert "about 0.0 GiB" not in str(e.value) and "cap of 0.0 GiB" not in str(e.value), str(e.value)


def test_huge_shapes_are_sized_exactly():
    t = TensorDecl("x", "input", "i8", (2**32, 2**32), 0)
    assert t.nbytes == 2**64
    with pytest.raises(SimulationError, match="GDRAM"):
        simulate(prog([I("nop")], tensors=[t]), "mlu270", cores=1)


def test_task_type_with_a_superscript_digit():
    with pytest.raises(ProgramError):
        task_type_clusters("union\u00b2")


def test_malformed_tensor_meta_is_a_clean_error():
    t = [TensorDecl("x", "input", "f32", (4,), 0, None, {"range": 5})]
    with pytest.raises(MlusimError):
        simulate(prog([I("nop")], tensors=t), "mlu270", cores=1)


def test_input_npy_with_a_huge_header_is_refused(tmp_path, capsys):
    p = tmp_path / "huge.npy"
    with open(p, "wb") as fh:
        npf.write_array_header_1_0(fh, {"descr": "|i1", "fortran_order": False, "shape": (10**13,)})
        fh.write(b"\0" * 16)
    assert main(["run", EXAMPLE, "--input", str(p)]) == 2
    assert "huge.npy" in capsys.readouterr().err


def test_unwritable_output_is_a_clean_error(capsys):
    assert main(["run", EXAMPLE, "--cores", "1", "--output", "/dev/null/out"]) == 2
    assert "/dev/null/out" in capsys.readouterr().err


def test_negative_max_cycles_on_the_command_line(capsys):
    assert main(["run", EXAMPLE, "--timing-only", "--max-cycles", "-5"]) == 2
    assert "max-cycles" in capsys.readouterr().err


def test_known_bug_setups_are_otherwise_valid():
    """Guard for the xfails above: the program they start from runs, so they fail for their bug."""
    assert simulate(prog([I("nop")]), "mlu270", cores=1).cycles > 0
