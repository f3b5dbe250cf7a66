"""Run a Program on a simulated chip and collect its outputs and counters."""
from __future__ import annotations

import functools
import gc
import math
import sys
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np

from mlusim.config import HardwareConfig, load_config
from mlusim.cores.chip import Chip, expected_instructions, host_bytes_estimate
from mlusim.cores.datapath import FORK_MIN, Forked, can_fork
from mlusim.cores.stats import CoreCounters, KernelRecord
from mlusim.errors import MlusimError, SimulationError
from mlusim.program import Program
from mlusim.cores.tracelog import EVENT_HOST_BYTES

RECORD_HOST_BYTES = 1100      # one kernel's counters of one core in the run's records (measured ~1,040)



@dataclass
class RunResult:
    """Everything a run produced. Cycles are simulated clock cycles of `config`."""

    config: HardwareConfig
    cores: int
    cycles: float
    kernels: list[KernelRecord]
    outputs: dict[str, np.ndarray]
    instructions: int
    wall_seconds: float
    timing_only: bool
    dram_bytes: float
    dram_busy: float
    inputs_generated: list[str] = field(default_factory=list)
    trace: list | None = None
    program_meta: dict = field(default_factory=dict)
    interrupted: bool = False

    @property
    def seconds(self) -> float:
        return self.config.cycles_to_seconds(self.cycles)

    def totals(self) -> dict[int, CoreCounters]:
        out: dict[int, CoreCounters] = {}
        for k in self.kernels:
            for cid, c in k.cores.items():
                out.setdefault(cid, CoreCounters(cid)).add(c)
        return out


def _perm(t) -> tuple[int, ...] | None:
    """Axis permutation from host layout to device layout, e.g. NCHW -> NHWC is (0, 2, 3, 1)."""
    host, dev = t.meta.get("host_layout"), t.meta.get("layout")
    if not host or not dev or host == dev:
        return None
    if not isinstance(host, str) or not isinstance(dev, str):
        raise SimulationError(f"tensor '{t.name}': layout and host_layout must be strings like 'NHWC'")
    if sorted(host) != sorted(dev) or len(dev) != len(t.shape):
        raise SimulationError(f"tensor '{t.name}': cannot map layout {host} to {dev}")
    return tuple(host.index(c) for c in dev)


