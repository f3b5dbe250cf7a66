"""`mlusim run`: simulate a program on one or more core counts and print the report.

One core count prints the detailed report (kernels, cores, memory). Several print one line per run
as it finishes, then one scaling table (mlusim.experiments); --csv/--json write that table.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from mlusim.commands.common import (
    DEFAULT_MAX_SECONDS,
    ZooHelpFormatter,
    add_build_args,
    add_config_args,
    build_options,
    float_arg,
    int_arg,
    load_inputs,
    parse_cores,
    resolve_config,
)
from mlusim.errors import MlusimError


def register(sub) -> None:
    p = sub.add_parser("run", help="simulate a .mlu model, .s program, .onnx model or zoo model; report cycles",
                       formatter_class=ZooHelpFormatter)
    p.add_argument("program", help="model.mlu, program.s, model.onnx or a zoo model name (see `mlusim models`); "
                   "the last two are compiled for the config and for each core count run")
    p.add_argument("--cores", metavar="N|N,M,..|all",
                   help="cores to use (default: all of the chip); several give a scaling table")
    add_config_args(p)
    p.add_argument("--input", action="append", default=[], metavar="[NAME=]FILE.npy", help="input tensor")
    p.add_argument("--output", metavar="FILE.npy|DIR", help="write the output tensor(s)")
    p.add_argument("--json", metavar="FILE", help="write the report (or scaling table) as JSON")
    p.add_argument("--csv", metavar="FILE", help="write the scaling table as CSV (units in the headers); with "
                   "--per-layer also FILE_layers.csv")
    p.add_argument("--per-layer", action="store_true", help="a table of figures per layer (layers inside fused "
                   "kernels too), matched by layer name across core counts")
    p.add_argument("--trace", metavar="FILE.json", help="write a Chrome/Perfetto timeline (ui.perfetto.dev; "
                   "FILE.json.gz: gzip); with several core counts one file per count, FILE.<N>cores.json")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                   help="show kernels done and simulated cycles while running (default: when stderr is a terminal)")
    p.add_argument("--schedule", choices=("per-cluster", "spread"), default=None,
                   help="how a zoo model's batch is laid over the chip: per-cluster (the MLU370 vendor runtime: "
                        "images split over clusters, one cluster's cores per image, fc head over the chip) or "
                        "spread (every layer tiled over every core, one image over all clusters); default: the "
                        "config's runtime.schedule")
    p.add_argument("--timing-only", action="store_true", help="skip numerics (same cycles, faster)")
    p.add_argument("--max-cycles", type=float_arg(0, 1e18), default=None, help="stop with an error past this many cycles")
    p.add_argument("--max-instructions", type=int_arg(1, 10**12), default=20_000_000,
                   help="stop with an error past this many executed instructions (default 20M)")
    p.add_argument("--max-seconds", type=float_arg(0, 1e7), default=DEFAULT_MAX_SECONDS,
                   help="stop with an error past this much wall time per run (default 3600)")
    add_build_args(p, "what `mlusim compile` takes, with the same defaults")
    p.set_defaults(func=cmd_run)


class Progress:
    """Kernels done and simulated cycles on stderr, as simulate's progress callback: one bar per
    run, labelled with its core count, started by the run's first kernel and ended by `stop`."""

    def __init__(self, enabled: bool, labels: list[str]):
        self.enabled, self.labels, self.run, self.bar, self.task = enabled, labels, 0, None, None

    def __call__(self, done: int, total: int, cycles: float) -> None:
        if not self.enabled:
            return
        if self.bar is None:
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn
            from rich.progress import Progress as RichProgress

            self.bar = RichProgress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                    TextColumn("kernels, {task.fields[cycles]:,.0f} cycles"), TimeElapsedColumn(),
                                    console=Console(stderr=True), transient=True)
            self.bar.start()
            self.task = self.bar.add_task(self.labels[min(self.run, len(self.labels) - 1)], total=total, cycles=0.0)
        self.bar.update(self.task, completed=done, total=total, cycles=cycles)

    def stop(self) -> None:
        if self.bar is not None:
            self.bar.stop()
            self.bar = None
        self.run += 1


