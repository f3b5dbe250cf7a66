"""Scaling experiments: one program on several core counts, as one table of plain rows.

    rows = scaling("examples/matmul.s", "mlu270", cores=[1, 2, 4])   # list of dicts, one per count
    write_csv(rows, "scaling.csv"); write_json({"rows": rows}, "scaling.json")

Every figure in a row is arithmetic on one run's counters (see `row_from_summary`), so a row can be
checked by hand against `mlusim.report.summarize`; `docs/experiments.md` defines each column.
Speedup and parallel efficiency are relative to the *first* core count given (normally 1).

Programs are named by a spec string and turned into a Program for a given config and core count by
`resolve_program`: zoo models and ONNX files are re-tiled for every hardware point and core count.
"""
from __future__ import annotations

import csv
import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mlusim.errors import MlusimError, ModelFileError, SimulationError

# (JSON key, CSV header with unit, CSV scale). Fractions are 0..1 in JSON and percent in CSV, as in
# SCALE-Sim's COMPUTE_REPORT ("Overall Util %", "Mapping Efficiency %", "Compute Util %").
METRIC_COLUMNS: list[tuple[str, str, float]] = [
    ("cycles", "Total Cycles", 1),
    ("latency_ms", "Latency (ms)", 1),
    ("throughput_ips", "Throughput (images/s)", 1),
    ("speedup", "Speedup (x)", 1),
    ("efficiency", "Parallel Efficiency %", 100),
    ("mac_utilization", "Overall Util %", 100),
    ("mapping_efficiency", "Mapping Efficiency %", 100),
    ("compute_utilization", "Compute Util %", 100),
    ("macs", "MACs", 1),
    ("dram_bytes", "DRAM Bytes (B)", 1),
    ("dram_gbps", "DRAM BW (GB/s)", 1),
    ("dram_utilization", "DRAM Util %", 100),
    ("sram_gbps", "SRAM BW (GB/s)", 1),
    ("bound", "Bound", 1),
    ("bound_resource", "Busiest Resource", 1),
    ("bound_share", "Busiest Resource Share %", 100),
    ("interrupted", "Interrupted", 1),
]
SCALING_COLUMNS = [("cores", "Cores", 1)] + METRIC_COLUMNS
LAYER_COLUMNS = ([("cores", "Cores", 1), ("layer_id", "LayerID", 1), ("layer", "Layer", 1), ("op", "Op", 1),
                  ("kernel", "Kernel", 1)]
                 + [c for c in METRIC_COLUMNS if c[0] not in ("throughput_ips", "interrupted")])


# ------------------------------------------------------------------------------------------------
# Programs


def compiles_on_the_fly(spec) -> bool:
    """Whether `spec` names something compiled per run (a zoo model or an .onnx file) rather than a
    finished program: such a spec is re-tiled for every hardware point and core count."""
    if not isinstance(spec, str):
        return False
    p = Path(spec)
    if p.suffix.lower() == ".onnx":
        return True
    if p.suffix or "/" in spec or p.exists():
        return False
    from mlusim.compiler.zoo import ZOO

    return spec.lower() in ZOO


def resolve_program(spec: str, cfg=None, cores: int | None = None, batch: int = 1, resolution: int | None = None,
                    cache: bool = True):
    """The Program to simulate for `spec` on hardware `cfg` with `cores` cores.

    A .mlu model or .s assembly file is what it is, whatever `cfg`. A zoo model name or .onnx file
    is compiled for `cfg`, `batch` and `cores` parallel tasks (default: every core of `cfg`), so a
    scaling run or sweep point never times a program tiled for some other machine; through the
    compile cache unless `cache` is False (mlusim/compile_cache.py)."""
    from mlusim import mlufile

    p = Path(spec)
    if p.suffix.lower() == ".onnx":
        from mlusim.cached_compile import onnx_program, print_notes
        from mlusim.config import load_config
        from mlusim.errors import CompileError

        if resolution is not None:
            raise CompileError("--resolution applies to zoo models; an ONNX model's input shape is in the file")
        prog, extra = onnx_program(spec, cfg or load_config(None), cores, batch=batch if batch != 1 else None,
                                   cache=cache, cluster_fusion=True)
        print_notes(extra)
        return prog
    if not p.exists() and p.suffix == "" and "/" not in spec:
        from mlusim.compiler.zoo import ZOO

        if spec.lower() in ZOO:
            from mlusim.cached_compile import zoo_program
            from mlusim.config import load_config

            return zoo_program(spec, cfg or load_config(None), cores, batch=batch, resolution=resolution,
                               cache=cache, cluster_fusion=True)[0]
    if p.suffix in (".s", ".asm"):
        from mlusim.files import read_text
        from mlusim.isa.asm import MAX_SOURCE_CHARS, assemble_program

        return assemble_program(read_text(p, "assembly file", ModelFileError, 4 * MAX_SOURCE_CHARS), str(p))
    return mlufile.load(p)


