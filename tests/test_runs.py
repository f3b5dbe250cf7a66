"""mlusim.runs: one run of a spec or Program at one core count."""
from __future__ import annotations

import weakref

import pytest

from mlusim import runs
from mlusim.programs import BuildOptions


@pytest.mark.parametrize("cache,timing_only", [(False, False), (True, False), (False, True)])
def test_a_spec_compiled_for_the_run_gives_its_constants_to_the_simulator(mlu270, monkeypatch, cache, timing_only):
    """The weights are then held once while it runs, in the GDRAM image (not at all when only
    timing is simulated): nothing else keeps the program's arrays (or, from the compile cache, its
    mapped views) alive."""
    refs = []

    def prepare(*a, **kw):
        prep = real(*a, **kw)
        refs.extend(weakref.ref(t.data) for t in prep.program.by_role("const"))
        return prep

    real = runs.prepare
    monkeypatch.setattr(runs, "prepare", prepare)
    alive: list[int] = []
    options = BuildOptions(batch=2, cache=cache)
    res = runs.run_at("lenet5", mlu270, 1, options=options.for_timing("lenet5") if timing_only else options,
                      timing_only=timing_only, progress=lambda *_: alive.append(sum(r() is not None for r in refs)))
    assert res.cycles > 0 and bool(res.outputs) != timing_only
    assert refs and alive and max(alive) == 0


def test_a_program_the_caller_passes_keeps_its_constants(mlu270):
    from mlusim.compiler.driver import compile_model

    prog = compile_model("lenet5", batch=2, config=mlu270, tasks=1).program
    first = runs.run_at(prog, mlu270, 1, timing_only=False)
    again = runs.run_at(prog, mlu270, 1, timing_only=False)
    assert all(t.data is not None for t in prog.by_role("const"))
    assert first.cycles == again.cycles
