"""Hardware experiments: the cross product of config values x core counts, one row per point.

    rows = sweep("examples/matmul.s", "mlu270", {"dram.bandwidth_gbps": [51.2, 102.4]}, cores=[1, 4])

Every point is resolved and checked in the calling process first, so a bad key or value fails at
once with one line, before anything runs. Points then run independently: in this process
(`jobs=1`), on local processes (`jobs=N`, default: one per CPU), or on a Dask distributed cluster
(`cluster="tcp://host:8786"` or a `distributed.Client`). A point is a pure function of its inputs
(program bytes, resolved config, core count), so all three give identical rows, in the same order.
A point the machine cannot run (e.g. the program's buffers do not fit a smaller NRAM) is a row
with `error` set rather than the end of the sweep.
"""
from __future__ import annotations

import hashlib
import itertools
import math
import os
import re
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mlusim.errors import ConfigError, MlusimError

SWEEP_FILE_KEYS = ("program", "config", "set", "cores", "timing_only", "max_cycles", "max_instructions")


class SweepError(ConfigError):
    """A sweep spec (CLI --set lists or sweep file) that is malformed."""


# ------------------------------------------------------------------------------------------------
# Specs


def parse_set(items: list[str]) -> dict[str, list]:
    """`["dram.bandwidth_gbps=51.2,102.4", "core.nram_kib=256"]` -> {key: [values]}, YAML-typed."""
    from mlusim.config import parse_override

    params: dict[str, list] = {}
    for item in items:
        key, eq, text = item.partition("=")
        key = key.strip()
        if not eq or not key:
            raise SweepError(f"--set {item!r}: expected path.to.key=VALUE[,VALUE...]")
        if key in params:
            raise SweepError(f"--set {key} given twice; list its values once: {key}=A,B,C")
        parts = text.split(",")
        if any(not p.strip() for p in parts):
            raise SweepError(f"--set {item!r}: empty value in the list")
        params[key] = [parse_override(f"{key}={p}")[1] for p in parts]
    return params


def load_sweep_file(path: str | Path) -> dict[str, Any]:
    """A YAML sweep description: program, config, set: {key: value or [values]}, cores, ..."""
    from mlusim.yamlsafe import load_yaml_file

    data = load_yaml_file(Path(path), what="sweep file", error=SweepError)
    if not isinstance(data, dict):
        raise SweepError(f"{path}: a sweep file is a mapping with keys {', '.join(SWEEP_FILE_KEYS)}")
    for k in data:
        if k not in SWEEP_FILE_KEYS:
            raise SweepError(f"{path}: unknown key '{k}' (known: {', '.join(SWEEP_FILE_KEYS)})")
    params = data.get("set") or {}
    if not isinstance(params, dict):
        raise SweepError(f"{path}: set: expected a mapping of config key to a value or a list of values")
    out = dict(data)
    out["set"] = {}
    for key, vals in params.items():
        vals = vals if isinstance(vals, list) else [vals]
        if not vals or any(isinstance(v, (list, dict)) or v is None for v in vals):
            raise SweepError(f"{path}: set: {key}: expected a value or a non-empty list of scalar values")
        out["set"][str(key)] = vals
    cores = data.get("cores")
    if cores is not None:
        cores = cores if isinstance(cores, list) else [cores]
        if not all(isinstance(c, int) and not isinstance(c, bool) and c >= 1 for c in cores):
            raise SweepError(f"{path}: cores: expected a positive integer or a list of them, got {data['cores']!r}")
        out["cores"] = cores
    return out


def check_keys(params: dict) -> None:
    """Every swept key must be a config leaf: a typo must not quietly sweep nothing."""
    import difflib

    from mlusim.config import iter_leaves

    leaves = sorted(p for p, _, _ in iter_leaves() if p not in ("name", "description"))
    for k in params:
        if k not in leaves:
            hint = difflib.get_close_matches(str(k), leaves, n=1, cutoff=0.6)
            raise SweepError(f"sweep: unknown config key '{k}'" + (f" (did you mean '{hint[0]}'?)" if hint else
                                                                     " (see mlusim config show)"))