def default_config(program, config=None, overrides=None):
    """`config` (preset, file or HardwareConfig) with overrides; else the config recorded in the
    program; else MLU270. The same rule as `mlusim run`."""
    from mlusim.config import HardwareConfig, apply_overrides, config_from_dict, load_config

    if isinstance(config, HardwareConfig):
        if overrides:
            return config_from_dict(apply_overrides(config.to_dict(), overrides), f"{config.name} (with --set)")
        return config
    if config or program is None or not getattr(program, "config", None):
        return load_config(config, overrides)
    raw = apply_overrides(program.config, overrides) if overrides else program.config
    return config_from_dict(raw, f"config recorded in the model ({program.config.get('name', '?')})")


# ------------------------------------------------------------------------------------------------
# Rows


def _div(a: float, b: float) -> float:
    return a / b if b else 0.0


def row_from_summary(s: dict, base: dict | None = None, batch: int = 1) -> dict[str, Any]:
    """One scaling row from a `report.summarize` dict; `base` is the run speedup is relative to.

    speedup = base cycles / cycles; efficiency = speedup x base cores / cores;
    mapping efficiency = useful MACs / (MAC-array cycles x MACs per cycle), the padding loss;
    compute util = useful MACs / (MAC-busy cycles incl. start-up x MACs per cycle);
    overall util = useful MACs / (total cycles x MACs per cycle x cores)."""
    base = base or s
    peak = s["mac_per_cycle_per_core"]
    secs = s["seconds"]
    speedup = _div(base["cycles"], s["cycles"])
    sram = s["bytes_read"]["sram"] + s["bytes_written"]["sram"]
    return {
        "cores": s["cores"], "cycles": s["cycles"], "latency_ms": s["latency_ms"],
        "throughput_ips": _div(batch, secs), "speedup": speedup,
        "efficiency": speedup * base["cores"] / s["cores"],
        "mac_utilization": s["mac_utilization"],
        "mapping_efficiency": _div(s["macs"], s["mac_slots"] * peak),
        "compute_utilization": _div(s["macs"], s["mac_busy"] * peak),
        "macs": s["macs"], "dram_bytes": s["dram_bus_bytes"], "dram_gbps": s["dram_gbps"],
        "dram_utilization": _div(s["dram_gbps"], s["dram_bandwidth_gbps"]),
        "sram_gbps": _div(sram, secs) / 1e9,
        "bound": s["bound"], "bound_resource": s["bound_resource"], "bound_share": s["bound_share"],
        "interrupted": s["interrupted"],
    }


def layer_rows(s: dict, base: dict | None = None) -> list[dict[str, Any]]:
    """Per-kernel rows of one run (kernels are layers); speedup vs the same kernel in `base`."""
    base = base or s
    peak = s["mac_per_cycle_per_core"]
    clock = s["clock_mhz"] * 1e6
    out = []
    for i, k in enumerate(s["kernels"]):
        b = base["kernels"][i] if i < len(base["kernels"]) else None
        if b is not None and b["name"] != k["name"]:
            b = None
        secs = k["cycles"] / clock
        speedup = _div(b["cycles"], k["cycles"]) if b else math.nan
        meta = k.get("meta") or {}
        out.append({
            "cores": s["cores"], "layer_id": i, "layer": str(meta.get("layer", k["name"])),
            "op": str(meta.get("op", "")), "kernel": k["name"], "cycles": k["cycles"],
            "latency_ms": secs * 1e3, "speedup": speedup,
            "efficiency": speedup * base["cores"] / s["cores"] if b else math.nan,
            "mac_utilization": k["mac_utilization"],
            "mapping_efficiency": _div(k["macs"], k["mac_slots"] * peak),
            "compute_utilization": _div(k["macs"], k["mac_busy"] * peak),
            "macs": k["macs"], "dram_bytes": k["dram_bus_bytes"], "dram_gbps": k["dram_gbps"],
            "dram_utilization": _div(k["dram_gbps"], s["dram_bandwidth_gbps"]),
            "sram_gbps": _div(k["bytes_read"]["sram"] + k["bytes_written"]["sram"], secs) / 1e9,
            "bound": k["bound"], "bound_resource": k["bound_resource"], "bound_share": k["bound_share"],
        })
    return out


def scaling_rows(summaries: list[dict], batch: int = 1, per_layer: bool = False) -> list[dict]:
    """Rows for runs of one program at several core counts, relative to the first run."""
    if not summaries:
        return []
    base = summaries[0]
    rows = []
    for s in summaries:
        row = row_from_summary(s, base, batch)
        if per_layer:
            row["layers"] = layer_rows(s, base)
        rows.append(row)
    return rows


