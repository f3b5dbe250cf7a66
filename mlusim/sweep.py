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
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mlusim.errors import ConfigError, MlusimError
from mlusim.programs import compiles_on_the_fly

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


def _program(task: dict, blobs: dict | None):
    """What this point runs (mlusim.runs.Prepared) and its plan digest, prepared once per
    (program, config, cores) in each worker."""
    import json

    from mlusim.config import config_from_dict
    from mlusim.programs import BuildOptions, program_from_bytes
    from mlusim.runs import plan_digest, prepare

    cfg = config_from_dict(task["config"], task["config_origin"])
    cores = task["cores"] if compiles_on_the_fly(task["spec"]) else None   # re-tile compiled specs per count
    key = (task["digest"], json.dumps(task["config"], sort_keys=True), cores)
    hit = _PROGRAMS.get(key)
    if hit is None:
        blob = (blobs or {}).get(task["digest"])
        if blob is not None:     # the file's bytes were shipped: a remote worker need not share our disk
            prep = prepare(program_from_bytes(blob, task["spec"]), cfg, task["cores"])
        else:
            options = BuildOptions(**task["options"]) if compiles_on_the_fly(task["spec"]) else None
            prep = prepare(task["spec"], cfg, task["cores"], options)
        hit = (prep, plan_digest(prep))
        if len(_PROGRAMS) >= 8:
            _PROGRAMS.clear()
        _PROGRAMS[key] = hit
    return hit[0], hit[1], cfg


def run_point(task: dict, blobs: dict | None = None) -> dict[str, Any]:
    """Simulate one point; returns its row (the swept values, cores, the metrics and `plan`, the
    digest of the program it ran) or an error row. `blobs` maps a program file's digest to its
    content when the worker may not share the caller's disk (Dask)."""
    from mlusim.experiments import row_from_summary
    from mlusim.report import summarize
    from mlusim.runs import execute

    row: dict[str, Any] = {"point": task["index"], **task["values"], "cores": task["cores"]}
    try:
        prep, digest, cfg = _program(task, blobs)
        res = execute(prep, cfg, task["cores"], timing_only=task["timing_only"], max_cycles=task["max_cycles"],
                      max_instructions=task["max_instructions"], max_seconds=task.get("max_seconds"))
        if res.interrupted:     # Ctrl-C in this process: stop the sweep, not just this point
            raise KeyboardInterrupt
        row.update(row_from_summary(summarize(res), None, int(res.program_meta.get("batch", 1) or 1)))
        row["cores"] = task["cores"]
        row["plan"] = digest
        row["error"] = None
    except MlusimError as e:
        row["error"] = str(e)
    return row


# ------------------------------------------------------------------------------------------------
# The sweep


def _held(spec: str, cfg, counts: list[int], options, workdir: Path, progress: Callable | None = None,
          steps: int = 0) -> dict[int, Path]:
    """--hold-program: `spec` compiled once per core count for the base config, saved as .mlu files
    that every hardware point then runs as they are; `progress(i, steps, None)` after the i-th."""
    from mlusim import mlufile
    from mlusim.programs import resolve_program, schedule_for

    if schedule_for(spec, cfg) == "per-cluster":
        raise SweepError(f"--hold-program: {cfg.name} runs {spec} per cluster (a trunk and a head compiled per "
                         f"point); hold a spread program with --set runtime.schedule=spread")
    out = {}
    for n in counts:
        out[n] = workdir / f"held-{n}cores.mlu"
        mlufile.save(resolve_program(spec, cfg, n, options), out[n])
        if progress:
            progress(len(out), steps, None)
    return out


