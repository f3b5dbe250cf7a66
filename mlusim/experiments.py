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

from mlusim.errors import MlusimError, SimulationError
from mlusim.frames import Rows, all_columns
from mlusim.programs import (  # noqa: F401  (re-exported)
    BuildOptions,
    compiles_on_the_fly,
    resolve_program,
    schedule_for,
)

# (JSON key, CSV header with unit, CSV scale). Fractions are 0..1 in JSON and percent in CSV, as in
# SCALE-Sim's COMPUTE_REPORT ("Overall Util %", "Mapping Efficiency %", "Compute Util %").
METRIC_COLUMNS: list[tuple[str, str, float]] = [
    ("cycles", "Total Cycles", 1),
    ("latency_ms", "Latency (ms)", 1),
    ("throughput_ips", "Throughput (images/s)", 1),
    ("runs_per_s", "Throughput (runs/s)", 1),
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
    ("compiled_for_cores", "Compiled For Cores", 1),
]
# Energy (mlusim.energy, docs/energy.md): after the time figures, so older columns keep their place.
ENERGY_COLUMNS: list[tuple[str, str, float]] = [
    ("energy_j", "Energy (J)", 1),
    ("power_w", "Average Power (W)", 1),
    ("energy_per_image_j", "Energy per Image (J)", 1),
    ("edp_js", "Energy-Delay Product (J*s)", 1),
]
METRIC_COLUMNS += ENERGY_COLUMNS
SCALING_COLUMNS = [("cores", "Cores", 1)] + METRIC_COLUMNS
# per layer: SCALE-Sim's COMPUTE_REPORT (LayerID, Total Cycles, Stall Cycles, Overall / Compute Util
# %), its DETAILED_ACCESS_REPORT (DRAM IFMAP Reads, DRAM Filter Reads, DRAM OFMAP Writes, and the
# same for SRAM; here in bytes, reads and writes) and BANDWIDTH_REPORT (Avg IFMAP DRAM BW, ...)
_OPERAND_LABEL = {"input": "IFMAP", "weights": "Filter", "output": "OFMAP"}
LAYER_TRAFFIC_COLUMNS = [(f"{lv}_{op}_{rw}", f"{lv.upper()} {_OPERAND_LABEL[op]} {rw.title()}s (B)", 1)
                         for lv in ("dram", "sram") for op in ("input", "weights", "output") for rw in ("read", "write")]
LAYER_BANDWIDTH_COLUMNS = [(f"{lv}_{op}_gbps", f"Avg {_OPERAND_LABEL[op].upper()} {lv.upper()} BW (GB/s)", 1)
                           for lv in ("sram", "dram") for op in ("input", "weights", "output")]
LAYER_COLUMNS = ([("cores", "Cores", 1), ("layer_id", "LayerID", 1), ("layer", "Layer", 1), ("op", "Op", 1),
                  ("kernel", "Kernel", 1), ("fused", "Fused", 1), ("start", "Start Cycle", 1),
                  ("end", "End Cycle", 1), ("cycles", "Total Cycles", 1), ("stall_cycles", "Stall Cycles", 1),
                  ("cores_used", "Cores Used", 1), ("cores_ran", "Cores Ran", 1)]
                 + [c for c in METRIC_COLUMNS
                    if c[0] not in ("cycles", "throughput_ips", "runs_per_s", "interrupted", "compiled_for_cores",
                                    "energy_per_image_j")]
                 + LAYER_TRAFFIC_COLUMNS + LAYER_BANDWIDTH_COLUMNS)

# cycle counts are written as whole cycles (the engine's are fractional where transfers share a
# link; the JSON keeps them exact)
WHOLE_CYCLES = {"cycles", "stall_cycles", "start", "end"}
# the type of each column in a DataFrame (mlusim.frames); the rest are floats, swept keys inferred
COLUMN_KINDS: dict[str, str] = {
    **{k: "float" for k, _, _ in METRIC_COLUMNS + LAYER_COLUMNS},
    **{k: "int" for k in (*WHOLE_CYCLES, "cores", "layer_id", "macs", "cores_used", "cores_ran",
                          "compiled_for_cores", "point")},
    **{k: "bool" for k in ("interrupted", "fused", "replanned")},
    **{k: "str" for k in ("layer", "op", "kernel", "bound", "bound_resource", "plan", "error")},
}


