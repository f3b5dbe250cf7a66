"""Argument helpers shared by the subcommands: configs, programs, inputs, core counts."""
from __future__ import annotations

import argparse
from pathlib import Path

from mlusim.errors import ModelFileError, SimulationError


def add_config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", metavar="NAME|FILE",
                   help="hardware config: a preset (mlusim config list) or a YAML file; default: the "
                        "program's recorded target, else mlu270")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. --set dram.bandwidth_gbps=51.2 (repeatable)")


def load_program(path: str, cfg=None, batch: int = 1, cores: int | None = None, resolution: int | None = None):
    """A .mlu model file, assembly text (assembled on the fly), or a zoo model name or an .onnx file
    (compiled on the fly for `cfg`, `batch` and a target of `cores` parallel tasks)."""
    from mlusim import mlufile

    p = Path(path)
    if p.suffix.lower() == ".onnx":
        import sys

        from mlusim.compiler.driver import compile_onnx
        from mlusim.errors import CompileError

        if resolution is not None:
            raise CompileError("--resolution applies to zoo models; an ONNX model's input shape is in the file")
        c = compile_onnx(path, batch=batch if batch != 1 else None, config=cfg, tasks=cores, cluster_fusion=True)
        for note in c.notes:
            print(f"warning: {note}", file=sys.stderr)
        return c.program
    if not p.exists() and p.suffix == "" and "/" not in path:
        from mlusim.compiler.zoo import ZOO

        if path.lower() in ZOO:
            from mlusim.compiler.driver import compile_model

            return compile_model(path, batch=batch, resolution=resolution, config=cfg, tasks=cores,
                                 cluster_fusion=True).program
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
    """An input array: its header is checked against the file size before numpy allocates it."""
    import numpy as np
    from numpy.lib import format as npf

    try:
        with open(path, "rb") as fh:
            version = npf.read_magic(fh)
            if version == (1, 0):
                shape, _fortran, dtype = npf.read_array_header_1_0(fh, max_header_size=10000)
            else:
                shape, _fortran, dtype = npf.read_array_header_2_0(fh, max_header_size=10000)
            need = int(np.prod(shape, dtype=object)) * dtype.itemsize
            have = Path(path).stat().st_size - fh.tell()
    except FileNotFoundError:
        raise SimulationError(f"{path}: no such input file") from None
    except (ValueError, OSError, EOFError, SyntaxError) as e:
        raise SimulationError(f"{path}: not a readable .npy array ({str(e)[:80]})") from None
    if dtype.hasobject or need != have:
        raise SimulationError(f"{path}: header declares {list(shape)} {dtype} ({need:,} bytes) but the file holds "
                              f"{have:,} data bytes")
    try:
        return np.load(path, allow_pickle=False)
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