MAX_POINTS = 100_000          # rows of one sweep; each is a simulation, so far more is a typo
TASK_HOST_BYTES = 8 * 1024    # one planned point: its resolved config and row, measured ~5 KiB


def check_size(params: dict[str, list], cores: list[int] | None) -> None:
    """Count the cross product before building it: 10^4 x 10^4 values is refused, not planned."""
    from mlusim import budget

    n = max(1, len(cores or ()))
    for vals in params.values():
        n *= len(vals)
    if n > MAX_POINTS:
        raise SweepError(f"sweep of {n:,} points (values x core counts) is over the limit of {MAX_POINTS:,}; "
                         f"sweep fewer values, or split it")
    budget.check(n * TASK_HOST_BYTES, f"planning a sweep of {n:,} points", SweepError)


def points(params: dict[str, list]) -> list[dict[str, Any]]:
    """The cross product, first key varying slowest (as nested loops in the order given)."""
    keys = list(params)
    return [dict(zip(keys, combo)) for combo in itertools.product(*(params[k] for k in keys))]


# ------------------------------------------------------------------------------------------------
# One point (runs in a worker)

_PROGRAMS: dict = {}


def _init_worker() -> None:
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)   # Ctrl-C is the parent's to handle


def _program(task: dict, blob):
    """The program for this point, resolved once per (program, config) in each worker."""
    import json

    from mlusim.config import config_from_dict
    from mlusim.experiments import compiles_on_the_fly, resolve_program

    cfg = config_from_dict(task["config"], task["config_origin"])
    cores = task["cores"] if compiles_on_the_fly(task["spec"]) else None   # re-tile compiled specs per count
    key = (task["digest"], json.dumps(task["config"], sort_keys=True), cores)
    prog = _PROGRAMS.get(key)
    if prog is None:
        spec = task["spec"]
        if blob is not None:    # ship the file's bytes: a remote worker need not share our disk
            d = Path(tempfile.gettempdir()) / f"mlusim-sweep-{os.getpid()}"
            d.mkdir(exist_ok=True)
            spec_path = d / f"{task['digest']}{task['suffix']}"
            if not spec_path.exists():
                tmp = d / f"{task['digest']}.{os.getpid()}.{id(task)}.part"
                tmp.write_bytes(blob)
                os.replace(tmp, spec_path)   # atomic: threads of one worker may race here
            spec = str(spec_path)
        prog = resolve_program(spec, cfg, cores=cores, cache=task.get("cache", True))
        if len(_PROGRAMS) >= 8:
            _PROGRAMS.clear()
        _PROGRAMS[key] = prog
    return prog, cfg


def run_point(task: dict, blob: bytes | None = None) -> dict[str, Any]:
    """Simulate one point; returns its row (the swept values, cores and the metrics) or an error row.
    `blob` is the program file's content when the worker may not share the caller's disk (Dask)."""
    from mlusim.experiments import row_from_summary
    from mlusim.report import summarize
    from mlusim.sim import simulate

    row: dict[str, Any] = {"point": task["index"], **task["values"], "cores": task["cores"]}
    try:
        prog, cfg = _program(task, blob)
        res = simulate(prog, cfg, cores=task["cores"], timing_only=task["timing_only"],
                       max_cycles=task["max_cycles"], max_instructions=task["max_instructions"],
                       max_seconds=task.get("max_seconds"))
        if res.interrupted:     # Ctrl-C in this process: stop the sweep, not just this point
            raise KeyboardInterrupt
        row.update(row_from_summary(summarize(res), None, int(prog.meta.get("batch", 1) or 1)))
        row["cores"] = task["cores"]
        row["error"] = None
    except MlusimError as e:
        row["error"] = str(e)
    return row