class ScalingTable(Rows):
    """What `scaling` returns: one row per run (core count), a list of dicts as ever; with
    `to_dataframe()` (indexed by Cores) and, for `per_layer` runs, `layers()`."""

    def __init__(self, rows=()):
        super().__init__(rows, SCALING_COLUMNS, COLUMN_KINDS, ["cores"])

    def layers(self) -> Rows:
        """Every run's layer rows, grouped by layer as the per-layer table prints them (LayerID
        order, then the runs' order); their DataFrame is indexed by (Layer, Cores)."""
        return layer_table(sorted(flatten_layers(self), key=lambda lr: lr["layer_id"]), ["layer", "cores"])


def layer_table(rows: list[dict], index: list[str]) -> Rows:
    """Per-layer rows with the per-layer CSV's columns (LAYER_COLUMNS)."""
    return Rows(rows, LAYER_COLUMNS, COLUMN_KINDS, index)


# ------------------------------------------------------------------------------------------------
# Programs (mlusim.programs turns a spec into a Program; re-exported here for the API's users)


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
    images = "batch" in (s.get("program") or {})      # a compiled model: its batch is images
    return {
        "cores": s["cores"], "cycles": s["cycles"], "latency_ms": s["latency_ms"],
        "throughput_ips": _div(batch, secs) if images else None, "runs_per_s": _div(1, secs), "speedup": speedup,
        "efficiency": speedup * base["cores"] / s["cores"],
        "mac_utilization": s["mac_utilization"],
        "mapping_efficiency": _div(s["macs"], s["mac_slots"] * peak),
        "compute_utilization": _div(s["macs"], s["mac_busy"] * peak),
        "macs": s["macs"], "dram_bytes": s["dram_bus_bytes"], "dram_gbps": s["dram_gbps"],
        "dram_utilization": _div(s["dram_gbps"], s["dram_bandwidth_gbps"]),
        "sram_gbps": _div(sram, secs) / 1e9,
        "bound": s["bound"], "bound_resource": s["bound_resource"], "bound_share": s["bound_share"],
        "interrupted": s["interrupted"],
        "compiled_for_cores": (s.get("program") or {}).get("compiled_for_cores"),
        "energy_j": s["energy_j"], "power_w": s["power_w"], "energy_per_image_j": _div(s["energy_j"], batch),
        "edp_js": s["edp_js"],
    }


def layer_rows(s: dict, base: dict | None = None) -> Rows:
    """The per-layer rows of one run (report.summarize's `layers`, mlusim.layers), each with its
    speedup over the layer of the same name in `base` (NaN where `base` has no such layer)."""
    base = base or s
    before = {lr["layer"]: lr for lr in base.get("layers", [])}
    out = []
    for lr in s.get("layers", []):
        b = before.get(lr["layer"])
        speedup = _div(b["cycles"], lr["cycles"]) if b else math.nan
        out.append({"cores": s["cores"], **lr, "latency_ms": lr["cycles"] / (s["clock_mhz"] * 1e3),
                    "speedup": speedup, "efficiency": speedup * base["cores"] / s["cores"] if b else math.nan,
                    "dram_utilization": _div(lr["dram_gbps"], s["dram_bandwidth_gbps"])})
    return layer_table(out, ["layer"])


def layer_order(runs: list[list[dict]]) -> list[str]:
    """Layer names of several runs in one order: each run's own, a name first met in a later run
    placed after the name it follows there (a core count may fuse, split or add steps)."""
    order: list[str] = []
    for rows in runs:
        at = 0      # where a new name goes: after the last name of this run already placed
        for r in rows:
            if r["layer"] in order:
                at = order.index(r["layer"]) + 1
            else:
                order.insert(at, r["layer"])
                at += 1
    return order


