"""Calibration against published MLU370 runs: which rows, what they measure, how mlusim compares.

The rows are Cambricon's own `mm_run` measurements (magicmind_cloud, shared/silicon/README.md),
int8-mixed-fp16 only, of networks the zoo has. A *point* is one (network, board, batch): every
published row of it is a separate run of the same thing, and two runs sometimes differ by 30-40%
(a README row and a log of another release). The point's measured time is the median of its
distinct runs, so one outlying run can move it at most half way, and each point counts once in
the error however many times it was published (a README row repeating a log's qps is the same
run: it is dropped). Rows whose batch label the logs contradict, or whose latency disagrees with
their own throughput, are left out and listed.

What a row measures: S4 logs give the device latency of one batch (`latency_ms`), the figure to
compare with simulated time; where only a README throughput exists (every X4 row, some S4 ones),
batch / qps is used, which with one `mm_run` thread is that latency plus little host overhead.
"""
from __future__ import annotations

import csv
import statistics
from dataclasses import dataclass, field
from pathlib import Path

from mlusim.errors import MlusimError

DATA = Path(__file__).resolve().parent / "data" / "mlu370_int8_mixed_fp16.csv"
BOARDS = {"S4": "mlu370-s4", "X4": "mlu370-x4"}
CLUSTERS_OF_BOARD = {"6": "S4", "8": "X4"}
# Published model directory -> zoo network: the definitions the zoo writes from (compiler/zoo*.py).
ZOO_OF_MODEL = (("alexnet", "alexnet_bn"), ("squeezenet_v1_0", "squeezenet1_0"), ("squeezenet_v1_1", "squeezenet1_1"),
                ("vgg16", "vgg16"), ("resnext50", "resnext50_32x4d"), ("senet50", "se_resnet50"),
                ("mobilenetv3", "mobilenetv3_large"), ("mobilenet_v3", "mobilenetv3_large"),
                ("mobilenetv2", "mobilenetv2"), ("mobilenet_v2", "mobilenetv2"), ("resnet50", "resnet50"),
                ("resnet18", "resnet18"), ("yolov3_tiny", "yolov3_tiny"), ("yolov3-tiny", "yolov3_tiny"))
LEFT_OUT_FLAGS = ("batch_label_contradicted_by_log", "latency_inconsistent_with_qps")


class CalibrationError(MlusimError):
    pass


@dataclass
class Row:
    network: str
    board: str
    batch: int
    ms: float
    source: str          # "latency" (device latency, logs) or "batch/qps"
    where: str           # commit:path of the published number
    power_w: float | None = None     # board power averaged over the run (logs only)


@dataclass
class Point:
    network: str
    board: str
    batch: int
    rows: list[Row] = field(default_factory=list)

    @property
    def measured_ms(self) -> float:
        return statistics.median(r.ms for r in self.rows)

    @property
    def measured_w(self) -> float | None:
        """Median board power of the point's runs that logged it (None if none did)."""
        w = [r.power_w for r in self.rows if r.power_w is not None]
        return statistics.median(w) if w else None

    @property
    def spread(self) -> float:
        """(max - min) / median of the point's runs: how much two published runs disagree."""
        ms = [r.ms for r in self.rows]
        return (max(ms) - min(ms)) / self.measured_ms

    @property
    def key(self) -> str:
        return f"{self.network}/{self.board}/b{self.batch}"


def zoo_network(model_dir: str) -> str | None:
    from mlusim.compiler.zoo import ZOO

    leaf = model_dir.rstrip("/").split("/")[-1].lower()
    for pattern, name in ZOO_OF_MODEL:
        if leaf.startswith(pattern) and name in ZOO:
            return name
    return None


