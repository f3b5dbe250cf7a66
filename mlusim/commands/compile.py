"""`mlusim compile` and `mlusim models`: the model zoo and the compiler from the command line."""
from __future__ import annotations

import argparse
import sys
import time
from dataclasses import replace
from pathlib import Path

from mlusim.commands.common import ZooHelpFormatter, add_build_args, add_config_args, build_options, int_arg
from mlusim.errors import CompileError


def register(sub) -> None:
    p = sub.add_parser("compile", help="compile a zoo model or an ONNX file into a .mlu offline model file",
                       formatter_class=ZooHelpFormatter)
    p.add_argument("source", nargs="?", metavar="MODEL.onnx",
                   help="an ONNX model: float (calibrated) or already quantized (QDQ / QLinear*)")
    p.add_argument("--model", metavar="NAME", help="zoo model (mlusim models), instead of an ONNX file")
    p.add_argument("--calibrate", metavar="SAMPLES.npy",
                   help="ONNX float models: calibration inputs [S, C, H, W] (default: random data, with a warning)")
    p.add_argument("--cores", type=int_arg(1, 4096), default=None,
                   help="cores to tile for (default: all cores of the config, as `mlusim run`); run the file on "
                        "that many cores for the figure `mlusim run NAME --cores N` gives")
    p.add_argument("-o", "--output", metavar="FILE.mlu")
    p.add_argument("--timing-only", action="store_true",
                   help="int8 models: compile from shapes alone, for timing: no weights drawn, no calibration; "
                        "the file gives the model's cycles and runs only with `mlusim run --timing-only`")
    p.add_argument("-v", "--verbose", action="store_true", help="also list the operators fused into each layer")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=True,
                   help="layers calibrated and lowered on stderr: a bar on a terminal, else a line every "
                        "$MLUSIM_PROGRESS_SECONDS (default 5) s of a long compile (default: on)")
    add_config_args(p)
    add_build_args(p, "the same options and defaults as `mlusim run NAME`")
    p.set_defaults(func=cmd_compile)

    p = sub.add_parser("models", help="list the built-in model zoo")
    p.add_argument("--batch", type=int_arg(1, 1024), default=1)
    p.set_defaults(func=cmd_models)


def cmd_compile(args) -> int:
    from mlusim import mlufile
    from mlusim.config import load_config
    from mlusim.programs import compile_cached
    from mlusim.progress import command_progress

    if (args.source is None) == (args.model is None):
        raise CompileError("compile needs either an ONNX file (mlusim compile model.onnx) or a zoo model "
                           "(--model NAME), not " + ("both" if args.source else "neither"))
    if args.source and Path(args.source).suffix.lower() != ".onnx":
        raise CompileError(f"{args.source}: compile takes an .onnx file (or --model NAME for a zoo model)")
    cfg = load_config(args.config, args.overrides)
    cores = args.cores or cfg.chip.cores
    if cores > cfg.chip.cores:
        raise CompileError(f"--cores {cores} exceeds the {cfg.chip.cores} cores of {cfg.name}")
    label = Path(args.source).stem if args.source else args.model
    progress = command_progress(args.progress)
    t0 = time.perf_counter()
    try:
        program, extra = compile_cached(args.source or args.model, cfg, cores, _options(args),
                                        progress.compiling(f"compile {label} for {cores} core(s)"))
    finally:
        progress.stop()
    seconds = time.perf_counter() - t0
    for note in extra.get("notes", []):
        print(f"warning: {note}", file=sys.stderr)
    if cfg.runtime.schedule == "per-cluster" and args.model:
        print(f"warning: {cfg.name} runs zoo models per cluster (`mlusim run {args.model}`); a .mlu file holds one "
              f"program, tiled over all {cores} cores (the spread schedule), so runs of it differ", file=sys.stderr)
    out = args.output or f"{label}.mlu"
    t0 = time.perf_counter()
    mlufile.save(program, out)
    m = program.meta
    weights = "no weights (timing only)" if m.get("shape_only") else f"weights {m['weight_bytes'] / 2**20:.1f} MiB"
    print(f"wrote {out}: {label} batch {m['batch']} for {cfg.name} on {cores} core(s), {len(program.kernels)} "
          f"kernels, {program.instruction_count:,} instructions, {m['macs'] / 1e9:.2f} GMAC, {weights} "
          f"({seconds:.2f} s compile, {time.perf_counter() - t0:.2f} s write)")
    if m.get("cluster_fusion"):
        print(f"  cluster fusion: {m['cluster_fusion']}")
    if args.verbose:
        for name, ops in extra.get("fused", []):
            print(f"  fused {name}: {' + '.join(ops)}")
    return 0


def _options(args):
    """The build options of `mlusim compile`; --timing-only asks for a shape-only compile
    (mlusim.programs.BuildOptions.shape_only; quant.quantize refuses one of an int16 model)."""
    options = build_options(args, args.calibrate)
    return replace(options, shape_only=True) if args.timing_only else options


def cmd_models(args) -> int:
    from rich import box
    from rich.console import Console
    from rich.table import Table

    from mlusim.compiler.zoo import ZOO, build

    t = Table(box=box.SIMPLE_HEAD, title=f"model zoo (batch {args.batch}, seeded random weights)", title_justify="left")
    for col in ("model", "input", "parameters", "GMAC", "int8 weights", "description"):
        t.add_column(col, justify="right" if col in ("parameters", "GMAC", "int8 weights") else "left")
    for name, e in ZOO.items():
        g = build(name, args.batch, values=False)      # counts and shapes: no weight drawn
        params = g.parameter_count()
        weights = sum(n.params["weight"].size for n in g.nodes if "weight" in n.params)
        t.add_row(name, "x".join(str(d) for d in g.input.shape), f"{params / 1e6:.2f} M", f"{g.macs() / 1e9:.3f}",
                  f"{weights / 2**20:.1f} MiB", e.description)
    Console(width=140).print(t)
    return 0
