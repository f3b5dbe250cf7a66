"""Figures for papers: speedup vs cores, per-kernel rooflines, a sweep's metric vs a parameter.

Each `*_figure` function takes the plain data the experiments return (rows, or a run summary from
`mlusim.report.summarize`) and returns a matplotlib Figure (Agg backend, no display needed); each
`plot_*` function draws it and writes PREFIX.png, .svg and .pdf (or the format of the extension
given, or `formats`) and returns the paths. The look (fonts, markers, log2 axes, titles naming
model, batch and config) is mlusim.plot_style's; point labels are placed without overlaps by
mlusim.plot_labels. Files are reproducible byte for byte (no dates, fixed SVG ids) so that
committed plots change only when the numbers do.

    from mlusim.plot import plot_speedup
    plot_speedup(rows, "out/speedup")          # rows from mlusim.experiments.scaling
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from mlusim.errors import MlusimError
from mlusim.plot_labels import Label, place
from mlusim.plot_style import Subject, log2_axis, save, series_style, style
from mlusim.plot_style import title as style_title
from mlusim.metacheck import MAX_COUNT, check_fields, integer, listof, number, text  # noqa: F401 (number: for callers)

MAX_ROWS = 100_000
ROW = {"cores": integer(1, 1 << 20), "speedup": number(0, MAX_COUNT), "efficiency": number(0, MAX_COUNT)}
KERNEL = {"name": text(1024), "macs": number(0, MAX_COUNT), "cycles": number(0, MAX_COUNT),
          "dram_bus_bytes": number(0, MAX_COUNT), "bound": text(64)}
SUMMARY = {"clock_mhz": number(1e-6, 1e9), "peak_gops": number(1e-9, MAX_COUNT),
           "dram_bandwidth_gbps": number(1e-9, MAX_COUNT), "cores": integer(1, 1 << 20), "config": text(256),
           "kernels": listof(lambda k: None if isinstance(k, dict) else "must be a mapping", MAX_ROWS)}


def _plain(v):
    """A row value as a group key: scalars as they are, anything else as its (short) text."""
    return v if v is None or isinstance(v, (bool, int, float, str)) else str(v)[:60]


def check_rows(rows, where: str, need: dict) -> list[dict]:
    """Rows of a scaling or sweep report: a list of mappings; the fields a figure reads, typed."""
    if not isinstance(rows, list) or len(rows) > MAX_ROWS:
        raise MlusimError(f"{where}: 'rows' must be a list of at most {MAX_ROWS:,} rows")
    for i, r in enumerate(rows):
        if not isinstance(r, dict):
            raise MlusimError(f"{where}: row {i} must be a mapping, got {type(r).__name__}")
        if not r.get("error"):
            check_fields(r, need, f"{where}: row {i}", MlusimError, "row", tuple(need))
    return rows


def check_summary(summary, where: str) -> dict:
    """A run summary as `mlusim run --json` writes it: what the roofline reads, typed."""
    check_fields(summary, SUMMARY, where, MlusimError, "report", tuple(SUMMARY))
    for i, k in enumerate(summary["kernels"]):
        check_fields(k, KERNEL, f"{where}: kernel {i}", MlusimError, "kernel", tuple(KERNEL))
        if k.get("meta") is not None:
            check_fields(k["meta"], {"layer": text(256)}, f"{where}: kernel {i}", MlusimError)
    return summary

METRIC_LABELS = {
    "cycles": "total cycles", "latency_ms": "latency (ms)", "throughput_ips": "throughput (images/s)",
    "runs_per_s": "throughput (runs/s)", "speedup": "speedup (x)", "efficiency": "parallel efficiency (%)",
    "mac_utilization": "MAC utilization (%)", "dram_gbps": "achieved DRAM bandwidth (GB/s)",
    "dram_utilization": "DRAM utilization (%)", "sram_gbps": "SRAM bandwidth (GB/s)",
    "compute_utilization": "compute utilization (%)", "mapping_efficiency": "mapping efficiency (%)",
    "macs": "MACs", "dram_bytes": "DRAM bytes (B)", "bound_share": "busiest resource share (%)",
    "energy_j": "energy (J)", "power_w": "average power (W)", "energy_per_image_j": "energy per image (J)",
    "edp_js": "energy-delay product (J s)", "cores": "cores",
}
KEY_LABELS = {
    "cores": "cores", "chip.cores": "cores on the chip", "chip.clusters": "clusters", "chip.clock_mhz": "clock",
    "core.nram_kib": "NRAM per core", "core.wram_kib": "WRAM per core", "cluster.sram_kib": "SRAM per cluster",
    "dram.bandwidth_gbps": "DRAM bandwidth", "dram.latency_cycles": "DRAM latency",
    "core.mac_int8_per_cycle": "int8 MACs per cycle per core", "cluster.sram_bandwidth_bytes_per_cycle":
    "SRAM bandwidth per cluster", "dma.core_bandwidth_bytes_per_cycle": "DMA bandwidth per core",
}
_UNIT_SUFFIXES = ("_bytes_per_cycle", "_per_cycle", "_gbps", "_kib", "_gib", "_mhz", "_cycles", "_bytes",
                  "_pj_per_byte", "_pj", "_w")
TOP_LABELS = 12         # roofline: label the kernels with the most cycles, this many at most


def metric_label(key: str) -> str:
    """A row key as an axis label with its unit: 'latency (ms)', 'MAC utilization (%)'."""
    return METRIC_LABELS.get(key, key.replace("_", " "))


def percent_metric(key: str) -> bool:
    """Fractions (0..1) plotted as % as the CSV holds them."""
    return any(k == key and scale == 100 for k, _, scale in _metric_keys())


def key_label(key: str) -> str:
    """A swept config key as an axis label with its unit: 'DRAM bandwidth (GB/s)'."""
    from mlusim.config import iter_leaves

    unit = {p: m.get("unit", "") for p, _, m in iter_leaves()}.get(key, "")
    name = KEY_LABELS.get(key)
    if name is None:
        section, _, leaf = key.rpartition(".")
        for suf in _UNIT_SUFFIXES:
            if leaf.endswith(suf) and len(leaf) > len(suf):
                leaf = leaf[: -len(suf)]
                break
        sec = section.upper() if section in ("dram", "dma", "sram", "nram", "wram") else section
        name = " ".join(p for p in (sec, leaf.replace("_", " ")) if p)
    return f"{name} ({unit})" if unit and unit != "name" else name


def value_label(key: str, v) -> str:
    """One line's label: '4 cores', 'DRAM bandwidth 51.2 GB/s'."""
    v = _plain(v)
    if key == "cores":
        return f"{v} core{'' if v == 1 else 's'}"
    label = key_label(key)
    name, _, unit = label.partition(" (")
    return f"{name} {v:g} {unit[:-1]}".strip() if unit and isinstance(v, (int, float)) else f"{name} {v}"


