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
