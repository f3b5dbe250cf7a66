"""One host-memory budget (MLUSIM_HOST_MEM_GIB, mlusim.budget) checked before every allocation
whose size a file or an option chooses: model constants and kernels, assembler fills, compiler
inputs (--batch, --resolution), trace events and sweep plans; and a wall-clock budget for runs.
Each case runs under a small budget and tracemalloc proves the refusal came before the allocation."""
from __future__ import annotations

import contextlib
import io
import json
import tracemalloc
import zipfile

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from mlusim import budget, mlufile
from mlusim.errors import AssemblyError, CompileError, ConfigError, MlusimError, ModelFileError, SimulationError
from mlusim.isa.asm import assemble_program
from mlusim.sim import simulate

from .harness import assert_clean_error, check_outcome, count, fuzz, no_hang

MIB = 2**20
SPIN = ".tensor x input i8 [64]\n.kernel spin block tasks=1\ntop:\n    vset dt=i8 dst=0 n=64\n    jmp top\n"


@contextlib.contextmanager
def peak_memory():
    """Yields a dict whose 'peak' is the traced peak (bytes) of the body."""
    out = {}
    tracemalloc.start()
    try:
        yield out
    finally:
        out["peak"] = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()


def assert_refused(fn, *args, error=MlusimError, needle="", limit=64 * MIB, **kw):
    """fn(*args) must raise `error` with `needle` in one line, peaking under `limit` bytes."""
    count("budget: hostile sizes")
    with peak_memory() as mem, no_hang(60):
        with pytest.raises(error) as e:
            fn(*args, **kw)
    assert needle in assert_clean_error(e.value), str(e.value)
    assert mem["peak"] < limit, f"peak {mem['peak'] / MIB:.0f} MiB before refusing: {e.value}"
    return str(e.value)


@fuzz(ci=500)
@given(st.one_of(st.text(max_size=12), st.sampled_from(["1e300", "inf", "nan", "-1", "0", "1e-30", "８", "0x10",
                                                         "1_0", " 4 ", "", "1048576", "1048577"])))
def test_the_budget_variable_is_a_number_of_gib_or_one_line(text):
    count("budget: MLUSIM_HOST_MEM_GIB values")
    cap, err = check_outcome(budget.cap_bytes, {budget.ENV: text})
    if err is None:
        assert isinstance(cap, int) and 0 <= cap <= budget.MAX_GIB * 1024**3
    else:
        assert isinstance(err, ConfigError) and budget.ENV in str(err)


def test_assembler_fills_add_up_against_the_budget(monkeypatch):
    monkeypatch.setenv(budget.ENV, "0.25")
    src = "".join(f".tensor w{i} const i8 [{48 * MIB}] ones\n" for i in range(12)) + ".kernel k block tasks=1\n nop\n"
    msg = assert_refused(assemble_program, src, "fill.s", error=AssemblyError, needle="const tensors filled so far",
                  limit=300 * MIB)
    assert msg.startswith("fill.s:6:")          # the sixth 48 MiB fill passes 256 MiB


def test_a_random_fill_costs_its_own_size_not_eight_times_it():
    src = f".tensor w const i8 [{32 * MIB}] random(7)\n.kernel k block tasks=1\n nop\n"
    with peak_memory() as mem:
        prog = assemble_program(src, "r.s")
    assert prog.tensors[0].data.nbytes == 32 * MIB
    assert mem["peak"] < 32 * MIB + 24 * MIB, mem["peak"] / MIB       # int64 draw of the whole was 256 MiB
    ref = np.random.default_rng(7).integers(-128, 128, size=32 * MIB).astype(np.int8)
    assert np.array_equal(prog.tensors[0].data.reshape(-1), ref)      # chunked draws are the same values


