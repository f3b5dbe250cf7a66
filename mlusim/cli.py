"""The `mlusim` command. Every expected failure is an MlusimError: one line on stderr, exit 2.

Each subcommand lives in mlusim/commands/<name>.py and registers itself through `register(sub)`.
"""
from __future__ import annotations

import argparse
import errno
import importlib
import os
import sys

# The simulator's numpy work is many small matmuls, for which BLAS threads cost more than they
# give (measured 8x slower on 2 cores); set before numpy loads, unless the user chose otherwise.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

from mlusim.errors import MlusimError, one_line

COMMANDS = ("run", "config", "modelfile", "sweep", "plot", "compile", "calibrate")


class OneLineParser(argparse.ArgumentParser):
    """argparse with the CLI's error contract: a bad option is one line and exit 2, like every
    other error (argparse prints the whole usage block first). Subcommand parsers inherit it."""

    def error(self, message: str):  # type: ignore[override]
        self.exit(2, f"mlusim: error: {one_line(self.prog)}: {one_line(message)} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    from mlusim import __version__
    from mlusim.commands.common import float_arg

    ap = OneLineParser(prog="mlusim", description="Cycle-approximate simulator of Cambricon "
                       "MLU270-class accelerators.")
    ap.add_argument("--version", action="version", version=f"mlusim {__version__}")
    ap.add_argument("--debug", action="store_true", help="show Python tracebacks for errors")
    ap.add_argument("--mem-gib", type=float_arg(0, 1 << 20), metavar="GIB",
                    help="host memory mlusim may use for this command and its workers (default: "
                         "$MLUSIM_HOST_MEM_GIB, else 8); larger inputs are refused up front")
    sub = ap.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        importlib.import_module(f"mlusim.commands.{name}").register(sub)
    return ap


def main(argv: list[str] | None = None) -> int:
    ap = build_parser()
    try:
        args = ap.parse_args(argv)
    except SystemExit as e:       # --help, --version, or a bad option (one line, see OneLineParser)
        return e.code if isinstance(e.code, int) else 2
    if args.mem_gib is not None:       # the environment carries it to sweep worker processes
        os.environ["MLUSIM_HOST_MEM_GIB"] = repr(args.mem_gib)
    if not getattr(args, "func", None):
        ap.print_help()
        return 2
    try:
        code = args.func(args)
        sys.stdout.flush()        # a full disk shows here, not as a traceback at interpreter exit
        return code
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
    except BrokenPipeError:       # `mlusim ... | head`: the reader left; not an error
        _drop_stdout()
        return 0
    except OSError as e:
        if e.errno not in WRITE_ERRNOS:
            raise
        _drop_stdout()
        print(f"mlusim: error: cannot write the output: {e.strerror}", file=sys.stderr)
        return 2


WRITE_ERRNOS = {errno.ENOSPC, errno.EIO, errno.EDQUOT, errno.EFBIG}


def _drop_stdout() -> None:
    """Point stdout at /dev/null so that the interpreter's final flush of what could not be
    written does not print a second error (the recipe of the Python docs for SIGPIPE)."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass


if __name__ == "__main__":
    sys.exit(main())
