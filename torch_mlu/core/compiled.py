"""A quantized torch model becomes mlusim programs: traced into the compiler's graph (torch.fx),
calibrated on the CPU batches it saw, then compiled by `mlusim.compiler.driver.compile_graph`
for one input shape, config and core number (cached on the model).

The shim passes the compiler what Cambricon's qconfig holds (dtype, per_channel, mean/std for
firstconv, data_scale, mixed layers) and its own saved calibration; the pipeline itself is the
compiler's, the same the CLI runs.
"""
from __future__ import annotations

from mlusim.errors import ShimError
from torch_mlu.core.device import cpu_of, host_float, to_mlu
from torch_mlu.core.execute import CompiledModel
from torch_mlu.core.state import DeviceSettings


def _firstconv(model) -> tuple[list | None, list | None]:
    """(mean, std) to fold into the first conv, or (None, None) when firstconv is off or unset."""
    q = model._mlu_qconfig
    if not q.get("firstconv") or (q.get("mean") is None and q.get("std") is None):
        return None, None
    return q.get("mean"), q.get("std")


def float_graph(model, orig_cls, example):
    """The model's float graph (as traced, not yet optimized) for an input like `example` (CPU).
    Traced as the user's class, so the quantizing forward is not what fx sees; weights on the mlu
    are reached through the shim's device (shapes are propagated where the weights are)."""
    from mlusim.compiler.frontend_torch import DeviceAccess, from_torch

    on_mlu = any(p.device.type == "mlu" for p in model.parameters())
    access = DeviceAccess(to_device=to_mlu, run_float=host_float) if on_mlu else None
    cls = model.__class__
    model.__class__ = orig_cls
    try:
        return from_torch(model, example, allow_cpu=True, device_access=access)
    finally:
        model.__class__ = cls


def calibrate(model, orig_cls, x_cpu) -> None:
    """Fold one CPU batch into the model's calibration buffers (max, or running mean with use_avg):
    the absolute maximum of every node of the prepared graph (normalisation folded in), in order."""
    import torch

    from mlusim.compiler.driver import prepare_graph
    from mlusim.compiler.quant import calibrate as absmax_of

    mean, std = _firstconv(model)
    g = prepare_graph(float_graph(model, orig_cls, x_cpu), mean=mean, std=std)
    absmax = absmax_of(g, [x_cpu.detach().float().numpy()])
    vals = torch.tensor([absmax[n.name] for n in g.nodes], dtype=torch.float64)
    n = int(model.mlu_calib_count.item())
    old = model.mlu_absmax
    if n == 0 or old.numel() != vals.numel():
        new = vals
    elif model._mlu_qconfig.get("use_avg"):
        new = (old * n + vals) / (n + 1)
    else:
        new = torch.maximum(old, vals)
    model.mlu_absmax = new
    model.mlu_calib_count = torch.tensor(n + 1)


def compile_for(model, orig_cls, x, settings: DeviceSettings) -> CompiledModel:
    """Compile for this input shape, config and core number (cached on the model). Raises the
    compiler's CompileError (a saved calibration of another model is one: its length differs)."""
    from mlusim.compiler.driver import compile_graph

    cfg = settings.config()
    key = (tuple(x.shape), cfg.name, repr(cfg.to_dict()), settings.core_number)
    cache = model.__dict__.setdefault("_mlu_compiled", {})
    if key in cache:
        return cache[key]
    name = type(model).__name__
    if int(model.mlu_calib_count.item()) == 0:
        raise ShimError(f"{name} has no calibration: run it on CPU batches with "
                        f"quantize_dynamic_mlu(..., gen_quant=True) first, or load the state_dict it saved")
    q = model._mlu_qconfig
    mean, std = _firstconv(model)
    g = float_graph(model, orig_cls, cpu_of(x))
    c = compile_graph(g, cfg, absmax=[float(v) for v in model.mlu_absmax.tolist()], dtype=model._mlu_dtype,
                      per_channel=bool(q.get("per_channel", True)), mixed=model._mlu_mixed, mean=mean, std=std,
                      tasks=settings.core_number, data_scale=float(q.get("data_scale", 1.0)), host_ops=True)
    if c.program is not None:
        c.program.meta.update(model=name)
    cm = CompiledModel(c.graph, cfg, settings.core_number, c.program)
    cache[key] = cm
    return cm
