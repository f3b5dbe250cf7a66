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
from mlusim.progress import Progress, command_progress


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
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=True,
                   help="compile and simulation progress on stderr: a bar on a terminal, else a line every "
                        "$MLUSIM_PROGRESS_SECONDS (default 5) s of a long run (default: on)")
    p.add_argument("--schedule", choices=("per-cluster", "spread"), default=None,
                   help="how a zoo model's batch is laid over the chip: per-cluster (the MLU370 vendor runtime: "
                        "images split over clusters, one cluster's cores per image, fc head over the chip) or "
                        "spread (every layer tiled over every core, one image over all clusters); default: the "
                        "config's runtime.schedule")
    p.add_argument("--timing-only", action="store_true", help="skip numerics (same cycles, faster); a zoo or ONNX "
                   "model (int8) is then compiled from its shapes alone: no weights drawn, no calibration (per-cluster: "
                   "the trunk; an int16 fc head, the MLU370 presets', is compiled and calibrated in full)")
    p.add_argument("--max-cycles", type=float_arg(0, 1e18), default=None, help="stop with an error past this many cycles")
    p.add_argument("--max-instructions", type=int_arg(1, 10**12), default=20_000_000,
                   help="stop with an error past this many executed instructions (default 20M)")
    p.add_argument("--max-seconds", type=float_arg(0, 1e7), default=DEFAULT_MAX_SECONDS,
                   help="stop with an error past this much wall time per run (default 3600)")
    add_build_args(p, "what `mlusim compile` takes, with the same defaults")
    p.set_defaults(func=cmd_run)


class RunProgress:
    """`mlusim run`'s progress (mlusim.progress): each run's compile and simulation, labelled with
    the run's core count; `stop` ends a run's bar and moves to the next count."""

    def __init__(self, progress: Progress, name: str, counts: list[int]):
        self.progress, self.name, self.counts, self.run = progress, name, counts, 0

    def __call__(self, done: float, total: int, cycles: float) -> None:
        n = self.counts[min(self.run, len(self.counts) - 1)]
        self.progress.simulated(f"run {self.name} on {n} core(s)", done, total, cycles)

    def compiling(self, cores: int):
        return self.progress.compiling(f"compile {self.name} for {cores} core(s)")

    def stop(self) -> None:
        self.progress.stop()
        self.run += 1


def cmd_run(args) -> int:
    from mlusim.experiments import compiles_on_the_fly, resolve_program, scaling

    on_the_fly = compiles_on_the_fly(args.program)
    options = build_options(args)
    if args.timing_only:        # a zoo or ONNX model is then compiled from shapes alone (no weights, no calibration)
        options = options.for_timing(args.program)
    if on_the_fly:
        program, cfg = args.program, resolve_config(args, None)
    else:
        program = resolve_program(args.program, options=options)    # refuses build options for a finished file
        cfg = resolve_config(args, program)
    counts = parse_cores(args.cores, cfg.chip.cores) if args.cores else [cfg.chip.cores]
    inputs = load_inputs(args.input)
    progress = RunProgress(command_progress(args.progress), Path(args.program).name, counts)
    out = RunOutput(args, len(counts) > 1, progress)
    try:
        rows = scaling(program, cfg, counts, options=options, schedule=args.schedule, per_layer=args.per_layer,
                       timing_only=args.timing_only, inputs=inputs or None, on_run=out.on_run,
                       max_cycles=args.max_cycles, max_instructions=args.max_instructions, trace=bool(args.trace),
                       progress=progress, compile_progress=progress.compiling,
                       max_seconds=args.max_seconds)
    except MlusimError as e:      # say which program faulted (a script runs many)
        raise type(e)(f"{args.program}: {e}" if not str(e).startswith(args.program) else e) from None
    finally:
        progress.stop()
    return out.finish(rows, cfg)


class RunOutput:
    """What `mlusim run` prints and writes as each run finishes, then for the whole set."""

    def __init__(self, args, several: bool, progress: RunProgress):
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
