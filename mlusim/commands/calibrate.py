"""`mlusim calibrate`: the timing model against published MLU370 runs (docs/calibration.md).

Every int8-mixed-fp16 point (network, board, batch) whose network the zoo has runs as
`mlusim run NET --config mlu370-s4|x4 --batch B --timing-only` would; the table gives measured
and simulated ms and the error, then the MAPE, the leave-one-network-out MAPE (each network
predicted by parameters fitted without it) and every fitted parameter before and after.
"""
from __future__ import annotations

import sys


def register(sub) -> None:
    p = sub.add_parser("calibrate", help="compare simulated and published MLU370 latencies; fit the runtime "
                       "and chip parameters; leave-one-network-out error")
    p.add_argument("--data", metavar="CSV", help="published measurements (default: the bundled MLU370 rows)")
    p.add_argument("--networks", metavar="A,B", help="only these zoo networks")
    p.add_argument("--boards", default="S4,X4", metavar="S4,X4", help="boards to use (default S4,X4)")
    p.add_argument("--batches", metavar="1,4,8", help="only these batch sizes")
    p.add_argument("--no-fit", action="store_true", help="only evaluate the presets as they are")
    p.add_argument("--json", metavar="FILE", help="write points, rows, errors and parameters as JSON")
    p.add_argument("--csv", metavar="FILE", help="write one line per published row as CSV")
    p.add_argument("--no-cache", action="store_true", help="compile every point afresh, bypassing the compile cache")
    p.set_defaults(func=cmd_calibrate)


def _select(args):
    from mlusim.calibration import BOARDS, CalibrationError, load_points

    boards = tuple(b.strip().upper() for b in args.boards.split(",") if b.strip())
    bad = [b for b in boards if b not in BOARDS]
    if bad or not boards:
        raise CalibrationError(f"--boards {args.boards}: choose from {', '.join(BOARDS)}")
    points, skipped = load_points(args.data, boards)
    if args.networks:
        want = {n.strip().lower() for n in args.networks.split(",") if n.strip()}
        points = [p for p in points if p.network in want]
    if args.batches:
        try:
            parts = [b.strip() for b in args.batches.split(",") if b.strip()]
            if not all(b.isascii() and b.isdigit() for b in parts):   # int() would read '١٦' as 16
                raise ValueError(args.batches)
            batches = {int(b) for b in parts}
        except ValueError:
            raise CalibrationError(f"--batches {args.batches}: expected numbers like 1,4,8") from None
        points = [p for p in points if p.batch in batches]
    if not points:
        raise CalibrationError("no published point matches (see --networks, --boards, --batches)")
    return points, skipped


def cmd_calibrate(args) -> int:
    from mlusim.calibration import BOARDS, FITTED, Runner, fit
    from mlusim.config import load_config

    points, skipped = _select(args)
    configs = {b: load_config(BOARDS[b]) for b in {p.board for p in points}}
    runner = Runner(cache=not args.no_cache)
    params = () if args.no_fit else FITTED
    show = sys.stderr.isatty()

    def progress(done, total):
        if show:
            print(f"\rfit: {done}/{total} parameter sets", end="" if done < total else "\n", file=sys.stderr)

    for i, p in enumerate(points):
        if show:
            print(f"\rcompiling {i + 1}/{len(points)} {p.key:40s}", end="", file=sys.stderr)
        runner.plan(p, configs[p.board])
    if show:
        print(file=sys.stderr)
    f = fit(points, configs, runner, params, progress)
    doc = document(f, params, skipped)
    print(render(doc))
    doc["power"] = _power(f, configs, runner, bool(params), show)
    if args.json:
        from mlusim.experiments import write_json

        write_json(doc, args.json)
        print(f"wrote {args.json}")
    if args.csv:
        _write_rows(doc, args.csv)
        print(f"wrote {args.csv}")
    return 0


def _power(f, configs, runner, refit: bool, show: bool) -> dict | None:
    """Board power against the points that published it (mlusim.power_calibration); printed."""
    from mlusim import power_calibration as pc

    def progress(done, total):
        if show:
            print(f"\rpower: {done}/{total} points simulated", end="" if done < total else "\n", file=sys.stderr)

    pf = pc.from_time_fit(f, configs, runner, refit, progress)
    if pf is None:
        print("board power: no selected point published it (only S4 logs do)")
        return None
    doc = pc.document(pf, next(p.board for p in f.points if p.key == pf.keys[0]))
    print(pc.render(doc))
    return doc


