"""torch.fx front end: a torch.nn.Module becomes the compiler's graph IR without going through a file.

`from_torch(module, example_input)` traces the module symbolically, propagates shapes with the
example input, and maps each fx node to an IR op. Ops with no IR equivalent either fail (listing
every one at once) or, with `allow_cpu=True`, become `cpu` nodes that the torch shim runs on the
host, as Cambricon's stack does for unsupported layers.
"""
from __future__ import annotations

import contextlib
import operator
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from mlusim.compiler.graph import Graph, Node, infer_shapes
from mlusim.errors import CompileError


@dataclass(frozen=True)
class DeviceAccess:
    """How the front end reaches a module whose weights live on a device it cannot compute on by
    itself (the torch shim's simulated `mlu`, whose float convs are refused): the caller passes one.
    Weights are read with `.cpu()` either way; shapes are propagated where the weights are, on
    `to_device(example)` under `run_float()`."""

    to_device: Callable[[Any], Any]             # a CPU tensor moved to the weights' device
    run_float: Callable[[], contextlib.AbstractContextManager]   # where its float forward may run there


def _np(t) -> np.ndarray:
    return t.detach().cpu().float().numpy().copy()


def _pair(v):
    return (v, v) if isinstance(v, int) else tuple(v)


def _module_node(name, mod, inputs, shape):
    import torch.nn as nn

    if isinstance(mod, nn.Conv2d):
        if mod.padding_mode != "zeros" or isinstance(mod.padding, str):
            return None
        params = {"weight": _np(mod.weight)}
        if mod.bias is not None:
            params["bias"] = _np(mod.bias)
        return Node(name, "conv2d", inputs, {"stride": _pair(mod.stride), "padding": _pair(mod.padding),
                                             "dilation": _pair(mod.dilation), "groups": mod.groups}, params)
    if isinstance(mod, nn.Linear):
        params = {"weight": _np(mod.weight), "bias": _np(mod.bias) if mod.bias is not None else
                  np.zeros(mod.out_features, np.float32)}
        return Node(name, "linear", inputs, {}, params)
    if isinstance(mod, nn.BatchNorm2d):
        return Node(name, "batchnorm", inputs, {"eps": mod.eps},
                    {"gamma": _np(mod.weight), "beta": _np(mod.bias), "mean": _np(mod.running_mean),
                     "var": _np(mod.running_var)})
    if isinstance(mod, nn.ReLU):
        return Node(name, "relu", inputs)
    if isinstance(mod, nn.LeakyReLU) and 0 < mod.negative_slope < 1:
        return Node(name, "leaky_relu", inputs, {"slope": float(mod.negative_slope)})
    for cls, op in ((nn.Sigmoid, "sigmoid"), (nn.Hardswish, "hardswish"), (nn.Hardsigmoid, "hardsigmoid")):
        if isinstance(mod, cls):
            return Node(name, op, inputs)
    if isinstance(mod, nn.Upsample) and mod.mode == "nearest" and mod.size is None:
        f = _int_scale(mod.scale_factor)
        return Node(name, "upsample", inputs, {"scale": f}) if f else None
    if isinstance(mod, nn.ReLU6) or (isinstance(mod, nn.Hardtanh) and (mod.min_val, mod.max_val) == (0.0, 6.0)):
        return Node(name, "relu6", inputs)
    if isinstance(mod, (nn.MaxPool2d, nn.AvgPool2d)):
        if getattr(mod, "ceil_mode", False) or getattr(mod, "dilation", 1) not in (1, (1, 1)):
            return None
        if isinstance(mod, nn.AvgPool2d) and not mod.count_include_pad:
            return None
        op = "maxpool" if isinstance(mod, nn.MaxPool2d) else "avgpool"
        return Node(name, op, inputs, {"kernel": _pair(mod.kernel_size), "stride": _pair(mod.stride or mod.kernel_size),
                                       "padding": _pair(mod.padding)})
    if isinstance(mod, nn.AdaptiveAvgPool2d) and _pair(mod.output_size) == (1, 1):
        return Node(name, "gap", inputs)
    if isinstance(mod, (nn.Dropout, nn.Dropout2d, nn.Identity)):
        return Node(name, "dropout", inputs)
    if isinstance(mod, nn.Flatten) and mod.start_dim == 1 and mod.end_dim == -1:
        return Node(name, "flatten", inputs)
    if isinstance(mod, (nn.Softmax, nn.LogSoftmax)) and mod.dim in (1, -1) and len(shape) == 2:
        return Node(name, "softmax" if isinstance(mod, nn.Softmax) else "log_softmax", inputs, {"dim": 1})
    return None


