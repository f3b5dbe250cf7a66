"""Running a compiled quantized model on the simulator, as Cambricon's two online modes do:
a whole-graph program in one go (fused), or every node its own program with int8 values passed
between them and unsupported ops on the host in between (layer by layer). Both execute the same
kernels with the same parameters, so they agree bit for bit. Each run leaves a RunReport in the
device settings.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from mlusim.errors import ShimError
from torch_mlu.core.state import DeviceSettings


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

    def to_dataframe(self):
        """The kernels as a pandas DataFrame indexed by name, as mlusim's experiment rows give
        theirs (mlusim.frames), to sort, plot or set beside another run's."""
        from mlusim.frames import pandas

        cols = ["name", "op", "cycles", "mac_utilization", "energy_j"]
        return pandas().DataFrame(self.ops, columns=cols).set_index("name")

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
    """A quantized model compiled for one input shape, config and core number."""

    graph: Any                      # quantized graph
    cfg: Any
    cores: int
    fused: Any | None               # whole-graph Program, None if some node runs on the host
    per_node: dict[str, Any] = field(default_factory=dict)
    model_file: Any | None = None   # `fused` as .mlu bytes in a uint8 tensor, made when first traced


def _report_ops(summary) -> list[dict]:
    return [{"name": k["name"], "op": k["meta"].get("op", ""), "cycles": k["cycles"],
             "mac_utilization": k["mac_utilization"], "energy_j": k["energy_j"]} for k in summary["kernels"]]


def run_program(prog, cfg, cores: int, x_np: np.ndarray, settings: DeviceSettings) -> list[np.ndarray]:
    """A whole-graph program's outputs, in the order of the model's forward (the program's
    `meta.outputs`, or its one `output`); leaves a fused report and writes the offline file if asked."""
    from mlusim.report import summarize
    from mlusim.sim import simulate

    res = simulate(prog, cfg, cores=cores, inputs={"input": x_np})
    s = summarize(res)
    settings.last_report = RunReport("fused", cfg.name, cores, res.cycles, res.seconds * 1e3, _report_ops(s), [], s,
                                     s["energy_j"])
    settings.maybe_save_offline(prog)
    return [res.outputs[k] for k in prog.meta.get("outputs", ["output"])]


def run_fused(cm: CompiledModel, x_np: np.ndarray, settings: DeviceSettings) -> list[np.ndarray]:
    """The model's outputs from one whole-graph program (layer by layer if some node runs on the host)."""
    if cm.fused is None:
        return run_layers(cm, x_np, settings)
    return run_program(cm.fused, cm.cfg, cm.cores, x_np, settings)


def _node_program(cm: CompiledModel, name: str):
    from mlusim.compiler.lower import lower

    if name not in cm.per_node:
        cm.per_node[name] = lower(cm.graph, cm.cfg, tasks=cm.cores, nodes=[name])
    return cm.per_node[name]


def _host_node(cm: CompiledModel, node, vals: dict, lay: dict, settings: DeviceSettings) -> np.ndarray:
    """An unsupported node computed on the host from the int8/int16 values around it."""
    from mlusim.compiler.reference import cpu_node_quant

    g = cm.graph
    if settings.strict:
        raise ShimError(f"{node.attrs['what']} (node '{node.name}') is not supported on the MLU and strict mode is on")
    ins = [_to_nchw(vals[i], lay[i].shape) for i in node.inputs]
    y = cpu_node_quant(node, ins, [g.node(i).q for i in node.inputs])
    return _from_nchw(y, lay[node.name].shape).astype(np.int8 if lay[node.name].dtype == "i8" else np.int16)


def run_layers(cm: CompiledModel, x_np: np.ndarray, settings: DeviceSettings) -> list[np.ndarray]:
    """Each node its own program; values pass between them in device layout. Returns the model's
    outputs in order (a graph's extra outputs are dequantized by their own one-kernel programs)."""
    from mlusim.compiler.layout import layouts, value_name
    from mlusim.report import summarize
    from mlusim.sim import simulate

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
            vals[node.name] = _host_node(cm, node, vals, lay, settings)
            host.append(f"{node.attrs['what']} ({node.name})")
            continue
        feeds = {"input": x_np} if node.op == "input" else {value_name(g.node(i)): vals[i] for i in node.inputs}
        res = simulate(_node_program(cm, node.name), cm.cfg, cores=cm.cores, inputs=feeds)
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
    settings.last_report = RunReport("layer-by-layer", cm.cfg.name, cm.cores, total,
                                     cm.cfg.cycles_to_seconds(total) * 1e3, ops, host, energy_j=joules)
    if cm.fused is not None:
        settings.maybe_save_offline(cm.fused)
    elif settings.save_name:
        raise ShimError(f"cannot write {settings.save_name}.mlu: the model has host ops ({', '.join(host)})")
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
