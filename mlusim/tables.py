"""Text tables of experiment rows: scaling over core counts, per layer, sweeps; and their legends.

The rows come from mlusim.experiments (and mlusim.sweep); every figure is already computed there,
so the text shows the same numbers as the CSV and JSON files, rounded for reading.
"""
from __future__ import annotations

import io
import math

SCALING_LEGEND = """\
speedup       cycles of the first row's run / cycles of this run (same model and config; a zoo or
              ONNX model is compiled for each core count, a .mlu file is run as compiled)
efficiency    speedup x first row's cores / cores: 100% is perfect scaling
MAC util      useful MACs / (cycles x int8 MACs per cycle x cores used)
DRAM GB/s     DRAM bus bytes / simulated time; DRAM util: that / the config's DRAM bandwidth
bound         the resource with the most work summed over kernels (see the legend of `mlusim run`
              with one core count) and that work as a share of the cycles: near 100% it is the
              limit; latency when under 50%: no resource is saturated, and dependency chains,
              start-up and launch costs set the time
compiled for  a .mlu file runs as it was compiled; on another core count than it was tiled for, its
              row times that program, not one made for those cores"""

LAYER_LEGEND = """\
layers        matched by name across core counts (the compiler's layer names); a layer fused into a
              segment kernel takes its share of the segment's job time times the segment's cycles
stall         cycles the compute units starved for data (mean over the cores that ran the kernel)
start, end    first and last cycle any core was in the layer (fused layers of jobs running side by
              side, and of interleaved image groups, overlap)
in/wgt/out    DMA payload bytes of the layer's input (IFMAP), weights (Filter) and output (OFMAP):
              DRAM and SRAM reads of inputs and weights, writes of outputs; a fused layer counts
              what moved while it ran (the next layer's weights stream in during it)"""


def bound_text(r: dict) -> str:
    """'dram 93%', or 'latency (dma 38%)' when no resource is busy for half the time."""
    share = f"{100 * r['bound_share']:.0f}%"
    if r["bound"] == "latency":
        return f"latency ({r['bound_resource']} {share})"
    return f"{r['bound']} {share}"


def pct(x: float, total: float) -> float:
    return 100.0 * x / total if total > 0 else 0.0


def format_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def _console(width: int):
    from rich.console import Console

    return Console(file=io.StringIO(), record=True, width=width, force_terminal=False, color_system=None,
                   markup=False)     # names from files print as they are, never as [markup]


def _table(title: str, cols: list[str]):
    from rich import box
    from rich.table import Table

    t = Table(box=box.SIMPLE_HEAD, title=title, title_justify="left")
    for c in cols:
        t.add_column(c, justify="left" if c in ("layer", "op", "bound") else "right", no_wrap=True)
    return t


def _share(x) -> str:
    return "" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * x:.1f}%"


def _cells(r: dict) -> list[str]:
    """cycles, latency ms, speedup, efficiency, MAC util, DRAM GB/s, DRAM util, bound."""
    sp = r["speedup"]
    return [f"{r['cycles']:,.0f}", f"{r['latency_ms']:.4f}",
            "" if sp is None or math.isnan(sp) else f"{sp:.2f}x", _share(r["efficiency"]),
            _share(r["mac_utilization"]), f"{r['dram_gbps']:.2f}", _share(r["dram_utilization"]), bound_text(r)]


def throughput(rows: list[dict]) -> tuple[str, str]:
    """The throughput column: images/s for compiled models (rows with a batch), else runs/s."""
    if all(r.get("throughput_ips") is not None for r in rows if not r.get("error")):
        return "images/s", "throughput_ips"
    return "runs/s", "runs_per_s"


def render_scaling(rows: list[dict], title: str = "scaling", per_layer: bool = False) -> str:
    """The scaling table (one row per core count), optionally per layer, then its legend."""
    con = _console(160)
    label, key = throughput(rows)
    other = any(r.get("compiled_for_cores") not in (None, r["cores"]) for r in rows)
    t = _table(title, ["cores", *(["compiled for"] if other else []), "cycles", "latency ms", label, "speedup",
                       "efficiency", "MAC util", "DRAM GB/s", "DRAM util", "bound"])
    for r in rows:
        c = _cells(r)
        made = [str(r.get("compiled_for_cores") or "")] if other else []
        t.add_row(str(r["cores"]) + (" (interrupted)" if r.get("interrupted") else ""), *made, c[0], c[1],
                  f"{r[key]:,.1f}", *c[2:])
    con.print(t)
    if per_layer:
        con.print(_layer_scaling_table(rows))
    con.print(SCALING_LEGEND)
    if per_layer:
        con.print(LAYER_LEGEND)
    return con.export_text()


