"""`torch.jit.trace` of a quantized MLU model (Cambricon's online fused mode): the whole graph is
one `mlusim::run_program(x, model_file, cores)` op in the trace.

The op's arguments carry the compiled program itself: `model_file` is the program's `.mlu` bytes
(mlusim.mlufile, never a pickle) as a uint8 tensor constant of the trace, and `cores` the core
count it was compiled for. So `torch.jit.save` writes everything the op needs, and `torch.jit.load`
in another process (after `import torch_mlu`, which defines the op) runs the same program on the
same config, bit for bit. Programs are decoded once per process and kept by their bytes' digest.
"""
from __future__ import annotations

import hashlib
from collections import OrderedDict

import numpy as np
import torch

from mlusim.errors import ShimError
from torch_mlu.core.device import OP_HANDLERS, MluTensor, cpu_of
from torch_mlu.core.execute import CompiledModel, run_program
from torch_mlu.core.state import DeviceSettings

KEEP = 16                     # decoded programs kept per process (each holds its weights)
_LIB = None
_DECODED: OrderedDict = OrderedDict()        # digest -> (Program, HardwareConfig)


def _digest(data) -> str:
    return hashlib.sha256(memoryview(data)).hexdigest()


def _program(model_file: torch.Tensor):
    """The (Program, config) a traced op carries, decoded on first use in this process."""
    from mlusim import mlufile
    from mlusim.config import config_from_dict

    raw = np.ascontiguousarray(cpu_of(model_file).numpy())
    key = _digest(raw)
    if key not in _DECODED:
        prog = mlufile.loads(raw.tobytes(), "the traced MLU program")
        if not prog.config:
            raise ShimError("the traced MLU program records no hardware config; trace the model again")
        _DECODED[key] = (prog, config_from_dict(prog.config, f"config recorded in the trace ({prog.config.get('name')})"))
    _DECODED.move_to_end(key)
    while len(_DECODED) > KEEP:
        _DECODED.popitem(last=False)
    return _DECODED[key]


def _handler(settings: DeviceSettings):
    def run(func, args, kwargs):
        x, model_file, cores = args
        if not isinstance(x, MluTensor):
            raise ShimError("mlusim::run_program runs on mlu tensors; move the input with .to(ct.mlu_device())")
        prog, cfg = _program(model_file)
        outs = run_program(prog, cfg, int(cores), cpu_of(x).detach().float().contiguous().numpy(), settings)
        outs = [MluTensor(torch.from_numpy(o)) for o in outs]
        return outs[0] if func is torch.ops.mlusim.run_program.default else outs

    return run


def register(settings: DeviceSettings) -> None:
    """Define the traced ops (once per process; `import torch_mlu` does it, so a saved trace loads)."""
    global _LIB
    if _LIB is not None:
        return
    _LIB = torch.library.Library("mlusim", "DEF")
    _LIB.define("run_program(Tensor x, Tensor model_file, int cores) -> Tensor")
    _LIB.define("run_program_multi(Tensor x, Tensor model_file, int cores) -> Tensor[]")   # several outputs

    def cpu_impl(x, model_file, cores):
        raise ShimError("mlusim::run_program runs on mlu tensors; move the input with .to(ct.mlu_device())")

    _LIB.impl("run_program", cpu_impl, "CPU")
    _LIB.impl("run_program_multi", cpu_impl, "CPU")
    run = _handler(settings)
    OP_HANDLERS[torch.ops.mlusim.run_program.default] = run
    OP_HANDLERS[torch.ops.mlusim.run_program_multi.default] = run


def model_file(cm: CompiledModel) -> torch.Tensor:
    """The compiled program as the uint8 tensor the trace keeps (encoded once per CompiledModel)."""
    from mlusim import mlufile

    if cm.model_file is None:
        raw = mlufile.dumps(cm.fused, "the traced MLU program")
        cm.model_file = torch.from_numpy(np.frombuffer(raw, dtype=np.uint8).copy())
        _DECODED[_digest(raw)] = (cm.fused, cm.cfg)      # this process runs the program it has
    return cm.model_file


def record(cm: CompiledModel, x: torch.Tensor, name: str):
    """While tracing: call the op the trace keeps (it also runs now, as any traced op does). The
    program's bytes are made outside the trace, so the trace holds them as a constant."""
    if cm.fused is None:
        host = ", ".join(n.attrs["what"] for n in cm.graph.nodes if n.op == "cpu")
        raise ShimError(f"torch.jit.trace makes one MLU program of {name}, but it has ops the MLU does not run "
                        f"({host}); call the model directly (layer by layer) instead")
    tracing = torch._C._get_tracing_state()
    torch._C._set_tracing_state(None)
    try:
        blob = model_file(cm)
    finally:
        torch._C._set_tracing_state(tracing)
    if cm.graph.extra_outputs:
        return tuple(torch.ops.mlusim.run_program_multi(x, blob, cm.cores))
    return torch.ops.mlusim.run_program(x, blob, cm.cores)