# ------------------------------------------------------------------------------------------------
# The sweep


def plan(spec: str, base_config=None, params: dict[str, list] | None = None, cores: list[int] | None = None, *,
         timing_only: bool = True, max_cycles: float | None = None,
         max_instructions: int = 20_000_000, max_seconds: float | None = None,
         cache: bool = True) -> tuple[list[dict], bytes | None]:
    """Every task of the sweep, each with its fully resolved config, plus the program file's bytes.
    Raises on the first bad key or value, naming the point."""
    from mlusim.experiments import default_config, resolve_program

    params = dict(params or {})
    check_keys(params)
    for k, vals in params.items():
        if not isinstance(vals, (list, tuple)) or not vals:
            raise SweepError(f"sweep parameter {k}: expected a non-empty list of values")
    check_size(params, cores)
    path = Path(spec)
    blob = path.read_bytes() if path.is_file() else None
    digest = hashlib.sha256(blob if blob is not None else spec.encode()).hexdigest()[:16]
    base_cfg = default_config(None, base_config) if base_config is not None else None
    program = resolve_program(spec, base_cfg, cache=cache)
    tasks = []
    for values in points(params):
        try:
            cfg = default_config(program, base_config, values)
        except ConfigError as e:
            where = ", ".join(f"{k}={v}" for k, v in values.items())
            raise SweepError(f"sweep point {where}: {e}") from None
        for n in cores or [cfg.chip.cores]:
            tasks.append({"index": len(tasks), "spec": spec, "digest": digest, "suffix": path.suffix,
                          "values": values, "cores": int(n), "config": cfg.to_dict(), "config_origin": cfg.source,
                          "timing_only": timing_only, "max_cycles": max_cycles,
                          "max_instructions": max_instructions, "max_seconds": max_seconds, "cache": cache})
    return tasks, blob


def sweep(spec: str, base_config=None, params: dict[str, list] | None = None, cores: list[int] | None = None, *,
          jobs: int | None = None, cluster=None, cluster_timeout: float = 10.0, timing_only: bool = True,
          max_cycles: float | None = None, max_instructions: int = 20_000_000,
          progress: Callable | None = None, max_seconds: float | None = None, cache: bool = True) -> list[dict]:
    """Run the cross product of `params` (config key -> values) x `cores` for program `spec`.

    Returns one row per point in cross-product order: the swept values (dotted config keys), `cores`,
    the scaling metrics of `mlusim.experiments` (speedup and efficiency relative to the first core
    count of the same hardware point) and `error` (None, or why the point could not run).
    `progress(done, total, row)` is called as points finish. On Ctrl-C it raises `Interrupted`
    (a KeyboardInterrupt) whose `.rows` are the points that finished."""
    if not (isinstance(cluster_timeout, (int, float)) and math.isfinite(cluster_timeout) and cluster_timeout > 0):
        raise SweepError(f"--cluster-timeout must be a positive number of seconds, got {cluster_timeout!r}")
    tasks, blob = plan(spec, base_config, params, cores, timing_only=timing_only, max_cycles=max_cycles,
                       max_instructions=max_instructions, max_seconds=max_seconds, cache=cache)
    if cluster is not None:
        rows = _run_dask(tasks, blob, cluster, progress, cluster_timeout)
    elif (jobs or os.cpu_count() or 1) <= 1 or len(tasks) <= 1:
        rows = []
        try:
            for t in tasks:
                rows.append(run_point(t))
                if progress:
                    progress(len(rows), len(tasks), rows[-1])
        except KeyboardInterrupt:
            raise Interrupted(rows) from None
    else:
        rows = _run_local(tasks, jobs or os.cpu_count() or 1, progress)
    return relative_to_first_core_count(sorted(rows, key=lambda r: r["point"]), list(params or {}))


