"""Graph-to-graph passes, each a small function run in order by `optimize`.

    remove_dropout -> fold_batchnorm -> fuse_activations -> fuse_pools -> fuse_residual
Fusion only marks the producer (attrs 'act' / 'pool', and `fused` for the report); the lowering
then emits one kernel that never writes the intermediate to DRAM.
"""
from __future__ import annotations

import numpy as np

from mlusim.compiler.graph import Graph, Node, infer_shapes
from mlusim.compiler.weights import Placeholder, SeededWeight, Weight
from mlusim.errors import CompileError


def _rewire(g: Graph, old: str, new: str) -> None:
    for n in g.nodes:
        n.inputs = [new if i == old else i for i in n.inputs]
    if g.output == old:
        g.output = new
    g.extra_outputs = [new if o == old else o for o in g.extra_outputs]


def _drop(g: Graph, node: Node) -> None:
    _rewire(g, node.name, node.inputs[0])
    g.nodes.remove(node)


def _sole_consumer(g: Graph, name: str) -> Node | None:
    cons = g.consumers(name)
    return cons[0] if len(cons) == 1 and name not in g.outputs else None


def _take_quant(dst: Node, src: Node) -> bool:
    """Before fusing src into dst: dst takes src's model-given output quantization. False when both
    have one and they differ: the model rounds in between, so fusing would change its numerics."""
    qs, qd = src.attrs.get("quant"), dst.attrs.get("quant")
    if qs and qd and qs != qd:
        return False
    if qs:
        dst.attrs["quant"] = qs
    return True


def remove_dropout(g: Graph) -> Graph:
    for n in [n for n in g.nodes if n.op == "dropout"]:
        _drop(g, n)
    return g


def fold_batchnorm(g: Graph) -> Graph:
    """conv -> bn (or linear -> bn, as AlexNet_cvgj's fc6/fc7) becomes one layer: w' = w * gamma/sqrt(var+eps),
    b' = (b - mean) * that + beta, per output channel."""
    for bn in [n for n in g.nodes if n.op == "batchnorm"]:
        prod = g.node(bn.inputs[0])
        if "qweight" in prod.params:
            raise CompileError(f"node '{bn.name}' (batchnorm): cannot fold into '{prod.name}', whose weights "
                               f"the model already quantized")
        if prod.op not in ("conv2d", "linear") or _sole_consumer(g, prod.name) is not bn:
            raise CompileError(f"node '{bn.name}' (batchnorm): only a batch norm directly after a conv or "
                               f"linear with no other consumer can be folded (input '{prod.name}' is {prod.op})")
        p = bn.params
        k = (p["gamma"].astype(np.float64) / np.sqrt(p["var"].astype(np.float64) + bn.attrs.get("eps", 1e-5)))
        b = prod.params.get("bias", np.zeros(len(k), np.float32)).astype(np.float64)
        prod.params["weight"] = _scaled_rows(prod.params["weight"], k)
        prod.params["bias"] = ((b - p["mean"]) * k + p["beta"]).astype(np.float32)
        prod.fused.append("batchnorm")
        _drop(g, bn)
    return g


def _scaled_rows(weight: Weight, k: np.ndarray) -> Weight:
    """Row i of `weight` times k[i]: w * k in float64 rounded once to float32, as w.astype(f64) * k
    would, but in the ufunc's buffers (no float64 copy of ResNet-50's 25M weights: 5x faster, same
    bits). A seeded weight is drawn here if it was released; a placeholder (a shape-only model)
    stays one: there are no values to scale. A seeded weight's held values are the zoo's own
    draw, which nothing else reads once the fold replaces the weight, so they are scaled where
    they lie: a fresh 100 MB (ResNet-50) is page faults that cost twice the multiply (0.10-0.13
    -> 0.03-0.04 s in a fresh process). Any other array may be the caller's (the torch shim's
    views of a model's tensors) and is left alone."""
    if isinstance(weight, Placeholder):
        return weight
    w = np.asarray(weight)
    held = isinstance(weight, SeededWeight) and weight.values is not None
    folded = w if held else np.empty(w.shape, np.float32)
    np.multiply(w, k.reshape((-1,) + (1,) * (w.ndim - 1)), out=folded, dtype=np.float64, casting="unsafe")
    return folded


def fuse_activations(g: Graph) -> Graph:
    """relu/relu6 after a conv, linear or add is applied by that kernel's requantize step."""
    for act in [n for n in g.nodes if n.op in ("relu", "relu6")]:
        prod = g.node(act.inputs[0])
        if prod.op in ("conv2d", "linear", "add") and "act" not in prod.attrs and \
                _sole_consumer(g, prod.name) is act and _take_quant(prod, act):
            prod.attrs["act"] = act.op
            prod.fused.append(act.op)
            _drop(g, act)
    return g


def fuse_pools(g: Graph) -> Graph:
    """A non-overlapping, unpadded max pool after a conv runs on the conv's output tile in NRAM."""
    for pool in [n for n in g.nodes if n.op == "maxpool"]:
        prod = g.node(pool.inputs[0])
        kh, kw = pool.attrs["kernel"]
        if prod.op == "conv2d" and _sole_consumer(g, prod.name) is pool and pool.attrs["stride"] == (kh, kw) \
                and not any(pool.attrs["padding"]) and prod.shape[2] % kh == 0 and prod.shape[3] % kw == 0 \
                and _take_quant(prod, pool):
            prod.attrs["pool"] = (kh, kw)
            prod.fused.append("maxpool")
            _drop(g, pool)
    return g


def fuse_residual(g: Graph) -> Graph:
    """conv -> add(conv, shortcut) [-> act] becomes one conv kernel that adds the shortcut to its
    int32 accumulator before requantizing: the conv's output never goes to DRAM and no separate
    add kernel runs. The conv moves to the add's place so the shortcut is computed first.
    Not when the model fixes the conv's own output quantization (an imported QDQ model): there
    the conv output is rounded before the add, and skipping that rounding would drift from the
    model's numerics."""
    for add in [n for n in g.nodes if n.op == "add"]:
        for k in (0, 1):
            conv = g.node(add.inputs[k])
            other = add.inputs[1 - k]
            if conv.op == "conv2d" and _sole_consumer(g, conv.name) is add and \
                    not {"act", "pool", "residual", "quant"} & set(conv.attrs) and other != conv.name:
                break
        else:
            continue
        conv.inputs = [conv.inputs[0], other]
        conv.attrs["residual"] = True
        _take_quant(conv, add)
        if "act" in add.attrs:
            conv.attrs["act"] = add.attrs["act"]
        conv.fused += ["add"] + add.fused
        idx = g.nodes.index(add)
        g.nodes.remove(conv)
        g.nodes.insert(idx - 1, conv)
        _rewire(g, add.name, conv.name)
        g.nodes.remove(add)
    return g


PIPELINE = (remove_dropout, fold_batchnorm, fuse_activations, fuse_pools, fuse_residual)


def optimize(g: Graph, fuse: bool = True) -> Graph:
    """Run the passes; the graph is modified in place and returned."""
    g = remove_dropout(g)
    g = fold_batchnorm(g)
    if fuse:
        g = fuse_activations(g)
        g = fuse_pools(g)
        g = fuse_residual(g)
    return infer_shapes(g)
