"""What happens when a quantized model meets an mlu tensor: compile, then run on the simulator.

A model made by `quantize_dynamic_mlu` is traced once per input shape into mlusim's graph IR
(torch.fx), calibrated on the CPU batches it saw, quantized and lowered. Then, as on Cambricon's
stack:
  * online layer-by-layer (an eager call): every node is its own program, run one after another,
    int8 values passed between them; host ops (unsupported) run on the CPU in between;
  * online fused (`torch.jit.trace` with grad disabled): the whole graph is one program, recorded in
    the trace as a single `mlusim::run_program` op, so repeated calls reuse it;
  * offline: after `ct.save_as_cambricon(name)`, the next whole-graph run also writes `name.mlu`.
Both online modes execute the same kernels with the same parameters, so they agree bit for bit.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from mlusim.errors import CompileError, ShimError

_PROGRAMS: list["CompiledModel"] = []      # index = key recorded in traced graphs


@dataclass
class RunReport:
    """The last MLU execution: plain data, cycles at the configured clock."""

    mode: str                       # "layer-by-layer" or "fused"
    config: str
    cores: int
    cycles: float
    latency_ms: float
    ops: list[dict] = field(default_factory=list)     # per node/kernel: name, op, cycles, mac_utilization
    host_ops: list[str] = field(default_factory=list)
    summary: dict[str, Any] | None = None
    energy_j: float = 0.0           # mlusim.energy: events x their energy + static power x time

    @property
    def power_w(self) -> float:
        """Average board power over the run."""
        return self.energy_j / (self.latency_ms / 1e3) if self.latency_ms else 0.0

    def __str__(self) -> str:
        lines = [f"MLU {self.mode} run on {self.config}, {self.cores} core(s): {self.cycles:,.0f} cycles = "
                 f"{self.latency_ms:.4f} ms, {1e3 * self.energy_j:.4g} mJ at {self.power_w:.1f} W average"]
        for op in self.ops:
            lines.append(f"  {op['name']:28} {op['op']:12} {op['cycles']:>12,.0f} cycles  MAC util "
                         f"{100 * op['mac_utilization']:5.1f}%")
        if self.host_ops:
            lines.append(f"  on the host (not supported by the MLU): {', '.join(self.host_ops)}")
        return "\n".join(lines)


@dataclass
class CompiledModel:
    graph: Any                      # quantized graph
    cfg: Any
    cores: int
    fused: Any | None               # whole-graph Program, None if some node runs on the host
    per_node: dict[str, Any] = field(default_factory=dict)
    key: int = -1


def _state():
    from torch_mlu.core import mlu_model

    return mlu_model._STATE


def build_graph(model, orig_cls, example):
    """The model's float graph (optimized, normalization folded in) for an input like `example`."""
    from mlusim.compiler import passes, quant
    from mlusim.compiler.frontend_torch import from_torch

    cls = model.__class__
    model.__class__ = orig_cls
    try:
        g = from_torch(model, example, allow_cpu=True)
    finally:
        model.__class__ = cls
    g = passes.optimize(g)
    q = model._mlu_qconfig
    if q.get("firstconv") and (q.get("mean") is not None or q.get("std") is not None):
        c = g.input.shape[1]
        quant.firstconv(g, q.get("mean") or [0.0] * c, q.get("std") or [1.0] * c)
    return g


def calibrate(model, orig_cls, x_cpu) -> None:
    """Fold one CPU batch into the model's calibration buffers (max, or running mean with use_avg)."""
    import torch

    from mlusim.compiler.quant import calibrate as absmax_of

    g = build_graph(model, orig_cls, x_cpu)
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


