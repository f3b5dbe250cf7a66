"""Shared fixtures: configs and small program builders used across the test modules."""
from __future__ import annotations

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")   # small matmuls: threads cost more than they give

import numpy as np  # noqa: E402
import pytest

from mlusim.config import load_config
from mlusim.isa.encoding import Instr
from mlusim.program import Kernel, Program, TensorDecl, allocate
from mlusim.sim import simulate


@pytest.fixture(scope="session")
def mlu270():
    return load_config("mlu270")


def I(mnemonic: str, **kw) -> Instr:  # noqa: E743 - reads like assembly in tests
    return Instr.make(mnemonic, **kw)


def tensors(*decls: TensorDecl) -> list[TensorDecl]:
    out = list(decls)
    allocate(out)
    return out


def program(streams, tensor_list, task_type="block", task_dim=1, task_stream=None, name="k") -> Program:
    """One kernel; `streams` is a list of instruction lists (or a single list)."""
    if streams and isinstance(streams[0], Instr):
        streams = [streams]
    return Program([Kernel(name, task_type, task_dim, streams, task_stream)], tensor_list)


def run(prog: Program, config="mlu270", cores=1, **kw):
    return simulate(prog, config, cores=cores, **kw)


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


@pytest.fixture(autouse=True)
def no_progress_lines(monkeypatch):
    """Progress lines (mlusim/progress.py) depend on wall time: off, unless a test turns them on."""
    monkeypatch.setenv("MLUSIM_PROGRESS_SECONDS", "off")


@pytest.fixture(autouse=True)
def compile_cache_dir(tmp_path_factory, monkeypatch):
    """Every test gets a compile cache of its own (mlusim/compile_cache.py), so no test sees
    programs another test (or the user's ~/.cache) compiled."""
    d = tmp_path_factory.mktemp("compile-cache")
    monkeypatch.setenv("MLUSIM_CACHE_DIR", str(d))
    monkeypatch.delenv("MLUSIM_CACHE_MAX_MB", raising=False)
    return d


# The few tests that take minutes run first, so that `pytest -n 2` (.ci/run) starts them while the
# other worker works through the short ones, instead of one of them starting last and keeping the
# suite waiting (longest job first). Substrings of node ids; measured with --durations.
LONGEST_FIRST = ("test_training.py::test_short_training_run_tracks_float_pytorch_and_reports_cycles",
                 "test_share.py::test_resnet50_batch16_on_16_cores_is_bit_exact",
                 "test_fuzz_engine.py::test_random_streams_run_or_fail_cleanly")


def pytest_collection_modifyitems(config, items):
    rank = {name: k for k, name in enumerate(LONGEST_FIRST)}

    def key(item):
        hits = [k for name, k in rank.items() if name in item.nodeid]
        return hits[0] if hits else len(rank)
    items.sort(key=key)      # stable: every other test keeps its collection order