def plan(spec: str, base_config=None, params: dict[str, list] | None = None, cores: list[int] | None = None, *,
         timing_only: bool = True, max_cycles: float | None = None, max_instructions: int = 20_000_000,
         max_seconds: float | None = None, options=None, hold_program: Path | None = None,
         progress: Callable | None = None) -> tuple[list[dict], dict[str, bytes]]:
    """Every task of the sweep, each with its fully resolved config, plus the program files'
    bytes by digest. Raises on the first bad key or value, naming the point. `hold_program`: a
    folder to compile a zoo or ONNX spec into once per core count for the base config; each
    compile is a step of the sweep: `progress(done, compiles + points, None)`."""
    from dataclasses import asdict

    from mlusim.experiments import default_config
    from mlusim.programs import BuildOptions, resolve_program

    params = dict(params or {})
    check_keys(params)
    for k, vals in params.items():
        if not isinstance(vals, (list, tuple)) or not vals:
            raise SweepError(f"sweep parameter {k}: expected a non-empty list of values")
    check_size(params, cores)
    options = options or BuildOptions()
    program = None if compiles_on_the_fly(spec) else resolve_program(spec, options=options)
    configs = []
    for values in points(params):
        try:
            configs.append((values, default_config(program, base_config, values)))
        except ConfigError as e:
            where = ", ".join(f"{k}={v}" for k, v in values.items())
            raise SweepError(f"sweep point {where}: {e}") from None
    files: dict[int | None, Path] = {} if program is None else {None: Path(spec)}
    if hold_program is not None and program is None:
        counts = sorted({n for _, cfg in configs for n in cores or [cfg.chip.cores]})
        points_n = sum(len(cores or [cfg.chip.cores]) for _, cfg in configs)
        if progress:
            progress(0, len(counts) + points_n, None)
        files = _held(spec, default_config(None, base_config), counts, options, hold_program, progress,
                      len(counts) + points_n)
    blobs, digests = {}, {}
    for n, path in files.items():
        blob = path.read_bytes()
        digests[n] = hashlib.sha256(blob).hexdigest()[:16]
        blobs[digests[n]] = blob
    tasks = []
    for values, cfg in configs:
        for n in cores or [cfg.chip.cores]:
            key = n if n in files else None
            path = files.get(key)
            tasks.append({"index": len(tasks), "spec": str(path) if path else spec,
                          "digest": digests[key] if path else hashlib.sha256(spec.encode()).hexdigest()[:16],
                          "options": asdict(options),
                          "values": values, "cores": int(n), "config": cfg.to_dict(), "config_origin": cfg.source,
                          "timing_only": timing_only, "max_cycles": max_cycles,
                          "max_instructions": max_instructions, "max_seconds": max_seconds})
    return tasks, blobs


def sweep(spec: str, base_config=None, params: dict[str, list] | None = None, cores: list[int] | None = None, *,
          jobs: int | None = None, cluster=None, cluster_timeout: float = 10.0, timing_only: bool = True,
          max_cycles: float | None = None, max_instructions: int = 20_000_000,
          progress: Callable | None = None, max_seconds: float | None = None, options=None,
          hold_program: bool = False) -> list[dict]:
    """Run the cross product of `params` (config key -> values) x `cores` for program `spec`.

    Returns one row per point in cross-product order: the swept values (dotted config keys), `cores`,
    the scaling metrics of `mlusim.experiments` (speedup and efficiency relative to the first core
    count of the same hardware point), `plan` (a digest of the program the point ran), `replanned`
    (the compiler made a different program than for the point before with the same core count)
    and `error` (None, or why the point could not run). A zoo or ONNX spec is compiled per point
    with `options` (mlusim.programs.BuildOptions) unless `hold_program`: then once per core count
    for the base config, and only the hardware varies. `progress(done, total, row)` is called once
    the points are planned (done 0, row None) and as points finish; with `hold_program` each
    compile is a step too (row None). On Ctrl-C it raises `Interrupted` (a KeyboardInterrupt)
    whose `.rows` are the points that finished; a Dask cluster that fails raises `SweepFailed` (an
    MlusimError), whose `.rows` are likewise the points that finished. The list has
    `to_dataframe()` (`sweep_table`)."""
    if not (isinstance(cluster_timeout, (int, float)) and math.isfinite(cluster_timeout) and cluster_timeout > 0):
        raise SweepError(f"--cluster-timeout must be a positive number of seconds, got {cluster_timeout!r}")
    with tempfile.TemporaryDirectory(prefix="mlusim-held-") as held:
        tasks, blobs = plan(spec, base_config, params, cores, timing_only=timing_only, max_cycles=max_cycles,
                            max_instructions=max_instructions, max_seconds=max_seconds, options=options,
                            hold_program=Path(held) if hold_program else None, progress=progress)
        compiled = len(blobs) if hold_program and compiles_on_the_fly(spec) else 0   # steps done in `plan`
        if progress:
            progress(compiled, compiled + len(tasks), None)

        def point_done(done: int, total: int, row: dict) -> None:
            progress(compiled + done, compiled + total, row)
        try:
            rows = _run(tasks, blobs, jobs, cluster, cluster_timeout, point_done if progress else None)
        except (Interrupted, SweepFailed) as e:
            e.rows = _finish(e.rows, params)
            raise
    return _finish(rows, params)


