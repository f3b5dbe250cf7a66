"""mlusim.cores.datapath: a run's numerics in a forked child give what the engine's thread gives."""
from __future__ import annotations

import os
import threading
import time

import numpy as np
import pytest

from mlusim.cores import datapath
from mlusim.errors import SimulationError
from mlusim.isa.deferred import DeferredGemms
from mlusim.sim import forks_numerics, simulate

pytestmark = pytest.mark.skipif(not datapath.can_fork(), reason="forks only on Linux, single-threaded")


@pytest.fixture(scope="module")
def resnet18_16():
    """ResNet-18 b1 for 16 cores: cluster-fused, with remote SRAM copies (s2s with dcl)."""
    from mlusim.compiler.driver import compile_model

    c = compile_model("resnet18", batch=1, config="mlu270", tasks=16, cluster_fusion=True)
    assert any(i.args.get("dcl") for k in c.program.kernels for s in k.streams for i in s if i.op.mnemonic == "dma")
    x = np.random.default_rng(3).uniform(0, 1, c.graph.input.shape).astype(np.float32)
    return c, x


def no_children() -> bool:
    try:
        os.waitpid(-1, os.WNOHANG)
    except ChildProcessError:
        return True
    return False


def test_the_child_computes_what_the_engine_thread_does(resnet18_16):
    from mlusim.compiler.reference import run_quant

    c, x = resnet18_16
    inline = simulate(c.program, "mlu270", cores=16, inputs={"input": x}, numerics_process=False)
    forked = simulate(c.program, "mlu270", cores=16, inputs={"input": x}, numerics_process=True)
    assert forked.cycles == inline.cycles and forked.instructions == inline.instructions
    assert np.array_equal(forked.outputs["output"], inline.outputs["output"])
    assert np.array_equal(forked.outputs["output"], run_quant(c.graph, x)["__output__"])
    assert no_children()


def test_a_failure_in_the_child_is_one_simulation_error(resnet18_16, monkeypatch):
    c, x = resnet18_16

    def boom(self, core, op, a, used):
        raise RuntimeError("no values today")

    monkeypatch.setattr(DeferredGemms, "execute", boom)    # the child is a fork: it has the patch
    with pytest.raises(SimulationError, match="numerics process failed: RuntimeError: no values today"):
        simulate(c.program, "mlu270", cores=16, inputs={"input": x}, numerics_process=True)
    assert no_children()


def test_a_child_killed_is_named_with_its_signal(resnet18_16, monkeypatch):
    c, x = resnet18_16
    monkeypatch.setattr(DeferredGemms, "execute", lambda *a: os.kill(os.getpid(), 9))
    with pytest.raises(SimulationError, match="killed by signal SIGKILL"):
        simulate(c.program, "mlu270", cores=16, inputs={"input": x}, numerics_process=True)
    assert no_children()


def test_the_wall_clock_budget_covers_the_childs_numerics(resnet18_16, monkeypatch):
    c, x = resnet18_16
    real = DeferredGemms.execute

    def slow(self, *a):
        time.sleep(0.01)
        real(self, *a)

    monkeypatch.setattr(DeferredGemms, "execute", slow)    # ~40 s of numerics; the engine ~0.1 s
    t0 = time.monotonic()
    with pytest.raises(SimulationError, match="raise --max-seconds"):
        simulate(c.program, "mlu270", cores=16, inputs={"input": x}, numerics_process=True, max_seconds=1.5)
    assert time.monotonic() - t0 < 10
    assert no_children()


def test_a_run_stopped_by_the_engine_stops_the_child(resnet18_16):
    c, x = resnet18_16
    with pytest.raises(SimulationError, match="instructions"):
        simulate(c.program, "mlu270", cores=16, inputs={"input": x}, numerics_process=True, max_instructions=2000)
    assert no_children()


def test_asked_for_where_it_cannot_fork_is_an_error(resnet18_16):
    c, _ = resnet18_16
    stop = threading.Event()
    other = threading.Thread(target=stop.wait)
    other.start()
    try:
        with pytest.raises(SimulationError, match="no other thread"):
            simulate(c.program, "mlu270", cores=16, numerics_process=True)
        assert forks_numerics(None, c.program) is False       # left to choose: in this thread
    finally:
        stop.set()
        other.join()


def test_only_long_runs_fork_unasked(resnet18_16, monkeypatch):
    c, _ = resnet18_16
    assert forks_numerics(None, c.program) is False           # ~5k instructions: not worth a fork
    monkeypatch.setattr("mlusim.sim.FORK_MIN", 1000)
    assert forks_numerics(None, c.program) is True
    assert forks_numerics(False, c.program) is False


@pytest.mark.parametrize("asked", [None, True])
def test_a_fork_refused_leaves_the_numerics_to_the_engine_thread_unless_asked(resnet18_16, monkeypatch, asked):
    c, x = resnet18_16
    ref = simulate(c.program, "mlu270", cores=16, inputs={"input": x}, numerics_process=False)
    monkeypatch.setattr("mlusim.sim.FORK_MIN", 1000)

    def refuse():
        raise OSError(11, "Resource temporarily unavailable")

    monkeypatch.setattr(os, "fork", refuse)
    if asked:
        with pytest.raises(SimulationError, match="cannot fork the numerics process: Resource temporarily"):
            simulate(c.program, "mlu270", cores=16, inputs={"input": x}, numerics_process=asked)
    else:
        res = simulate(c.program, "mlu270", cores=16, inputs={"input": x}, numerics_process=asked)
        assert np.array_equal(res.outputs["output"], ref.outputs["output"])