def _row(r: dict) -> tuple[Row | None, str]:
    net = zoo_network(r["model_dir"])
    if net is None:
        return None, "network not in the zoo"
    if any(f in r["flags"] for f in LEFT_OUT_FLAGS):
        return None, "flagged: " + ", ".join(f for f in LEFT_OUT_FLAGS if f in r["flags"])
    board = r["board"] or CLUSTERS_OF_BOARD.get(r["clusters"], "")
    if board not in BOARDS:
        return None, f"unknown board (clusters {r['clusters'] or '?'})"
    batch = int(r["batch"])
    if r["latency_ms"]:
        ms, source = float(r["latency_ms"]), "latency"
    elif r["qps"]:
        ms, source = 1e3 * batch / float(r["qps"]), "batch/qps"
    else:
        return None, "no latency or throughput"
    power = float(r["power_w_mean"]) if r.get("power_w_mean") else None
    return Row(net, board, batch, ms, source, f"{r['commit']}:{r['path']}", power), ""


def load_points(path: str | Path | None = None, boards=("S4", "X4")) -> tuple[list[Point], list[tuple[str, str]]]:
    """The calibration points, and the rows left out with why."""
    p = Path(path) if path else DATA
    try:
        with open(p, newline="", encoding="utf-8") as fh:
            raw = [r for r in csv.DictReader(fh) if r.get("mode") == "int8_mixed_fp16"]
    except OSError as e:
        raise CalibrationError(f"{p}: cannot read the measurements: {e.strerror or e}") from None
    except (csv.Error, UnicodeDecodeError) as e:
        raise CalibrationError(f"{p}: not a readable CSV ({str(e)[:80]})") from None
    need = {"model_dir", "batch", "board", "clusters", "qps", "latency_ms", "flags", "commit", "path"}
    if raw and not need <= set(raw[0]):
        raise CalibrationError(f"{p}: missing columns {', '.join(sorted(need - set(raw[0])))}")
    points: dict[tuple, Point] = {}
    skipped = []
    seen_qps: dict[tuple, set] = {}
    # logs first: a README row repeating a log's throughput is the same run printed twice
    for r in sorted(raw, key=lambda r: r["source_type"] != "log_perf"):
        row, why = _row(r)
        if row is None:
            skipped.append((f"{r['model_dir'].split('/')[-1]} b{r['batch']} {r['board'] or r['clusters']}", why))
            continue
        if row.board not in boards:
            continue
        key = (row.network, row.board, row.batch)
        qps = round(float(r["qps"] or 0), 1)
        if qps and qps in seen_qps.setdefault(key, set()):
            continue
        seen_qps[key].add(qps)
        points.setdefault(key, Point(*key)).rows.append(row)
    return sorted(points.values(), key=lambda q: (q.board != "S4", q.network, q.batch)), skipped


# ------------------------------------------------------------------------------------------------
# Simulating the points


@dataclass
class Sim:
    """One point as `mlusim run NET --config BOARD --batch B --timing-only` runs it."""

    point: Point
    plan: object                  # schedule.ClusterPlan
    cycles: float = 0.0
    kernels: int = 0              # kernels launched (trunk + head)
    layers: int = 0               # network layers the trunk runs (its graph's nodes after fusion)


class Runner:
    """Compiles each point once (calibrating each network's scales once: they change values, not
    cycles) and simulates it on a config."""

    def __init__(self, resolution: dict[str, int] | None = None, cache: bool = True):
        self._absmax: dict[str, dict] = {}
        self._plans: dict[tuple, object] = {}
        self.cache = cache            # plans through the compile cache (mlusim/compile_cache.py)

    def absmax(self, net: str) -> dict:
        from mlusim.compiler import passes, quant, zoo
        from mlusim.compiler.driver import calibration_samples

        if net not in self._absmax:
            g = passes.optimize(zoo.build(net, 1))
            self._absmax[net] = quant.calibrate(g, calibration_samples(g))
        return self._absmax[net]

    def plan(self, p: Point, cfg):
        from mlusim.schedule import plan_per_cluster

        key = (p.network, p.board, p.batch, id(cfg))
        if key not in self._plans:
            self._plans[key] = plan_per_cluster(p.network, p.batch, cfg, cfg.chip.cores, absmax=self.absmax(p.network),
                                                cache=self.cache)
        return self._plans[key]

    def simulate(self, p: Point, cfg, plan=None) -> float:
        """Simulated ms of the point on `cfg` (with `plan`: a program compiled for another
        config of the same chip, re-timed on this one)."""
        from mlusim.schedule import run_per_cluster

        return run_per_cluster(plan or self.plan(p, cfg), cfg, timing_only=True).seconds * 1e3


