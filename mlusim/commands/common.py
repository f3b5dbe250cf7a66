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


def parse_inputs(specs: list[str], program) -> dict:
    from mlusim import npyfile

    names = [t.name for t in program.by_role("input")]
    out = {}
    for spec in specs:
        name, eq, path = spec.partition("=")
        if not eq:
            if len(names) != 1:
                raise SimulationError(f"--input {spec}: the program has inputs {', '.join(names) or 'none'}; "
                                      f"write --input NAME=FILE.npy")
            name, path = names[0], spec
        out[name] = npyfile.load(path, SimulationError, "input file")
    return out


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