def document(f, params, skipped) -> dict:
    from mlusim.calibration import mape, sensitive_points

    lono = f.lono_errors() if params else [float("nan")] * len(f.points)
    pts = []
    for i, p in enumerate(f.points):
        pts.append({"network": p.network, "board": p.board, "batch": p.batch, "measured_ms": p.measured_ms,
                    "runs": len(p.rows), "spread": p.spread, "simulated_ms": f.ms[f.best][i],
                    "error": f.errors(f.best, [i])[0], "simulated_ms_before": f.ms[f.before][i],
                    "error_before": f.errors(f.before, [i])[0], "error_left_out": lono[i],
                    "rows": [{"ms": r.ms, "source": r.source, "where": r.where} for r in p.rows]})
    nets = sorted({p.network for p in f.points})
    return {
        "kind": "calibration", "points": pts, "mape": mape(f.errors(f.best)), "mape_before": mape(f.errors(f.before)),
        "mape_left_out": mape(lono) if params else None,
        "parameters": [{"key": p.key, "what": p.what, "before": f.cells[f.before][p.key], "after": f.cells[f.best][p.key],
                        "grid": list(p.grid), "fitted_on": f"{len(f.points)} points of {', '.join(nets)}",
                        "moves_most": sensitive_points(f, p.key),
                        "left_out": {n: f.cells[c][p.key] for n, c in f.lono.items()}} for p in params],
        "left_out_rows": [{"row": r, "why": why} for r, why in skipped],
    }


def render(doc: dict) -> str:
    from rich.console import Console
    from rich.table import Table

    t = Table(title="int8-mixed-fp16 device latency: published vs simulated", title_justify="left")
    for c in ("network", "board", "batch", "runs", "measured ms", "simulated ms", "error", "before", "left out"):
        t.add_column(c, justify="left" if c in ("network", "board") else "right")
    for p in doc["points"]:
        lo = p["error_left_out"]
        t.add_row(p["network"], p["board"], str(p["batch"]), str(p["runs"]), f"{p['measured_ms']:.3f}",
                  f"{p['simulated_ms']:.3f}", f"{100 * p['error']:+.0f}%", f"{100 * p['error_before']:+.0f}%",
                  "" if lo != lo else f"{100 * lo:+.0f}%")
    console = Console(width=120)
    with console.capture() as cap:
        console.print(t)
    lines = [cap.get().rstrip()]
    lines.append(f"MAPE {doc['mape']:.1f}% (before the fit {doc['mape_before']:.1f}%)"
                 + (f"; leave-one-network-out MAPE {doc['mape_left_out']:.1f}%" if doc["mape_left_out"] is not None else ""))
    for p in doc["parameters"]:
        lines.append(f"  {p['key']}: {p['before']} -> {p['after']}  ({p['what']}; fitted on {p['fitted_on']}; "
                     f"moves most: {', '.join(p['moves_most'])})")
    if doc["left_out_rows"]:
        flagged = [r for r in doc["left_out_rows"] if r["why"].startswith("flagged")]
        lines.append(f"{len(doc['left_out_rows'])} rows not used ({len(flagged)} flagged, the rest networks the "
                     f"zoo lacks); --json lists them")
    return "\n".join(lines)


def _write_rows(doc: dict, path: str) -> None:
    from mlusim.experiments import write_csv

    rows = []
    power = {q["point"]: q for q in (doc.get("power") or {}).get("points", [])}
    for p in doc["points"]:
        w = power.get(f"{p['network']}/{p['board']}/b{p['batch']}", {})
        for r in p["rows"]:
            rows.append({"network": p["network"], "board": p["board"], "batch": p["batch"], "row_ms": r["ms"],
                         "source": r["source"], "measured_ms": p["measured_ms"], "simulated_ms": p["simulated_ms"],
                         "error": p["error"], "error_left_out": p["error_left_out"], "where": r["where"],
                         "measured_w": w.get("measured_w"), "simulated_w": w.get("simulated_w"),
                         "power_error": w.get("error"), "power_error_left_out": w.get("error_left_out")})
    cols = [(k, k, 1.0) for k in rows[0]]
    write_csv(rows, path, cols)
