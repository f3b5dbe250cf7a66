"""`mlusim plot energy`: where a run's joules went, as stacked bars (docs/energy.md).

A run report gives one bar for the whole run and one per kernel (the most energetic first); a
scaling report gives one bar per core count. The parts are the energy model's: MAC array, vector
unit, DRAM, cluster SRAM, NRAM and WRAM together, DMA instructions, and static power x time.
"""
from __future__ import annotations

from pathlib import Path

from mlusim.errors import MlusimError
from mlusim.metacheck import MAX_COUNT, check_fields, number
from mlusim.plot import _plt, _save

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


def bars_of(data: dict, where: str) -> tuple[list[str], list[list[float]], str]:
    """Labels, stacked values and a subtitle for a run report (the run, then its kernels) or a
    scaling report (one bar per run)."""
    kind = data.get("kind")
    if kind == "run":
        kernels = data.get("kernels")
        if not isinstance(kernels, list):
            raise MlusimError(f"{where}: 'kernels' must be a list")
        rows = [(k.get("name", f"kernel {i}"), _parts(k, f"{where}: kernel {i}")) for i, k in enumerate(kernels)
                if isinstance(k, dict)]
        rows.sort(key=lambda r: -sum(r[1]))
        shown = rows[:MAX_BARS - 1]
        labels = ["whole run"] + [str((k or "?"))[:40] for k, _ in shown]
        values = [_parts(data, where)] + [v for _, v in shown]
        more = f"; the {len(shown)} most energetic of {len(rows)} kernels" if len(rows) > len(shown) else ""
        return labels, values, f"{data.get('config', '?')}, {data.get('cores', '?')} cores{more}"
    if kind in ("scaling", "runs"):
        runs = data.get("runs")
        if not isinstance(runs, list) or not runs or len(runs) > MAX_BARS:
            raise MlusimError(f"{where}: 'runs' must be a list of 1 to {MAX_BARS} run reports")
        labels = [f"{r.get('cores', '?')} core{'' if r.get('cores') == 1 else 's'}" if isinstance(r, dict) else "?"
                  for r in runs]
        values = [_parts(r if isinstance(r, dict) else {}, f"{where}: run {i}") for i, r in enumerate(runs)]
        return labels, values, f"{data.get('program', '')} on {data.get('config', '?')}"
    raise MlusimError(f"{where}: an energy plot needs a run or scaling report (mlusim run --json), not "
                      f"{str(kind)[:40]!r}")


def plot_energy(data: dict, prefix: str | Path, title: str = "", where: str = "report") -> list[Path]:
    """Horizontal stacked bars of joules by part; each bar's total and average power labelled."""
    labels, values, sub = bars_of(data, where)
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7.5, 1.2 + 0.32 * len(labels)))
    cmap = plt.get_cmap("tab10")
    scale, unit = _unit(max(sum(v) for v in values))
    ys = list(range(len(labels)))[::-1]
    left = [0.0] * len(labels)
    for j, (name, _) in enumerate(PARTS):
        widths = [v[j] / scale for v in values]
        ax.barh(ys, widths, left=left, color=cmap(j), label=name, height=0.7)
        left = [a + b for a, b in zip(left, widths)]
    for y, total in zip(ys, left):
        ax.annotate(f"{total:.3g} {unit}", (total, y), textcoords="offset points", xytext=(3, -3), fontsize=6)
    ax.set_yticks(ys, labels, fontsize=7)
    ax.set_xlabel(f"energy ({unit})")
    head = ""
    if data.get("kind") == "run" and isinstance(data.get("power_w"), (int, float)):
        head = f": {data['energy_j'] / scale:.3g} {unit}, average {data['power_w']:.1f} W"
    ax.set_title(title or f"energy by part{head} ({sub})", fontsize=8)
    ax.grid(True, axis="x", alpha=0.3)
    ax.legend(fontsize=7, ncol=len(PARTS), loc="upper center", bbox_to_anchor=(0.5, -0.45 / len(labels) ** 0.5 - 0.12),
              frameon=False)
    return _save(fig, prefix)


def _unit(j: float) -> tuple[float, str]:
    for scale, unit in ((1.0, "J"), (1e-3, "mJ"), (1e-6, "uJ")):
        if j >= scale:
            return scale, unit
    return 1e-9, "nJ"
