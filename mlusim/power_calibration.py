"""Board power against the published runs' `power_w_mean` (docs/energy.md).

`mm_run` runs one inference after another, so the board's average power over a run is, at steady
state, the energy of one inference over its latency plus what the board draws anyway:

    P = board_static + chip_static + cluster_static x (mean clusters busy)
        + (DRAM joules + onchip_scale x on-chip joules) / latency

with every term from the simulated run (its latency, its clusters, its event counts): nothing of
the published row but the watts it is compared with. Three parameters are fitted, each a property
of the board or chip, the same for every network: the board's static power, the power of a busy
cluster, and `onchip_scale`, one factor on every on-chip per-event energy (the literature's
per-operation figures leave out clock tree, control and wires). The model is linear in them, so
the fit is a least-squares solve on relative errors (non-negative values only), not a search.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass, field

import numpy as np

from mlusim.energy import Energy, run_energy

FITTED = (
    ("energy.board_static_w", "board: what it draws whatever runs (DRAM background, regulators, host link)"),
    ("energy.cluster_static_w", "chip: the extra power of each cluster while a kernel runs on it"),
    ("energy.onchip_scale", "chip: factor on every on-chip per-event energy (clock tree, control, wires)"),
)


@dataclass
class Terms:
    """What a simulated run contributes to the power model, separated by parameter."""

    seconds: float
    clusters: float          # clusters busy, averaged over the run
    dram_w: float            # DRAM joules / seconds (not scaled)
    onchip_w: float          # on-chip dynamic joules at onchip_scale 1 / seconds


def terms_of(res) -> Terms:
    """The power model's inputs from one finished run (its config's onchip_scale divided out)."""
    r = run_energy(res)
    e: Energy = r.total
    secs = r.seconds or 1e-30
    scale = res.config.energy.onchip_scale
    onchip = (e.dynamic - e.dram) / scale if scale else 0.0
    return Terms(r.seconds, r.events.cluster_seconds / secs, e.dram / secs, onchip / secs)


def predict(t: Terms, values: dict, chip_static_w: float) -> float:
    """Average board watts of a run with `values` for the fitted keys."""
    return (values["energy.board_static_w"] + chip_static_w + values["energy.cluster_static_w"] * t.clusters
            + t.dram_w + values["energy.onchip_scale"] * t.onchip_w)


def solve(terms: list[Terms], measured: list[float], chip_static_w: float) -> dict:
    """The non-negative values minimising the squared relative error of `predict` (every subset of
    the three parameters free, the others at zero; the best feasible solution)."""
    keys = [k for k, _ in FITTED]
    w = np.array([1.0 / m for m in measured])
    cols = np.array([[1.0, t.clusters, t.onchip_w] for t in terms]) * w[:, None]
    y = np.array([m - chip_static_w - t.dram_w for t, m in zip(terms, measured)]) * w
    best, best_err = np.zeros(3), float("inf")
    for n in range(3, 0, -1):
        for free in itertools.combinations(range(3), n):
            x = np.zeros(3)
            x[list(free)] = np.linalg.lstsq(cols[:, free], y, rcond=None)[0]
            if (x < 0).any():
                continue
            err = float(((cols @ x - y) ** 2).sum())
            if err < best_err - 1e-15:
                best, best_err = x, err
    return {k: float(v) for k, v in zip(keys, best)}


def mape(pred: list[float], measured: list[float]) -> float:
    return 100.0 * sum(abs(p / m - 1) for p, m in zip(pred, measured)) / len(measured) if measured else float("nan")


@dataclass
class PowerFit:
    keys: list[str]                          # point keys, as calibration.Point.key
    networks: list[str]
    measured: list[float]
    terms: list[Terms]
    chip_static_w: float
    before: dict                             # the configs' own values
    after: dict = field(default_factory=dict)
    lono: dict[str, dict] = field(default_factory=dict)       # network -> values fitted without it
    lono_terms: dict[int, Terms] = field(default_factory=dict)  # point -> its run with the time fit's LONO values

    def predicted(self, values: dict) -> list[float]:
        return [predict(t, values, self.chip_static_w) for t in self.terms]

    def left_out(self) -> list[float]:
        """Each point predicted by power values fitted without its network (and its run timed
        with the time parameters fitted without it, where they differ)."""
        return [predict(self.lono_terms.get(i, t), self.lono[n], self.chip_static_w)
                for i, (t, n) in enumerate(zip(self.terms, self.networks))]

    def moves_most(self, key: str, top: int = 3) -> list[str]:
        """The points whose predicted watts move most, relative to their measured watts, per unit
        of this parameter: the rows that fix it (whatever value it takes)."""
        i = [k for k, _ in FITTED].index(key)
        slope = [(([1.0, t.clusters, t.onchip_w][i]) / m, k) for k, t, m in zip(self.keys, self.terms, self.measured)]
        return [k for _, k in sorted(slope, reverse=True)[:top]]


def fit(keys: list[str], networks: list[str], measured: list[float], terms: list[Terms], chip_static_w: float,
        before: dict, lono_terms: dict[int, Terms] | None = None, refit: bool = True) -> PowerFit:
    """Fit on every point, and once per network without it."""
    f = PowerFit(keys, networks, measured, terms, chip_static_w, before, lono_terms=dict(lono_terms or {}))
    f.after = solve(terms, measured, chip_static_w) if refit else dict(before)
    for net in sorted(set(networks)):
        idx = [i for i, n in enumerate(networks) if n != net]
        f.lono[net] = (solve([terms[i] for i in idx], [measured[i] for i in idx], chip_static_w)
                       if refit and idx else dict(before))
    return f


# ------------------------------------------------------------------------------------------------
# From a time calibration (mlusim.calibration.fit) to a power fit and its report


def _cell_config(cfg, cell: dict):
    from mlusim.config import apply_overrides, config_from_dict

    return config_from_dict(apply_overrides(cfg.to_dict(), cell), f"{cfg.name} (calibration)")


def _terms(runner, point, configs: dict, cell: dict) -> Terms:
    from mlusim.schedule import run_per_cluster

    base = configs[point.board]
    return terms_of(run_per_cluster(runner.plan(point, base), _cell_config(base, cell), timing_only=True))


def from_time_fit(tf, configs: dict, runner, refit: bool = True, progress=None) -> PowerFit | None:
    """Simulate every point that has a published power once, timed as the time fit's best cell
    says (its left-out network's cell for the left-out predictions), and fit the power model.
    Points of one board only (the first with power: the S4; X4 rows publish no power)."""
    idx = [i for i, p in enumerate(tf.points) if p.measured_w is not None]
    if not idx:
        return None
    board = tf.points[idx[0]].board
    idx = [i for i in idx if tf.points[i].board == board]
    best = tf.cells[tf.best]
    terms, lono_terms = [], {}
    for n, i in enumerate(idx):
        p = tf.points[i]
        terms.append(_terms(runner, p, configs, best))
        cell = tf.cells[tf.lono[p.network]] if p.network in tf.lono else best
        if cell != best:
            lono_terms[n] = _terms(runner, p, configs, cell)
        if progress:
            progress(n + 1, len(idx))
    e = configs[board].energy
    before = {k: getattr(e, k.split(".")[1]) for k, _ in FITTED}
    pts = [tf.points[i] for i in idx]
    return fit([p.key for p in pts], [p.network for p in pts], [p.measured_w for p in pts], terms,
               e.chip_static_w, before, lono_terms, refit)


def document(pf: PowerFit, board: str) -> dict:
    """The power part of `mlusim calibrate --json`."""
    after, before, lono = pf.predicted(pf.after), pf.predicted(pf.before), pf.left_out()
    points = []
    for i, key in enumerate(pf.keys):
        t = pf.terms[i]
        points.append({"point": key, "network": pf.networks[i], "measured_w": pf.measured[i],
                       "simulated_w": after[i], "error": after[i] / pf.measured[i] - 1,
                       "simulated_w_before": before[i], "error_before": before[i] / pf.measured[i] - 1,
                       "error_left_out": lono[i] / pf.measured[i] - 1, "simulated_ms": 1e3 * t.seconds,
                       "clusters_busy": t.clusters, "dram_w": t.dram_w, "onchip_w_unscaled": t.onchip_w})
    nets = sorted(set(pf.networks))
    return {
        "board": board, "chip_static_w": pf.chip_static_w, "points": points,
        "mape": mape(after, pf.measured), "mape_before": mape(before, pf.measured),
        "mape_left_out": mape(lono, pf.measured),
        "parameters": [{"key": k, "what": what, "before": pf.before[k], "after": pf.after[k],
                        "fitted_on": f"{len(pf.keys)} {board} points of {', '.join(nets)}",
                        "moves_most": pf.moves_most(k), "left_out": {n: v[k] for n, v in pf.lono.items()}}
                       for k, what in FITTED],
    }


def render(doc: dict) -> str:
    """The power table and its MAPEs, as `mlusim calibrate` prints them."""
    from rich.console import Console
    from rich.table import Table

    t = Table(title=f"board power (W), {doc['board']}: published mean over the run vs simulated",
              title_justify="left")
    for c in ("point", "measured W", "simulated W", "error", "before", "left out", "clusters busy", "sim ms"):
        t.add_column(c, justify="left" if c == "point" else "right")
    for p in doc["points"]:
        t.add_row(p["point"], f"{p['measured_w']:.1f}", f"{p['simulated_w']:.1f}", f"{100 * p['error']:+.0f}%",
                  f"{100 * p['error_before']:+.0f}%", f"{100 * p['error_left_out']:+.0f}%",
                  f"{p['clusters_busy']:.2f}", f"{p['simulated_ms']:.3f}")
    console = Console(width=120)
    with console.capture() as cap:
        console.print(t)
    lines = [cap.get().rstrip(),
             f"power MAPE {doc['mape']:.1f}% (before the fit {doc['mape_before']:.1f}%); leave-one-network-out "
             f"MAPE {doc['mape_left_out']:.1f}%; chip_static_w {doc['chip_static_w']:g} W held at its cited value"]
    for p in doc["parameters"]:
        lines.append(f"  {p['key']}: {p['before']:.4g} -> {p['after']:.4g}  ({p['what']}; moves most: "
                     f"{', '.join(p['moves_most'])})")
    return "\n".join(lines)