def relative_to_first_core_count(rows: list[dict], keys: list[str]) -> list[dict]:
    """Speedup and efficiency of each row vs the first core count of its hardware point."""
    base: dict = {}
    for r in rows:
        hw = tuple(repr(r.get(k)) for k in keys)
        if r.get("error"):
            continue
        b = base.setdefault(hw, r)
        r["speedup"] = b["cycles"] / r["cycles"] if r["cycles"] else 0.0
        r["efficiency"] = r["speedup"] * b["cores"] / r["cores"]
    return rows


class Interrupted(KeyboardInterrupt):
    """Ctrl-C during a sweep; `.rows` holds the points that finished."""

    def __init__(self, rows: list[dict]):
        super().__init__("sweep interrupted")
        self.rows = rows


def _run_local(tasks: list[dict], jobs: int, progress) -> list[dict]:
    from concurrent.futures import ProcessPoolExecutor, as_completed

    rows: list[dict] = []
    pool = ProcessPoolExecutor(max_workers=min(jobs, len(tasks)), initializer=_init_worker)
    try:
        futs = [pool.submit(run_point, t) for t in tasks]
        for f in as_completed(futs):
            rows.append(f.result())
            if progress:
                progress(len(rows), len(tasks), rows[-1])
    except KeyboardInterrupt:
        procs = list(getattr(pool, "_processes", {}).values())
        pool.shutdown(wait=False, cancel_futures=True)
        for p in procs:     # running points cannot be cancelled; their processes can be ended
            p.terminate()
        raise Interrupted(rows) from None
    pool.shutdown()
    return rows


CLUSTER_RE = re.compile(r"(?:(?:tcp|tls|ucx|ws|wss|inproc)://)?[A-Za-z0-9_.\-\[\]:]{1,255}(?::[0-9]{1,5})?", re.ASCII)


def _run_dask(tasks: list[dict], blob, cluster, progress, timeout: float) -> list[dict]:
    try:
        from distributed import Client, as_completed
    except ImportError:
        raise MlusimError("--cluster needs Dask: pip install 'mlusim[cluster]'") from None
    own = not isinstance(cluster, Client)
    if own and not (isinstance(cluster, str) and CLUSTER_RE.fullmatch(cluster)):
        raise MlusimError(f"--cluster {str(cluster)[:80]!r}: expected a scheduler address such as "
                          f"tcp://10.0.0.5:8786")
    try:
        client = Client(cluster, timeout=f"{timeout}s") if own else cluster
    except (OSError, TimeoutError, ValueError, TypeError) as e:
        raise MlusimError(f"cannot reach the Dask scheduler at {cluster}: {str(e)[:200]}") from None
    rows: list[dict] = []
    try:
        shipped = client.scatter(blob, broadcast=True) if blob is not None else None
        futs = client.map(run_point, tasks, blob=shipped, pure=False)
        try:
            for f in as_completed(futs):
                rows.append(f.result())
                if progress:
                    progress(len(rows), len(tasks), rows[-1])
        except KeyboardInterrupt:
            client.cancel(futs)
            raise Interrupted(rows) from None
    finally:
        if own:
            client.close()
    return rows


def columns(keys: list[str]) -> list[tuple[str, str, float]]:
    """CSV columns of a sweep: each swept key with its unit, cores, the metrics, then error."""
    from mlusim.config import iter_leaves
    from mlusim.experiments import METRIC_COLUMNS

    units = {p: m.get("unit", "") for p, _, m in iter_leaves()}
    cols = [(k, f"{k} ({units[k]})" if units.get(k) else k, 1) for k in keys]
    return cols + [("cores", "Cores", 1)] + METRIC_COLUMNS + [("error", "Error", 1)]


def sweep_document(program: str, config, params: dict, cores, rows: list[dict], timing_only: bool = True,
                   interrupted: bool = False) -> dict:
    """What `mlusim sweep --json` writes and `mlusim plot` reads."""
    return {"kind": "sweep", "program": program, "config": config or "default", "params": params,
            "cores": cores, "timing_only": timing_only, "interrupted": interrupted, "rows": rows}