def scaling(program, config=None, cores: list[int] | None = None, *, overrides=None, per_layer: bool = False,
            timing_only: bool = True, inputs=None, on_run: Callable | None = None, **sim_kw) -> list[dict]:
    """Simulate `program` (a Program or a spec for `resolve_program`) on each core count of
    `config` and return one row per count (with `layers` when `per_layer`).

    `on_run(result, summary)` sees every RunResult as it finishes (the CLI prints, traces and
    writes outputs from it). A run interrupted by Ctrl-C ends the list early, flagged
    `interrupted`. Extra keywords go to `mlusim.sim.simulate`."""
    from mlusim.report import summarize
    from mlusim.sim import simulate

    spec = program if compiles_on_the_fly(program) else None
    if isinstance(program, str):
        cfg = default_config(None, config, overrides)
        program = None if spec else resolve_program(program, cfg)
    else:
        cfg = default_config(program, config, overrides)
    counts = list(cores) if cores else [cfg.chip.cores]
    summaries = []
    for n in counts:
        if spec is not None:    # tiled for the cores it runs on
            program = resolve_program(spec, cfg, cores=n)
        res = simulate(program, cfg, cores=n, inputs=inputs, timing_only=timing_only, **sim_kw)
        s = summarize(res)
        summaries.append(s)
        if on_run is not None:
            on_run(res, s)
        if res.interrupted:
            break
    return scaling_rows(summaries, int(program.meta.get("batch", 1) or 1), per_layer)


def scaling_document(program: str, config: str, batch: int, rows: list[dict], runs: list[dict]) -> dict:
    """What `mlusim run --cores A,B,.. --json` writes and `mlusim plot` reads: the rows plus each
    run's full summary (per kernel, per core)."""
    return {"kind": "scaling", "program": program, "config": config, "batch": batch,
            "cores": [r["cores"] for r in rows], "rows": rows, "runs": runs}


def flatten_layers(rows: list[dict]) -> list[dict]:
    """The per-layer rows of every run in `rows`, in order (for a per-layer CSV)."""
    return [lr for r in rows for lr in r.get("layers", [])]


# ------------------------------------------------------------------------------------------------
# Files


def _cell(v: Any, scale: float) -> Any:
    if v is None:
        return ""
    if isinstance(v, bool):
        return str(v).lower()
    if isinstance(v, (int, float)):
        if isinstance(v, float) and math.isnan(v):
            return ""
        v = v * scale if scale != 1 else v
        return f"{v:.10g}" if isinstance(v, float) else v
    return v


def write_csv(rows: list[dict], path: str | Path, columns: list[tuple[str, str, float]] | None = None) -> None:
    """Rows as CSV with unit-labelled headers; `columns` defaults to SCALING_COLUMNS.

    Keys of the rows not among the columns are appended as extra columns (headers = keys)."""
    columns = list(columns or SCALING_COLUMNS)
    known = {c[0] for c in columns}
    for r in rows:
        for k, v in r.items():
            if k not in known and not isinstance(v, (list, dict)):
                columns.append((k, k, 1))
                known.add(k)
    try:
        with open(path, "w", newline="", encoding="utf-8") as f:
            w = csv.writer(f)
            w.writerow([h for _, h, _ in columns])
            for r in rows:
                w.writerow([_cell(r.get(k), sc) for k, _, sc in columns])
    except OSError as e:
        raise MlusimError(f"{path}: cannot write: {e.strerror}") from None


def _clean(obj: Any) -> Any:
    """JSON has no NaN: write null instead of an invalid token."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    return obj


def write_json(data: Any, path: str | Path) -> None:
    try:
        Path(path).write_text(json.dumps(_clean(data), indent=1, default=float) + "\n", encoding="utf-8")
    except OSError as e:
        raise MlusimError(f"{path}: cannot write: {e.strerror}") from None


MAX_REPORT_BYTES = 256 * 1024**2


def read_table(path: str | Path) -> dict:
    """A JSON file written by `mlusim run --json` or `mlusim sweep --json`, as a dict with `kind`."""
    from mlusim.files import read_text

    try:
        data = json.loads(read_text(path, "file", MlusimError, MAX_REPORT_BYTES))
    except (ValueError, RecursionError) as e:
        raise MlusimError(f"{path}: not a readable JSON report ({str(e)[:80]})") from None
    if isinstance(data, list):   # older `run --json` with several core counts: a list of summaries
        data = {"kind": "runs", "runs": data}
    if not isinstance(data, dict) or "kind" not in data:
        raise MlusimError(f"{path}: not an mlusim report (no 'kind')")
    return data


def check_counts(counts: list[int]) -> None:
    if len(set(counts)) != len(counts):
        raise SimulationError(f"--cores lists a core count twice: {','.join(map(str, counts))}")
