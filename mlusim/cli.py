"""The `mlusim` command. Every expected failure is an MlusimError: one line on stderr, exit 2.

Each subcommand lives in mlusim/commands/<name>.py and registers itself through `register(sub)`.
"""
from __future__ import annotations

import argparse
import importlib
import os
import sys

# The simulator's numpy work is many small matmuls, for which BLAS threads cost more than they
# give (measured 8x slower on 2 cores); set before numpy loads, unless the user chose otherwise.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

from mlusim.errors import MlusimError

COMMANDS = ("run", "config", "modelfile", "sweep", "plot", "compile", "calibrate")


def build_parser() -> argparse.ArgumentParser:
    from mlusim import __version__

    ap = argparse.ArgumentParser(prog="mlusim", description="Cycle-approximate simulator of Cambricon "
                                 "MLU270-class accelerators.")
    ap.add_argument("--version", action="version", version=f"mlusim {__version__}")
    ap.add_argument("--debug", action="store_true", help="show Python tracebacks for errors")
    sub = ap.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        importlib.import_module(f"mlusim.commands.{name}").register(sub)
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
        # The message is already one printable line (MlusimError guarantees it); --debug adds the
        # traceback above it but keeps the exit code, so scripts see the same status either way.
        if args.debug:
            import traceback

            traceback.print_exc(file=sys.stderr)
        print(f"mlusim: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("mlusim: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0


if __name__ == "__main__":
    sys.exit(main())