def subject_of_run(summary: dict) -> Subject:
    """Model, batch and config of a run report, as far as it says (a .s program has no model)."""
    prog = summary.get("program") if isinstance(summary.get("program"), dict) else {}
    model = prog.get("model") or prog.get("name") or ""
    batch = prog.get("batch")
    return Subject(str(model)[:60], batch if isinstance(batch, int) and not isinstance(batch, bool) else None,
                   str(summary.get("config", ""))[:60])


def subject_of_report(data: dict) -> Subject:
    """Model, batch and config of a JSON report: a run's own, or a scaling or sweep report's."""
    if data.get("kind") == "run":
        return subject_of_run(data)
    batch = data.get("batch")
    if batch is None and isinstance(data.get("rows"), list):
        batch = batch_of_rows(data["rows"])
    config = str(data.get("config") or "")[:60]
    return Subject(str(data.get("program") or "")[:60].replace("\\", "/").rsplit("/", 1)[-1],
                   batch if isinstance(batch, int) and not isinstance(batch, bool) else None,
                   "default config" if config == "default" else config)


def batch_of_rows(rows: list) -> int | None:
    """The images per run of sweep rows, which carry no batch of their own: throughput (images/s)
    x latency; None for programs without a batch (or rows that disagree)."""
    seen = set()
    for r in rows:
        if isinstance(r, dict) and not r.get("error"):
            ips, ms = r.get("throughput_ips"), r.get("latency_ms")
            if not (isinstance(ips, (int, float)) and isinstance(ms, (int, float))) or isinstance(ips, bool):
                return None
            if not (math.isfinite(ips) and math.isfinite(ms)) or ips * ms > 1e15:
                return None
            seen.add(round(ips * ms / 1e3))
    return seen.pop() if len(seen) == 1 else None


def _legend_below(ax, ncol: int = 2) -> None:
    """The legend under the axes, where it covers no data."""
    handles, labels = ax.get_legend_handles_labels()
    if handles:
        ax.legend(handles, labels, loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=ncol, frameon=False)


def _freeze(ax) -> None:
    """Fix the limits autoscaling chose, so labels placed now stay where they were put."""
    ax.set_xlim(ax.get_xlim())
    ax.set_ylim(ax.get_ylim())


