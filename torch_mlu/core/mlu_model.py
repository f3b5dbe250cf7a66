"""`torch_mlu.core.mlu_model` (imported as `ct` in Cambricon's scripts): device and run settings.

Cambricon's calls are here with their meaning on the simulator; mlusim adds `set_config`,
`set_strict`, `get_last_report` and `print_report`. What they set lives in
torch_mlu.core.state.SETTINGS, which the runtime receives from here and the quantized model.
"""
from __future__ import annotations

import torch

from mlusim.errors import ShimError
from torch_mlu.core.state import CORE_VERSIONS, SETTINGS, TRAINING


def set_core_number(n: int) -> None:
    """Cores the MLU runs on (and the parallelism the compiler tiles for)."""
    if not isinstance(n, int) or n < 1:
        raise ShimError(f"set_core_number: expected a positive integer, got {n!r}")
    SETTINGS.core_number = n
    SETTINGS.forget_config()


def set_core_version(version: str) -> None:
    """'MLU270' (default), 'MLU220', 'MLU290' or 'MLU370': picks the bundled hardware config."""
    v = str(version).upper()
    if v not in CORE_VERSIONS:
        raise ShimError(f"set_core_version: unknown core version {version!r} (have {', '.join(CORE_VERSIONS)})")
    SETTINGS.core_version = v
    SETTINGS.config_source = None


def set_config(name_or_file: str, overrides: list[str] | None = None) -> None:
    """mlusim: simulate with this preset or YAML config (and `path.key=value` overrides)."""
    SETTINGS.config_source = name_or_file
    SETTINGS.overrides = tuple(overrides or ())
    SETTINGS.config()


def get_config():
    return SETTINGS.config()


def set_input_format(fmt: int) -> None:
    """The channel order of 4-channel input images: 0 RGBA (default), 1 ARGB, 2 BGRA, 3 ABGR (the
    seed: it decides how the first conv pads three-channel input). A quantized model whose first conv
    takes 3 channels, given a 4-channel mlu input, reads RGB from it in this order and drops the pad
    channel (runtime.format_channels); 3-channel inputs are in the model's own order already."""
    if fmt not in (0, 1, 2, 3):
        raise ShimError(f"set_input_format: expected 0..3, got {fmt!r}")
    SETTINGS.input_format = fmt


def mlu_device(n: int = 0) -> torch.device:
    return torch.device("mlu", 0)


def set_device(n: int) -> None:
    """-1 means no physical card (offline generation only); the simulator is always there."""
    SETTINGS.device_id = n


def set_cnml_enabled(enabled: bool) -> None:
    """False selects the training path (CNNL) in Cambricon's stack, True (default) inference with
    quantized models (CNML). Checked: adaptive_quantize needs False, a quantized model's mlu run True."""
    SETTINGS.cnml_enabled = bool(enabled)


def set_strict(strict: bool = True) -> None:
    """mlusim: raise instead of running unsupported ops on the host."""
    SETTINGS.strict = bool(strict)


def save_as_cambricon(name: str) -> None:
    """The next whole-model MLU run also writes `name.mlu`, runnable with `mlusim run name.mlu`."""
    SETTINGS.save_name = str(name) if name else None


def to(optimizer, device):
    """Move an optimizer's state tensors (including 'step') to `device`. On the mlu, with training
    on (adaptive_quantize), an SGD optimizer's update then runs as vector kernels on the simulator."""
    dev = torch.device(device)
    for state in optimizer.state.values():
        for k, v in list(state.items()):
            if isinstance(v, torch.Tensor):
                state[k] = v.to(dev)
    if dev.type == "mlu" and TRAINING.enabled and type(optimizer) is torch.optim.SGD and \
            all(not g.get("nesterov") and not g.get("dampening") and not g.get("maximize") for g in optimizer.param_groups):
        from torch_mlu.core.training_ops import sgd_step
        from torch_mlu.core.training_sim import TrainCtx

        ctx = TrainCtx(SETTINGS, TRAINING)

        def step(closure=None):
            loss = closure() if closure is not None else None
            sgd_step(ctx, optimizer)
            return loss

        optimizer.step = step
    return optimizer


def get_training_report() -> list[dict]:
    """mlusim: per optimizer step, simulated cycles of forward, backward and update, kernels, host ops."""
    return [dict(h) for h in TRAINING.history]


def get_last_report():
    """mlusim: what the simulated MLU did in the last execution (a RunReport), or None: cleared when
    an MLU model run starts (so a failed run leaves none) and when a float model is refused."""
    return SETTINGS.last_report


def print_report() -> None:
    print(SETTINGS.last_report if SETTINGS.last_report is not None else "no MLU execution yet")
