"""The compiler's graph IR: a topologically ordered list of nodes with NCHW logical shapes.

Shapes follow PyTorch (NCHW for images, [N, F] after flatten) so that models read like their
torch definitions; the device layout (NHWC) is the lowering's business. Every node has one output
tensor named after the node. Validation errors name the node and the op.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from mlusim.compiler.weights import Seed, weight
from mlusim.errors import CompileError

OPS = {
    "input": "graph input, float32",
    "conv2d": "2-D convolution (stride, padding, dilation, groups incl. depthwise), optional bias",
    "linear": "fully connected: y = x W^T + b",
    "batchnorm": "inference batch norm (folded into the preceding conv)",
    "relu": "max(x, 0)", "relu6": "min(max(x, 0), 6)",
    "maxpool": "max pooling", "avgpool": "average pooling (count_include_pad)",
    "gap": "global average pooling to [N, C, 1, 1]",
    "add": "elementwise sum of two tensors (residual)",
    "concat": "concatenation along channels",
    "flatten": "flatten from dim 1", "reshape": "reshape (flatten-like only)",
    "softmax": "softmax over dim 1", "log_softmax": "log-softmax over dim 1",
    "dropout": "identity at inference",
    "sigmoid": "1 / (1 + exp(-x)), on the vector unit in float32",
    "hardswish": "x * relu6(x + 3) / 6, on the vector unit in float32",
    "hardsigmoid": "relu6(x + 3) / 6, on the vector unit in float32",
    "leaky_relu": "x if x >= 0 else slope * x (attr slope < 1; darknet's is 0.1), in the output's integers",
    "upsample": "nearest-neighbour upsampling by an integer factor (attr scale), DMA copies",
    "mul": "x * s with s [N, C, 1, 1] broadcast over H and W (squeeze-excitation's channel scale)",
    "requant": "identity on real values: re-expresses a quantized tensor in another scale / zero point",
    "cpu": "an op the MLU does not run: computed on the host in float (torch shim only)",
}


@dataclass
class Node:
    name: str
    op: str
    inputs: list[str]
    attrs: dict[str, Any] = field(default_factory=dict)
    params: dict[str, np.ndarray] = field(default_factory=dict)
    shape: tuple[int, ...] = ()
    fused: list[str] = field(default_factory=list)      # ops folded into this node by passes
    q: dict[str, Any] = field(default_factory=dict)     # quantization parameters (quant.py)


@dataclass
class Graph:
    name: str
    nodes: list[Node]
    output: str                      # the (first) output
    meta: dict[str, Any] = field(default_factory=dict)
    extra_outputs: list[str] = field(default_factory=list)    # more outputs (a detector's heads)
    # name -> (position, node) as of the last lookup that scanned the list (see `node`)
    _index: dict = field(default_factory=dict, init=False, repr=False, compare=False)

    @property
    def outputs(self) -> list[str]:
        return [self.output, *self.extra_outputs]

    def node(self, name: str) -> Node:
        """The first node called `name`. Passes edit `nodes` freely, so the index is only a hint:
        it is trusted when the same node object still sits at the recorded position under that
        name, and rebuilt by one scan otherwise (the fusion planner looks nodes up ~10^5 times)."""
        hit = self._index.get(name)
        nodes = self.nodes
        if hit is not None:
            i, n = hit
            if i < len(nodes) and nodes[i] is n and n.name == name:
                return n
        index: dict = {}
        for i, n in enumerate(nodes):
            index.setdefault(n.name, (i, n))
        self._index = index
        hit = index.get(name)
        if hit is None:
            raise CompileError(f"graph '{self.name}': no node named '{name}'")
        return hit[1]

    @property
    def input(self) -> Node:
        return self.nodes[0]

    def consumers(self, name: str) -> list[Node]:
        return [n for n in self.nodes if name in n.inputs]

    def macs(self) -> int:
        total = 0
        for n in self.nodes:
            if n.op == "conv2d":
                co, cig, kh, kw = n.params["weight"].shape
                total += int(np.prod(n.shape)) * cig * kh * kw
            elif n.op == "linear":
                total += n.shape[0] * int(np.prod(n.params["weight"].shape))
        return total

    def parameter_count(self) -> int:
        return sum(int(p.size) for n in self.nodes for k, p in n.params.items()
                   if k in ("weight", "bias", "gamma", "beta"))


IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")


def output_names(g: Graph) -> list[str]:
    """Program tensor names of the graph's outputs: 'output' for a single-output graph; otherwise
    each output node's own name if it is a plain identifier (names become file names), else
    'output<i>' by position."""
    if not g.extra_outputs:
        return ["output"]
    if len(set(g.outputs)) != len(g.outputs):
        raise CompileError(f"graph '{g.name}': an output is listed twice ({', '.join(g.outputs)})")
    names = [o if IDENTIFIER.match(o) else f"output{i}" for i, o in enumerate(g.outputs)]
    return names if len(set(names)) == len(names) else [f"output{i}" for i in range(len(names))]


def conv_out(size: int, k: int, s: int, pa: int, pb: int, d: int) -> int:
    return (size + pa + pb - d * (k - 1) - 1) // s + 1


def _pads(p) -> tuple[int, int, int, int]:
    """Padding as (top, bottom, left, right) from an int, (h, w) or a 4-tuple."""
    if isinstance(p, int):
        return (p, p, p, p)
    p = tuple(int(v) for v in p)
    if len(p) == 2:
        return (p[0], p[0], p[1], p[1])
    if len(p) == 4:
        return p
    raise CompileError(f"bad padding {p!r}")


def _pair(v) -> tuple[int, int]:
    if isinstance(v, int):
        return (v, v)
    a, b = (int(x) for x in v)
    return (a, b)


def infer_shapes(g: Graph) -> Graph:
    """Fill every node's output shape, checking operand shapes; errors name the node."""
    shapes: dict[str, tuple[int, ...]] = {}
    for n in g.nodes:
        where = f"node '{n.name}' ({n.op})"
        if n.op not in OPS:
            raise CompileError(f"{where}: unsupported op '{n.op}' (supported: {', '.join(sorted(OPS))})")
        for i in n.inputs:
            if i not in shapes:
                raise CompileError(f"{where}: input '{i}' is not produced by an earlier node")
        ins = [shapes[i] for i in n.inputs]
        if n.op == "input":
            n.shape = tuple(n.attrs["shape"])
        elif n.op == "conv2d":
            x = ins[0]
            if len(x) != 4:
                raise CompileError(f"{where}: expects a 4-D NCHW input, got shape {list(x)}")
            w = n.params["weight"]
            g_ = n.attrs.setdefault("groups", 1)
            co, cig, kh, kw = w.shape
            if x[1] != cig * g_ or co % g_:
                raise CompileError(f"{where}: weight {list(w.shape)} with groups={g_} does not fit input "
                                   f"{list(x)}")
            sh, sw = n.attrs["stride"] = _pair(n.attrs.get("stride", 1))
            dh, dw = n.attrs["dilation"] = _pair(n.attrs.get("dilation", 1))
            pt, pb, pl, pr = n.attrs["padding"] = _pads(n.attrs.get("padding", 0))
            ho, wo = conv_out(x[2], kh, sh, pt, pb, dh), conv_out(x[3], kw, sw, pl, pr, dw)
            if ho < 1 or wo < 1:
                raise CompileError(f"{where}: kernel {kh}x{kw} does not fit input {list(x)}")
            if "bias" in n.params and n.params["bias"].shape != (co,):
                raise CompileError(f"{where}: bias shape {list(n.params['bias'].shape)} != [{co}]")
            n.shape = (x[0], co, ho, wo)
            if n.attrs.get("residual") and ins[1] != n.shape:
                raise CompileError(f"{where}: residual {list(ins[1])} does not match output {list(n.shape)}")
            if "pool" in n.attrs:      # a max pool fused by passes.fuse_pools
                ph, pw = n.attrs["pool"]
                n.attrs["conv_shape"] = n.shape
                n.shape = (x[0], co, ho // ph, wo // pw)
        elif n.op == "linear":
            x = ins[0]
            w = n.params["weight"]
            if len(x) != 2 or x[1] != w.shape[1]:
                raise CompileError(f"{where}: input {list(x)} does not match weight {list(w.shape)}")
            n.shape = (x[0], w.shape[0])
        elif n.op == "batchnorm":
            if ins[0][1] != n.params["gamma"].shape[0]:
                raise CompileError(f"{where}: {n.params['gamma'].shape[0]} channels, input has {ins[0][1]}")
            n.shape = ins[0]
        elif n.op in ("relu", "relu6", "dropout", "sigmoid", "hardswish", "hardsigmoid", "leaky_relu", "requant"):
            n.shape = ins[0]
        elif n.op == "upsample":
            f = n.attrs.setdefault("scale", 2)
            if len(ins[0]) != 4 or not isinstance(f, int) or f < 1:
                raise CompileError(f"{where}: integer scale >= 1 of a 4-D input needed, got {f!r} and {list(ins[0])}")
            n.shape = ins[0][:2] + (ins[0][2] * f, ins[0][3] * f)
        elif n.op == "mul":
            x, s_ = ins
            if len(x) != 4 or s_ != (x[0], x[1], 1, 1):
                raise CompileError(f"{where}: multiplies [N, C, H, W] by [N, C, 1, 1], got {list(x)} and {list(s_)}")
            n.shape = x
        elif n.op in ("maxpool", "avgpool"):
            x = ins[0]
            kh, kw = n.attrs["kernel"] = _pair(n.attrs["kernel"])
            sh, sw = n.attrs["stride"] = _pair(n.attrs.get("stride") or n.attrs["kernel"])
            pt, pb, pl, pr = n.attrs["padding"] = _pads(n.attrs.get("padding", 0))
            n.shape = (x[0], x[1], conv_out(x[2], kh, sh, pt, pb, 1), conv_out(x[3], kw, sw, pl, pr, 1))
            if min(n.shape[2:]) < 1:
                raise CompileError(f"{where}: window {kh}x{kw} does not fit input {list(x)}")
        elif n.op == "gap":
            n.shape = (ins[0][0], ins[0][1], 1, 1)
        elif n.op == "add":
            if len(ins) != 2 or ins[0] != ins[1]:
                raise CompileError(f"{where}: adds shapes {' and '.join(str(list(s)) for s in ins)}")
            n.shape = ins[0]
        elif n.op == "concat":
            base = ins[0]
            for s in ins[1:]:
                if len(s) != len(base) or s[0] != base[0] or s[2:] != base[2:]:
                    raise CompileError(f"{where}: cannot concatenate {list(base)} and {list(s)} on channels")
            n.shape = (base[0], sum(s[1] for s in ins)) + tuple(base[2:])
        elif n.op in ("flatten", "reshape"):
            x = ins[0]
            want = (x[0], int(np.prod(x[1:])))
            if n.op == "reshape" and tuple(n.attrs.get("shape", want)) not in (want, (-1, want[1]), (x[0], -1)):
                raise CompileError(f"{where}: only flattening reshapes to {list(want)} are supported, got "
                                   f"{list(n.attrs['shape'])}")
            n.shape = want
        elif n.op == "cpu":
            n.shape = tuple(n.attrs["shape"])
        elif n.op in ("softmax", "log_softmax"):
            if len(ins[0]) != 2 or n.attrs.get("dim", 1) not in (1, -1):
                raise CompileError(f"{where}: supported over dim 1 of a 2-D tensor, got {list(ins[0])}")
            n.shape = ins[0]
        shapes[n.name] = n.shape
    for o in g.outputs:
        if o not in shapes:
            raise CompileError(f"graph '{g.name}': output '{o}' is not a node")
    return g


class Builder:
    """Small helper to write models as straight-line code: `x = b.conv(x, 64, 3, padding=1)`.
    Weights are He-initialised from the seed; the biggest are kept as their seeded draw
    (compiler/weights.py), not as arrays; a Seed without values gives placeholders of their shapes."""

    def __init__(self, name: str, seed: int | Seed = 0):
        self.name = name
        self.nodes: list[Node] = []
        self.seed = seed if isinstance(seed, Seed) else Seed(seed)
        self.rng = np.random.default_rng(self.seed.value)
        self._count: dict[str, int] = {}
        self._channels: dict[str, int] = {}

    def _name(self, op: str, name: str | None) -> str:
        if name:     # Caffe-style 'fire2/squeeze1x1' as 'fire2.squeeze1x1': names never hold a path separator
            return name.replace("/", ".")
        self._count[op] = self._count.get(op, 0) + 1
        return f"{op}{self._count[op]}"

    def add(self, op: str, inputs: list[str], name: str | None = None, params=None, **attrs) -> str:
        n = Node(self._name(op, name), op, list(inputs), attrs, params or {})
        self.nodes.append(n)
        return n.name

    def input(self, shape, name: str = "input") -> str:
        self._channels[name] = shape[1]
        return self.add("input", [], name, shape=tuple(shape))

    def channels(self, x: str) -> int:
        return self._channels[x]

    def shape(self, x: str) -> tuple[int, ...]:
        """The shape of value x so far (for definitions whose padding depends on it)."""
        return infer_shapes(Graph(self.name, self.nodes, x)).node(x).shape

    def conv(self, x: str, co: int, k: int, stride=1, padding=0, groups: int = 1, bias: bool = True,
             dilation=1, name: str | None = None) -> str:
        ci = self._channels[x]
        kh, kw = _pair(k)
        fan_in = ci // groups * kh * kw
        params = {"weight": weight(self.rng, (co, ci // groups, kh, kw), np.float32(np.sqrt(2.0 / fan_in)), self.seed)}
        if bias:
            params["bias"] = (self.rng.standard_normal(co) * 0.05).astype(np.float32)
        out = self.add("conv2d", [x], name, params, stride=stride, padding=padding, groups=groups,
                       dilation=dilation)
        self._channels[out] = co
        return out

    def bn(self, x: str, name: str | None = None) -> str:
        c = self._channels[x]
        r = self.rng
        params = {"gamma": (1 + 0.1 * r.standard_normal(c)).astype(np.float32),
                  "beta": (0.1 * r.standard_normal(c)).astype(np.float32),
                  "mean": (0.1 * r.standard_normal(c)).astype(np.float32),
                  "var": (1 + 0.1 * np.abs(r.standard_normal(c))).astype(np.float32)}
        out = self.add("batchnorm", [x], name, params, eps=1e-5)
        self._channels[out] = c
        return out

    def unary(self, op: str, x: str, name: str | None = None, **attrs) -> str:
        out = self.add(op, [x], name, **attrs)
        self._channels[out] = self._channels.get(x, 0)
        return out

    def linear(self, x: str, fin: int, fout: int, name: str | None = None) -> str:
        w = weight(self.rng, (fout, fin), np.float32(np.sqrt(2.0 / fin)), self.seed)
        b = (self.rng.standard_normal(fout) * 0.05).astype(np.float32)
        out = self.add("linear", [x], name, {"weight": w, "bias": b})
        self._channels[out] = fout
        return out

    def binary(self, op: str, a: str, b: str, name: str | None = None) -> str:
        out = self.add(op, [a, b], name)
        self._channels[out] = self._channels[a] + (self._channels[b] if op == "concat" else 0)
        return out

    def graph(self, output: str, *more: str, **meta) -> Graph:
        """The graph computing `output` (and `more` outputs, in order)."""
        return infer_shapes(Graph(self.name, self.nodes, output, meta, list(more)))
