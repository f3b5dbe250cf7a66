"""Device layouts of graph values: NHWC images, flattened columns, the space-to-depth stem.

What lowering, the fusion planner and the emitter all need to know about a value before any code
exists: its device shape and dtype (`layouts`), how the first conv's input is staged by the host
(`space_to_depth`), and the program tensor names of values that cross a program boundary.
"""
from __future__ import annotations

import numpy as np

from mlusim.compiler.context import DevTensor
from mlusim.compiler.graph import Graph, Node


def value_name(node: Node) -> str:
    """The program tensor holding a node's value when it crosses a program boundary (the graph
    input node's quantized value cannot share the float input's name)."""
    return "input.q" if node.op == "input" else node.name


def nhwc(shape) -> tuple[int, ...]:
    return (shape[0], shape[2], shape[3], shape[1]) if len(shape) == 4 else tuple(shape)


def nhwc_column_order(c: int, h: int, wd: int) -> np.ndarray:
    """For a linear layer's weight [o, c*h*w] over a torch (NCHW) flatten, the weight column each
    column of an NHWC flatten of the same image takes: column (y*w + x)*c + ch takes column
    ch*h*w + y*w + x. An index, not a reordered copy: the kernel gathers it block by block
    (VGG-16's fc6 weight is 103 MB, a whole reordered copy would add that to the compile's peak)."""
    j = np.arange(c * h * wd)
    return (j % c) * (h * wd) + j // c


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
                and "pad_fill" not in c.q \
                and (h + pt + pb) % 2 == 0 and (w + pl + pr) % 2 == 0:
            plan = {"conv": c.name, "pads": (pt, pb, pl, pr),
                    "shape": (n, (h + pt + pb) // 2, (w + pl + pr) // 2, 4 * ch)}
    g.meta["_s2d"] = plan
    return plan


def s2d_conv(node: Node) -> Node:
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