# ------------------------------------------------------------------------------------------------
# Fitting


@dataclass(frozen=True)
class Param:
    key: str                      # dotted config key
    grid: tuple                   # candidate values, searched exhaustively
    what: str                     # the property of the chip or runtime it is


FITTED = (
    Param("chip.kernel_launch_cycles", (250, 500, 1000, 2000, 4000),
          "runtime: the MagicMind runtime's dispatch and completion of one kernel (per kernel, every network)"),
    Param("core.startup_cycles.conv", (50, 100, 200, 400, 800),
          "chip: fixed cost of one conv instruction on the MAC array (per instruction, every layer)"),
)


def mape(errors: list[float]) -> float:
    return 100.0 * sum(abs(e) for e in errors) / len(errors) if errors else float("nan")


@dataclass
class Fit:
    points: list[Point]
    cells: list[dict]                       # parameter values of each grid cell
    ms: list[list[float]]                   # ms[cell][point]
    before: int                             # the cell holding the configs' own values
    best: int = 0
    lono: dict[str, int] = field(default_factory=dict)     # network -> cell fitted without it

    def errors(self, cell: int, idx=None) -> list[float]:
        idx = range(len(self.points)) if idx is None else idx
        return [self.ms[cell][i] / self.points[i].measured_ms - 1 for i in idx]

    def best_cell(self, idx) -> int:
        return min(range(len(self.cells)), key=lambda c: (mape(self.errors(c, idx)), c))

    def lono_errors(self) -> list[float]:
        out = [0.0] * len(self.points)
        for net, cell in self.lono.items():
            for i, p in enumerate(self.points):
                if p.network == net:
                    out[i] = self.ms[cell][i] / p.measured_ms - 1
        return out


def _with(cfg, values: dict):
    from mlusim.config import apply_overrides, config_from_dict

    return config_from_dict(apply_overrides(cfg.to_dict(), values), f"{cfg.name} (calibration)")


def fit(points: list[Point], configs: dict, runner: Runner, params=FITTED, progress=None) -> Fit:
    """Every grid cell's prediction of every point (programs compiled once with the configs as
    given; a cell re-simulates them), the best cell, and each network's leave-one-out cell."""
    import itertools

    from mlusim.config import iter_leaves

    leaves = {p for p, _, _ in iter_leaves()}
    for p in params:
        if p.key not in leaves:
            raise CalibrationError(f"fitted parameter {p.key} is not a config key")
    cells = [dict(zip([p.key for p in params], vals)) for vals in itertools.product(*[p.grid for p in params])]
    own = {p.key: _lookup(configs[points[0].board], p.key) for p in params}
    if own not in cells:
        cells.append(own)
    ms = []
    for n, cell in enumerate(cells):
        row = []
        for p in points:
            row.append(runner.simulate(p, _with(configs[p.board], cell), runner.plan(p, configs[p.board])))
        ms.append(row)
        if progress:
            progress(n + 1, len(cells))
    f = Fit(points, cells, ms, cells.index(own))
    f.best = f.best_cell(range(len(points)))
    for net in sorted({p.network for p in points}):
        f.lono[net] = f.best_cell([i for i, p in enumerate(points) if p.network != net])
    return f


def _lookup(cfg, key: str):
    node = cfg
    for part in key.split("."):
        node = getattr(node, part)
    return node


def sensitive_points(f: Fit, key: str, top: int = 3) -> list[str]:
    """The points whose prediction moves most across the parameter's grid (the rows that fix it)."""
    vals = sorted({c[key] for c in f.cells})
    lo = [i for i, c in enumerate(f.cells) if c[key] == vals[0] and all(c[k] == f.cells[f.best][k] for k in c if k != key)]
    hi = [i for i, c in enumerate(f.cells) if c[key] == vals[-1] and all(c[k] == f.cells[f.best][k] for k in c if k != key)]
    if not lo or not hi:
        return []
    move = [(abs(f.ms[hi[0]][i] / f.ms[lo[0]][i] - 1), p.key) for i, p in enumerate(f.points)]
    return [k for _, k in sorted(move, reverse=True)[:top]]
