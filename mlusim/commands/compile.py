"""`mlusim compile` and `mlusim models`: the model zoo and the compiler from the command line."""
from __future__ import annotations

import sys
import time
from pathlib import Path

from mlusim.commands.common import MAX_BATCH, add_config_args, int_arg
from mlusim.errors import CompileError


def register(sub) -> None:
    p = sub.add_parser("compile", help="compile a zoo model or an ONNX file into a .mlu offline model file")
    p.add_argument("source", nargs="?", metavar="MODEL.onnx",
                   help="an ONNX model: float (calibrated) or already quantized (QDQ / QLinear*)")
    p.add_argument("--model", metavar="NAME", help="zoo model (mlusim models), instead of an ONNX file")
    p.add_argument("--calibrate", metavar="SAMPLES.npy",
                   help="ONNX float models: calibration inputs [S, C, H, W] (default: random data, with a warning)")
    p.add_argument("--batch", type=int_arg(1, MAX_BATCH), default=None, help="batch size (default 1; an ONNX model's own if fixed)")
    p.add_argument("--resolution", type=int_arg(1, 1 << 16), default=None, help="input height and width (default: the model's)")
    p.add_argument("--cores", type=int_arg(1, 4096), default=None,
                   help="parallelism to tile for (default: all cores of the config); the file runs on any count "
                        "unless --cluster-fusion")
    p.add_argument("--cluster-fusion", action="store_true",
                   help="run spans of layers in cluster SRAM where the cost model says it pays (what `mlusim run "
                        "NAME` does); the file then needs whole clusters of cores")
    p.add_argument("--dtype", choices=("int8", "int16"), default="int8")
    p.add_argument("--per-tensor", action="store_true", help="one weight scale per layer (default: per channel)")
    p.add_argument("--no-fuse", action="store_true", help="one kernel per op, no fusion")
    p.add_argument("--seed", type=int_arg(0, 2**32 - 1), default=0, help="weight seed")
    p.add_argument("-o", "--output", metavar="FILE.mlu")
    p.add_argument("--no-cache", action="store_true", help="compile afresh, bypassing the compile cache")
    add_config_args(p)
    p.set_defaults(func=cmd_compile)

    p = sub.add_parser("models", help="list the built-in model zoo")
    p.add_argument("--batch", type=int_arg(1, 1024), default=1)
    p.set_defaults(func=cmd_models)


def cmd_compile(args) -> int:
    from mlusim import mlufile
    from mlusim.cached_compile import onnx_program, print_notes, zoo_program
    from mlusim.config import load_config

    if (args.source is None) == (args.model is None):
        raise CompileError("compile needs either an ONNX file (mlusim compile model.onnx) or a zoo model "
                           "(--model NAME), not " + ("both" if args.source else "neither"))
    cfg = load_config(args.config, args.overrides)
    kw = dict(dtype=args.dtype, per_channel=not args.per_tensor, fuse=not args.no_fuse,
              cluster_fusion=args.cluster_fusion, cache=not args.no_cache)
    t0 = time.perf_counter()
    if args.source:
        if args.resolution is not None:
            raise CompileError("--resolution applies to zoo models; an ONNX model's input shape is in the file")
        program, extra = onnx_program(args.source, cfg, args.cores, batch=args.batch, calibrate=args.calibrate, **kw)
        label = Path(args.source).stem
    else:
        if args.calibrate:
            raise CompileError("--calibrate applies to ONNX float models; zoo models calibrate on seeded data")
        program, extra = zoo_program(args.model, cfg, args.cores, batch=1 if args.batch is None else args.batch,
                                     resolution=args.resolution, seed=args.seed, **kw)
        label = args.model
    seconds = time.perf_counter() - t0
    print_notes(extra)
    out = args.output or f"{label}.mlu"
    t0 = time.perf_counter()
    mlufile.save(program, out)
    m = program.meta
    print(f"wrote {out}: {label} batch {m['batch']} for {cfg.name}, {len(program.kernels)} kernels, "
          f"{program.instruction_count:,} instructions, {m['macs'] / 1e9:.2f} GMAC, weights "
          f"{m['weight_bytes'] / 2**20:.1f} MiB ({seconds:.2f} s compile, {time.perf_counter() - t0:.2f} s write)")
    if m.get("cluster_fusion"):
        print(f"  cluster fusion: {m['cluster_fusion']}")
    for name, ops in extra.get("fused", []):
        print(f"  fused {name}: {' + '.join(ops)}")
    return 0


def cmd_models(args) -> int:
    from rich import box
    from rich.console import Console
    from rich.table import Table

    from mlusim.compiler.zoo import ZOO, build

    t = Table(box=box.SIMPLE_HEAD, title=f"model zoo (batch {args.batch}, seeded random weights)", title_justify="left")
    for col in ("model", "input", "parameters", "GMAC", "int8 weights", "description"):
        t.add_column(col, justify="right" if col in ("parameters", "GMAC", "int8 weights") else "left")
    for name, e in ZOO.items():
        g = build(name, args.batch)
        params = g.parameter_count()
        weights = sum(n.params["weight"].size for n in g.nodes if "weight" in n.params)
        t.add_row(name, "x".join(str(d) for d in g.input.shape), f"{params / 1e6:.2f} M", f"{g.macs() / 1e9:.3f}",
                  f"{weights / 2**20:.1f} MiB", e.description)
    Console(width=140).print(t)
    return 0