def speedup_figure(series: list[dict] | dict[str, list[dict]], title: str = "", subject: Subject | None = None):
    """Speedup vs cores with the ideal line, each point labelled with its parallel efficiency;
    log2 axes when the core counts double. `series` is scaling rows or {label: rows}."""
    if isinstance(series, list):
        series = {"simulated": series}
    series = {k: [r for r in rows if not r.get("error")] for k, rows in series.items()}
    series = {k: rows for k, rows in series.items() if rows}
    if not series:
        raise MlusimError("nothing to plot: no successful rows")
    with style() as plt:
        fig, ax = plt.subplots(figsize=(5.5, 4.4))
        allc = sorted({r["cores"] for rows in series.values() for r in rows})
        base = next(iter(series.values()))[0]["cores"]
        labels, lines = [], [[(c, c / base) for c in allc]]
        for i, (label, rows) in enumerate(series.items()):
            st = series_style(i)
            ax.plot([r["cores"] for r in rows], [r["speedup"] for r in rows], label=label, ms=5, **st)
            lines.append([(r["cores"], r["speedup"]) for r in rows])
            labels += [Label(r["cores"], r["speedup"], f"{100 * r['efficiency']:.0f}%", st["color"]) for r in rows[1:]]
        ax.plot(allc, [c / base for c in allc], color="0.45", lw=1, linestyle=(0, (4, 2)), marker="none",
                label="ideal (linear)")
        if log2_axis(ax, "x", allc):
            got = [r["speedup"] for rows in series.values() for r in rows if r["speedup"] > 0]
            lo, hi = min([c / base for c in allc] + got), max([allc[-1] / base] + got)
            ys = [2.0 ** k for k in range(math.floor(math.log2(lo)), math.ceil(math.log2(hi)) + 1)]
            ax.set_yscale("log", base=2)
            if len(ys) <= 16:             # powers of two; a wider span keeps matplotlib's ticks
                ax.set_yticks(ys, [f"{y:g}" for y in ys])
            ax.yaxis.set_minor_formatter(_null())
        ax.set_xlabel("cores")
        ax.set_ylabel(f"speedup vs {base} core{'' if base == 1 else 's'} (x)")
        ax.set_title(title or style_title("Speedup vs cores", subject) + "\nlabels: parallel efficiency")
        ax.grid(True, which="major", alpha=0.3)
        _legend_below(ax)
        fig.subplots_adjust(bottom=0.25)
        _freeze(ax)
        place(ax, labels, lines=lines)
    return fig


def _plain_log_ticks(ax) -> None:
    """Log axes ticked 0.1, 1, 10, 1,000 as plain numbers: no 10^k mathtext, which is slow to
    lay out and reads worse in a table-like figure; minor ticks unlabelled."""
    from matplotlib.ticker import FuncFormatter

    fmt = FuncFormatter(lambda v, _pos: f"{v:,.0f}" if v >= 1 else f"{v:g}")
    for axis in (ax.xaxis, ax.yaxis):
        axis.set_major_formatter(fmt)
        axis.set_minor_formatter(_null())


def _null():
    from matplotlib.ticker import NullFormatter

    return NullFormatter()


def plot_speedup(series: list[dict] | dict[str, list[dict]], prefix: str | Path, title: str = "",
                 subject: Subject | None = None, formats: Sequence[str] | None = None) -> list[Path]:
    """Write the speedup figure (see `speedup_figure`) as PNG, SVG and PDF (or `formats`)."""
    return save(speedup_figure(series, title, subject), prefix, formats)


def roofline_points(summary: dict) -> tuple[list[dict], dict[str, float]]:
    """Per kernel: operational intensity (ops per DRAM bus byte; 1 MAC = 2 ops) and achieved GOP/s;
    and the roofs of the run: compute = cores x MACs/cycle x 2 x clock, bandwidth = DRAM GB/s."""
    clock = summary["clock_mhz"] * 1e6
    pts = []
    for k in summary["kernels"]:
        if k["macs"] <= 0 or k["cycles"] <= 0 or k["dram_bus_bytes"] <= 0:
            continue
        ops = 2.0 * k["macs"]
        pts.append({"name": (k.get("meta") or {}).get("layer", k["name"]), "intensity": ops / k["dram_bus_bytes"],
                    "gops": ops / (k["cycles"] / clock) / 1e9, "bound": k["bound"], "cycles": k["cycles"]})
    roofs = {"peak_gops": summary["peak_gops"], "dram_gbps": summary["dram_bandwidth_gbps"]}
    return pts, roofs


