"""Lowering: a quantized graph becomes a Program, one kernel per (fused) node.

Activations live in GDRAM as NHWC int8 (int16 where a layer asks), each in its own region; the
program input is float32 NHWC (given as NCHW by the host, like torch) and is quantized on the
device by the first kernel; the output is float32, dequantized (or computed in float, for
softmax) by the last. Flatten is free in NHWC, so the fully connected layer after it gets its
weight columns permuted from torch's NCHW order at compile time instead.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from mlusim.compiler.graph import Graph, Node, output_names
from mlusim.compiler.kernels import conv as kconv
from mlusim.compiler.kernels import broadcast, eltwise, linear, pool
from mlusim.errors import CompileError
from mlusim.program import GDRAM_ALIGN, Kernel, Program, TensorDecl

ISA_DTYPE = {np.dtype(np.int8): "i8", np.dtype(np.uint8): "u8", np.dtype(np.int16): "i16",
             np.dtype(np.int32): "i32", np.dtype(np.float16): "f16", np.dtype(np.float32): "f32"}


@dataclass
class DevTensor:
    """Where a graph tensor lives on the device and how it is laid out."""

    name: str
    addr: int
    shape: tuple[int, ...]           # device shape (NHWC for images)
    dtype: str
    flat_from: tuple[int, int, int] | None = None   # (C, H, W) when this is a flattened NHWC image
    space: str = "gdram"             # "sram": held in the cluster's SRAM inside a fused segment


@dataclass
class LowerCtx:
    cfg: object
    graph: Graph
    tasks: int
    tensors: list[TensorDecl] = field(default_factory=list)
    kernels: list[Kernel] = field(default_factory=list)
    top: int = 0

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


def value_name(node: Node) -> str:
    """The program tensor holding a node's value when it crosses a program boundary (the graph
    input node's quantized value cannot share the float input's name)."""
    return "input.q" if node.op == "input" else node.name


def nhwc(shape) -> tuple[int, ...]:
    return (shape[0], shape[2], shape[3], shape[1]) if len(shape) == 4 else tuple(shape)


def nhwc_columns(w: np.ndarray, c: int, h: int, wd: int) -> np.ndarray:
    """A linear layer's weight [o, c*h*w] over a torch (NCHW) flatten, reordered for an NHWC
    flatten of the same image: column (y*w + x)*c + ch takes column ch*h*w + y*w + x."""
    return np.ascontiguousarray(w.reshape(w.shape[0], c, h, wd).transpose(0, 2, 3, 1).reshape(w.shape[0], -1))


def space_to_depth(g: Graph) -> dict | None:
    """A strided first conv over few channels wastes most of the MAC array's 64 input lanes (3 of 64
    for RGB). Folding each 2x2 pixel block into channels while the host stages the input turns a
    k x k stride-2 conv over c channels into a ceil(k/2)^2 stride-1 conv over 4c: the same products,
    (k/ceil(k/2))^2 fewer MAC cycles. Returns the plan for the graph, or None."""
    if "_s2d" in g.meta:
        return g.meta["_s2d"]
    plan = None
    inp = g.input
    cons = g.consumers(inp.name)
    if len(inp.shape) == 4 and len(cons) == 1 and cons[0].op == "conv2d" and inp.q.get("zp", 0) == 0:
        c = cons[0]
        a, (n, ch, h, w) = c.attrs, inp.shape
        pt, pb, pl, pr = a["padding"]
        if a["stride"] == (2, 2) and a["dilation"] == (1, 1) and a["groups"] == 1 and 4 * ch <= 64 \
                and c.q.get("in_zp", 0) == 0 and not a.get("residual") and c.q.get("dtype") == "int8" \
                and (h + pt + pb) % 2 == 0 and (w + pl + pr) % 2 == 0:
            plan = {"conv": c.name, "pads": (pt, pb, pl, pr),
                    "shape": (n, (h + pt + pb) // 2, (w + pl + pr) // 2, 4 * ch)}
    g.meta["_s2d"] = plan
    return plan


def _s2d_conv(node: Node) -> Node:
    """The stride-1 conv over space-to-depth input equal to `node` (weights regrouped, zero-filled)."""
    w = node.q["weight"]
    co, ci, kh, kw = w.shape
    kh2, kw2 = -(-kh // 2), -(-kw // 2)
    w2 = np.zeros((co, 4 * ci, kh2, kw2), w.dtype)
    for sy in range(2):
        for sx in range(2):
            part = w[:, :, sy::2, sx::2]                 # taps 2j+sy, 2k+sx
            w2[:, (sy * 2 + sx) * ci:(sy * 2 + sx + 1) * ci, :part.shape[2], :part.shape[3]] = part
    shape = node.attrs.get("conv_shape", node.shape)
    macs = int(np.prod(shape)) * ci * kh * kw              # the real conv's, not the zero-filled taps'
    attrs = dict(node.attrs, stride=(1, 1), padding=(0, 0, 0, 0), conv_shape=shape, macs=macs)
    return Node(node.name, node.op, node.inputs, attrs, node.params, node.shape, node.fused + ["space-to-depth"],
                dict(node.q, weight=w2))


def device_layout(node: Node, ins: list[DevTensor], s2d: dict | None = None) -> tuple[tuple[int, ...], str, tuple | None]:
    """(device shape, dtype, flat_from) of a node's output, from its inputs' layouts."""
    dt = "i16" if node.q.get("dtype") == "int16" else "i8"
    op = node.op
    if op == "input" and s2d:
        return tuple(s2d["shape"]), dt, None
    if op in ("input", "conv2d", "maxpool", "avgpool", "gap", "concat", "cpu", "upsample"):
        return nhwc(node.shape), dt, None
    if op in ("relu", "relu6", "add", "requant", "sigmoid", "hardswish", "hardsigmoid", "leaky_relu", "mul"):
        return ins[0].shape, dt, ins[0].flat_from
    if op in ("flatten", "reshape"):
        x = ins[0]
        flat = (x.shape[3], x.shape[1], x.shape[2]) if len(x.shape) == 4 and x.shape[1] * x.shape[2] > 1 else None
        return tuple(node.shape), x.dtype, flat or x.flat_from
    if op in ("softmax", "log_softmax"):
        return tuple(node.shape), "f32", None
    return tuple(node.shape), dt, None      # linear


def layouts(g: Graph) -> dict[str, DevTensor]:
    """Every node's device layout (no code, no addresses): what crosses a partition boundary."""
    out: dict[str, DevTensor] = {}
    s2d = space_to_depth(g)
    for node in g.nodes:
        shape, dt, flat = device_layout(node, [out[i] for i in node.inputs], s2d)
        out[node.name] = DevTensor(node.name, -1, shape, dt, flat)
    return out


