"""mlusim: a cycle-approximate simulator of Cambricon MLU270-class accelerators.

Importing the package is cheap: numpy, simpy and the compiler load only when used.
"""
from __future__ import annotations

__version__ = "0.1.0"

from mlusim.errors import (  # noqa: F401  (re-exported)
    AssemblyError,
    CompileError,
    ConfigError,
    EncodingError,
    MlusimError,
    ModelFileError,
    ProgramError,
    ShimError,
    SimulationError,
)


def __getattr__(name: str):
    # Lazy public API: `mlusim.load_config(...)` etc. without paying for the imports up front.
    if name in ("load_config", "HardwareConfig", "list_presets"):
        from mlusim import config

        return getattr(config, name)
    raise AttributeError(f"module 'mlusim' has no attribute {name!r}")
