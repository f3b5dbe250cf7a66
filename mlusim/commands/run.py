"""`mlusim run`: simulate a program on one or more core counts and print the report.

One core count prints the detailed report (kernels, cores, memory). Several print one line per run
as it finishes, then one scaling table (mlusim.experiments); --csv/--json write that table.
"""
from __future__ import annotations

import sys
from pathlib import Path

from mlusim.commands.common import (
    DEFAULT_MAX_SECONDS,
    MAX_BATCH,
    add_config_args,
    float_arg,
    int_arg,
    parse_cores,
    parse_inputs,
    resolve_config,
)
from mlusim.errors import CompileError, MlusimError


def register(sub) -> None:
    p = sub.add_parser("run", help="simulate a .mlu model, .s program, .onnx model or zoo model; report cycles")
    p.add_argument("program", help="model.mlu, program.s, model.onnx or a zoo model name (see `mlusim zoo`); "
                   "the last two are compiled for the config and for each core count run")
    p.add_argument("--batch", type=int_arg(1, MAX_BATCH), default=1, help="batch size when compiling a zoo or ONNX model (default 1)")
    p.add_argument("--resolution", type=int_arg(1, 1 << 16), default=None,
                   help="input height and width when compiling a zoo model (default: the model's)")
    p.add_argument("--cores", metavar="N|N,M,..|all",
                   help="cores to use (default: all of the chip); several give a scaling table")
    add_config_args(p)
    p.add_argument("--input", action="append", default=[], metavar="[NAME=]FILE.npy", help="input tensor")
    p.add_argument("--output", metavar="FILE.npy|DIR", help="write the output tensor(s)")
    p.add_argument("--json", metavar="FILE", help="write the report (or scaling table) as JSON")
    p.add_argument("--csv", metavar="FILE", help="write the scaling table as CSV (units in the headers); with "
                   "--per-layer also FILE_layers.csv")
    p.add_argument("--per-layer", action="store_true", help="scaling figures per kernel (layer) as well")
    p.add_argument("--trace", metavar="FILE.json", help="write a Chrome/Perfetto timeline (ui.perfetto.dev); "
                   "with several core counts one file per count, FILE.<N>cores.json")
    p.add_argument("--progress", action=argparse_bool(), default=None,
                   help="show kernels done and simulated cycles while running (default: when stderr is a terminal)")
    p.add_argument("--schedule", choices=("per-cluster", "spread"), default=None,
                   help="how a zoo model's batch is laid over the chip: per-cluster (the MLU370 vendor runtime: "
                        "images split over clusters, one cluster's cores per image, fc head over the chip) or "
                        "spread (every layer tiled over every core, one image over all clusters); default: the "
                        "config's runtime.schedule")
    p.add_argument("--timing-only", action="store_true", help="skip numerics (same cycles, faster)")
    p.add_argument("--no-cache", action="store_true", help="compile a zoo or ONNX model afresh, bypassing the "
                   "compile cache (~/.cache/mlusim, or $MLUSIM_CACHE_DIR)")
    p.add_argument("--max-cycles", type=float_arg(0, 1e18), default=None, help="stop with an error past this many cycles")
    p.add_argument("--max-instructions", type=int_arg(1, 10**12), default=20_000_000,
                   help="stop with an error past this many executed instructions (default 20M)")
    p.add_argument("--max-seconds", type=float_arg(0, 1e7), default=DEFAULT_MAX_SECONDS,
                   help="stop with an error past this much wall time per run (default 3600)")
    p.set_defaults(func=cmd_run)


def argparse_bool():
    import argparse

    return argparse.BooleanOptionalAction


class Progress:
    """Kernels done and simulated cycles on stderr, as simulate's progress callback (one bar per run)."""

    def __init__(self, enabled: bool):
        self.enabled, self.bar = enabled, None

    def start(self, label: str, total: int):
        if not self.enabled:
            return None
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn
        from rich.progress import Progress as RichProgress

        self.bar = RichProgress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                TextColumn("kernels, {task.fields[cycles]:,.0f} cycles"), TimeElapsedColumn(),
                                console=Console(stderr=True), transient=True)
        self.bar.start()
        task = self.bar.add_task(label, total=total, cycles=0.0)

        def cb(done, total, cycles):
            self.bar.update(task, completed=done, total=total, cycles=cycles)
        return cb

    def stop(self):
        if self.bar is not None:
            self.bar.stop()
            self.bar = None


