"""Figures for papers: speedup vs cores, per-kernel rooflines, a sweep's metric vs a parameter.

Each function takes the plain data the experiments return (rows, or a run summary from
`mlusim.report.summarize`), draws with matplotlib's Agg backend (no display needed) and writes
PREFIX.png and PREFIX.svg; it returns the paths. Files are reproducible byte for byte (no dates,
fixed SVG ids) so that committed plots change only when the numbers do.

    from mlusim.plot import plot_speedup
    plot_speedup(rows, "out/speedup")          # rows from mlusim.experiments.scaling
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from mlusim.errors import MlusimError
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
    "speedup": "speedup (x)", "efficiency": "parallel efficiency (fraction)",
    "mac_utilization": "MAC utilization (fraction)", "dram_gbps": "achieved DRAM bandwidth (GB/s)",
    "dram_utilization": "DRAM utilization (fraction)", "sram_gbps": "SRAM bandwidth (GB/s)",
    "compute_utilization": "compute utilization (fraction)", "mapping_efficiency": "mapping efficiency (fraction)",
}


def _plt():
    try:
        import matplotlib
    except ImportError:
        raise MlusimError("plotting needs matplotlib: pip install 'mlusim[plot]'") from None
    matplotlib.use("Agg", force=True)
    matplotlib.rcParams["svg.hashsalt"] = "mlusim"      # stable SVG element ids
    import matplotlib.pyplot as plt

    return plt


def _save(fig, prefix: str | Path) -> list[Path]:
    prefix = Path(prefix)
    if prefix.suffix in (".png", ".svg"):
        prefix = prefix.with_suffix("")
    prefix.parent.mkdir(parents=True, exist_ok=True)
    out = []
    try:
        for ext, meta in ((".png", {"Software": None}), (".svg", {"Date": None, "Creator": None})):
            p = prefix.with_name(prefix.name + ext)
            fig.savefig(p, dpi=150, bbox_inches="tight", metadata=meta)
            out.append(p)
    except OSError as e:
        raise MlusimError(f"{prefix}: cannot write plot: {e.strerror}") from None
    finally:
        import matplotlib.pyplot as plt

        plt.close(fig)
    return out


def plot_speedup(series: list[dict] | dict[str, list[dict]], prefix: str | Path, title: str = "") -> list[Path]:
    """Speedup vs cores (log-log) with the ideal line; `series` is scaling rows or {label: rows}.

    The ideal for a series is linear in cores from its first row (speedup = cores / first cores)."""
    plt = _plt()
    if isinstance(series, list):
        series = {"simulated": series}
    fig, ax = plt.subplots(figsize=(5.5, 4.2))
    allc: set[int] = set()
    base_cores = None
    for label, rows in series.items():
        rows = [r for r in rows if not r.get("error")]
        if not rows:
            continue
        cores = [r["cores"] for r in rows]
        allc.update(cores)
        base_cores = base_cores or cores[0]
        ax.plot(cores, [r["speedup"] for r in rows], "o-", label=label)
        for r in rows[1:]:
            ax.annotate(f"{100 * r['efficiency']:.0f}%", (r["cores"], r["speedup"]), textcoords="offset points",
                        xytext=(4, -12), fontsize=7, color="0.35")
    if not allc:
        raise MlusimError("nothing to plot: no successful rows")
    xs = sorted(allc)
    ax.plot(xs, [c / base_cores for c in xs], "--", color="0.5", label="ideal (linear)")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log", base=2)
    ax.set_xticks(xs, [str(c) for c in xs])
    ys = sorted({c / base_cores for c in xs})
    ax.set_yticks(ys, [f"{y:g}" for y in ys])
    ax.set_xlabel("cores")
    ax.set_ylabel(f"speedup vs {base_cores} core(s) (x)")
    ax.set_title(title or "speedup vs cores (labels: parallel efficiency)", fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, prefix)


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
                    "gops": ops / (k["cycles"] / clock) / 1e9, "bound": k["bound"]})
    roofs = {"peak_gops": summary["peak_gops"], "dram_gbps": summary["dram_bandwidth_gbps"]}
    return pts, roofs


def plot_roofline(summary: dict, prefix: str | Path, title: str = "", label_points: bool = True) -> list[Path]:
    """Each MAC kernel of one run against the chip's compute and DRAM roofs (log-log)."""
    plt = _plt()
    pts, roofs = roofline_points(summary)
    skipped = len(summary["kernels"]) - len(pts)
    peak, bw = roofs["peak_gops"], roofs["dram_gbps"]
    ridge = peak / bw
    xs = [p["intensity"] for p in pts] + [ridge]
    lo, hi = min(xs) / 4, max(xs) * 4
    fig, ax = plt.subplots(figsize=(6, 4.4))
    ax.plot([lo, ridge, hi], [bw * lo, peak, peak], "-", color="black", lw=1.5,
            label=f"roof: {bw:g} GB/s DRAM, {peak:,.0f} GOP/s ({summary['cores']} cores)")
    bounds = sorted({p["bound"] for p in pts})
    for b in bounds:
        sel = [p for p in pts if p["bound"] == b]
        ax.plot([p["intensity"] for p in sel], [p["gops"] for p in sel], "o", ms=5, label=f"kernels bound by {b}")
    if label_points and len(pts) <= 40:
        for p in pts:
            ax.annotate(p["name"], (p["intensity"], p["gops"]), textcoords="offset points", xytext=(4, 3), fontsize=6)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("operational intensity (ops per DRAM byte; 1 MAC = 2 ops)")
    ax.set_ylabel("achieved GOP/s")
    note = f"; {skipped} kernel(s) without MACs or DRAM traffic not shown" if skipped else ""
    ax.set_title(title or f"roofline, {summary['config']} @ {summary['clock_mhz']:g} MHz{note}", fontsize=9)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    return _save(fig, prefix)