def compile_for(model, orig_cls, x) -> CompiledModel:
    """Quantize and lower for this input shape, config and core number (cached on the model)."""
    from mlusim.compiler.lower import lower
    from mlusim.compiler.quant import quantize

    st = _state()
    cfg = st.config()
    key = (tuple(x.shape), cfg.name, repr(cfg.to_dict()), st.core_number)
    cache = model.__dict__.setdefault("_mlu_compiled", {})
    if key in cache:
        return cache[key]
    if int(model.mlu_calib_count.item()) == 0:
        raise ShimError(f"{type(model).__name__} has no calibration: run it on CPU batches with "
                        f"quantize_dynamic_mlu(..., gen_quant=True) first, or load the state_dict it saved")
    from torch_mlu.core.device import cpu_of

    g = build_graph(model, orig_cls, cpu_of(x))
    vals = model.mlu_absmax.tolist()
    if len(vals) != len(g.nodes):
        raise ShimError(f"{type(model).__name__}: calibration has {len(vals)} entries but the traced model has "
                        f"{len(g.nodes)} nodes (was the state_dict saved from another model?)")
    absmax = {n.name: max(float(v), 1e-8) for n, v in zip(g.nodes, vals)}
    # Cambricon's data_scale: the input's calibrated maximum is multiplied by it before the
    # input scale is derived (below 1 clips the brightest inputs for finer steps)
    absmax[g.input.name] *= float(model._mlu_qconfig.get("data_scale", 1.0))
    quantize(g, absmax, dtype=model._mlu_dtype, per_channel=bool(model._mlu_qconfig.get("per_channel", True)),
             mixed=model._mlu_mixed)
    host = [n for n in g.nodes if n.op == "cpu"]
    # cluster fusion as `mlusim run` and compile_model do by default: one model, one answer
    fused = None if host else lower(g, cfg, tasks=st.core_number, fusion=True)
    if fused is not None:
        fused.config = cfg.to_dict()
        fused.meta.update(model=type(model).__name__, batch=int(x.shape[0]), target=cfg.name,
                          compiled_for_cores=st.core_number)
    cm = CompiledModel(g, cfg, st.core_number, fused)
    cm.key = len(_PROGRAMS)
    _PROGRAMS.append(cm)
    cache[key] = cm
    return cm


def _report_ops(summary) -> list[dict]:
    return [{"name": k["name"], "op": k["meta"].get("op", ""), "cycles": k["cycles"],
             "mac_utilization": k["mac_utilization"], "energy_j": k["energy_j"]} for k in summary["kernels"]]


def run_fused(cm: CompiledModel, x_np: np.ndarray) -> list[np.ndarray]:
    """The model's outputs (one per output of its forward, in order) from one whole-graph program."""
    from mlusim.compiler.graph import output_names
    from mlusim.report import summarize
    from mlusim.sim import simulate

    st = _state()
    if cm.fused is None:
        return run_layers(cm, x_np)
    res = simulate(cm.fused, cm.cfg, cores=cm.cores, inputs={"input": x_np})
    s = summarize(res)
    st.last_report = RunReport("fused", cm.cfg.name, cm.cores, res.cycles, res.seconds * 1e3, _report_ops(s), [], s,
                               s["energy_j"])
    st.maybe_save_offline(cm.fused)
    return [res.outputs[k] for k in output_names(cm.graph)]


def _node_program(cm: CompiledModel, name: str):
    from mlusim.compiler.lower import lower

    if name not in cm.per_node:
        cm.per_node[name] = lower(cm.graph, cm.cfg, tasks=cm.cores, nodes=[name])
    return cm.per_node[name]