def _finish(rows: list[dict], params: dict | None) -> list[dict]:
    rows = sorted(rows, key=lambda r: r["point"])
    return sweep_table(mark_replanned(relative_to_first_core_count(rows, list(params or {}))), list(params or {}))


def sweep_table(rows: list[dict], keys: list[str]):
    """A sweep's rows (those of `sweep`, or a report's `rows` with `list(report["params"])`) as a
    list with `to_dataframe()`: the CSV's columns, one row per point, indexed by point."""
    from mlusim.experiments import COLUMN_KINDS
    from mlusim.frames import Rows

    return Rows(rows, columns(keys), COLUMN_KINDS, ["point"])


def _run(tasks: list[dict], blobs: dict, jobs, cluster, cluster_timeout: float, progress) -> list[dict]:
    if cluster is not None:
        return _run_dask(tasks, blobs, cluster, progress, cluster_timeout)
    if (jobs or os.cpu_count() or 1) <= 1 or len(tasks) <= 1:
        rows: list[dict] = []
        try:
            for t in tasks:
                rows.append(run_point(t))
                if progress:
                    progress(len(rows), len(tasks), rows[-1])
        except KeyboardInterrupt:
            raise Interrupted(rows) from None
        return rows
    return _run_local(tasks, jobs or os.cpu_count() or 1, progress)


def mark_replanned(rows: list[dict]) -> list[dict]:
    """`replanned` on each row that ran: whether its program differs from the one the previous
    point with the same core count ran (False for the first). A sweep that recompiles per point
    can change tiling, fusion and the split over cores along with the hardware; this says where."""
    last: dict[int, str] = {}
    for r in rows:
        if r.get("error"):
            continue
        prev = last.get(r["cores"])
        r["replanned"] = prev is not None and prev != r["plan"]
        last[r["cores"]] = r["plan"]
    return rows


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


class SweepFailed(MlusimError):
    """The sweep could not finish (its Dask cluster failed: mlusim.cluster); `.rows` holds the
    points that finished, so they can still be written."""

    def __init__(self, message: str, rows: list[dict]):
        super().__init__(message)
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


def _run_dask(tasks: list[dict], blobs: dict, cluster, progress, timeout: float) -> list[dict]:
    """The points on a Dask cluster (an address, or a distributed.Client the caller owns). Ctrl-C
    raises Interrupted, a cluster failure SweepFailed; both carry the rows that finished."""
    from mlusim import cluster as dask_cluster

    own = not dask_cluster.is_client(cluster)
    client = dask_cluster.connect(cluster, timeout) if own else cluster
    address = cluster if own else client.scheduler.address
    rows: list[dict] = []
    try:
        dask_cluster.run(client, run_point, tasks, blobs, address=str(address), timeout=timeout, rows=rows,
                         describe=describe_point, progress=progress)
    except KeyboardInterrupt:
        raise Interrupted(rows) from None
    except dask_cluster.ClusterError as e:
        raise SweepFailed(str(e), rows) from None
    finally:
        if own:
            dask_cluster.close(client, timeout)
    return rows


def describe_point(task: dict) -> str:
    """'point 3 (dram.bandwidth_gbps=51.2, cores=4)': how an error names the point."""
    values = ", ".join(f"{k}={v}" for k, v in [*task["values"].items(), ("cores", task["cores"])])
    return f"point {task['index']} ({values})"


def columns(keys: list[str]) -> list[tuple[str, str, float]]:
    """CSV columns of a sweep: each swept key with its unit, cores, the metrics, then error."""
    from mlusim.config import iter_leaves
    from mlusim.experiments import METRIC_COLUMNS

    units = {p: m.get("unit", "") for p, _, m in iter_leaves()}
    cols = [(k, f"{k} ({units[k]})" if units.get(k) else k, 1) for k in keys]
    return cols + [("cores", "Cores", 1)] + METRIC_COLUMNS + [("plan", "Plan", 1), ("replanned", "Replanned", 1),
                                                               ("error", "Error", 1)]


def sweep_document(program: str, config, params: dict, cores, rows: list[dict], timing_only: bool = True,
                   interrupted: bool = False, hold_program: bool = False, failed: str | None = None) -> dict:
    """What `mlusim sweep --json` writes and `mlusim plot` reads; `failed` says why a sweep that
    stopped early (its cluster failed) holds only some of its points."""
    return {"kind": "sweep", "program": program, "config": config or "default", "params": params,
            "cores": cores, "timing_only": timing_only, "interrupted": interrupted, "hold_program": hold_program,
            "failed": failed, "rows": rows}