def _int_scale(f) -> int | None:
    """An upsampling factor as one integer (same on both axes), or None."""
    fs = set(f) if isinstance(f, (tuple, list)) else {f}
    if len(fs) != 1:
        return None
    v = fs.pop()
    return int(v) if v is not None and float(v).is_integer() and v >= 1 else None


def _function_node(name, fn, args, kwargs, inputs, shape, in_shape):
    import torch
    import torch.nn.functional as F

    def arg(i, key, default=None):
        return args[i] if len(args) > i else kwargs.get(key, default)

    if fn is F.leaky_relu and 0 < arg(1, "negative_slope", 0.01) < 1:
        return Node(name, "leaky_relu", inputs[:1], {"slope": float(arg(1, "negative_slope", 0.01))})
    if fn in (torch.sigmoid, F.sigmoid):
        return Node(name, "sigmoid", inputs[:1])
    if fn is F.interpolate and arg(3, "mode", "nearest") == "nearest" and arg(1, "size") is None and \
            _int_scale(arg(2, "scale_factor")):
        return Node(name, "upsample", inputs[:1], {"scale": _int_scale(arg(2, "scale_factor"))})

    if fn in (F.relu, torch.relu):
        return Node(name, "relu", inputs[:1])
    if fn is F.relu6:
        return Node(name, "relu6", inputs[:1])
    if fn in (F.max_pool2d, F.avg_pool2d):
        k = arg(1, "kernel_size")
        s = arg(2, "stride") or k
        p = arg(3, "padding", 0)
        if kwargs.get("ceil_mode") or (fn is F.avg_pool2d and kwargs.get("count_include_pad") is False):
            return None
        return Node(name, "maxpool" if fn is F.max_pool2d else "avgpool", inputs[:1],
                    {"kernel": _pair(k), "stride": _pair(s), "padding": _pair(p)})
    if fn is F.adaptive_avg_pool2d and _pair(arg(1, "output_size")) == (1, 1):
        return Node(name, "gap", inputs[:1])
    if fn in (F.dropout, F.dropout2d):
        return Node(name, "dropout", inputs[:1])
    if fn is torch.flatten and arg(1, "start_dim", 0) == 1 and arg(2, "end_dim", -1) == -1:
        return Node(name, "flatten", inputs[:1])
    if fn in (operator.add, torch.add) and len(inputs) == 2 and "alpha" not in kwargs:
        return Node(name, "add", inputs)
    if fn is torch.cat and arg(1, "dim", 0) == 1:
        return Node(name, "concat", inputs)
    if fn in (F.softmax, F.log_softmax, torch.softmax, torch.log_softmax) and arg(1, "dim") in (1, -1) and len(shape) == 2:
        return Node(name, "softmax" if fn in (F.softmax, torch.softmax) else "log_softmax", inputs[:1], {"dim": 1})
    return None


def _method_node(name, method, inputs, shape, in_shape):
    if method in ("view", "reshape", "flatten") and len(shape) == 2 and in_shape and shape[0] == in_shape[0]:
        return Node(name, "flatten", inputs[:1])
    if method == "relu":
        return Node(name, "relu", inputs[:1])
    return None


def _cpu_call(n, mods):
    """A host function computing fx node `n` from its tensor inputs (torch tensors)."""
    import torch.fx as fx

    feeds = [a for a in n.all_input_nodes if "value" not in a.meta]
    consts = {a.name: a.meta["value"] for a in n.all_input_nodes if "value" in a.meta}

    def call(*xs):
        env = {**consts, **{a.name: x for a, x in zip(feeds, xs)}}
        args = fx.node.map_arg(n.args, lambda a: env[a.name])
        kwargs = fx.node.map_arg(n.kwargs, lambda a: env[a.name])
        if n.op == "call_module":
            return mods[n.target](*args, **kwargs)
        if n.op == "call_function":
            return n.target(*args, **kwargs)
        return getattr(args[0], n.target)(*args[1:], **kwargs)

    return call


