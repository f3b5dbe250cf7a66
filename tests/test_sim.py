"""mlusim.sim: what simulate does around the engine for a Python caller."""
from __future__ import annotations

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