def cmd_run(args) -> int:
    from mlusim.experiments import compiles_on_the_fly, resolve_program, scaling

    on_the_fly = compiles_on_the_fly(args.program)
    options = build_options(args)
    if on_the_fly:
        program, cfg = args.program, resolve_config(args, None)
    else:
        program = resolve_program(args.program, options=options)    # refuses build options for a finished file
        cfg = resolve_config(args, program)
    counts = parse_cores(args.cores, cfg.chip.cores) if args.cores else [cfg.chip.cores]
    inputs = load_inputs(args.input)
    show = sys.stderr.isatty() if args.progress is None else args.progress
    progress = Progress(show, [f"{n} core(s)" for n in counts])
    out = RunOutput(args, len(counts) > 1, progress)
    try:
        rows = scaling(program, cfg, counts, options=options, schedule=args.schedule, per_layer=args.per_layer,
                       timing_only=args.timing_only, inputs=inputs or None, on_run=out.on_run,
                       max_cycles=args.max_cycles, max_instructions=args.max_instructions, trace=bool(args.trace),
                       progress=progress, max_seconds=args.max_seconds)
    except MlusimError as e:      # say which program faulted (a script runs many)
        raise type(e)(f"{args.program}: {e}" if not str(e).startswith(args.program) else e) from None
    finally:
        progress.stop()
    return out.finish(rows, cfg)


class RunOutput:
    """What `mlusim run` prints and writes as each run finishes, then for the whole set."""

    def __init__(self, args, several: bool, progress: Progress):
        self.args, self.several, self.progress = args, several, progress
        self.summaries: list[dict] = []
        self.last = None
        self.name = Path(args.program).name

    def on_run(self, res, summary: dict) -> None:
        from mlusim.report import render
        from mlusim.trace import trace_path, write_trace

        self.progress.stop()
        args = self.args
        self.summaries.append(summary)
        self.last = res
        self.name = str(res.program_meta.get("name") or res.program_meta.get("model") or self.name)
        rendered = render(res, summary)
        print(rendered.split("\n", 1)[0] if self.several else rendered, flush=True)
        if args.trace and res.trace is None:
            print("--trace: not written for the per-cluster schedule (use --schedule spread)")
        elif args.trace:
            path = trace_path(args.trace, res.cores if self.several else None)
            nev = write_trace(res, path)
            print(f"wrote {path} ({nev:,} events; open in ui.perfetto.dev)")

    def finish(self, rows: list[dict], cfg) -> int:
        from mlusim.experiments import LAYER_COLUMNS, flatten_layers, scaling_document, write_csv, write_json
        from mlusim.report import render_layers, render_scaling

        args, res = self.args, self.last
        batch = int(res.program_meta.get("batch", 1) or 1) if res is not None else 1
        if self.several:
            print(render_scaling(rows, f"{self.name} on {cfg.name}, batch {batch}", args.per_layer))
        elif args.per_layer and rows:
            print(render_layers(rows[0]["layers"], f"per layer: {self.name} on {cfg.name}, {rows[0]['cores']} "
                                                   f"core(s), batch {batch}"))
        if args.output and res is not None and not args.timing_only and not res.interrupted:
            _write_outputs(res, args.output)
        if args.json:
            write_json(scaling_document(args.program, cfg.name, batch, rows, self.summaries) if self.several
                       else self.summaries[0], args.json)
            print(f"wrote {args.json}")
        if args.csv:
            write_csv(rows, args.csv)
            print(f"wrote {args.csv}")
            if args.per_layer:
                lp = Path(args.csv)
                lp = lp.with_name(f"{lp.stem}_layers{lp.suffix or '.csv'}")
                write_csv(flatten_layers(rows), lp, LAYER_COLUMNS)
                print(f"wrote {lp}")
        return 130 if self.summaries and self.summaries[-1]["interrupted"] else 0


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
