"""ONNX front end: an .onnx file (float, QDQ-quantized or QLinear*-quantized) becomes the IR.

    g = from_onnx("resnet18_int8.onnx")         # then driver.compile_graph(g) as for a zoo model

Nodes are visited in the file's (topological) order with an environment mapping each ONNX tensor
to a constant (numpy) or an activation (an IR node). Anything whose inputs are all constant is
folded by ONNX's own reference evaluator, so shape arithmetic (Shape -> Gather -> Concat ->
Reshape), Transpose of weights and DequantizeLinear of weights never reach the IR.

Quantization is read, not recomputed: QuantizeLinear on an activation fixes the scale, zero point
and type of the IR node that produced it (attrs 'quant', honoured by quant.quantize), and a
DequantizeLinear of a constant keeps the integer weights beside their float value, so conv and
linear nodes carry the model's int8 weights, per-channel scales and int32 biases (params 'qweight',
'w_scale', 'qbias'). Where one tensor is quantized twice differently, a 'requant' node converts.

Every op that cannot be imported is collected, with its node name and opset, and reported in one
CompileError at the end, so a user sees the whole list at once.
"""
from __future__ import annotations

import re

import numpy as np

from mlusim.compiler import onnx_ops
from mlusim.compiler.graph import Graph, Node, infer_shapes
from mlusim.compiler.onnx_values import Act, Const, Unsupported
from mlusim.compiler.quant import PRESERVING
from mlusim.errors import CompileError

def _onnx():
    try:
        import onnx
    except ImportError:
        raise CompileError("importing ONNX models needs the 'onnx' package: pip install 'mlusim[onnx]'") from None
    return onnx


class _Poisoned(Exception):
    """An input comes from an op already reported as unsupported."""


def load(path_or_model):
    """A ModelProto from a path (CompileError with the reason if it is not a readable model)."""
    onnx = _onnx()
    if not isinstance(path_or_model, (str, bytes)) and not hasattr(path_or_model, "__fspath__"):
        return path_or_model
    try:      # no onnx.checker: it rejects models ONNX Runtime runs (outputs without shapes, ...)
        m = onnx.load(str(path_or_model))
    except FileNotFoundError:
        raise CompileError(f"{path_or_model}: no such ONNX file") from None
    except Exception as e:   # protobuf DecodeError, ValidationError, ...
        raise CompileError(f"{path_or_model}: not a valid ONNX model ({str(e).splitlines()[0][:160]})") from None
    return m


def _attrs(node) -> dict:
    from onnx import helper

    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


