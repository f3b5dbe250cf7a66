"""One exception hierarchy, so the CLI can turn any expected failure into one line and exit 2.

Anything that is *not* an MlusimError reaching the CLI is a bug in mlusim itself.

Messages interpolate names that come from files we do not trust (tensor and kernel names, YAML
keys, zip member names). The base class therefore guarantees the one-line contract itself: control
characters (a newline that would forge a second log line, an ESC that would drive the terminal) are
shown escaped, and a message longer than MAX_MESSAGE characters keeps its head and its tail (the
tail is usually the "what would fix it" hint) around an elision mark.
"""
from __future__ import annotations

MAX_MESSAGE = 2000


def one_line(text: object, limit: int = MAX_MESSAGE) -> str:
    """`text` as a single printable line of at most about `limit` characters."""
    s = str(text)
    if not s.isprintable():
        s = "".join(c if c.isprintable() else (repr(c)[1:-1] if c != " " else c) for c in s)
    if len(s) > limit:
        head, tail = limit * 2 // 3, limit // 3
        s = f"{s[:head]} ...[{len(s) - head - tail} characters]... {s[-tail:]}"
    return s


class MlusimError(Exception):
    """Base of every error a user can cause with bad input. str(e) is always one printable line."""

    def __init__(self, message: object = "", *rest: object):
        super().__init__(one_line(message), *rest)

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class ConfigError(MlusimError):
    """A hardware config file, preset name or --set override is malformed or inconsistent."""


class AssemblyError(MlusimError):
    """Assembly text that does not parse or names an unknown instruction or operand."""


class EncodingError(MlusimError):
    """An instruction whose fields do not fit the binary encoding, or bytes that do not decode."""


class ProgramError(MlusimError):
    """A program that is well-formed but illegal: bad direction, bad task type, out-of-range field."""


class ModelFileError(MlusimError):
    """A .mlu file that is missing, truncated, corrupt, of another version, or unsafe."""


class CompileError(MlusimError):
    """A graph the compiler cannot lower: unsupported op, shape mismatch, does not fit."""


class SimulationError(MlusimError):
    """The simulated machine faulted: out-of-bounds access, deadlock, cycle budget exceeded."""


class ShimError(MlusimError):
    """Misuse of the torch_mlu compatibility layer."""
