"""`mlusim sweep`: run a program over the cross product of config values and core counts.

    mlusim sweep prog.s --config mlu270 --set dram.bandwidth_gbps=51.2,102.4 --cores 4,16 --csv out.csv
    mlusim sweep --file sweep.yaml --jobs 8
    mlusim sweep prog.s --file sweep.yaml --cluster tcp://scheduler:8786
"""
from __future__ import annotations

import argparse
import sys
import time

from mlusim.commands.common import (
    DEFAULT_MAX_SECONDS,
    ZooHelpFormatter,
    add_build_args,
    build_options,
    float_arg,
    int_arg,
)
from mlusim.errors import MlusimError
from mlusim.progress import command_progress


def register(sub) -> None:
    p = sub.add_parser("sweep", help="simulate the cross product of config values x core counts; one table",
                       formatter_class=ZooHelpFormatter)
    p.add_argument("program", nargs="?", help="model.mlu, program.s, model.onnx or a zoo model name (see `mlusim "
                   "models`; or `program:` in the sweep file); the last two are compiled for every point")
    p.add_argument("--file", metavar="SWEEP.yaml", help="sweep file: program, config, set: {key: [values]}, "
                   "cores, timing_only (command-line options add to / override it)")
    p.add_argument("--config", metavar="NAME|FILE", help="base hardware config (default: the program's, else mlu270)")
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=V1,V2,..",
                   help="config key and the values to sweep (repeatable; the sweep is the cross product)")
    p.add_argument("--cores", metavar="N,M,..|all", help="core counts at every point (default: all of each config)")
    p.add_argument("--jobs", "-j", type=int_arg(1, 1024), default=None, help="local worker processes (default: one per CPU)")
    p.add_argument("--cluster", metavar="ADDRESS", help="run the points on a Dask distributed scheduler, "
                   "e.g. tcp://10.0.0.5:8786 (pip install 'mlusim[cluster]')")
    p.add_argument("--cluster-timeout", type=float_arg(0, 86400), default=10.0, metavar="SECONDS",
                   help="give up connecting to the scheduler after this long (default 10)")
    p.add_argument("--csv", metavar="FILE", help="write the table as CSV (units in the headers)")
    p.add_argument("--json", metavar="FILE", help="write the table as JSON")
    p.add_argument("--numerics", action="store_true", help="also compute values (default: timing only, "
                   "which gives the same cycles faster, a zoo or ONNX model (int8) compiled from its shapes alone)")
    p.add_argument("--max-cycles", type=float_arg(0, 1e18), default=None, help="per point: stop with an error past this")
    p.add_argument("--max-instructions", type=int_arg(1, 10**12), default=None, help="per point instruction budget (default 20M)")
    p.add_argument("--max-seconds", type=float_arg(0, 1e7), default=DEFAULT_MAX_SECONDS,
                   help="per point: stop with an error past this much wall time (default 3600)")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=True,
                   help="points done on stderr: a bar on a terminal, else a line every $MLUSIM_PROGRESS_SECONDS "
                        "(default 5) s of a long sweep (default: on)")
    p.add_argument("--hold-program", action="store_true",
                   help="compile a zoo or ONNX model once per core count for the base config and run that program "
                        "at every point, so only the hardware varies (default: recompile per point, as `mlusim run` "
                        "would, and mark the points where the compiler planned a different program: replanned)")
    add_build_args(p, "what `mlusim run` and `mlusim compile` take")
    p.set_defaults(func=cmd_sweep)


def _options(args) -> dict:
    from mlusim.commands.common import parse_cores
    from mlusim.sweep import SweepError, load_sweep_file, parse_set

    spec = load_sweep_file(args.file) if args.file else {}
    program = args.program or spec.get("program")
    if not program:
        raise SweepError("sweep: no program (give PROGRAM or `program:` in the sweep file)")
    params = dict(spec.get("set") or {})
    params.update(parse_set(args.sets))
    config = args.config or spec.get("config")
    cores = spec.get("cores")
    if args.cores:
        if args.cores == "all":
            from mlusim.experiments import default_config

            cores = parse_cores("all", default_config(None, config).chip.cores)
        else:
            cores = parse_cores(args.cores, 4096)
    timing_only = not args.numerics and bool(spec.get("timing_only", True))
    options = build_options(args)
    if timing_only:          # a zoo or ONNX model is then compiled from shapes alone (no weights, no calibration)
        options = options.for_timing(str(program))
    return {"spec": str(program), "base_config": config, "params": params, "cores": cores,
            "timing_only": timing_only,
            "max_cycles": args.max_cycles if args.max_cycles is not None else spec.get("max_cycles"),
            "max_instructions": args.max_instructions or spec.get("max_instructions") or 20_000_000,
            "max_seconds": args.max_seconds, "options": options, "hold_program": args.hold_program}


def cmd_sweep(args) -> int:
    from mlusim.experiments import write_csv, write_json
    from mlusim.report import render_sweep
    from mlusim.sweep import Interrupted, SweepFailed, columns, sweep, sweep_document

    opts = _options(args)
    bar = command_progress(args.progress)
    unit = "steps (compiles, then points)" if opts["hold_program"] else "points"

    def progress(done, total, _row):
        bar.update(f"sweep of {opts['spec']}", done, total, unit)

    t0 = time.perf_counter()
    interrupted, failure = False, None
    if args.cluster:
        from mlusim.cluster import quiet_logs

        quiet_logs()
    try:
        rows = sweep(**opts, jobs=args.jobs, cluster=args.cluster, cluster_timeout=args.cluster_timeout,
                     progress=progress)
    except Interrupted as e:
        rows, interrupted = e.rows, True
    except SweepFailed as e:        # the finished rows are written, then the one-line error
        rows, failure = e.rows, e
    finally:
        bar.stop()
    wall = time.perf_counter() - t0
    keys = list(opts["params"])
    failed = [r for r in rows if r.get("error")]
    if failure is None and rows and len(failed) == len(rows):
        raise MlusimError(f"every sweep point failed; the first: {failed[0]['error']}")
    where = f"on {args.cluster}" if args.cluster else f"with {args.jobs or 'one per CPU'} local job(s)"
    if opts["hold_program"]:
        where += "; program held: compiled once per core count for the base config"
    print(render_sweep(rows, keys, f"sweep of {opts['spec']}: {len(rows)} point(s) in {wall:.1f} s wall {where}"))
    for r in failed:
        print(f"mlusim: warning: point {r['point']} could not run: {r['error']}", file=sys.stderr)
    doc = sweep_document(opts["spec"], opts["base_config"], opts["params"], opts["cores"], rows,
                         opts["timing_only"], interrupted, opts["hold_program"], str(failure) if failure else None)
    if args.json:
        write_json(doc, args.json)
        print(f"wrote {args.json}")
    if args.csv:
        write_csv(rows, args.csv, columns(keys))
        print(f"wrote {args.csv}")
    if failure is not None:
        raise failure
    if interrupted:
        print("mlusim: interrupted; the table holds the points that finished", file=sys.stderr)
        return 130
    return 0