def test_model_constants_load_once_and_within_the_budget(tmp_path, monkeypatch):
    src = f".tensor w const i8 [{24 * MIB}] random(1)\n.kernel k block tasks=1\n nop\n"
    path = tmp_path / "c.mlu"
    mlufile.save(assemble_program(src, "c.s"), path)
    with peak_memory() as mem:
        prog = mlufile.load(path)
    assert prog.tensors[0].data.nbytes == 24 * MIB and mem["peak"] < 24 * MIB * 1.25, mem["peak"] / MIB
    monkeypatch.setenv(budget.ENV, str(16 / 1024))
    assert_refused(mlufile.load, path, error=ModelFileError, needle="over the cap of 16.0 MiB")


def test_zero_filled_constants_are_written_loadable():
    """asm used to write a zero-filled constant that deflates 4000x, which `run` then refused."""
    prog = assemble_program(f".tensor w const i8 [{4 * MIB}]\n.kernel k block tasks=1\n nop\n", "z.s")
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        mlufile._member(zf, "tensors/0.npy", bytes(4 * MIB))
    info = zipfile.ZipFile(buf).infolist()[0]
    assert info.compress_type == zipfile.ZIP_STORED and prog.tensors[0].data.nbytes == 4 * MIB


def test_many_kernels_are_refused_before_they_are_built(tmp_path, monkeypatch):
    from mlusim.isa import asm

    assert asm.MAX_KERNELS == mlufile.MAX_KERNELS == 16_384
    monkeypatch.setattr(asm, "MAX_KERNELS", 200)       # same code path, a fraction of the time
    src = "".join(f".kernel k{i} block tasks=1\n nop\n" for i in range(100_000))
    msg = assert_refused(assemble_program, src, "k.s", error=AssemblyError, needle="more than 200 kernels", limit=64 * MIB)
    assert msg.startswith("k.s:401:")
    path = tmp_path / "k.mlu"
    mlufile.save(assemble_program(".kernel k block tasks=1\n nop\n", "k.s"), path)
    with zipfile.ZipFile(path) as zf:
        members = {i.filename: zf.read(i) for i in zf.infolist()}
    man = json.loads(members["manifest.json"])
    man["kernels"] = [dict(man["kernels"][0], streams=[]) for _ in range(20_000)]
    members["manifest.json"] = json.dumps(man).encode()
    with zipfile.ZipFile(path, "w") as zf:
        for n, d in members.items():
            zf.writestr(n, d)
    assert_refused(mlufile.load, path, error=ModelFileError, needle="20,000 kernels", limit=64 * MIB)


def test_trace_events_stop_at_the_budget(monkeypatch):
    monkeypatch.setenv(budget.ENV, str(3 / 1024))
    prog = assemble_program(SPIN, "spin.s")
    assert_refused(simulate, prog, "mlu270", cores=1, timing_only=True, trace=True, max_instructions=10**8,
            error=SimulationError, needle="--trace:", limit=12 * MIB)


def test_wall_clock_budget_stops_a_loop_the_instruction_budget_allows():
    prog = assemble_program(SPIN, "spin.s")
    with no_hang(60), pytest.raises(SimulationError) as e:
        simulate(prog, "mlu270", cores=1, timing_only=True, max_instructions=10**12, max_seconds=0.2)
    assert "wall-clock budget of 0.2 s exhausted" in assert_clean_error(e.value)


@pytest.mark.parametrize("kw,needle", [({"batch": 10**6}, "[1000000, 3, 224, 224]"),
                                       ({"resolution": 60_000}, "[1, 3, 60000, 60000]")])
def test_compiler_inputs_are_sized_before_compiling(kw, needle):
    from mlusim.compiler.driver import compile_model

    assert_refused(compile_model, "resnet18", error=CompileError, needle=needle, limit=256 * MIB, **kw)


def test_sweeps_are_counted_before_they_are_planned():
    from mlusim.sweep import SweepError, sweep

    params = {"dram.bandwidth_gbps": list(range(1, 10_001)), "dram.latency_cycles": list(range(10_000))}
    assert_refused(sweep, "examples/matmul.s", "mlu270", params, [1], error=SweepError, needle="100,000,000 points")