def input_tensor(ctx, node: Node, shape) -> DevTensor:
    """The program's float input (host layout noted for the runtime)."""
    s2d = space_to_depth(ctx.graph)
    meta = {"layout": "NHWC", "host_layout": "NCHW"} if len(shape) == 4 else {}
    if s2d:          # the host pads and folds 2x2 pixel blocks into channels as it stages the input
        meta = {"space_to_depth": [2, *s2d["pads"]], "host_shape": list(node.shape)}
    meta["range"] = [0.0, 1.0]
    t = ctx.tensor("input", "input", "f32", shape, meta=meta)
    return DevTensor("input", t.addr, shape, "f32")


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
        node = _s2d_conv(node)
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
        w = node.q["weight"]
        if ins[0].flat_from is not None:
            w = nhwc_columns(w, *ins[0].flat_from)
        linear.lower_linear(ctx, node, ins[0], y, w)
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


def _lower_node_as(ctx, node, ins, y, x):
    return _lower_node(ctx, node, ins, "scratch", y=y, x=x)


def lower(g: Graph, cfg, tasks: int | None = None, nodes: list[str] | None = None,
          fusion: bool = False) -> Program:
    """The whole graph as one program, or only `nodes` (in graph order): then values produced
    outside the set are program inputs named after their producer, and the set's last node's
    value is the output (dequantized to float32 if it is the graph's output). `fusion` lets
    fusion.plan_segments run spans of layers in cluster SRAM (whole graphs only)."""
    from mlusim.compiler import fusion as fz

    ctx = LowerCtx(cfg, g, tasks or cfg.chip.cores)
    subset = None if nodes is None else set(nodes)
    dev: dict[str, DevTensor] = {}
    segments = fz.plan_segments(g, cfg, ctx.tasks) if fusion and subset is None else []
    lay = layouts(g) if subset is not None or segments else {}
    starts = {s.start: s for s in segments}
    inside = {k for s in segments for k in range(s.start, s.end)}
    chosen = [n for n in g.nodes if subset is None or n.name in subset]
    last = chosen[-1].name if chosen else None
    for k, node in enumerate(chosen):
        if k in starts:
            fz.lower_segment(ctx, starts[k], dev, lay, _lower_node_as)
        if k in inside:
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