def scaling_rows(summaries: list[dict], batch: int = 1, per_layer: bool = False) -> ScalingTable:
    """Rows for runs of one program at several core counts, relative to the first run. Layers are
    matched by name across the runs and numbered (LayerID) in one order for all of them."""
    if not summaries:
        return ScalingTable()
    base = summaries[0]
    rows = []
    for s in summaries:
        row = row_from_summary(s, base, batch)
        if per_layer:
            row["layers"] = layer_rows(s, base)
        rows.append(row)
    if per_layer:
        ids = {name: i for i, name in enumerate(layer_order([r["layers"] for r in rows]))}
        for r in rows:
            for lr in r["layers"]:
                lr["layer_id"] = ids[lr["layer"]]
    return ScalingTable(rows)


def run_table(result, per_layer: bool = True) -> ScalingTable:
    """One RunResult (of `mlusim.sim.simulate` or `mlusim.runs.run_at`) as a one-row scaling
    table, with its layers: `run_table(res).to_dataframe()`, `run_table(res).layers().to_dataframe()`."""
    from mlusim.report import summarize

    return scaling_rows([summarize(result)], int(result.program_meta.get("batch", 1) or 1), per_layer)


def scaling(program, config=None, cores: list[int] | None = None, *, overrides=None,
            options: BuildOptions | None = None, schedule: str | None = None, per_layer: bool = False,
            timing_only: bool = True, inputs=None, on_run: Callable | None = None,
            compile_progress: Callable | None = None, **sim_kw) -> ScalingTable:
    """Simulate `program` (a Program, or a spec: zoo name, .onnx, .mlu or .s path) on each core
    count of `config` and return one row per count (with `layers` when `per_layer`): a list of
    dicts with `to_dataframe()` and `layers().to_dataframe()` (ScalingTable).

    This is what `mlusim run` runs: a zoo or ONNX spec is compiled for each core count with
    `options` (mlusim.programs.BuildOptions, the CLI's defaults) and laid out by `schedule` (default:
    the config's runtime.schedule); a file runs as compiled, on its recorded config unless `config`
    is given. `inputs` maps input names to arrays ("" for a program's only input).
    `on_run(result, summary)` sees every RunResult as it finishes (the CLI prints, traces and
    writes outputs from it). A run interrupted by Ctrl-C ends the list early, flagged
    `interrupted`. `compile_progress(core_count)` gives the compiler's progress callback for the
    compile of that run (mlusim.progress). Extra keywords go to `mlusim.sim.simulate`."""
    from mlusim.report import summarize
    from mlusim.runs import run_at

    if isinstance(program, str) and not compiles_on_the_fly(program):
        program = resolve_program(program, options=options)
    cfg = default_config(None if isinstance(program, str) else program, config, overrides)
    schedule_for(program, cfg, schedule)          # a schedule the program cannot use fails before any run
    counts = list(cores) if cores else [cfg.chip.cores]
    check_counts(counts)
    summaries, batch = [], 1
    for n in counts:
        res = run_at(program, cfg, n, options=options, schedule=schedule, inputs=inputs, timing_only=timing_only,
                     compile_progress=compile_progress(n) if compile_progress else None, **sim_kw)
        s = summarize(res)
        batch = int(res.program_meta.get("batch", 1) or 1)
        summaries.append(s)
        if on_run is not None:
            on_run(res, s)
        if res.interrupted:
            break
    return scaling_rows(summaries, batch, per_layer)


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


def _cell(v: Any, scale: float, key: str = "") -> Any:
    if v is None:
        return ""
    if isinstance(v, bool):
        return str(v).lower()
    if isinstance(v, (int, float)):
        if isinstance(v, float) and math.isnan(v):
            return ""
        if key in WHOLE_CYCLES:
            return round(v)
        v = v * scale if scale != 1 else v
        return f"{v:.10g}" if isinstance(v, float) else v
    return v


def write_csv(rows: list[dict], path: str | Path, columns: list[tuple[str, str, float]] | None = None) -> None:
    """Rows as CSV with unit-labelled headers; `columns` defaults to SCALING_COLUMNS.

    Keys of the rows not among the columns are appended as extra columns (headers = keys)."""
    columns = all_columns(rows, columns or SCALING_COLUMNS)
    try:
        with open(path, "w", newline="", encoding="utf-8") as f:
            w = csv.writer(f)
            w.writerow([h for _, h, _ in columns])
            for r in rows:
                w.writerow([_cell(r.get(k), sc, k) for k, _, sc in columns])
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