def cmd_run(args) -> int:
    from mlusim.experiments import (
        LAYER_COLUMNS,
        check_counts,
        flatten_layers,
        compiles_on_the_fly,
        resolve_program,
        scaling_document,
        scaling_rows,
        write_csv,
        write_json,
    )
    from mlusim.report import render, render_scaling, summarize
    from mlusim.sim import simulate
    from mlusim.trace import write_trace

    if args.batch < 1:
        raise CompileError(f"--batch must be at least 1, got {args.batch}")
    on_the_fly = compiles_on_the_fly(args.program)
    per_cluster = False
    if on_the_fly:
        cfg = resolve_config(args, None)
        counts = parse_cores(args.cores, cfg.chip.cores) if args.cores else [cfg.chip.cores]
        check_counts(counts)
        per_cluster = _schedule(args, cfg) == "per-cluster"
        program = None if per_cluster else resolve_program(args.program, cfg, cores=counts[0], batch=args.batch,
                                                           resolution=args.resolution, cache=not args.no_cache)
    else:
        if args.batch != 1:
            raise CompileError(f"--batch applies to zoo and ONNX models; {args.program} is already compiled")
        if args.resolution is not None:
            raise CompileError(f"--resolution applies to zoo models; {args.program} is already compiled")
        program = resolve_program(args.program)
        cfg = resolve_config(args, program)
        counts = parse_cores(args.cores, cfg.chip.cores) if args.cores else [cfg.chip.cores]
        check_counts(counts)
    inputs = parse_inputs(args.input, program) if program is not None else None
    show = sys.stderr.isatty() if args.progress is None else args.progress
    progress = Progress(show)
    several = len(counts) > 1
    summaries, res = [], None
    for i, n in enumerate(counts):
        if per_cluster:
            res = _run_per_cluster(args, cfg, n)
        else:
            if on_the_fly and i:    # re-tiled for the cores it runs on
                program = resolve_program(args.program, cfg, cores=n, batch=args.batch, resolution=args.resolution,
                                          cache=not args.no_cache)
            cb = progress.start(f"{n} core(s)", len(program.kernels))
            try:
                res = simulate(program, cfg, cores=n, inputs=inputs, timing_only=args.timing_only,
                               max_cycles=args.max_cycles, max_instructions=args.max_instructions,
                               trace=bool(args.trace), progress=cb, max_seconds=args.max_seconds)
            except MlusimError as e:      # say which program faulted (a script runs many)
                raise type(e)(f"{args.program}: {e}" if not str(e).startswith(args.program) else e) from None
            finally:
                progress.stop()
        summary = summarize(res)
        summary["schedule"] = res.program_meta.get("schedule", "spread: every layer over every core")
        summaries.append(summary)
        rendered = render(res, summary)
        if on_the_fly:
            rendered = rendered.replace("\n", f"\nschedule: {summary['schedule']}\n", 1)
        print(rendered.split("\n", 1)[0] if several else rendered, flush=True)
        if args.trace and per_cluster:
            print("--trace: not written for the per-cluster schedule (use --schedule spread)")
        elif args.trace:
            path = Path(args.trace)
            if several:
                path = path.with_name(f"{path.stem}.{n}cores{path.suffix or '.json'}")
            nev = write_trace(res, path)
            print(f"wrote {path} ({nev:,} events; open in ui.perfetto.dev)")
        if res.interrupted:
            break
    batch = args.batch if per_cluster else int(program.meta.get("batch", 1) or 1)
    rows = scaling_rows(summaries, batch, per_layer=args.per_layer)
    if several:
        print(render_scaling(rows, f"{Path(args.program).name if per_cluster else program.meta.get('name', Path(args.program).name)} on {cfg.name}, "
                                   f"batch {batch}", args.per_layer))
    if args.output and res is not None and not args.timing_only and not res.interrupted:
        _write_outputs(res, args.output)
    if args.json:
        if several:
            write_json(scaling_document(args.program, cfg.name, batch, rows, summaries), args.json)
        else:
            write_json(summaries[0], args.json)
        print(f"wrote {args.json}")
    if args.csv:
        write_csv(rows, args.csv)
        print(f"wrote {args.csv}")
        if args.per_layer:
            lp = Path(args.csv)
            lp = lp.with_name(f"{lp.stem}_layers{lp.suffix or '.csv'}")
            write_csv(flatten_layers(rows), lp, LAYER_COLUMNS)
            print(f"wrote {lp}")
    return 130 if summaries and summaries[-1]["interrupted"] else 0


def _schedule(args, cfg) -> str:
    """The schedule to run: --schedule, else the config's; per-cluster needs a zoo model."""
    from mlusim.compiler.zoo import ZOO

    sched = args.schedule or cfg.runtime.schedule
    if sched == "per-cluster" and args.program.lower() not in ZOO:
        if args.schedule:
            raise CompileError(f"--schedule per-cluster: only zoo models are split per cluster; "
                               f"{args.program} runs with --schedule spread")
        return "spread"
    return sched


def _run_per_cluster(args, cfg, cores: int):
    """Compile and simulate the vendor runtime's per-cluster schedule on `cores` cores."""
    from mlusim.schedule import plan_per_cluster, run_per_cluster

    plan = plan_per_cluster(args.program.lower(), args.batch, cfg, cores, args.resolution, cache=not args.no_cache)
    inputs = parse_inputs(args.input, plan.trunk)
    return run_per_cluster(plan, cfg, inputs=inputs, timing_only=args.timing_only, max_cycles=args.max_cycles,
                           max_instructions=args.max_instructions)


def _write_outputs(res, dest: str) -> None:
    import numpy as np

    from mlusim.errors import SimulationError
    from mlusim.names import check_name

    outs = res.outputs
    p = Path(dest)
    if len(outs) > 1 and p.suffix == ".npy":
        raise SimulationError(f"--output {dest}: the program has {len(outs)} outputs ({', '.join(outs)}); "
                              f"give a directory")
    try:
        if len(outs) == 1 and p.suffix == ".npy":
            np.save(p, next(iter(outs.values())), allow_pickle=False)
            print(f"wrote {p}")
            return
        for name in outs:       # validated at load; checked again because it becomes a path
            check_name(name, "output tensor", SimulationError)
        if p.exists() and not p.is_dir():
            raise SimulationError(f"--output {dest}: exists and is not a folder (give FILE.npy for a program "
                                  f"with one output, else a folder)")
        p.mkdir(parents=True, exist_ok=True)
        for name, arr in outs.items():
            np.save(p / f"{name}.npy", arr, allow_pickle=False)
    except OSError as e:
        raise SimulationError(f"--output {dest}: cannot write: {e.strerror or e}") from None
    print(f"wrote {len(outs)} output(s) to {p}/")
