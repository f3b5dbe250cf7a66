"""mlusim.sim: what simulate does around the engine for a Python caller."""
from __future__ import annotations

import weakref

import numpy as np
from threadpoolctl import threadpool_info, threadpool_limits

from mlusim.compiler.driver import compile_model
from mlusim.sim import simulate


def _blas_threads() -> set[int]:
    return {i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"}


def test_numerics_run_on_one_blas_thread_and_give_the_callers_setting_back(mlu270):
    c = compile_model("lenet5", batch=2, config=mlu270, tasks=1)
    seen: set[int] = set()
    with threadpool_limits(limits=2, user_api="blas"):
        two = simulate(c.program, mlu270, cores=1, progress=lambda *_: seen.update(_blas_threads()))
        after = _blas_threads()
    one = simulate(c.program, mlu270, cores=1)
    assert seen == {1}
    assert after == {2}
    assert one.cycles == two.cycles
    assert all(np.array_equal(one.outputs[k], two.outputs[k]) for k in one.outputs)


def test_a_handed_over_program_holds_no_constants_while_it_runs(mlu270):
    prog = compile_model("lenet5", batch=2, config=mlu270, tasks=1).program
    kept = simulate(prog, mlu270, cores=1)
    refs = [weakref.ref(t.data) for t in prog.by_role("const")]
    alive: list[int] = []
    given = simulate(prog, mlu270, cores=1, hand_over=True,
                     progress=lambda *_: alive.append(sum(r() is not None for r in refs)))
    assert refs and alive and max(alive) == 0        # the weights are in the GDRAM image only
    assert all(t.data is None for t in prog.by_role("const"))
    assert given.cycles == kept.cycles
    assert kept.outputs and all(np.array_equal(given.outputs[k], kept.outputs[k]) for k in kept.outputs)
