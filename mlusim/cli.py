"""The `mlusim` command. Every expected failure is an MlusimError: one line on stderr, exit 2."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from mlusim.errors import MlusimError, ModelFileError, SimulationError


def _add_config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", metavar="NAME|FILE",
                   help="hardware config: a preset (mlusim config list) or a YAML file; default: the "
                        "program's recorded target, else mlu270")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. --set dram.bandwidth_gbps=51.2 (repeatable)")


def load_program(path: str):
    """A .mlu model file, or assembly text assembled on the fly."""
    from mlusim import mlufile

    p = Path(path)
    if p.suffix in (".s", ".asm"):
        from mlusim.isa.asm import assemble_program

        try:
            text = p.read_text(encoding="utf-8")
        except OSError as e:
            raise ModelFileError(f"{path}: cannot read: {e.strerror}") from None
        except UnicodeDecodeError:
            raise ModelFileError(f"{path}: assembly is not UTF-8 text") from None
        return assemble_program(text, str(p))
    return mlufile.load(p)


def resolve_config(args, program=None):
    from mlusim.config import apply_overrides, config_from_dict, load_config

    if args.config or program is None or not program.config:
        return load_config(args.config, args.overrides)
    raw = apply_overrides(program.config, args.overrides) if args.overrides else program.config
    return config_from_dict(raw, f"config recorded in the model ({program.config.get('name', '?')})")


def _load_npy(path: str):
    import numpy as np

    try:
        return np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise SimulationError(f"{path}: no such input file") from None
    except (ValueError, OSError, EOFError) as e:
        raise SimulationError(f"{path}: not a readable .npy array ({str(e)[:80]})") from None


def parse_inputs(specs: list[str], program) -> dict:
    names = [t.name for t in program.by_role("input")]
    out = {}
    for spec in specs:
        name, eq, path = spec.partition("=")
        if not eq:
            if len(names) != 1:
                raise SimulationError(f"--input {spec}: the program has inputs {', '.join(names) or 'none'}; "
                                      f"write --input NAME=FILE.npy")
            name, path = names[0], spec
        out[name] = _load_npy(path)
    return out


def parse_cores(text: str, max_cores: int) -> list[int]:
    if text == "all":
        counts, n = [], 1
        while n < max_cores:
            counts.append(n)
            n *= 2
        return counts + [max_cores]
    try:
        counts = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise SimulationError(f"--cores {text!r}: expected N, a list N,M,... or 'all'") from None
    if not counts:
        raise SimulationError("--cores needs at least one core count")
    for n in counts:
        if n < 1:
            raise SimulationError(f"--cores {n}: must be at least 1")
        if n > max_cores:
            raise SimulationError(f"--cores {n} exceeds the chip's {max_cores} cores")
    return counts


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


def cmd_config(args) -> int:
    from mlusim.config import list_presets, load_config

    if args.action == "list":
        for name in list_presets():
            cfg = load_config(name)
            print(f"{name:8} {cfg.description}")
        return 0
    cfg = load_config(args.name, args.overrides)
    print(format_config(cfg))
    return 0


def format_config(cfg) -> str:
    """The resolved config as YAML, each leaf annotated with its unit and meaning."""
    from mlusim.config import iter_leaves

    lines = [f"# resolved from {cfg.source}"]
    data = cfg.to_dict()
    section = None
    for path, _tp, meta in iter_leaves():
        parts = path.split(".")
        node = data
        for p in parts:
            node = node[p]
        if len(parts) == 1:
            lines.append(f"{path}: {json.dumps(node)}")
            continue
        if parts[0] != section:
            section = parts[0]
            lines.append(f"{section}:")
        if len(parts) == 3 and path.rsplit(".", 1)[0] not in lines[-1] and not lines[-1].startswith("    "):
            lines.append(f"  {parts[1]}:")
        indent = "  " * (len(parts) - 1)
        unit = f" [{meta['unit']}]" if meta.get("unit") else ""
        lines.append(f"{indent}{parts[-1] + ':':<{34 - len(indent)}} {node!s:<8} # {meta.get('doc', '')}{unit}")
    return "\n".join(lines)


def cmd_asm(args) -> int:
    from mlusim import mlufile
    from mlusim.config import load_config

    program = load_program(args.source)
    if args.config or args.overrides:
        program.config = load_config(args.config, args.overrides).to_dict()
    out = args.output or str(Path(args.source).with_suffix(".mlu"))
    mlufile.save(program, out)
    print(f"wrote {out}: {len(program.kernels)} kernel(s), {program.instruction_count} instruction(s)")
    return 0


def cmd_disasm(args) -> int:
    from mlusim.isa.asm import disassemble_program

    sys.stdout.write(disassemble_program(load_program(args.model)))
    return 0


def cmd_inspect(args) -> int:
    from mlusim import mlufile

    prog = mlufile.load(args.model)
    print(f"{args.model}: {len(prog.kernels)} kernel(s), {prog.instruction_count} instruction(s), "
          f"{prog.gdram_bytes:,} bytes of GDRAM")
    if prog.config:
        print(f"target config: {prog.config.get('name', '?')}")
    for k, v in sorted(prog.meta.items()):
        print(f"{k}: {v}")
    print("tensors:")
    for t in prog.tensors:
        print(f"  {t.name:24} {t.role:7} {t.dtype:4} {str(list(t.shape)):20} @{t.addr:#x} ({t.nbytes:,} B)")
    print("kernels:")
    for k in prog.kernels:
        n = sum(len(s) for s in k.streams)
        print(f"  {k.name:24} {k.task_type:7} tasks={k.task_dim:<5} streams={len(k.streams):<4} instructions={n}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    from mlusim import __version__

    ap = argparse.ArgumentParser(prog="mlusim", description="Cycle-approximate simulator of Cambricon "
                                 "MLU270-class accelerators.")
    ap.add_argument("--version", action="version", version=f"mlusim {__version__}")
    ap.add_argument("--debug", action="store_true", help="show Python tracebacks for errors")
    sub = ap.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("run", help="simulate a .mlu model or .s assembly program and report cycles")
    p.add_argument("program", help="model.mlu or program.s")
    p.add_argument("--cores", metavar="N|N,M,..|all", help="cores to use (default: all of the chip)")
    _add_config_args(p)
    p.add_argument("--input", action="append", default=[], metavar="[NAME=]FILE.npy", help="input tensor")
    p.add_argument("--output", metavar="FILE.npy|DIR", help="write the output tensor(s)")
    p.add_argument("--json", metavar="FILE", help="write the report as JSON")
    p.add_argument("--timing-only", action="store_true", help="skip numerics (same cycles, faster)")
    p.add_argument("--max-cycles", type=float, default=None, help="stop with an error past this many cycles")
    p.add_argument("--max-instructions", type=int, default=20_000_000,
                   help="stop with an error past this many executed instructions (default 20M)")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("config", help="list presets or show a resolved config")
    cs = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    cs.add_parser("list", help="list the bundled presets")
    s = cs.add_parser("show", help="print a resolved config with units")
    s.add_argument("name", nargs="?", default=None, metavar="NAME|FILE")
    s.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.set_defaults(func=cmd_config)

    p = sub.add_parser("asm", help="assemble a .s program into a .mlu model file")
    p.add_argument("source")
    p.add_argument("-o", "--output", metavar="FILE.mlu")
    _add_config_args(p)
    p.set_defaults(func=cmd_asm)

    p = sub.add_parser("disasm", help="print a model's program as assembly")
    p.add_argument("model")
    p.set_defaults(func=cmd_disasm)

    p = sub.add_parser("inspect", help="list what a .mlu model file contains")
    p.add_argument("model")
    p.set_defaults(func=cmd_inspect)
    return ap


def main(argv: list[str] | None = None) -> int:
    ap = build_parser()
    args = ap.parse_args(argv)
    if not getattr(args, "func", None):
        ap.print_help()
        return 2
    try:
        return args.func(args)
    except MlusimError as e:
        if args.debug:
            raise
        print(f"mlusim: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("mlusim: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0


if __name__ == "__main__":
    sys.exit(main())
