"""`mlusim run`: simulate a program on one or more core counts and print the report."""
from __future__ import annotations

import json
from pathlib import Path

from mlusim.commands.common import add_config_args, load_program, parse_cores, parse_inputs, resolve_config


def register(sub) -> None:
    p = sub.add_parser("run", help="simulate a .mlu model or .s assembly program and report cycles")
    p.add_argument("program", help="model.mlu or program.s")
    p.add_argument("--cores", metavar="N|N,M,..|all", help="cores to use (default: all of the chip)")
    add_config_args(p)
    p.add_argument("--input", action="append", default=[], metavar="[NAME=]FILE.npy", help="input tensor")
    p.add_argument("--output", metavar="FILE.npy|DIR", help="write the output tensor(s)")
    p.add_argument("--json", metavar="FILE", help="write the report as JSON")
    p.add_argument("--timing-only", action="store_true", help="skip numerics (same cycles, faster)")
    p.add_argument("--max-cycles", type=float, default=None, help="stop with an error past this many cycles")
    p.add_argument("--max-instructions", type=int, default=20_000_000,
                   help="stop with an error past this many executed instructions (default 20M)")
    p.set_defaults(func=cmd_run)


def cmd_run(args) -> int:
    from mlusim.report import render, summarize
    from mlusim.sim import simulate

    program = load_program(args.program)
    cfg = resolve_config(args, program)
    counts = parse_cores(args.cores, cfg.chip.cores) if args.cores else [cfg.chip.cores]
    inputs = parse_inputs(args.input, program)
    results = []
    for n in counts:
        res = simulate(program, cfg, cores=n, inputs=inputs, timing_only=args.timing_only,
                       max_cycles=args.max_cycles, max_instructions=args.max_instructions)
        summary = summarize(res)
        results.append(summary)
        print(render(res, summary))
        if res.interrupted:
            break
    if args.output and results and not args.timing_only:
        _write_outputs(res, args.output)
    if args.json:
        Path(args.json).write_text(json.dumps(results[0] if len(results) == 1 else results, indent=1,
                                              default=float))
        print(f"wrote {args.json}")
    return 130 if results and results[-1]["interrupted"] else 0


def _write_outputs(res, dest: str) -> None:
    import numpy as np

    outs = res.outputs
    p = Path(dest)
    if len(outs) == 1 and p.suffix == ".npy":
        np.save(p, next(iter(outs.values())), allow_pickle=False)
        print(f"wrote {p}")
        return
    p.mkdir(parents=True, exist_ok=True)
    for name, arr in outs.items():
        np.save(p / f"{name}.npy", arr, allow_pickle=False)
    print(f"wrote {len(outs)} output(s) to {p}/")
