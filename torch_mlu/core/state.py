"""The shim's process-wide state, as typed dataclasses: the settings Cambricon's `ct.set_*` calls
make, what the last MLU run left, and the bookkeeping of training on the MLU.

Cambricon's API is a set of process-wide calls (`ct.set_core_number(4)` changes every later run),
so one instance of each dataclass lives here, at the bottom of the shim: the API module
(`mlu_model`) writes them and hands them down; the runtime and the training kernels take what they
need as arguments. Nothing here imports the rest of the shim or torch.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from mlusim.errors import ShimError

CORE_VERSIONS = {"MLU270": "mlu270", "MLU220": "mlu220", "MLU290": "mlu290", "MLU370": "mlu370"}


@dataclass
class DeviceSettings:
    """What `ct.set_*` chose, and the last run's report. The hardware config is loaded once per
    (preset or file, overrides) and kept until a setting changes it."""

    core_number: int = 1
    core_version: str = "MLU270"
    config_source: str | None = None      # a preset name or YAML file overriding core_version
    overrides: tuple = ()
    input_format: int = 0
    device_id: int = 0
    cnml_enabled: bool = True
    strict: bool = False
    save_name: str | None = None
    last_report: Any | None = None
    _cfg: Any | None = None
    _cfg_key: tuple | None = None

    def config(self):
        """The HardwareConfig runs use (loaded on first use and when a setting changed)."""
        from mlusim.config import load_config

        key = (self.config_source or CORE_VERSIONS[self.core_version], self.overrides)
        if self._cfg_key != key:
            self._cfg = load_config(key[0], list(self.overrides))
            self._cfg_key = key
            if self.core_number > self._cfg.chip.cores:
                raise ShimError(f"core number {self.core_number} exceeds the {self._cfg.chip.cores} cores of "
                                f"{self._cfg.name}")
        return self._cfg

    def forget_config(self) -> None:
        """A setting the config depends on changed: load it again (and re-check the cores) next time."""
        self._cfg_key = None

    def maybe_save_offline(self, program) -> None:
        """After `ct.save_as_cambricon(name)`: the next whole-model run writes `name.mlu`, once."""
        if self.save_name:
            from mlusim import mlufile

            mlufile.save(program, f"{self.save_name}.mlu")
            self.save_name = None


@dataclass
class TrainState:
    """Training on the MLU (adaptive_quantize): whether it is on, each MAC site's bit width, and
    the simulated cycles and host ops of the current and past optimizer steps."""

    enabled: bool = False
    bitwidth: int = 8
    quantify_rate: float = 0.01
    steps_per_epoch: int = 0
    sites: dict = field(default_factory=dict)            # site -> bits
    step: Counter = field(default_factory=Counter)
    history: list = field(default_factory=list)
    host_ops: Counter = field(default_factory=Counter)
    fallbacks: dict = field(default_factory=dict)          # op -> why the simulator could not run it
    warned: set = field(default_factory=set)


SETTINGS = DeviceSettings()
TRAINING = TrainState()