def roofline_figure(summary: dict, title: str = "", label_points: bool = True, top: int = TOP_LABELS):
    """Each MAC kernel of one run against the chip's compute and DRAM roofs (log-log); the `top`
    kernels with the most cycles labelled where their names fit."""
    pts, roofs = roofline_points(summary)
    skipped = len(summary["kernels"]) - len(pts)
    peak, bw = roofs["peak_gops"], roofs["dram_gbps"]
    ridge = peak / bw
    xs = [p["intensity"] for p in pts] + [ridge]
    lo, hi = min(xs) / 4, max(xs) * 10         # room right of the points for their names
    with style() as plt:
        fig, ax = plt.subplots(figsize=(6.4, 5.0))
        ax.plot([lo, ridge, hi], [bw * lo, peak, peak], "-", color="black", lw=1.5,
                label=f"roof: {bw:g} GB/s DRAM, {peak:,.0f} GOP/s")
        for i, b in enumerate(sorted({p["bound"] for p in pts})):
            sel = [p for p in pts if p["bound"] == b]
            st = series_style(i)
            ax.plot([p["intensity"] for p in sel], [p["gops"] for p in sel], linestyle="none", marker=st["marker"],
                    color=st["color"], ms=6, markeredgecolor="black", markeredgewidth=0.4,
                    label=f"kernels bound by {b}")
        ax.set_xscale("log")
        ax.set_yscale("log")
        _plain_log_ticks(ax)
        ax.set_xlabel("operational intensity (ops per DRAM byte; 1 MAC = 2 ops)")
        ax.set_ylabel("achieved performance (GOP/s)")
        ax.grid(True, which="major", alpha=0.3)
        _legend_below(ax, ncol=2)
        fig.subplots_adjust(bottom=0.24, top=0.86)
        ys = [p["gops"] for p in pts] + [bw * lo]
        ax.set_xlim(lo, hi)
        ax.set_ylim(min(ys) / 2, peak * 4)          # room above the roof for labels
        ranked = sorted(pts, key=lambda p: -p["cycles"])
        shown = ranked[:top] if label_points else []
        n = place(ax, [Label(p["intensity"], p["gops"], str(p["name"])[:40]) for p in shown],
                  avoid=[(p["intensity"], p["gops"]) for p in ranked[len(shown):]],
                  lines=[[(lo, bw * lo), (ridge, peak), (hi, peak)]])
        notes = [f"{summary['clock_mhz']:g} MHz"]
        if label_points and pts:
            notes.append(f"labelled: {n} of {len(pts)} kernels, most cycles first")
        if skipped:
            notes.append(f"{skipped} kernel(s) without MACs or DRAM traffic not shown")
        ax.set_title(title or style_title("Roofline", subject_of_run(summary), summary["cores"]) + "\n"
                     + "; ".join(notes))
    return fig


def plot_roofline(summary: dict, prefix: str | Path, title: str = "", label_points: bool = True,
                  formats: Sequence[str] | None = None, top: int = TOP_LABELS) -> list[Path]:
    """Write the roofline (see `roofline_figure`) as PNG, SVG and PDF (or `formats`)."""
    return save(roofline_figure(summary, title, label_points, top), prefix, formats)


def sweep_figure(rows: list[dict], x: str, y: str, by: list[str] | None = None, title: str = "",
                 subject: Subject | None = None):
    """Metric `y` against swept parameter `x`, one line per combination of the `by` columns
    (default: every other swept column and cores); log2 x axis when the values double; points
    where the compiler made a different program than at the value before drawn hollow."""
    rows = [r for r in rows if not r.get("error")]
    if not rows:
        raise MlusimError("nothing to plot: no successful sweep rows")
    for key in (x, y):
        if key not in rows[0]:
            cols = ", ".join(k for k in rows[0] if not isinstance(rows[0][k], (dict, list)))
            raise MlusimError(f"no column '{key}' in the sweep (have: {cols})")
    if by is None:
        skip = {x, y, "point", "error", "plan", "replanned"} | {k for k, *_ in _metric_keys()}
        by = [k for k in rows[0] if k not in skip]
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault(tuple(_plain(r.get(k)) for k in by), []).append(r)
    scale = 100.0 if percent_metric(y) else 1.0
    with style() as plt:
        fig, ax = plt.subplots(figsize=(5.5, 4.4))
        hollow = False
        for i, (key, rs) in enumerate(groups.items()):
            rs = sorted(rs, key=lambda r: r[x])
            st = series_style(i)
            label = ", ".join(value_label(k, v) for k, v in zip(by, key)) or metric_label(y)
            ax.plot([r[x] for r in rs], [_scaled(r[y], scale) for r in rs], label=label, ms=5, **st)
            re = [r for r in rs if r.get("replanned")]
            if re:
                hollow = True
                ax.plot([r[x] for r in re], [_scaled(r[y], scale) for r in re], linestyle="none",
                        marker=st["marker"], ms=5, markerfacecolor="white", markeredgecolor=st["color"])
        if hollow:
            ax.plot([], [], linestyle="none", marker="o", markerfacecolor="white", markeredgecolor="0.3",
                    label="hollow: compiler replanned")
        log2_axis(ax, "x", [r[x] for r in rows])
        ax.set_xlabel(key_label(x))
        ax.set_ylabel(metric_label(y))
        what = f"{metric_label(y).split(' (')[0]} vs {key_label(x).split(' (')[0]}"
        ax.set_title(title or style_title(what[0].upper() + what[1:], subject))
        ax.grid(True, alpha=0.3)
        _legend_below(ax, ncol=2 if len(groups) > 1 else 1)
        fig.subplots_adjust(bottom=0.25)
    return fig