def _value_prop(gm):
    """torch.fx's ShapeProp over `gm`, keeping also the non-tensor values (sizes computed from
    shapes, as in `interpolate(x, size=(x.shape[2] * 2, ...))`): fixed for the traced input
    shape, they become constants of the host op that uses them (n.meta["value"])."""
    import torch
    from torch.fx.passes.shape_prop import ShapeProp

    def plain(v) -> bool:
        return isinstance(v, (int, float, bool)) or isinstance(v, (tuple, list)) and all(map(plain, v))

    class ValueProp(ShapeProp):
        def run_node(self, n):
            out = super().run_node(n)
            if plain(out) and not isinstance(out, torch.Tensor):
                n.meta["value"] = out
            return out

    return ValueProp(gm)


def from_torch(module, example_input, allow_cpu: bool = False, name: str | None = None,
               device_access: DeviceAccess | None = None) -> Graph:
    """Trace `module` (eval mode semantics) into the IR; shapes from `example_input`. A module
    whose weights are on a device torch's CPU build does not compute on needs `device_access`."""
    import torch
    import torch.fx as fx

    try:
        gm = fx.symbolic_trace(module)
    except Exception as e:  # torch raises many kinds for untraceable control flow
        raise CompileError(f"torch.fx cannot trace {type(module).__name__}: {str(e).splitlines()[0][:200]}") from None
    inputs = [n.name for n in gm.graph.nodes if n.op == "placeholder"]
    if len(inputs) != 1:
        raise CompileError(f"{type(module).__name__}: forward takes {len(inputs)} inputs ({', '.join(inputs)}); "
                           f"only single-input models are supported")
    x = example_input.detach().cpu().float()
    probe, host = x, contextlib.nullcontext()
    if device_access is not None:        # shapes are propagated where the weights are
        probe, host = device_access.to_device(x), device_access.run_float()
    was_training = module.training
    module.eval()
    try:
        with torch.no_grad(), host:
            _value_prop(gm).propagate(probe)
    finally:
        module.train(was_training)
    mods = dict(gm.named_modules())
    nodes: list[Node] = []
    names: dict[str, str] = {}
    unsupported: list[str] = []
    output = None
    for n in gm.graph.nodes:
        meta = n.meta.get("tensor_meta")
        shape = tuple(meta.shape) if meta is not None and hasattr(meta, "shape") else ()
        ins = [names[a.name] for a in n.all_input_nodes if a.name in names]
        first = n.all_input_nodes[0] if n.all_input_nodes else None
        in_shape = tuple(first.meta["tensor_meta"].shape) if first is not None and hasattr(
            first.meta.get("tensor_meta"), "shape") else ()
        node = None
        if n.op == "placeholder":
            if nodes:
                raise CompileError(f"{type(module).__name__}: only single-input models are supported")
            node = Node("input", "input", [], {"shape": tuple(x.shape)})
        elif n.op == "call_module":
            node = _module_node(n.target, mods[n.target], ins, shape)
            what = type(mods[n.target]).__name__
        elif n.op == "call_function":
            node = _function_node(n.name, n.target, n.args, n.kwargs, ins, shape, in_shape)
            what = getattr(n.target, "__name__", str(n.target))
        elif n.op == "call_method":
            node = _method_node(n.name, n.target, ins, shape, in_shape)
            what = f"Tensor.{n.target}"
        elif n.op == "output":
            outs = n.args[0] if isinstance(n.args[0], (tuple, list)) else (n.args[0],)
            output = [names.get(o.name) if hasattr(o, "name") else None for o in outs]
            continue
        else:   # get_attr and friends: constants are folded into the nodes that use them
            continue
        if node is None:
            if not shape:      # non-tensor values (sizes, shapes): only feed reshapes, which use shapes
                continue
            if not allow_cpu:
                unsupported.append(f"{what} (node '{n.name}')")
                continue
            if len(ins) != len([a for a in n.all_input_nodes if "value" not in a.meta]):
                unsupported.append(f"{what} (node '{n.name}', takes computed non-tensor arguments)")
                continue
            node = Node(n.name, "cpu", ins, {"shape": shape, "what": what, "call": _cpu_call(n, mods)})
        if node.op == "dropout" and node.inputs == []:
            continue
        if any(m.name == node.name for m in nodes):     # a module called twice: fx's own unique name
            node.name = n.name
        nodes.append(node)
        names[n.name] = node.name
    if unsupported:
        raise CompileError(f"{type(module).__name__}: {len(unsupported)} unsupported op(s): " + "; ".join(unsupported))
    if not output or None in output:
        raise CompileError(f"{type(module).__name__}: the output is not a traced tensor (or a tuple of them)")
    g = Graph(name or type(module).__name__, nodes, output[0], {"batch": int(x.shape[0]), "gm": gm}, output[1:])
    return infer_shapes(g)
