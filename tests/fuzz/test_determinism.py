"""Determinism: the same inputs give the same cycles and outputs on every run, in every process
(whatever Python's hash seed), before and after a .mlu round trip, with or without numerics; and
a program whose result does not depend on the core count gives the same output tensors on every
core count."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from mlusim import mlufile
from mlusim.isa.asm import assemble_program
from mlusim.program import Kernel, Program, TensorDecl, allocate
from mlusim.sim import simulate

from .harness import count, fuzz, check_outcome
from .programs import I, smoke_program

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "matmul.s"


def same(a, b) -> None:
    assert a.cycles == b.cycles and a.instructions == b.instructions and a.outputs.keys() == b.outputs.keys()
    for n in a.outputs:
        assert a.outputs[n].dtype == b.outputs[n].dtype and np.array_equal(a.outputs[n], b.outputs[n]), n


def test_matmul_example_is_repeatable_and_core_count_independent(tmp_path):
    prog = assemble_program(EXAMPLE.read_text(), str(EXAMPLE))
    x = np.random.default_rng(7).integers(-128, 128, (256, 256), dtype=np.int8)
    first = simulate(prog, "mlu270", cores=4, inputs={"a": x})
    same(first, simulate(prog, "mlu270", cores=4, inputs={"a": x}))
    mlufile.save(prog, tmp_path / "m.mlu")
    same(first, simulate(mlufile.load(tmp_path / "m.mlu"), "mlu270", cores=4, inputs={"a": x}))
    assert simulate(prog, "mlu270", cores=4, inputs={"a": x}, timing_only=True).cycles == first.cycles
    expect = x.astype(np.int64) @ prog.tensor("b").data.astype(np.int64).T
    for cores in (1, 2, 3, 4, 16):
        res = simulate(prog, "mlu270", cores=cores, inputs={"a": x})
        assert np.array_equal(res.outputs["c"], expect), cores
        count("determinism: core counts")


@st.composite
def sliced_program(draw):
    """T tasks, each transforming its own slice of x into y with a random vector pipeline: the
    output cannot depend on which core runs which task, or when."""
    tasks = draw(st.integers(1, 12))
    n = draw(st.sampled_from([64, 128, 1024]))
    dt = draw(st.sampled_from(["i8", "i16", "i32", "f16", "f32"]))
    esz = np.dtype({"i8": "int8", "i16": "int16", "i32": "int32", "f16": "float16", "f32": "float32"}[dt]).itemsize
    t = [TensorDecl("x", "input", dt, (tasks * n,), -1), TensorDecl("y", "output", dt, (tasks * n,), -1)]
    allocate(t)
    x, y = t
    nb = n * esz
    ops = draw(st.lists(st.sampled_from(["vadd", "vsub", "vmul", "vmax", "vmin", "vrelu"]), min_size=1, max_size=4))
    s = [I("rdsr", rd=1, sr="taskid"), I("muli", rd=2, rs1=1, imm=nb),
         I("dma", dir="g2n", dst=0, src=(2, x.addr), size=nb, sig="cp")]
    for i, op in enumerate(ops):
        wait = "ld" if i == 0 else "none"
        if op == "vrelu":
            s.append(I(op, dt=dt, dst=nb, src=0 if i == 0 else nb, n=n, wait=wait))
        else:
            s.append(I(op, dt=dt, dst=nb, a=0, b=0 if i == 0 else nb, n=n, wait=wait))
    s[-1] = I(s[-1].op.mnemonic, **{**s[-1].args, "sig": 4})       # signal the store queue
    s.append(I("dma", dir="n2g", dst=(2, y.addr), src=nb, size=nb, wait="cp"))
    return Program([Kernel("slices", "block", tasks, [s])], t)


@fuzz(ci=60)
@given(sliced_program(), st.integers(0, 2**32 - 1))
def test_outputs_do_not_depend_on_the_core_count(prog, seed):
    ref, err = check_outcome(simulate, prog, "mlu270", cores=1, max_instructions=10**5, kind="determinism: sliced programs")
    assert err is None, err
    rng = np.random.default_rng(seed)
    t = prog.tensor("x")
    x = rng.integers(-100, 100, t.shape).astype(t.np_dtype)
    ref = simulate(prog, "mlu270", cores=1, inputs={"x": x})
    for cores in (2, 3, 5, 16):
        res = simulate(prog, "mlu270", cores=cores, inputs={"x": x})
        assert np.array_equal(res.outputs["y"], ref.outputs["y"], equal_nan=True), cores
        same(res, simulate(prog, "mlu270", cores=cores, inputs={"x": x}))
    assert simulate(prog, "mlu270", cores=3, timing_only=True).cycles == simulate(prog, "mlu270", cores=3).cycles


def _no_wall(x):
    """The report minus wall-clock figures, which legitimately differ from run to run."""
    if isinstance(x, dict):
        return {k: _no_wall(v) for k, v in x.items() if "wall" not in k}
    if isinstance(x, list):
        return [_no_wall(v) for v in x]
    return x


def test_same_report_in_fresh_processes_with_different_hash_seeds(tmp_path):
    """Set and dict iteration order must never leak into the simulation."""
    model = tmp_path / "smoke.mlu"
    mlufile.save(smoke_program(tasks=6), model)
    reports = []
    for hash_seed in ("1", "2", "987"):
        out = tmp_path / f"r{hash_seed}.json"
        env = {**os.environ, "PYTHONHASHSEED": hash_seed}
        r = subprocess.run([sys.executable, "-m", "mlusim", "run", str(model), "--cores", "4", "--json", str(out),
                            "--output", str(tmp_path / f"o{hash_seed}")], capture_output=True, text=True, env=env)
        assert r.returncode == 0, r.stderr
        rep = _no_wall(json.loads(out.read_text()))
        assert rep["cycles"] > 0
        reports.append((rep, {p.name: np.load(p).tobytes() for p in sorted((tmp_path / f"o{hash_seed}").glob("*.npy"))}))
    assert reports[0] == reports[1] == reports[2]