class Importer:
    def __init__(self, model, batch: int | None, name: str | None):
        onnx = _onnx()
        self.model = model
        self.opsets = {(o.domain or ""): o.version for o in model.opset_import}
        gr = model.graph
        self.name = name or gr.name or "onnx"
        self.env: dict[str, Const | Act] = {i.name: Const(onnx.numpy_helper.to_array(i)) for i in gr.initializer}
        feeds = [i for i in gr.input if i.name not in self.env]
        if len(feeds) != 1:
            raise CompileError(f"{self.name}: {len(feeds)} graph inputs; only single-input models are supported")
        dims = []
        for k, d in enumerate(feeds[0].type.tensor_type.shape.dim):
            if d.HasField("dim_value") and not (k == 0 and batch):
                dims.append(d.dim_value)
            elif k == 0:
                dims.append(batch or 1)
            else:
                raise CompileError(f"{self.name}: input dimension {k} ('{d.dim_param}') is not fixed")
        if len(dims) not in (2, 4):
            raise CompileError(f"{self.name}: input shape {dims}: expected NCHW images or [N, features]")
        self.shapes = self._infer_shapes(dims, feeds[0].name)
        self.nodes: list[Node] = [Node("input", "input", [], {"shape": tuple(dims)})]
        self.byname = {"input": self.nodes[0]}
        self.env[feeds[0].name] = Act("input")
        self.shapes[feeds[0].name] = tuple(dims)
        self.problems: list[str] = []
        self.uses: dict[str, int] = {}
        for node in gr.node:
            for i in node.input:
                self.uses[i] = self.uses.get(i, 0) + 1
        for o in gr.output:
            self.uses[o.name] = self.uses.get(o.name, 0) + 1

    def _infer_shapes(self, dims, feed) -> dict[str, tuple]:
        onnx = _onnx()
        m = onnx.ModelProto()
        m.CopyFrom(self.model)
        for i in m.graph.input:
            if i.name == feed:
                for d, v in zip(i.type.tensor_type.shape.dim, dims):
                    d.dim_value = v
        try:
            m = onnx.shape_inference.infer_shapes(m)
        except Exception:      # shapes are a convenience (Shape of activations); folding still works
            return {}
        out = {}
        for vi in list(m.graph.value_info) + list(m.graph.output):
            sh = vi.type.tensor_type.shape
            if vi.type.tensor_type.HasField("shape") and all(d.HasField("dim_value") for d in sh.dim):
                out[vi.name] = tuple(d.dim_value for d in sh.dim)
        return out

    # ---- environment helpers ------------------------------------------------------------------
    def add(self, op: str, inputs: list[str], onnx_name: str, params=None, **attrs) -> str:
        base = re.sub(r"[^\w.]+", ".", onnx_name).strip(".")[:80] or op
        name, k = base, 1
        while name in self.byname:
            k += 1
            name = f"{base}_{k}"
        n = Node(name, op, list(inputs), attrs, params or {})
        self.nodes.append(n)
        self.byname[name] = n
        return name

    def act(self, tensor: str, pads_ok: bool = False, quantized: bool = False) -> Act:
        v = self.env.get(tensor)
        if isinstance(v, Const):
            raise Unsupported(f"input '{tensor}' is a constant where a computed tensor is expected")
        if v is None or v.node is None:
            raise _Poisoned()
        if v.pads and not pads_ok:
            raise Unsupported(f"the Pad '{v.pad_node}' before it can only be folded into Conv or AveragePool")
        if v.quantized != quantized:
            raise Unsupported(f"input '{tensor}' is {'quantized' if v.quantized else 'float'}; expected "
                              f"{'quantized' if quantized else 'float'} (a DequantizeLinear / QuantizeLinear "
                              f"is missing)")
        return v

    def const(self, tensor: str, optional: bool = False) -> Const | None:
        if optional and not tensor:
            return None
        v = self.env.get(tensor)
        if isinstance(v, Const):
            return v
        if v is not None and v.node is None:
            raise _Poisoned()
        raise Unsupported(f"input '{tensor}' must be a constant (weights, shapes, scales)")

    def effective_quant(self, name: str) -> dict | None:
        n = self.byname[name]
        while "quant" not in n.attrs and n.op in PRESERVING and n.inputs:
            n = self.byname[n.inputs[0]]
        return n.attrs.get("quant")

    def quantize_point(self, name: str, quant: dict, where: str) -> str:
        """Fix node `name`'s output quantization (or that of the op its value passes unchanged
        through); a differing earlier choice gets a requant node instead."""
        have = self.effective_quant(name)
        if have is None:
            root = self.byname[name]
            while root.op in PRESERVING and root.inputs:
                root = self.byname[root.inputs[0]]
            root.attrs["quant"] = quant
            return name
        if have == quant:
            return name
        return self.add("requant", [name], f"{where}.requant", quant=quant)

    # ---- the walk -----------------------------------------------------------------------------
    def run(self) -> Graph:

        for node in self.model.graph.node:
            domain = node.domain if node.domain not in ("ai.onnx",) else ""
            where = f"{node.op_type} (node '{node.name or node.output[0]}', opset {self.opsets.get(domain, '?')}"
            where += f", domain {domain})" if domain else ")"
            try:
                if self._fold(node):
                    continue
                handler = onnx_ops.HANDLERS.get((domain, node.op_type))
                if handler is None:
                    raise Unsupported("")
                handler(self, node, _attrs(node))
            except Unsupported as e:
                self.problems.append(where + (f": {e}" if str(e) else ""))
                self._poison(node)
            except _Poisoned:
                self._poison(node)
        if self.problems:
            raise CompileError(f"{self.name}: {len(self.problems)} unsupported op(s): " + "; ".join(self.problems))
        outs = self.model.graph.output
        if len(outs) != 1:
            raise CompileError(f"{self.name}: {len(outs)} graph outputs; only single-output models are supported")
        out = self.env.get(outs[0].name)
        if not isinstance(out, Act):
            raise CompileError(f"{self.name}: the output '{outs[0].name}' is a constant")
        if out.pads:
            raise CompileError(f"{self.name}: the Pad '{out.pad_node}' feeds the output and cannot be folded")
        self._fix_concats()
        quantized = any("quant" in n.attrs for n in self.nodes)
        g = Graph(self.name, self.nodes, out.node, {"batch": self.nodes[0].attrs["shape"][0], "source": "onnx",
                                                     "imported_quantization": quantized})
        return infer_shapes(g)

    def _poison(self, node) -> None:
        for o in node.output:
            self.env[o] = Act(None)

    def _fold(self, node) -> bool:
        """Evaluate a node whose inputs are all constants (or a Shape of a known shape)."""
        ins = [i for i in node.input if i]
        if node.op_type == "Shape" and ins and isinstance(self.env.get(ins[0]), Act):
            shape = self.shapes.get(ins[0]) or self._ir_shape(self.env[ins[0]])
            if shape is None:
                return False
            a = _attrs(node)
            self.env[node.output[0]] = Const(np.array(shape, np.int64)[a.get("start", 0):a.get("end", None)])
            return True
        if not all(isinstance(self.env.get(i), Const) for i in ins) or node.op_type in ("QuantizeLinear",):
            return False
        if node.domain not in ("", "ai.onnx"):
            return False
        vals = [self.env[i] for i in ins]
        if node.op_type == "DequantizeLinear":
            raw = vals[0].value
            scale = vals[1].value
            zp = vals[2].value if len(vals) > 2 else np.zeros_like(scale, dtype=raw.dtype)
            axis = _attrs(node).get("axis", 1)
            f = self._evaluate(node, [raw, scale, zp][:len(vals)])[0]
            self.env[node.output[0]] = Const(f, (raw, scale, zp, axis % max(raw.ndim, 1)))
            return True
        if node.op_type == "Transpose" and vals[0].q is not None:
            raw, scale, zp, axis = vals[0].q
            perm = _attrs(node).get("perm", list(range(raw.ndim))[::-1])
            q = (raw.transpose(perm), scale, zp, list(perm).index(axis) if np.size(scale) > 1 else axis)
            self.env[node.output[0]] = Const(vals[0].value.transpose(perm), q)
            return True
        if node.op_type in ("Identity", "Dropout") and vals:
            self.env[node.output[0]] = vals[0]
            return True
        outs = self._evaluate(node, [v.value for v in vals])
        for name, v in zip(node.output, outs):
            self.env[name] = Const(np.asarray(v))
        return True

    def _evaluate(self, node, arrays):
        from onnx.reference import ReferenceEvaluator

        feeds = {}
        for name, a in zip([i for i in node.input if i], arrays):
            feeds[name] = a
        try:
            return ReferenceEvaluator(node).run(None, feeds)
        except Exception as e:
            raise Unsupported(f"cannot fold constant inputs ({str(e).splitlines()[0][:120]})") from None

    def _ir_shape(self, a: Act):
        try:
            g = infer_shapes(Graph(self.name, list(self.nodes), a.node))
        except CompileError:
            return None
        return g.node(a.node).shape

    def _fix_concats(self) -> None:
        """Concat copies bytes, so every input must already be in the output's scale and zero point."""
        for n in list(self.nodes):
            if n.op != "concat":
                continue
            want = n.attrs.get("quant")
            ins = [self.effective_quant(i) for i in n.inputs]
            if want is None and ins and ins[0] is not None and all(q == ins[0] for q in ins):
                n.attrs["quant"] = want = ins[0]
            if all(q == want for q in ins):
                continue
            for k, (i, q) in enumerate(zip(list(n.inputs), ins)):
                if q == want:
                    continue
                attrs = {"quant": want} if want else {}
                r = Node(f"{n.name}.in{k}.requant", "requant", [i], attrs)
                self.nodes.insert(self.nodes.index(n), r)
                self.byname[r.name] = r
                n.inputs[k] = r.name


def from_onnx(model, batch: int | None = None, name: str | None = None) -> Graph:
    """Import an ONNX model (path or ModelProto) into the IR; `batch` fixes a symbolic batch size."""
    return Importer(load(model), batch, name).run()
