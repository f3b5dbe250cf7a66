"""Lowering: a quantized graph becomes a Program, one kernel per (fused) node.

Activations live in GDRAM as NHWC int8 (int16 where a layer asks), each in its own region; the
program input is float32 NHWC (given as NCHW by the host, like torch) and is quantized on the
device by the first kernel; the output is float32, dequantized (or computed in float, for
softmax) by the last. Flatten is free in NHWC, so the fully connected layer after it gets its
weight columns permuted from torch's NCHW order at compile time instead.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import numpy as np

from mlusim.compiler.context import DevTensor, KernelCtx
from mlusim.compiler.fusion import lower_segment
from mlusim.compiler.graph import Graph, Node, output_names
from mlusim.compiler.kernels import broadcast, eltwise, linear, pool
from mlusim.compiler.kernels import conv as kconv
from mlusim.compiler.layout import device_layout, input_tensor, layouts, nhwc_column_order, s2d_conv, space_to_depth, value_name
from mlusim.compiler.options import FusionOptions
from mlusim.compiler.relocate import StreamMemo
from mlusim.compiler.segments import plan_segments
from mlusim.errors import CompileError
from mlusim.program import GDRAM_ALIGN, Kernel, Program, TensorDecl

ISA_DTYPE = {np.dtype(np.int8): "i8", np.dtype(np.uint8): "u8", np.dtype(np.int16): "i16",
             np.dtype(np.int32): "i32", np.dtype(np.float16): "f16", np.dtype(np.float32): "f32"}


@dataclass(kw_only=True)
class LowerCtx(KernelCtx):
    """A whole program being built: its GDRAM tensors and kernels, in order."""

    graph: Graph
    tensors: list[TensorDecl] = field(default_factory=list)
    kernels: list[Kernel] = field(default_factory=list)
    top: int = 0
    streams_memo: StreamMemo | None = field(default_factory=StreamMemo)

    def _place(self, nbytes: int) -> int:
        addr = -(-self.top // GDRAM_ALIGN) * GDRAM_ALIGN
        self.top = addr + nbytes
        return addr

    def tensor(self, name: str, role: str, dtype: str, shape, data=None, meta=None) -> TensorDecl:
        t = TensorDecl(name, role, dtype, tuple(int(d) for d in shape), 0, data, meta or {})
        t.addr = self._place(t.nbytes)
        self.tensors.append(t)
        return t

    def const(self, name: str, arr: np.ndarray) -> int:
        arr = np.ascontiguousarray(arr)
        return self.tensor(name, "const", ISA_DTYPE[arr.dtype], arr.shape, arr).addr

    def activation(self, node: Node, shape, dtype: str = "i8", role: str = "scratch", meta=None) -> DevTensor:
        t = self.tensor(value_name(node) if role != "scratch" else f"{node.name}.out", role, dtype, shape, meta=meta)
        return DevTensor(t.name, t.addr, tuple(shape), dtype)

    def kernel(self, node, streams: list, **meta) -> None:
        meta = {"layer": node.name, "op": node.op, "fused": list(getattr(node, "fused", [])), **meta}
        self.kernels.append(Kernel(node.name, "block", len(streams), streams, list(range(len(streams))), meta))


def _lower_node(ctx: LowerCtx, node: Node, ins: list[DevTensor], role: str, y: DevTensor | None = None,
                x: DevTensor | None = None) -> DevTensor:
    """Emit `node`'s kernel; y (and, for the input node, the float input x) may be given by a
    caller that places them itself (a fused segment)."""
    s2d = space_to_depth(ctx.graph)
    shape, dt, flat = device_layout(node, ins, s2d)
    op = node.op
    if op in ("flatten", "reshape"):
        return DevTensor(ins[0].name, ins[0].addr, shape, dt, flat, ins[0].space)
    if op == "conv2d" and s2d and node.name == s2d["conv"]:
        node = s2d_conv(node)
    if op == "input" and x is None:
        x = input_tensor(ctx, node, shape)
    if y is None:
        y = ctx.activation(node, shape, dt, role=role)
        y.flat_from = flat
    if op == "input":
        eltwise.lower_quantize_input(ctx, node, x, y)
    elif op == "conv2d":
        kconv.lower_conv(ctx, node, ins[0], y, ins[1] if node.attrs.get("residual") else None)
    elif op == "linear":
        flat = ins[0].flat_from
        columns = nhwc_column_order(*flat) if flat is not None else None
        linear.lower_linear(ctx, node, ins[0], y, node.q["weight"], columns)
    elif op in ("maxpool", "avgpool"):
        pool.lower_pool(ctx, node, ins[0], y)
    elif op == "gap":
        pool.lower_gap(ctx, node, ins[0], y)
    elif op in ("relu", "relu6"):
        eltwise.lower_act(ctx, node, ins[0], y)
    elif op == "requant":
        eltwise.lower_requant(ctx, node, ins[0], y)
    elif op in ("sigmoid", "hardswish", "hardsigmoid"):
        eltwise.lower_float_unary(ctx, node, ins[0], y)
    elif op == "leaky_relu":
        broadcast.lower_leaky(ctx, node, ins[0], y)
    elif op == "upsample":
        broadcast.lower_upsample(ctx, node, ins[0], y)
    elif op == "mul":
        broadcast.lower_channel_mul(ctx, node, ins[0], ins[1], y)
    elif op == "add":
        eltwise.lower_add(ctx, node, ins[0], ins[1], y)
    elif op == "concat":
        eltwise.lower_concat(ctx, node, ins, y)
    elif op in ("softmax", "log_softmax"):
        eltwise.lower_softmax(ctx, node, ins[0], y)
    else:
        raise CompileError(f"node '{node.name}': op '{op}' has no MLU kernel"
                           + (f" ({node.attrs.get('what')} runs on the host)" if op == "cpu" else ""))
    return y


def elided_concats(g: Graph, skip: set[int]) -> dict[str, tuple[Node, int]]:
    """Concats whose every input is a conv written only for it: each such conv stores straight
    into its channel slice of the concat's tensor (conv -> (concat, channel offset)) and the concat
    costs nothing, as vendor runtimes place branch outputs (SqueezeNet's fire expands, a
    channel-strided store within the open DRAM page). `skip`: node indices inside fused segments."""
    idx = {n.name: k for k, n in enumerate(g.nodes)}
    s2d = space_to_depth(g)
    out: dict[str, tuple[Node, int]] = {}
    for k, c in enumerate(g.nodes):
        if c.op != "concat" or k in skip or len(set(c.inputs)) != len(c.inputs):
            continue
        convs = [g.node(i) for i in c.inputs]
        if not all(n.op == "conv2d" and idx[n.name] not in skip and "out_slice" not in n.attrs
                   and n.name not in g.outputs and (not s2d or n.name != s2d["conv"])
                   and [u.name for u in g.consumers(n.name)] == [c.name]
                   and n.q.get("dtype") == c.q.get("dtype") for n in convs):
            continue
        at = 0
        for n in convs:
            out[n.name] = (c, at)
            at += n.shape[1]
    return out


def _lower_sliced(ctx, node: Node, concat: Node, at: int, ins: list[DevTensor], dev: dict) -> DevTensor:
    """A conv of an elided concat: its output is channels [at, at + co) of the concat's tensor
    (placed by the first of its convs)."""
    if concat.name not in dev:
        shape, dt, _ = device_layout(concat, [], None)
        dev[concat.name] = ctx.activation(concat, shape, dt)
    y = dev[concat.name]
    return _lower_node(ctx, dataclasses.replace(node, attrs=dict(node.attrs, out_slice=(at, y.shape[3]))), ins,
                       "scratch", y=y)


def _lower_node_as(ctx, node, ins, y, x):
    return _lower_node(ctx, node, ins, "scratch", y=y, x=x)


def lower(g: Graph, cfg, tasks: int | None = None, nodes: list[str] | None = None,
          fusion: bool | FusionOptions = False, dram_share: float = 1.0, progress=None) -> Program:
    """The whole graph as one program, or only `nodes` (in graph order): then values produced
    outside the set are program inputs named after their producer, and the set's last node's
    value is the output (dequantized to float32 if it is the graph's output). `fusion` (True for
    the default FusionOptions) lets segments.plan_segments run spans of layers in cluster SRAM
    (whole graphs only). `dram_share`: the part of the chip's DRAM bandwidth the program gets (copies
    of it running side by side on other clusters take the rest), which the tilers price traffic at.
    `progress(phase, layers_done, layers_total)` as it goes."""
    opts = FusionOptions() if fusion is True else fusion or None
    ctx = LowerCtx(cfg=cfg, tasks=tasks or cfg.chip.cores, graph=g, dram_share=dram_share)
    subset = None if nodes is None else set(nodes)
    dev: dict[str, DevTensor] = {}
    segments = plan_segments(g, cfg, ctx.tasks, opts, progress) if opts and subset is None else []
    lay = layouts(g) if subset is not None or segments else {}
    starts = {s.start: s for s in segments}
    inside = {k for s in segments for k in range(s.start, s.end)}
    chosen = [n for n in g.nodes if subset is None or n.name in subset]
    last = chosen[-1].name if chosen else None
    sliced = elided_concats(g, inside) if subset is None else {}
    for k, node in enumerate(chosen):
        if progress:
            progress("lowering", k, len(chosen))
        if k in starts:
            span = starts[k].end - starts[k].start
            lower_segment(ctx, starts[k], dev, lay, _lower_node_as, opts,
                          (lambda f, k=k, span=span: progress("lowering", k + int(f * span), len(chosen)))
                          if progress else None)
        if k in inside or node.op == "concat" and node.name in dev:
            continue
        ins = []
        for i in node.inputs:
            if i not in dev:        # a boundary: produced by another program
                t = lay[i]
                decl = ctx.tensor(value_name(g.node(i)), "input", t.dtype, t.shape)
                dev[i] = DevTensor(i, decl.addr, t.shape, t.dtype, t.flat_from)
            ins.append(dev[i])
        final = node.name == g.output
        role = "output" if (subset is not None and node.name == last and not final) or \
            (final and node.op in ("softmax", "log_softmax")) else "scratch"
        if node.name in sliced:
            dev[node.name] = _lower_sliced(ctx, node, *sliced[node.name], ins, dev)
            continue
        dev[node.name] = _lower_node(ctx, node, ins, role)
    if subset is None or last == g.output:
        # a one-node program (the shim's layer-by-layer mode) ending at the first output makes only it
        pairs = zip(g.outputs, output_names(g)) if subset is None else [(g.output, "output")]
        for name, pname in pairs:
            _emit_output(ctx, g.node(name), dev[name], pname)
    prog = Program(ctx.kernels, ctx.tensors, ctx.top)
    if g.extra_outputs and subset is None:
        prog.meta["outputs"] = output_names(g)
    return prog


def _emit_output(ctx, out_node: Node, out: DevTensor, pname: str) -> None:
    """The program's float output `pname`: the node's value dequantized into it, or (softmax) the
    float tensor the node already wrote, renamed."""
    if out.dtype != "f32":
        shape = out.shape
        meta = {"layout": "NHWC", "host_layout": "NCHW"} if len(shape) == 4 else {}
        t = ctx.tensor(pname, "output", "f32", shape, meta=meta)
        eltwise.lower_dequantize(ctx, out_node, out, DevTensor(pname, t.addr, shape, "f32"),
                                 out_node.q["scale"], f"{out_node.name}.dequantize", out_node.q.get("zp", 0))
    else:
        for t in ctx.tensors:
            if t.name == out.name and t.role == "output":
                t.name = pname