def plot_sweep(rows: list[dict], x: str, y: str, prefix: str | Path, by: list[str] | None = None,
               title: str = "") -> list[Path]:
    """Metric `y` against swept parameter `x`, one line per combination of the `by` columns
    (default: every other swept column and cores)."""
    plt = _plt()
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
    fig, ax = plt.subplots(figsize=(5.5, 4.2))
    for key, rs in groups.items():
        rs = sorted(rs, key=lambda r: r[x])
        label = ", ".join(f"{k}={v}" for k, v in zip(by, key)) or y
        ax.plot([r[x] for r in rs], [r[y] for r in rs], "o-", label=label)
    from mlusim.config import iter_leaves

    unit = {p: m.get("unit", "") for p, _, m in iter_leaves()}.get(x, "")
    xs = [r[x] for r in rows if isinstance(r[x], (int, float))]
    if xs and min(xs) > 0 and max(xs) / min(xs) >= 8:     # geometric sweeps read best on a log axis
        ax.set_xscale("log", base=2)
        ticks = sorted(set(xs))
        ax.set_xticks(ticks, [f"{t:g}" for t in ticks])
    ax.set_xlabel(f"{x} ({unit})" if unit else x)
    ax.set_ylabel(METRIC_LABELS.get(y, y))
    ax.set_title(title or f"{METRIC_LABELS.get(y, y)} vs {x}", fontsize=10)
    ax.grid(True, alpha=0.3)
    if len(groups) > 1 or by:
        ax.legend(fontsize=7)
    return _save(fig, prefix)


def plot_calibration(doc: dict, prefix: str | Path, title: str = "") -> list[Path]:
    """Simulated vs published latency of every calibration point (log-log) with the identity line
    and +-20% bands; one marker per board, one colour per network."""
    plt = _plt()
    pts = doc.get("points") or []
    if not pts:
        raise MlusimError("nothing to plot: the calibration report has no points")
    fig, ax = plt.subplots(figsize=(5.8, 5.2))
    nets = sorted({p["network"] for p in pts})
    marks = {"S4": "o", "X4": "s"}
    cmap = plt.get_cmap("tab10")
    for i, net in enumerate(nets):
        for board, m in marks.items():
            sel = [p for p in pts if p["network"] == net and p["board"] == board]
            if sel:
                ax.plot([p["measured_ms"] for p in sel], [p["simulated_ms"] for p in sel], m, color=cmap(i % 10),
                        label=f"{net} ({board})", ms=6, alpha=0.85)
    vals = [p["measured_ms"] for p in pts] + [p["simulated_ms"] for p in pts]
    lo, hi = min(vals) / 1.5, max(vals) * 1.5
    ax.plot([lo, hi], [lo, hi], "-", color="black", lw=1, label="identity")
    for f in (0.8, 1.2):
        ax.plot([lo, hi], [lo * f, hi * f], ":", color="0.5", lw=0.8)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlim(lo, hi)
    ax.set_ylim(lo, hi)
    from matplotlib.ticker import FormatStrFormatter, NullFormatter

    for axis in (ax.xaxis, ax.yaxis):
        axis.set_major_formatter(FormatStrFormatter("%g"))
        axis.set_minor_formatter(NullFormatter())
    ax.set_xlabel("published device latency (ms)")
    ax.set_ylabel("simulated latency (ms)")
    left = doc.get("mape_left_out")
    sub = f"MAPE {doc['mape']:.1f}%" + (f", leave-one-network-out {left:.1f}%" if left is not None else "")
    ax.set_title(title or f"MLU370 int8-mixed-fp16, simulated vs published ({sub}; dotted: +-20%)", fontsize=8)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=6, loc="upper left", ncol=1)
    return _save(fig, prefix)


def _metric_keys() -> list[tuple[Any, ...]]:
    from mlusim.experiments import METRIC_COLUMNS

    return METRIC_COLUMNS