def _layer_scaling_table(rows: list[dict]):
    """Per layer, one line per core count, layers matched by name (layer_id is one order for all)."""
    lt = _table("per layer (speedup vs the same layer on the first row's cores)",
                ["layer", "op", "cores", "cycles", "stall", "latency ms", "speedup", "efficiency", "MAC util",
                 "DRAM GB/s", "DRAM util", "bound"])
    by_name: dict[str, list[dict]] = {}
    for r in rows:
        for lr in r.get("layers", []):
            by_name.setdefault(lr["layer"], []).append(lr)
    names = sorted(by_name, key=lambda n: by_name[n][0]["layer_id"])
    for i, name in enumerate(names):
        if i:
            lt.add_section()
        lrs = by_name[name]
        op = next((lr["op"] for lr in lrs if lr["op"]), "")
        for j, lr in enumerate(lrs):
            c = _cells(lr)
            lt.add_row(name if j == 0 else "", op if j == 0 else "", str(lr["cores"]), c[0],
                       f"{lr['stall_cycles']:,.0f}", *c[1:])
    return lt


def render_layers(layers: list[dict], title: str) -> str:
    """One run's per-layer table (rows of `experiments.layer_rows`), with its legend."""
    con = _console(200)
    t = _table(title, ["id", "layer", "op", "start", "end", "cycles", "stall", "MAC util", "compute util",
                       "DRAM in", "DRAM wgt", "DRAM out", "SRAM in", "SRAM wgt", "SRAM out", "bound"])
    for lr in layers:
        t.add_row(str(lr["layer_id"]), ("  " if lr["fused"] else "") + lr["layer"], lr["op"],
                  f"{lr['start']:,.0f}", f"{lr['end']:,.0f}", f"{lr['cycles']:,.0f}", f"{lr['stall_cycles']:,.0f}",
                  _share(lr["mac_utilization"]), _share(lr["compute_utilization"]),
                  format_bytes(lr["dram_input_read"]), format_bytes(lr["dram_weights_read"]),
                  format_bytes(lr["dram_output_write"]), format_bytes(lr["sram_input_read"]),
                  format_bytes(lr["sram_weights_read"]), format_bytes(lr["sram_output_write"]), bound_text(lr))
    t.caption = "indented: layers inside a fused segment kernel (kernel column of the CSV / JSON)"
    con.print(t)
    con.print(LAYER_LEGEND)
    return con.export_text()


def render_sweep(rows: list[dict], keys: list[str], title: str) -> str:
    """A sweep's table: the swept values, cores, the headline metrics of each point, and whether
    the compiler planned a different program there than at the point before."""
    con = _console(170)
    label, key = throughput(rows)
    replan = any("replanned" in r for r in rows)
    t = _table(title, [*keys, "cores", "cycles", "latency ms", label, "speedup", "efficiency", "MAC util",
                       "DRAM GB/s", "DRAM util", "bound", *(["replanned"] if replan else [])])
    for r in rows:
        vals = [f"{r.get(k)}" for k in keys] + [str(r["cores"])]
        if r.get("error"):
            t.add_row(*vals, "-", "-", "-", "-", "-", "-", "-", "-", f"did not run (point {r['point']}, see below)",
                      *(["-"] if replan else []))
            continue
        c = _cells(r)
        t.add_row(*vals, c[0], c[1], f"{r[key]:,.1f}", *c[2:], *(["yes" if r.get("replanned") else ""]
                                                                  if replan else []))
    con.print(t)
    con.print("speedup and efficiency: relative to the first core count at the same hardware point")
    if replan:
        con.print("replanned: the compiler made a different program here than for the previous value with the "
                  "same core count\n(tiling, fusion, split over cores); --hold-program keeps one program and "
                  "varies only the hardware")
    return con.export_text()
