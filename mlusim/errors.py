"""One exception hierarchy, so the CLI can turn any expected failure into one line and exit 2.

Anything that is *not* an MlusimError reaching the CLI is a bug in mlusim itself.
"""
from __future__ import annotations


class MlusimError(Exception):
    """Base of every error a user can cause with bad input."""


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