def run_layers(cm: CompiledModel, x_np: np.ndarray) -> list[np.ndarray]:
    """Each node its own program; values pass between them in device layout. Returns the model's
    outputs in order (a graph's extra outputs are dequantized by their own one-kernel programs)."""
    from mlusim.compiler.layout import layouts, value_name
    from mlusim.compiler.reference import cpu_node_quant
    from mlusim.report import summarize
    from mlusim.sim import simulate

    st = _state()
    g = cm.graph
    lay = layouts(g)
    vals: dict[str, np.ndarray] = {}
    ops, host, total, joules = [], [], 0.0, 0.0
    out = None
    extra: dict[str, np.ndarray] = {}
    for node in g.nodes:
        if node.op in ("flatten", "reshape"):
            vals[node.name] = vals[node.inputs[0]].reshape(lay[node.name].shape)
            continue
        if node.op == "cpu":
            if st.strict:
                raise ShimError(f"{node.attrs['what']} (node '{node.name}') is not supported on the MLU and "
                                f"strict mode is on")
            ins = [_to_nchw(vals[i], lay[i].shape) for i in node.inputs]
            y = cpu_node_quant(node, ins, [g.node(i).q for i in node.inputs])
            vals[node.name] = _from_nchw(y, lay[node.name].shape).astype(np.int8 if lay[node.name].dtype == "i8" else np.int16)
            host.append(f"{node.attrs['what']} ({node.name})")
            continue
        prog = _node_program(cm, node.name)
        feeds = {"input": x_np} if node.op == "input" else {value_name(g.node(i)): vals[i] for i in node.inputs}
        res = simulate(prog, cm.cfg, cores=cm.cores, inputs=feeds)
        total += res.cycles
        s = summarize(res)
        joules += s["energy_j"]
        ops += _report_ops(s)
        if node.name == g.output:
            out = res.outputs["output"]
        else:
            vals[node.name] = res.outputs[value_name(node)]
            if node.name in g.extra_outputs:
                extra[node.name] = _dequantized(cm, node, vals[node.name])
    if host:
        warnings.warn(f"mlusim: ran on the host (not supported by the MLU): {', '.join(host)}", stacklevel=3)
    st.last_report = RunReport("layer-by-layer", cm.cfg.name, cm.cores, total, cm.cfg.cycles_to_seconds(total) * 1e3,
                               ops, host, energy_j=joules)
    if cm.fused is not None:
        st.maybe_save_offline(cm.fused)
    elif st.save_name:
        raise ShimError(f"cannot write {st.save_name}.mlu: the model has host ops ({', '.join(host)})")
    return [out] + [extra[o] for o in g.extra_outputs]


def _dequantized(cm: CompiledModel, node, value: np.ndarray) -> np.ndarray:
    """An extra output's float value: the same dequantize kernel the whole-graph program ends with."""
    from mlusim.compiler import lower as lw
    from mlusim.compiler.kernels import eltwise
    from mlusim.program import Program
    from mlusim.sim import simulate

    ctx = lw.LowerCtx(cfg=cm.cfg, tasks=cm.cores, graph=cm.graph)
    shape = value.shape
    x = ctx.tensor("value", "input", lw.layouts(cm.graph)[node.name].dtype, shape)
    meta = {"layout": "NHWC", "host_layout": "NCHW"} if len(shape) == 4 else {}
    y = ctx.tensor("output", "output", "f32", shape, meta=meta)
    eltwise.lower_dequantize(ctx, node, lw.DevTensor("value", x.addr, shape, x.dtype),
                             lw.DevTensor("output", y.addr, shape, "f32"), node.q["scale"],
                             f"{node.name}.dequantize", node.q.get("zp", 0))
    prog = Program(ctx.kernels, ctx.tensors, ctx.top)
    return simulate(prog, cm.cfg, cores=cm.cores, inputs={"value": value}).outputs["output"]


def _to_nchw(a: np.ndarray, dev_shape) -> np.ndarray:
    return a.transpose(0, 3, 1, 2) if len(dev_shape) == 4 else a


def _from_nchw(a: np.ndarray, dev_shape) -> np.ndarray:
    return np.ascontiguousarray(a.transpose(0, 2, 3, 1)) if len(dev_shape) == 4 else a


# ---- the traced op ---------------------------------------------------------------------------------
_LIB = None


