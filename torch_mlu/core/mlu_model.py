"""`torch_mlu.core.mlu_model` (imported as `ct` in Cambricon's scripts): device and run settings.

Cambricon's calls are here with their meaning on the simulator; mlusim adds `set_config`,
`set_strict`, `get_last_report` and `print_report`.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from mlusim.errors import ShimError
from torch_mlu.core import device

CORE_VERSIONS = {"MLU270": "mlu270", "MLU220": "mlu220", "MLU290": "mlu290", "MLU370": "mlu370"}


@dataclass
class _Settings:
    core_number: int = 1
    core_version: str = "MLU270"
    config_source: str | None = None      # a preset name or YAML file overriding core_version
    overrides: tuple = ()
    input_format: int = 0
    device_id: int = 0
    cnml_enabled: bool = True
    strict: bool = False
    save_name: str | None = None
    last_report: object | None = None
    _cfg: object | None = None
    _cfg_key: tuple | None = None

    def config(self):
        from mlusim.config import load_config

        key = (self.config_source or CORE_VERSIONS[self.core_version], self.overrides)
        if self._cfg_key != key:
            self._cfg = load_config(key[0], list(self.overrides))
            self._cfg_key = key
            if self.core_number > self._cfg.chip.cores:
                raise ShimError(f"core number {self.core_number} exceeds the {self._cfg.chip.cores} cores of "
                                f"{self._cfg.name}")
        return self._cfg

    def maybe_save_offline(self, program) -> None:
        if self.save_name:
            from mlusim import mlufile

            path = f"{self.save_name}.mlu"
            mlufile.save(program, path)
            self.save_name = None


_STATE = _Settings()


def _clear_report() -> None:
    _STATE.last_report = None


device.ON_FLOAT_REFUSED.append(_clear_report)


def set_core_number(n: int) -> None:
    """Cores the MLU runs on (and the parallelism the compiler tiles for)."""
    if not isinstance(n, int) or n < 1:
        raise ShimError(f"set_core_number: expected a positive integer, got {n!r}")
    _STATE.core_number = n
    _STATE._cfg_key = None


def set_core_version(version: str) -> None:
    """'MLU270' (default), 'MLU220', 'MLU290' or 'MLU370': picks the bundled hardware config."""
    v = str(version).upper()
    if v not in CORE_VERSIONS:
        raise ShimError(f"set_core_version: unknown core version {version!r} (have {', '.join(CORE_VERSIONS)})")
    _STATE.core_version = v
    _STATE.config_source = None


def set_config(name_or_file: str, overrides: list[str] | None = None) -> None:
    """mlusim: simulate with this preset or YAML config (and `path.key=value` overrides)."""
    _STATE.config_source = name_or_file
    _STATE.overrides = tuple(overrides or ())
    _STATE.config()


def get_config():
    return _STATE.config()


def set_input_format(fmt: int) -> None:
    """The channel order of 4-channel input images: 0 RGBA (default), 1 ARGB, 2 BGRA, 3 ABGR (the
    seed: it decides how the first conv pads three-channel input). A quantized model whose first conv
    takes 3 channels, given a 4-channel mlu input, reads RGB from it in this order and drops the pad
    channel (runtime.apply_input_format); 3-channel inputs are in the model's own order already."""
    if fmt not in (0, 1, 2, 3):
        raise ShimError(f"set_input_format: expected 0..3, got {fmt!r}")
    _STATE.input_format = fmt


def mlu_device(n: int = 0) -> torch.device:
    return torch.device("mlu", 0)


def set_device(n: int) -> None:
    """-1 means no physical card (offline generation only); the simulator is always there."""
    _STATE.device_id = n


def set_cnml_enabled(enabled: bool) -> None:
    """False selects the training path (CNNL) in Cambricon's stack, True (default) inference with
    quantized models (CNML). Checked: adaptive_quantize needs False, a quantized model's mlu run True."""
    _STATE.cnml_enabled = bool(enabled)


def set_strict(strict: bool = True) -> None:
    """mlusim: raise instead of running unsupported ops on the host."""
    _STATE.strict = bool(strict)


def save_as_cambricon(name: str) -> None:
    """The next whole-model MLU run also writes `name.mlu`, runnable with `mlusim run name.mlu`."""
    _STATE.save_name = str(name) if name else None


def to(optimizer, device):
    """Move an optimizer's state tensors (including 'step') to `device`. On the mlu, with training
    on (adaptive_quantize), an SGD optimizer's update then runs as vector kernels on the simulator."""
    dev = torch.device(device)
    for state in optimizer.state.values():
        for k, v in list(state.items()):
            if isinstance(v, torch.Tensor):
                state[k] = v.to(dev)
    from torch_mlu.core import adaptive_training as training

    if dev.type == "mlu" and training.STATE.enabled and type(optimizer) is torch.optim.SGD and \
            all(not g.get("nesterov") and not g.get("dampening") and not g.get("maximize") for g in optimizer.param_groups):
        from torch_mlu.core.training_ops import sgd_step

        def step(closure=None):
            loss = closure() if closure is not None else None
            sgd_step(optimizer)
            return loss

        optimizer.step = step
    return optimizer


def get_training_report() -> list[dict]:
    """mlusim: per optimizer step, simulated cycles of forward, backward and update."""
    from torch_mlu.core import adaptive_training as training

    return training.report()


def get_last_report():
    """mlusim: what the simulated MLU did in the last execution (a RunReport), or None: cleared when
    an MLU model run starts (so a failed run leaves none) and when a float model is refused."""
    return _STATE.last_report


def print_report() -> None:
    print(_STATE.last_report if _STATE.last_report is not None else "no MLU execution yet")