def _s2d(t):
    """The space-to-depth staging a compiled first conv asks of the host: (block, pads) or None."""
    v = t.meta.get("space_to_depth")
    if v is None:
        return None
    hs = t.meta.get("host_shape")
    if not (isinstance(v, (list, tuple)) and len(v) == 5 and all(isinstance(x, int) and x >= 0 for x in v)
            and v[0] >= 1 and isinstance(hs, (list, tuple)) and len(hs) == 4 and len(t.shape) == 4):
        raise SimulationError(f"tensor '{t.name}': meta space_to_depth must be [block, pt, pb, pl, pr] with a "
                              f"4-D host_shape")
    b, pt, pb, pl, pr = v
    n, c, h, w = (int(x) for x in hs)
    if (h + pt + pb) % b or (w + pl + pr) % b or \
            tuple(t.shape) != (n, (h + pt + pb) // b, (w + pl + pr) // b, b * b * c):
        raise SimulationError(f"tensor '{t.name}': space_to_depth {list(v)} of {list(hs)} does not give "
                              f"{list(t.shape)}")
    return b, (pt, pb, pl, pr)


def host_shape(t) -> tuple[int, ...]:
    if _s2d(t) is not None:
        return tuple(int(x) for x in t.meta["host_shape"])
    p = _perm(t)
    if p is None:
        return tuple(t.shape)
    shape = [0] * len(p)
    for dev_axis, host_axis in enumerate(p):
        shape[host_axis] = t.shape[dev_axis]
    return tuple(shape)


def to_device(t, arr: np.ndarray) -> np.ndarray:
    s2d = _s2d(t)
    if s2d is not None:   # NCHW -> zero-padded NHWC -> b x b pixel blocks folded into channels
        b, (pt, pb, pl, pr) = s2d
        x = np.pad(arr, ((0, 0), (0, 0), (pt, pb), (pl, pr))).transpose(0, 2, 3, 1)
        n, hp, wp, c = x.shape
        x = x.reshape(n, hp // b, b, wp // b, b, c).transpose(0, 1, 3, 2, 4, 5)
        return np.ascontiguousarray(x.reshape(n, hp // b, wp // b, b * b * c))
    p = _perm(t)
    return arr if p is None else np.ascontiguousarray(arr.transpose(p))


def to_host(t, arr: np.ndarray) -> np.ndarray:
    p = _perm(t)
    return arr if p is None else arr.transpose(np.argsort(p))


def cast_input(t, arr: np.ndarray) -> np.ndarray:
    """A user's array in the tensor's dtype, only where that changes no value: integers that all
    fit (300 into i8 is refused, never wrapped to 44), floats that stay finite (rounded to the
    nearest f16/f32, as any float conversion). Anything else is an error naming both dtypes."""
    want = t.np_dtype
    if arr.dtype.kind in "iu" and want.kind in "iu":
        info = np.iinfo(want)
        lo, hi = (int(arr.min()), int(arr.max())) if arr.size else (0, 0)
        if lo < info.min or hi > info.max:
            raise SimulationError(f"input '{t.name}': {arr.dtype} values in [{lo}, {hi}] do not fit the declared "
                                  f"{want} [{info.min}, {info.max}] (values are never wrapped; give {want} data)")
        return arr.astype(want)
    if arr.dtype.kind == "f" and want.kind == "f":
        with np.errstate(over="ignore", invalid="ignore"):
            out = arr.astype(want)
        if np.any(np.isfinite(arr) & ~np.isfinite(out)):
            raise SimulationError(f"input '{t.name}': {arr.dtype} values beyond the range of the declared {want} "
                                  f"(largest {float(np.finfo(want).max):g})")
        return out
    raise SimulationError(f"input '{t.name}': dtype {arr.dtype} != declared {want}")


def make_inputs(program: Program, given: dict[str, np.ndarray] | None, seed: int = 0, generate: bool = True):
    """Check user inputs against the declarations; make deterministic random ones for the rest."""
    given = dict(given or {})
    out, generated = {}, []
    rng = np.random.default_rng(seed)
    for t in program.by_role("input"):
        if t.name in given:
            arr = np.asarray(given.pop(t.name))
            host = host_shape(t)
            if arr.shape != host:
                raise SimulationError(f"input '{t.name}': shape {list(arr.shape)} != declared {list(host)}"
                                      + (f" ({t.meta['host_layout']})" if t.meta.get("host_layout") else ""))
            arr = to_device(t, arr)
            if arr.dtype != t.np_dtype:
                arr = cast_input(t, arr)
            out[t.name] = arr
        elif generate:       # drawn in the host's shape, then staged like a given input
            shape = host_shape(t)
            if t.np_dtype.kind == "f":
                out[t.name] = rng.standard_normal(shape, dtype=np.float32).astype(t.np_dtype)
                if "range" in t.meta:     # e.g. image pixels in [0, 1]
                    rng_meta = t.meta["range"]
                    if not (isinstance(rng_meta, (list, tuple)) and len(rng_meta) == 2 and
                            all(isinstance(v, (int, float)) and math.isfinite(v) for v in rng_meta)):
                        raise SimulationError(f"tensor '{t.name}': meta range must be [low, high], got {rng_meta!r}")
                    lo, hi = rng_meta
                    out[t.name] = rng.uniform(lo, hi, shape).astype(t.np_dtype)
            else:
                info = np.iinfo(t.np_dtype)
                out[t.name] = rng.integers(max(info.min, -128), min(info.max, 127) + 1, size=shape,
                                           dtype=t.np_dtype)
            out[t.name] = to_device(t, out[t.name])
            generated.append(t.name)
    if given:
        raise SimulationError(f"unknown input(s) {', '.join(sorted(given))}; the program's inputs are "
                              f"{', '.join(t.name for t in program.by_role('input')) or 'none'}")
    return out, generated


def load_gdram(buf: np.ndarray | None, program: Program, feeds: dict[str, np.ndarray], hand_over: bool) -> None:
    """Copy the program's constants and the input `feeds` into GDRAM image `buf` (None: a
    timing-only run, which reads no values: nothing is copied). Constants mapped from a cached
    model file leave no copy behind (mlusim.mapped); with `hand_over`, each constant's data is
    dropped from the program once copied, or at once without `buf` (see `simulate`)."""
    from mlusim.mapped import copy_releasing

    for t in program.tensors:
        data = t.data if t.role == "const" else feeds.get(t.name)
        if data is None:
            continue
        if buf is not None:
            raw = np.ascontiguousarray(data).view(np.uint8).reshape(-1)
            copy_releasing(buf[t.addr:t.addr + raw.size], raw)
        if hand_over and t.role == "const":
            t.data = data = raw = None


def check_clusters(program: Program, cfg: HardwareConfig, ncores: int) -> None:
    """A UNIONn kernel needs n whole clusters: say so before running, naming the core count the
    program was compiled for (a cluster-fused program made for 16 cores cannot run on 4)."""
    cpc = cfg.chip.cores_per_cluster
    need = max((k.clusters_per_job for k in program.kernels), default=0)
    if need and need > ncores // cpc:
        made = program.meta.get("compiled_for_cores")
        hint = f"; the program was compiled for {made} cores: run it on {made}, or compile for {ncores}" \
            if isinstance(made, int) and made != ncores else ""
        k = next(k for k in program.kernels if k.clusters_per_job == need)
        raise SimulationError(f"kernel '{k.name}' is {k.task_type.upper()} and needs {need} whole cluster(s) of "
                              f"{cpc} cores; {ncores} core(s) give {ncores // cpc}{hint}")


# a program compiled from shapes alone (compiler/driver.py, shape_only) has zero weights and
# placeholder scales: its cycles are the real model's, its numbers would be meaningless
SHAPE_ONLY = ("the program was compiled for timing only (no weights, no calibration): run it with --timing-only, "
              "or compile it without --timing-only")


def simulate(program: Program, config: HardwareConfig | str | None = None, cores: int | None = None,
             inputs: dict[str, np.ndarray] | None = None, timing_only: bool = False,
             max_cycles: float | None = None, max_instructions: int = 20_000_000,
             trace: bool = False, host_cap_gib: float | None = None, progress=None,
             max_seconds: float | None = None, hand_over: bool = False,
             numerics_process: bool | None = None) -> RunResult:
    """Simulate `program` on `cores` cores (default: all) of `config` (default: MLU270).

    Inputs are given in each tensor's host layout (meta `host_layout`, e.g. NCHW for images) and
    outputs come back in it; the device layout is the tensor's declared shape (e.g. NHWC).
    `progress(kernels_done, kernels_total, cycles)` is called after every kernel. Budgets stop a
    run with a SimulationError: `max_instructions` executed, `max_cycles` simulated, `max_seconds`
    of wall time (checked every few thousand instructions), host memory (MLUSIM_HOST_MEM_GIB).
    `hand_over`: the caller gives `program` up (it compiled it for this run alone), so each
    constant's data is dropped from it once copied into the GDRAM image: a network's weights are
    then held once, not twice, while it runs (VGG-16's are 132 MB), and a timing-only run, which
    reads none, holds none. The program cannot be run again.
    `numerics_process`: compute the values in a forked child fed by the engine (cores/datapath.py;
    same results, the engine's time hidden behind the numerics'): None = when the platform allows
    it and the program is long enough to gain (FORK_MIN instructions), True = always (an error
    where it cannot), False = never."""
    cfg = config if isinstance(config, HardwareConfig) else load_config(config)
    ncores = cfg.chip.cores if cores is None else cores
    if not isinstance(ncores, int) or ncores < 1:
        raise SimulationError(f"--cores must be a positive integer, got {cores!r}")
    if ncores > cfg.chip.cores:
        raise SimulationError(f"--cores {ncores} exceeds the {cfg.chip.cores} cores of {cfg.name}")
    program.validate()
    if not timing_only and program.meta.get("shape_only"):
        raise SimulationError(SHAPE_ONLY)
    check_clusters(program, cfg, ncores)
    if program.gdram_bytes > cfg.dram_bytes:
        raise SimulationError(f"program needs {program.gdram_bytes:,} bytes of GDRAM; {cfg.name} has "
                              f"{cfg.dram_bytes:,}")
    if max_cycles is not None and not (isinstance(max_cycles, (int, float)) and math.isfinite(max_cycles)
                                       and max_cycles > 0):
        raise SimulationError(f"--max-cycles must be a positive number of cycles, got {max_cycles!r}")
    if max_seconds is not None and not (isinstance(max_seconds, (int, float)) and math.isfinite(max_seconds)
                                        and max_seconds > 0):
        raise SimulationError(f"--max-seconds must be a positive number of seconds, got {max_seconds!r}")
    if not isinstance(max_instructions, int) or max_instructions < 1:
        raise SimulationError(f"--max-instructions must be a positive integer, got {max_instructions!r}")
    from mlusim import budget

    cap = host_cap_gib * 1024**3 if host_cap_gib is not None else budget.cap_bytes()
    need = host_bytes_estimate(program.gdram_bytes, cfg, not timing_only) + \
        len(program.kernels) * ncores * RECORD_HOST_BYTES
    budget.check(need, "simulating this program with numerics" if not timing_only else "simulating this program",
                 hint="or run with --timing-only" if not timing_only else "", cap=cap)
    forked = not timing_only and forks_numerics(numerics_process, program)
    wall0 = time.perf_counter()
    chip = Chip(cfg, max(program.gdram_bytes, 64), numerics=not timing_only, ncores=ncores,
                max_instructions=max_instructions, trace=trace, max_seconds=max_seconds,
                # a trace is bounded by what the budget leaves after the run's own arrays
                trace_limit=max(1, int(cap - need) // EVENT_HOST_BYTES), shared_memory=forked)
    chip.set_weights([(t.addr, t.addr + t.nbytes) for t in program.tensors if t.role == "const"])
    feeds, generated = make_inputs(program, inputs, generate=not timing_only)
    load_gdram(None if timing_only else chip.gdram.buf, program, feeds, hand_over)
    del feeds
    records: list[KernelRecord] = []
    main = chip.env.process(chip.run_kernels(program.kernels, ncores, records, progress))
    with _fewer_collections(), _one_blas_thread(not timing_only):
        if forked:
            try:
                chip.datapath = Forked(chip)    # after the loads: the child starts with them
            except OSError as e:                # no fork to be had: the engine's thread does them
                if numerics_process:
                    raise SimulationError(f"cannot fork the numerics process: {e.strerror}") from None
        try:
            interrupted = _run(chip, main, max_cycles)
        finally:
            chip.datapath.close()
        chip.forget_prepared()      # before the collector looks at what the run left behind
    outputs = {}
    if not timing_only and not interrupted:
        buf = chip.gdram.buf
        for t in program.by_role("output"):
            dev = buf[t.addr:t.addr + t.nbytes].view(t.np_dtype).reshape(t.shape)
            outputs[t.name] = to_host(t, dev).copy()
    if interrupted and records and not records[-1].end:
        records[-1].end = chip.env.now
        records[-1].cores = {c.id: c.counters for c in chip.cores[:ncores]}
    return RunResult(cfg, ncores, chip.env.now, records, outputs, chip.executed,
                     time.perf_counter() - wall0, timing_only, chip.dram.bytes, chip.dram.busy, generated,
                     chip.trace, dict(program.meta), interrupted)


def forks_numerics(asked: bool | None, program: Program) -> bool:
    """Whether a run's numerics go to a forked child (simulate's `numerics_process`)."""
    if asked is None:
        return can_fork() and sum(expected_instructions(k) for k in program.kernels) >= FORK_MIN
    if asked and not can_fork():
        raise SimulationError("numerics in a child process need Linux and a process with no other thread "
                              f"(this one: {sys.platform}, {threading.active_count()} threads)")
    return asked


@contextmanager
def _fewer_collections():
    """The engine allocates a few short-lived objects per instruction (events, tuples), and the
    cyclic collector's default first threshold (700) walks them over and over: ~12% of a run.
    A higher threshold while simulating lets reference counting free them first; nothing else
    changes (collection timing never affects results), and the old thresholds come back after."""
    old = gc.get_threshold()
    gc.set_threshold(max(old[0], 200_000), max(old[1], 50), max(old[2], 1000))
    try:
        yield
    finally:
        gc.set_threshold(*old)


@contextmanager
def _one_blas_thread(numerics: bool):
    """The numerics' products are small (a conv tile is 7 to 56 rows), where BLAS threads only
    cost: with two threads on a busy 2-core host a ResNet-50 run took 231 s instead of 13. The CLI
    sets OPENBLAS_NUM_THREADS=1 before numpy loads; a Python caller gets the same here (exact
    integer results do not depend on it), and its own setting back afterwards."""
    if not numerics:
        yield
        return
    with _blas_pools().limit(limits=1, user_api="blas"):
        yield


@functools.cache
def _blas_pools():
    """numpy's thread pools, found once per process: finding them reads the loaded libraries
    (1 ms with torch loaded, and the shim simulates per step); limiting a found pool is 35 us."""
    from threadpoolctl import ThreadpoolController

    return ThreadpoolController()


def _step_until(env, main, limit: float) -> None:
    """env.run with a cycle budget: step while main runs and the next event is within `limit`.
    Stepping (rather than running to a stop event at `limit`) leaves `env.now` at the last event
    when the queue drains, so a deadlock is dated the same with or without --max-cycles."""
    step, peek = env.step, env.peek
    while not main.triggered:
        t = peek()
        if t == float("inf"):
            raise RuntimeError("No scheduled events left")
        if t > limit:
            raise SimulationError(f"cycle budget of {limit:,.0f} exhausted at cycle {limit:,.0f} "
                                  f"(raise --max-cycles)")
        step()


def _run(chip: Chip, main, max_cycles: float | None) -> bool:
    """Run the simulation to the end of `main`; True if Ctrl-C stopped it. A deadlock (nothing
    left to run, main not done) is a SimulationError naming what each core waits for."""
    try:
        if max_cycles is None:
            chip.env.run(until=main)
        else:
            _step_until(chip.env, main, float(max_cycles))
    except KeyboardInterrupt:
        return True
    except MlusimError:
        raise
    except RuntimeError as e:
        if "No scheduled events left" not in str(e):
            raise
    except RecursionError:  # pragma: no cover - defensive
        raise SimulationError("simulation recursion too deep") from None
    if not main.triggered:
        waits = "; ".join(chip.waits()) or "no core reports a wait"
        raise SimulationError(f"deadlock at cycle {chip.env.now:,.0f}: {waits}")
    if not main.ok:
        raise main.value
    return False