def register_ops() -> None:
    """`mlusim::run_program(x, key)`: what torch.jit.trace records for a fused MLU model."""
    global _LIB
    if _LIB is not None:
        return
    import torch

    from torch_mlu.core.device import OP_HANDLERS, MluTensor, cpu_of

    _LIB = torch.library.Library("mlusim", "DEF")
    _LIB.define("run_program(Tensor x, int key) -> Tensor")
    _LIB.define("run_program_multi(Tensor x, int key) -> Tensor[]")    # a model with several outputs

    def cpu_impl(x, key):
        raise ShimError("mlusim::run_program runs on mlu tensors; move the input with .to(ct.mlu_device())")

    _LIB.impl("run_program", cpu_impl, "CPU")
    _LIB.impl("run_program_multi", cpu_impl, "CPU")

    def handler(func, args, kwargs):
        x, key = args[0], args[1]
        if not 0 <= key < len(_PROGRAMS):
            raise ShimError(f"traced MLU program {key} is not loaded in this process")
        outs = [MluTensor(torch.from_numpy(o))
                for o in run_fused(_PROGRAMS[key], cpu_of(x).detach().float().contiguous().numpy())]
        return outs[0] if func is torch.ops.mlusim.run_program.default else outs

    OP_HANDLERS[torch.ops.mlusim.run_program.default] = handler
    OP_HANDLERS[torch.ops.mlusim.run_program_multi.default] = handler


# set_input_format: where the three colour channels sit in a 4-channel (padded) image, as RGB
FORMAT_CHANNELS = {0: [0, 1, 2], 1: [1, 2, 3], 2: [2, 1, 0], 3: [3, 2, 1]}    # RGBA ARGB BGRA ABGR


def format_channels(model, shape: tuple) -> list[int] | None:
    """Cambricon's set_input_format: the MLU's first conv takes 4-channel images (RGB plus a pad
    channel) and the format says which channel is which. A 4-channel input to a model whose first
    conv takes 3 channels is read that way (the pad dropped, BGR turned to RGB): the channels to
    take, in RGB order. A 3-channel input is in the model's order already (None); any other
    mismatch is an error."""
    import torch

    first = next((m for m in model.modules() if isinstance(m, torch.nn.Conv2d)), None)
    if first is None or len(shape) != 4 or shape[1] == first.in_channels:
        return None
    if shape[1] == 4 and first.in_channels == 3:
        return FORMAT_CHANNELS[_state().input_format]
    raise ShimError(f"{type(model).__name__}: input has {shape[1]} channels, its first conv takes {first.in_channels}")


def mlu_forward(model, orig_cls, x):
    """The forward of a quantized model on an mlu tensor."""
    import torch

    from torch_mlu.core.device import MluTensor, cpu_of

    _state().last_report = None
    if not _state().cnml_enabled:
        raise ShimError(f"{type(model).__name__}: quantized inference runs on Cambricon's CNML path, which "
                        f"ct.set_cnml_enabled(False) (the training path) turned off; call ct.set_cnml_enabled(True)")
    tracing = torch._C._get_tracing_state()
    torch._C._set_tracing_state(None)       # compiling is not part of the traced computation
    try:
        idx = format_channels(model, tuple(int(d) for d in x.shape))
    finally:
        torch._C._set_tracing_state(tracing)
    if idx is not None:
        x = x.index_select(1, torch.tensor(idx).to(x.device))
    torch._C._set_tracing_state(None)
    try:
        cm = compile_for(model, orig_cls, x)
    except CompileError as e:
        raise ShimError(f"cannot compile {type(model).__name__} for the MLU: {e}") from None
    finally:
        torch._C._set_tracing_state(tracing)
    if torch.jit.is_tracing():
        register_ops()
        if cm.graph.extra_outputs:
            return tuple(torch.ops.mlusim.run_program_multi(x, cm.key))
        return torch.ops.mlusim.run_program(x, cm.key)
    outs = [MluTensor(torch.from_numpy(o)) for o in run_layers(cm, cpu_of(x).detach().float().contiguous().numpy())]
    return tuple(outs) if len(outs) > 1 else outs[0]
