"""Argument helpers shared by the subcommands: configs, programs, inputs, core counts."""
from __future__ import annotations

import argparse
import math
import re

from mlusim.errors import SimulationError


MAX_BATCH = 1 << 20
# Instruction and cycle budgets bound work, not time: one instruction may cost microseconds or, on
# a machine configured with huge DMA granules, milliseconds. An hour bounds any command-line run.
DEFAULT_MAX_SECONDS = 3600.0


def int_arg(lo: int, hi: int):
    """argparse type: an integer in lo..hi written in ASCII digits (`int()` would take '١٦' as 16,
    ' 16 ' and '1_6' too)."""
    def integer(text: str) -> int:
        if not re.fullmatch(r"[+-]?[0-9]{1,30}", text, re.ASCII):
            raise argparse.ArgumentTypeError(f"expected an integer, got {text[:40]!r}")
        v = int(text)
        if not lo <= v <= hi:
            raise argparse.ArgumentTypeError(f"must be in {lo:,}..{hi:,}, got {v:,}")
        return v
    return integer


def float_arg(lo: float, hi: float):
    """argparse type: a finite number in (lo, hi], written in ASCII."""
    def number(text: str) -> float:
        if not re.fullmatch(r"[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?", text, re.ASCII):
            raise argparse.ArgumentTypeError(f"expected a number, got {text[:40]!r}")
        v = float(text)
        if not (math.isfinite(v) and lo < v <= hi):
            raise argparse.ArgumentTypeError(f"must be a number in ({lo:g}, {hi:g}], got {text[:40]}")
        return v
    return number


def add_config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", metavar="NAME|FILE",
                   help="hardware config: a preset (mlusim config list) or a YAML file; default: the "
                        "program's recorded target, else mlu270")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. --set dram.bandwidth_gbps=51.2 (repeatable)")


def resolve_config(args, program=None):
    from mlusim.config import apply_overrides, config_from_dict, load_config

    if args.config or program is None or not program.config:
        return load_config(args.config, args.overrides)
    raw = apply_overrides(program.config, args.overrides) if args.overrides else program.config
    return config_from_dict(raw, f"config recorded in the model ({program.config.get('name', '?')})")


def load_inputs(specs: list[str]) -> dict:
    """--input [NAME=]FILE.npy as {name: array}; an unnamed file is keyed "" (the program's only
    input, bound when the program is known: mlusim.runs.bind_inputs)."""
    from mlusim import npyfile

    out = {}
    for spec in specs:
        name, eq, path = spec.partition("=")
        if not eq:
            name, path = "", spec
        if name in out:
            raise SimulationError(f"--input {spec}: " + (f"input '{name}' given twice" if name else
                                                          "more than one unnamed input; write --input NAME=FILE.npy"))
        out[name] = npyfile.load(path, SimulationError, "input file")
    return out


def add_build_args(p: argparse.ArgumentParser, what: str) -> None:
    """How a zoo or ONNX model is compiled: the same options, with the same defaults, for `run`
    and `compile` (mlusim.programs.BuildOptions), so both give the same program."""
    g = p.add_argument_group(f"compiling a zoo or ONNX model ({what})")
    g.add_argument("--batch", type=int_arg(1, MAX_BATCH), default=None,
                   help="batch size (default 1; an ONNX model's own if fixed)")
    g.add_argument("--resolution", type=int_arg(1, 1 << 16), default=None,
                   help="input height and width of a zoo model (default: the model's)")
    g.add_argument("--dtype", choices=("int8", "int16"), default="int8", help="quantized data type (default int8)")
    g.add_argument("--per-tensor", action="store_true", help="one weight scale per layer (default: per channel)")
    g.add_argument("--no-fuse", action="store_true", help="one kernel per op, no operator fusion")
    g.add_argument("--cluster-fusion", action=argparse.BooleanOptionalAction, default=None,
                   help="run spans of layers in cluster SRAM where the cost model says it pays (default: the "
                        "config's choice: runtime.kernels under the per-cluster schedule, on otherwise); "
                        "such a program needs whole clusters of cores")
    g.add_argument("--seed", type=int_arg(0, 2**32 - 1), default=0, help="zoo model weight seed (default 0)")
    g.add_argument("--no-cache", action="store_true", help="compile afresh, bypassing the compile cache "
                   "($MLUSIM_CACHE_DIR, else ~/.cache/mlusim)")
    p.epilog = ((p.epilog + "\n") if p.epilog else "") + ZOO_PLACEHOLDER


ZOO_PLACEHOLDER = "zoo models (mlusim models): {zoo}"


class ZooHelpFormatter(argparse.HelpFormatter):
    """Fills in the zoo's names when help is printed, so that building the parser (every command)
    does not import the compiler."""

    def add_text(self, text):
        if text and "{zoo}" in text:
            from mlusim.programs import zoo_names

            text = text.replace("{zoo}", ", ".join(zoo_names()))
        super().add_text(text)


def build_options(args, calibrate: str | None = None):
    from mlusim.programs import BuildOptions

    return BuildOptions(batch=args.batch, resolution=args.resolution, dtype=args.dtype,
                        per_channel=not args.per_tensor, fuse=not args.no_fuse,
                        cluster_fusion=args.cluster_fusion, seed=args.seed, calibrate=calibrate,
                        cache=not args.no_cache)


def parse_cores(text: str, max_cores: int) -> list[int]:
    if text == "all":
        counts, n = [], 1
        while n < max_cores:
            counts.append(n)
            n *= 2
        return counts + [max_cores]
    parts = [x.strip() for x in text.split(",") if x.strip()]
    if not all(re.fullmatch(r"[0-9]{1,9}", x, re.ASCII) for x in parts):
        raise SimulationError(f"--cores {text[:40]!r}: expected N, a list N,M,... or 'all' (ASCII digits)")
    counts = [int(x) for x in parts]
    if not counts:
        raise SimulationError("--cores needs at least one core count")
    for n in counts:
        if n < 1:
            raise SimulationError(f"--cores {n}: must be at least 1")
        if n > max_cores:
            raise SimulationError(f"--cores {n} exceeds the chip's {max_cores} cores")
    return counts
