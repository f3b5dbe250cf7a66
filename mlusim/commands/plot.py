"""`mlusim plot speedup|roofline|sweep|calibration|energy REPORT.json -o OUT`: figures from reports.

REPORT.json is what `mlusim run --json` (one core count: a run; several: a scaling table) or
`mlusim sweep --json` wrote. OUT.png, OUT.svg and OUT.pdf; OUT.pdf (or .png, .svg) writes that
format only; `--format pdf,svg` chooses. Needs matplotlib (pip install 'mlusim[plot]').
"""
from __future__ import annotations

import argparse

from mlusim.commands.common import int_arg

FORMATS = ("png", "svg", "pdf")


def formats_arg(text: str) -> list[str]:
    """`--format png,pdf` -> ["png", "pdf"]."""
    out = [f.strip().lower() for f in text.split(",") if f.strip()]
    bad = [f for f in out if f not in FORMATS]
    if not out or bad:
        raise argparse.ArgumentTypeError(f"expected a list of {', '.join(FORMATS)}, got {text[:40]!r}")
    return out


def _common(p) -> None:
    p.add_argument("report")
    p.add_argument("-o", "--output", required=True, metavar="OUT",
                   help="writes OUT.png, OUT.svg and OUT.pdf; OUT.pdf (or .png, .svg) writes that format only")
    p.add_argument("--format", type=formats_arg, default=None, metavar="F1,F2",
                   help=f"formats to write, of {', '.join(FORMATS)} (default: by the extension of -o, else all)")
    p.add_argument("--title", default="", help="replaces the title (default: what, model, batch, config)")


def register(sub) -> None:
    p = sub.add_parser("plot", help="draw speedup, roofline, sweep, calibration or energy figures (PNG, SVG, PDF) "
                       "from a JSON report")
    ps = p.add_subparsers(dest="figure", metavar="FIGURE", required=True)
    _common(ps.add_parser("speedup", help="speedup vs cores with the ideal line (scaling or sweep report)"))
    r = ps.add_parser("roofline", help="each kernel of one run against the compute and DRAM roofs")
    _common(r)
    r.add_argument("--cores", type=int_arg(1, 4096), default=None, help="which run of a scaling report (default: the last)")
    r.add_argument("--labels", type=int_arg(0, 1000), default=None, metavar="N",
                   help="name the N kernels with the most cycles (default 12; 0: none)")
    w = ps.add_parser("sweep", help="a metric of a sweep against one swept parameter")
    _common(w)
    w.add_argument("--x", required=True, metavar="KEY", help="swept column for the x axis, e.g. dram.bandwidth_gbps")
    w.add_argument("--y", default="latency_ms", metavar="METRIC", help="row key to plot (default latency_ms)")
    w.add_argument("--by", default=None, metavar="K1,K2", help="columns that make separate lines "
                   "(default: every other swept column and cores)")
    _common(ps.add_parser("calibration", help="simulated vs published latency, log-log, identity line "
                          "(mlusim calibrate --json)"))
    _common(ps.add_parser("energy", help="joules by part (MAC, vector, DRAM, SRAM, NRAM/WRAM, DMA, static) as "
                          "stacked bars: the run and its kernels, or each run of a scaling report"))
    p.set_defaults(func=cmd_plot)


def cmd_plot(args) -> int:
    from mlusim import plot
    from mlusim.errors import MlusimError
    from mlusim.experiments import read_table

    data = read_table(args.report)
    kind, where, out, fmts = data["kind"], args.report, args.output, args.format
    if args.figure == "speedup":
        if kind == "scaling":
            paths = plot.plot_speedup(plot.check_rows(data.get("rows"), where, plot.ROW), out, args.title,
                                      plot.subject_of_report(data), fmts)
        elif kind == "sweep":
            keys = list(_params(data, where))
            series: dict[str, list] = {}
            for row in plot.check_rows(data.get("rows"), where, plot.ROW):
                label = ", ".join(plot.value_label(k, row.get(k)) for k in keys) or "simulated"
                series.setdefault(label, []).append(row)
            paths = plot.plot_speedup(series, out, args.title, plot.subject_of_report(data), fmts)
        else:
            raise MlusimError(f"{where}: a speedup plot needs a report of several core counts "
                              f"(mlusim run --cores 1,2,4 --json ...), this one is {str(kind)[:40]!r}")
    elif args.figure == "calibration":
        if kind != "calibration":
            raise MlusimError(f"{where}: a calibration plot needs `mlusim calibrate --json`, not {str(kind)[:40]!r}")
        paths = plot.plot_calibration(data, out, args.title, fmts)
    elif args.figure == "energy":
        from mlusim.energy_plot import plot_energy

        paths = plot_energy(data, out, args.title, where, fmts)
    elif args.figure == "roofline":
        top = plot.TOP_LABELS if args.labels is None else args.labels
        paths = plot.plot_roofline(_summary(data, kind, where, args.cores), out, args.title, top > 0, fmts, top)
    else:
        if kind != "sweep":
            raise MlusimError(f"{where}: a sweep plot needs a sweep report (mlusim sweep --json), not "
                              f"{str(kind)[:40]!r}")
        by = [b for b in args.by.split(",") if b] if args.by is not None else None
        need = {args.x: plot.number(-plot.MAX_COUNT, plot.MAX_COUNT), args.y: plot.number(-plot.MAX_COUNT, plot.MAX_COUNT)}
        paths = plot.plot_sweep(plot.check_rows(data.get("rows"), where, need), args.x, args.y, out, by,
                                args.title, plot.subject_of_report(data), fmts)
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
