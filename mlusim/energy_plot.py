"""`mlusim plot energy`: where a run's joules went, as stacked bars (docs/energy.md).

A run report gives one bar for the whole run and one per kernel (the most energetic first); a
scaling report gives one bar per core count. The parts are the energy model's: MAC array, vector
unit, DRAM, cluster SRAM, NRAM and WRAM together, DMA instructions, and static power x time.
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from mlusim import plot
from mlusim.errors import MlusimError
from mlusim.metacheck import MAX_COUNT, check_fields, number
from mlusim.plot_style import HATCHES, save, style, title as style_title

PARTS = (("MAC", ("mac",)), ("vector", ("vector",)), ("DRAM", ("dram",)), ("SRAM", ("sram",)),
         ("NRAM/WRAM", ("nram", "wram")), ("DMA", ("dma",)), ("static", ("static",)))
BREAKDOWN = {c: number(0, MAX_COUNT) for _, cs in PARTS for c in cs}
MAX_BARS = 30


def _parts(item: dict, where: str) -> list[float]:
    """The seven stacked values (J) of a report item's `energy_breakdown_j`, checked."""
    b = item.get("energy_breakdown_j")
    if not isinstance(b, dict):
        raise MlusimError(f"{where}: no energy breakdown (a report written before mlusim modelled energy? "
                          f"run it again)")
    check_fields(b, BREAKDOWN, where, MlusimError, "energy breakdown", tuple(BREAKDOWN))
    return [sum(b[c] for c in cs) for _, cs in PARTS]


def bars_of(data: dict, where: str) -> list[tuple[str, list[str], list[list[float]]]]:
    """Panels of (heading, labels, stacked values): a run report gives the whole run, then its
    most energetic kernels; a scaling report one bar per run."""
    kind = data.get("kind")
    if kind == "run":
        kernels = data.get("kernels")
        if not isinstance(kernels, list):
            raise MlusimError(f"{where}: 'kernels' must be a list")
        rows = [(k.get("name", f"kernel {i}"), _parts(k, f"{where}: kernel {i}")) for i, k in enumerate(kernels)
                if isinstance(k, dict)]
        rows.sort(key=lambda r: -sum(r[1]))
        shown = rows[:MAX_BARS]
        cores = data.get("cores", "?")
        run = (f"{str(data.get('config', '?'))[:60]}, {str(cores)[:12]} core{'' if cores == 1 else 's'}", ["whole run"],
               [_parts(data, where)])
        if not shown:
            return [run]
        which = f"the {len(shown)} most energetic of {len(rows)} kernels" if len(rows) > len(shown) else "kernels"
        return [run, (which, [str(k or "?")[:40] for k, _ in shown], [v for _, v in shown])]
    if kind in ("scaling", "runs"):
        runs = data.get("runs")
        if not isinstance(runs, list) or not runs or len(runs) > MAX_BARS:
            raise MlusimError(f"{where}: 'runs' must be a list of 1 to {MAX_BARS} run reports")
        labels = [f"{str(r.get('cores', '?'))[:12]} core{'' if r.get('cores') == 1 else 's'}" if isinstance(r, dict)
                  else "?" for r in runs]
        values = [_parts(r if isinstance(r, dict) else {}, f"{where}: run {i}") for i, r in enumerate(runs)]
        return [(f"{str(data.get('program', ''))[:60]} on {str(data.get('config', '?'))[:60]}", labels, values)]
    raise MlusimError(f"{where}: an energy plot needs a run or scaling report (mlusim run --json), not "
                      f"{str(kind)[:40]!r}")


def energy_figure(data: dict, title: str = "", where: str = "report"):
    """Horizontal stacked bars of joules by part, each panel on its own scale; each bar's total
    labelled; parts told apart by hatching as well as colour."""
    panels = bars_of(data, where)
    head = ""
    if data.get("kind") == "run":
        check_fields(data, {"energy_j": number(0, MAX_COUNT), "power_w": number(0, MAX_COUNT)}, where, MlusimError,
                     "report", ("energy_j", "power_w"))
        head = f"\n{data['energy_j'] * 1e3:.4g} mJ, average {data['power_w']:.1f} W"
    heights = [len(labels) + 1.5 for _, labels, _ in panels]
    tall = 1.3 + 0.32 * sum(heights)
    with style() as plt:
        fig, axes = plt.subplots(len(panels), 1, figsize=(7.5, tall), gridspec_kw={"height_ratios": heights},
                                 squeeze=False)
        cmap = plt.get_cmap("tab10")
        for ax, (heading, labels, values) in zip(axes[:, 0], panels):
            _stack(ax, labels, values, cmap)
            ax.set_title(heading, loc="left")
        fig.suptitle(title or style_title("Energy by part", plot.subject_of_report(data)) + head)
        handles, names = axes[0, 0].get_legend_handles_labels()
        fig.legend(handles, names, ncol=len(PARTS), loc="lower center", frameon=False, handlelength=2.4)
        fig.tight_layout(rect=(0, 0.5 / tall, 1, 1))
    return fig


def plot_energy(data: dict, prefix: str | Path, title: str = "", where: str = "report",
                formats: Sequence[str] | None = None) -> list[Path]:
    """Write the energy figure (see `energy_figure`) as PNG, SVG and PDF (or `formats`)."""
    return save(energy_figure(data, title, where), prefix, formats)


def _stack(ax, labels: list[str], values: list[list[float]], cmap) -> None:
    scale, unit = _unit(max(sum(v) for v in values))
    ys = list(range(len(labels)))[::-1]
    left = [0.0] * len(labels)
    for j, (name, _) in enumerate(PARTS):
        widths = [v[j] / scale for v in values]
        ax.barh(ys, widths, left=left, color=cmap(j), label=name, height=0.7, hatch=HATCHES[j % len(HATCHES)],
                edgecolor="white", linewidth=0.3)
        left = [a + b for a, b in zip(left, widths)]
    for y, total in zip(ys, left):
        ax.annotate(f"{total:.3g} {unit}", (total, y), textcoords="offset points", xytext=(3, 0), va="center")
    ax.set_yticks(ys, labels)
    ax.set_xlim(0, max(left) * 1.15 or 1.0)
    ax.set_xlabel(f"energy ({unit})")
    ax.grid(True, axis="x", alpha=0.3)


def _unit(j: float) -> tuple[float, str]:
    for scale, unit in ((1.0, "J"), (1e-3, "mJ"), (1e-6, "uJ")):
        if j >= scale:
            return scale, unit
    return 1e-9, "nJ"
