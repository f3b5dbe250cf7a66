"""`mlusim plot speedup|roofline|sweep|calibration REPORT.json -o PREFIX`: PNG and SVG figures from reports.

REPORT.json is what `mlusim run --json` (one core count: a run; several: a scaling table) or
`mlusim sweep --json` wrote. Needs matplotlib (pip install 'mlusim[plot]').
"""
from __future__ import annotations


def register(sub) -> None:
    p = sub.add_parser("plot", help="draw speedup, roofline or sweep figures (PNG + SVG) from a JSON report")
    ps = p.add_subparsers(dest="figure", metavar="FIGURE", required=True)
    s = ps.add_parser("speedup", help="speedup vs cores with the ideal line (scaling or sweep report)")
    s.add_argument("report")
    s.add_argument("-o", "--output", required=True, metavar="PREFIX", help="writes PREFIX.png and PREFIX.svg")
    s.add_argument("--title", default="")
    r = ps.add_parser("roofline", help="each kernel of one run against the compute and DRAM roofs")
    r.add_argument("report")
    r.add_argument("-o", "--output", required=True, metavar="PREFIX")
    r.add_argument("--cores", type=int, default=None, help="which run of a scaling report (default: the last)")
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
    p.set_defaults(func=cmd_plot)


def cmd_plot(args) -> int:
    from mlusim import plot
    from mlusim.errors import MlusimError
    from mlusim.experiments import read_table

    data = read_table(args.report)
    kind = data["kind"]
    if args.figure == "speedup":
        if kind == "scaling":
            paths = plot.plot_speedup(data["rows"], args.output, args.title)
        elif kind == "sweep":
            keys = list(data.get("params") or {})
            series: dict[str, list] = {}
            for row in data["rows"]:
                label = ", ".join(f"{k}={row.get(k)}" for k in keys) or "simulated"
                series.setdefault(label, []).append(row)
            paths = plot.plot_speedup(series, args.output, args.title)
        else:
            raise MlusimError(f"{args.report}: a speedup plot needs a report of several core counts "
                              f"(mlusim run --cores 1,2,4 --json ...), this one is '{kind}'")
    elif args.figure == "calibration":
        if kind != "calibration":
            raise MlusimError(f"{args.report}: a calibration plot needs `mlusim calibrate --json`, not '{kind}'")
        paths = plot.plot_calibration(data, args.output, args.title)
    elif args.figure == "roofline":
        if kind == "run":
            summary = data
        elif kind in ("scaling", "runs"):
            runs = data["runs"]
            if args.cores is None:
                summary = runs[-1]
            else:
                match = [s for s in runs if s["cores"] == args.cores]
                if not match:
                    raise MlusimError(f"{args.report}: no run on {args.cores} cores (have "
                                      f"{', '.join(str(s['cores']) for s in runs)})")
                summary = match[0]
        else:
            raise MlusimError(f"{args.report}: a roofline needs a run report (mlusim run --json), not '{kind}'")
        paths = plot.plot_roofline(summary, args.output, args.title)
    else:
        if kind != "sweep":
            raise MlusimError(f"{args.report}: a sweep plot needs a sweep report (mlusim sweep --json), not '{kind}'")
        by = [b for b in args.by.split(",") if b] if args.by is not None else None
        paths = plot.plot_sweep(data["rows"], args.x, args.y, args.output, by, args.title)
    for p in paths:
        print(f"wrote {p}")
    return 0
