"""`mlusim plot speedup|roofline|sweep|calibration|energy REPORT.json -o PREFIX`: PNG and SVG figures from reports.

REPORT.json is what `mlusim run --json` (one core count: a run; several: a scaling table) or
`mlusim sweep --json` wrote. Needs matplotlib (pip install 'mlusim[plot]').
"""
from __future__ import annotations

from mlusim.commands.common import int_arg


def register(sub) -> None:
    p = sub.add_parser("plot", help="draw speedup, roofline, sweep, calibration or energy figures (PNG + SVG) from a JSON report")
    ps = p.add_subparsers(dest="figure", metavar="FIGURE", required=True)
    s = ps.add_parser("speedup", help="speedup vs cores with the ideal line (scaling or sweep report)")
    s.add_argument("report")
    s.add_argument("-o", "--output", required=True, metavar="PREFIX", help="writes PREFIX.png and PREFIX.svg")
    s.add_argument("--title", default="")
    r = ps.add_parser("roofline", help="each kernel of one run against the compute and DRAM roofs")
    r.add_argument("report")
    r.add_argument("-o", "--output", required=True, metavar="PREFIX")
    r.add_argument("--cores", type=int_arg(1, 4096), default=None, help="which run of a scaling report (default: the last)")
    r.add_argument("--title", default="")
    w = ps.add_parser("sweep", help="a metric of a sweep against one swept parameter")
    w.add_argument("report")
    w.add_argument("-o", "--output", required=True, metavar="PREFIX")
    w.add_argument("--x", required=True, metavar="KEY", help="swept column for the x axis, e.g. dram.bandwidth_gbps")
    w.add_argument("--y", default="latency_ms", metavar="METRIC", help="row key to plot (default latency_ms)")
    w.add_argument("--by", default=None, metavar="K1,K2", help="columns that make separate lines "
                   "(default: every other swept column and cores)")
    w.add_argument("--title", default="")
    c = ps.add_parser("calibration", help="simulated vs published latency, log-log, identity line "
                      "(mlusim calibrate --json)")
    c.add_argument("report")
    c.add_argument("-o", "--output", required=True, metavar="PREFIX")
    c.add_argument("--title", default="")
    e = ps.add_parser("energy", help="joules by part (MAC, vector, DRAM, SRAM, NRAM/WRAM, DMA, static) as stacked "
                      "bars: the run and its kernels, or each run of a scaling report")
    e.add_argument("report")
    e.add_argument("-o", "--output", required=True, metavar="PREFIX")
    e.add_argument("--title", default="")
    p.set_defaults(func=cmd_plot)


def cmd_plot(args) -> int:
    from mlusim import plot
    from mlusim.errors import MlusimError
    from mlusim.experiments import read_table

    data = read_table(args.report)
    kind, where = data["kind"], args.report
    if args.figure == "speedup":
        if kind == "scaling":
            paths = plot.plot_speedup(plot.check_rows(data.get("rows"), where, plot.ROW), args.output, args.title)
        elif kind == "sweep":
            keys = list(_params(data, where))
            series: dict[str, list] = {}
            for row in plot.check_rows(data.get("rows"), where, plot.ROW):
                label = ", ".join(f"{k}={row.get(k)}" for k in keys) or "simulated"
                series.setdefault(label, []).append(row)
            paths = plot.plot_speedup(series, args.output, args.title)
        else:
            raise MlusimError(f"{where}: a speedup plot needs a report of several core counts "
                              f"(mlusim run --cores 1,2,4 --json ...), this one is {str(kind)[:40]!r}")
    elif args.figure == "calibration":
        if kind != "calibration":
            raise MlusimError(f"{where}: a calibration plot needs `mlusim calibrate --json`, not {str(kind)[:40]!r}")
        paths = plot.plot_calibration(data, args.output, args.title)
    elif args.figure == "energy":
        from mlusim.energy_plot import plot_energy

        paths = plot_energy(data, args.output, args.title, where)
    elif args.figure == "roofline":
        paths = plot.plot_roofline(_summary(data, kind, where, args.cores), args.output, args.title)
    else:
        if kind != "sweep":
            raise MlusimError(f"{where}: a sweep plot needs a sweep report (mlusim sweep --json), not "
                              f"{str(kind)[:40]!r}")
        by = [b for b in args.by.split(",") if b] if args.by is not None else None
        need = {args.x: plot.number(-plot.MAX_COUNT, plot.MAX_COUNT), args.y: plot.number(-plot.MAX_COUNT, plot.MAX_COUNT)}
        paths = plot.plot_sweep(plot.check_rows(data.get("rows"), where, need), args.x, args.y, args.output, by,
                                args.title)
    for p in paths:
        print(f"wrote {p}")
    return 0


def _params(data: dict, where: str) -> dict:
    from mlusim.errors import MlusimError

    params = data.get("params") or {}
    if not isinstance(params, dict):
        raise MlusimError(f"{where}: 'params' must be a mapping of swept keys")
    return params


def _summary(data: dict, kind, where: str, cores: int | None) -> dict:
    """The run a roofline draws: the report itself, or one run of a scaling report."""
    from mlusim import plot
    from mlusim.errors import MlusimError

    if kind == "run":
        return plot.check_summary(data, where)
    if kind not in ("scaling", "runs"):
        raise MlusimError(f"{where}: a roofline needs a run report (mlusim run --json), not {str(kind)[:40]!r}")
    runs = data.get("runs")
    if not isinstance(runs, list) or not runs:
        raise MlusimError(f"{where}: 'runs' must be a non-empty list of run reports")
    runs = [plot.check_summary(s, f"{where}: run {i}") for i, s in enumerate(runs)]
    if cores is None:
        return runs[-1]
    match = [s for s in runs if s["cores"] == cores]
    if not match:
        raise MlusimError(f"{where}: no run on {cores} cores (have {', '.join(str(s['cores']) for s in runs)})")
    return match[0]