def _scaled(v, scale: float) -> float:
    """A metric as drawn: scaled (fractions to %), a gap where a row has none (None)."""
    return v * scale if isinstance(v, (int, float)) and not isinstance(v, bool) else math.nan


def plot_sweep(rows: list[dict], x: str, y: str, prefix: str | Path, by: list[str] | None = None,
               title: str = "", subject: Subject | None = None, formats: Sequence[str] | None = None) -> list[Path]:
    """Write the sweep figure (see `sweep_figure`) as PNG, SVG and PDF (or `formats`)."""
    return save(sweep_figure(rows, x, y, by, title, subject), prefix, formats)


def calibration_figure(doc: dict, title: str = ""):
    """Simulated vs published latency of every calibration point (log-log) with the identity line
    and +-20% bands; one marker and colour per network, filled on S4 boards and hollow on X4."""
    pts = doc.get("points") or []
    if not pts:
        raise MlusimError("nothing to plot: the calibration report has no points")
    with style() as plt:
        fig, ax = plt.subplots(figsize=(6.0, 5.6))
        for i, net in enumerate(sorted({p["network"] for p in pts})):
            st = series_style(i)
            for board in ("S4", "X4"):
                sel = [p for p in pts if p["network"] == net and p["board"] == board]
                if sel:
                    ax.plot([p["measured_ms"] for p in sel], [p["simulated_ms"] for p in sel], linestyle="none",
                            marker=st["marker"], color=st["color"], ms=6, alpha=0.9, label=f"{net} ({board})",
                            markerfacecolor=st["color"] if board == "S4" else "white")
        vals = [p["measured_ms"] for p in pts] + [p["simulated_ms"] for p in pts]
        lo, hi = min(vals) / 1.5, max(vals) * 1.5
        ax.plot([lo, hi], [lo, hi], "-", color="black", lw=1, label="identity")
        for f in (0.8, 1.2):
            ax.plot([lo, hi], [lo * f, hi * f], ":", color="0.5", lw=0.8)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlim(lo, hi)
        ax.set_ylim(lo, hi)
        from matplotlib.ticker import FormatStrFormatter, LogLocator

        for axis in (ax.xaxis, ax.yaxis):     # 0.2, 0.5, 1, 2, 5: a span of a decade or two reads
            axis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
            axis.set_major_formatter(FormatStrFormatter("%g"))
            axis.set_minor_formatter(_null())
        ax.set_xlabel("published device latency (ms)")
        ax.set_ylabel("simulated latency (ms)")
        left = doc.get("mape_left_out")
        sub = f"MAPE {doc['mape']:.1f}%" + (f", leave-one-network-out {left:.1f}%" if left is not None else "")
        ax.set_title(title or f"MLU370 int8-mixed-fp16, simulated vs published\n{sub}; dotted: +-20%")
        ax.grid(True, which="both", alpha=0.3)
        _legend_below(ax, ncol=3)
        fig.subplots_adjust(bottom=0.3)
    return fig


def plot_calibration(doc: dict, prefix: str | Path, title: str = "", formats: Sequence[str] | None = None
                     ) -> list[Path]:
    """Write the calibration figure (see `calibration_figure`) as PNG, SVG and PDF (or `formats`)."""
    return save(calibration_figure(doc, title), prefix, formats)


def _metric_keys() -> list[tuple[Any, ...]]:
    from mlusim.experiments import METRIC_COLUMNS

    return METRIC_COLUMNS
