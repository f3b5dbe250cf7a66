"""What happens when a quantized model meets an mlu tensor: compile, then run on the simulator.

A model made by `quantize_dynamic_mlu` is compiled once per input shape (compiled.py), then, as on
Cambricon's stack:
  * online layer-by-layer (an eager call): every node is its own program, run one after another,
    int8 values passed between them; host ops (unsupported) run on the CPU in between (execute.py);
  * online fused (`torch.jit.trace` with grad disabled): the whole graph is one program, recorded in
    the trace as a single `mlusim::run_program` op that carries the program (traced.py);
  * offline: after `ct.save_as_cambricon(name)`, the next whole-graph run also writes `name.mlu`.
"""
from __future__ import annotations

import torch

from mlusim.errors import CompileError, ShimError
from torch_mlu.core import traced
from torch_mlu.core.compiled import compile_for
from torch_mlu.core.device import MluTensor, cpu_of
from torch_mlu.core.execute import run_layers
from torch_mlu.core.state import DeviceSettings

# set_input_format: where the three colour channels sit in a 4-channel (padded) image, as RGB
FORMAT_CHANNELS = {0: [0, 1, 2], 1: [1, 2, 3], 2: [2, 1, 0], 3: [3, 2, 1]}    # RGBA ARGB BGRA ABGR


def format_channels(model, shape: tuple, settings: DeviceSettings) -> list[int] | None:
    """Cambricon's set_input_format: the MLU's first conv takes 4-channel images (RGB plus a pad
    channel) and the format says which channel is which. A 4-channel input to a model whose first
    conv takes 3 channels is read that way (the pad dropped, BGR turned to RGB): the channels to
    take, in RGB order. A 3-channel input is in the model's order already (None); any other
    mismatch is an error."""
    first = next((m for m in model.modules() if isinstance(m, torch.nn.Conv2d)), None)
    if first is None or len(shape) != 4 or shape[1] == first.in_channels:
        return None
    if shape[1] == 4 and first.in_channels == 3:
        return FORMAT_CHANNELS[settings.input_format]
    raise ShimError(f"{type(model).__name__}: input has {shape[1]} channels, its first conv takes {first.in_channels}")


def _untraced(fn):
    """fn() outside any trace in progress: compiling is not part of the traced computation."""
    tracing = torch._C._get_tracing_state()
    torch._C._set_tracing_state(None)
    try:
        return fn()
    finally:
        torch._C._set_tracing_state(tracing)


def mlu_forward(model, orig_cls, x, settings: DeviceSettings):
    """The forward of a quantized model on an mlu tensor."""
    settings.last_report = None
    name = type(model).__name__
    if not settings.cnml_enabled:
        raise ShimError(f"{name}: quantized inference runs on Cambricon's CNML path, which "
                        f"ct.set_cnml_enabled(False) (the training path) turned off; call ct.set_cnml_enabled(True)")
    idx = _untraced(lambda: format_channels(model, tuple(int(d) for d in x.shape), settings))
    if idx is not None:
        x = x.index_select(1, torch.tensor(idx).to(x.device))
    try:
        cm = _untraced(lambda: compile_for(model, orig_cls, x, settings))
    except CompileError as e:
        raise ShimError(f"cannot compile {name} for the MLU: {e}") from None
    if torch.jit.is_tracing():
        return traced.record(cm, x, name)
    outs = [MluTensor(torch.from_numpy(o))
            for o in run_layers(cm, cpu_of(x).detach().float().contiguous().numpy(), settings)]
    return tuple(outs) if len(outs) > 1 else outs[0]
