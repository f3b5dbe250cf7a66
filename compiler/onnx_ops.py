"""One handler per ONNX op the importer maps to the IR (frontend_onnx.Importer walks the graph).

A handler reads its inputs from the importer's environment (`imp.act` for computed tensors,
`imp.const` for constants), adds IR nodes and binds its outputs. It raises `Unsupported(reason)`
for uses it cannot map (an attribute value, a non-constant weight); the importer collects those.
Keys are (domain, op_type); the empty domain is ONNX's default.
"""
from __future__ import annotations

import numpy as np

from mlusim.compiler.onnx_values import MS, Act, Const, Unsupported, quant_of


def _name(node) -> str:
    return node.name or node.output[0]


def _text(v) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


def _shape(imp, tensor: str):
    v = imp.env.get(tensor)
    s = imp.shapes.get(tensor)
    if s is None and isinstance(v, Act) and v.node:
        s = imp._ir_shape(v)
    if s is None:
        raise Unsupported(f"the shape of '{tensor}' is unknown")
    return tuple(s)


def _window(imp, node, a, kshape) -> tuple[tuple, tuple, tuple]:
    """(pads top/bottom/left/right, strides, dilations) of a conv or pool, auto_pad resolved."""
    if len(kshape) != 2:
        raise Unsupported(f"{len(kshape)}-D windows (only 2-D)")
    strides = tuple(a.get("strides", (1, 1)))
    dil = tuple(a.get("dilations", (1, 1)))
    p = list(a.get("pads", (0, 0, 0, 0)))
    auto = _text(a.get("auto_pad", "NOTSET"))
    if auto in ("SAME_UPPER", "SAME_LOWER"):
        ins = _shape(imp, node.input[0])[2:]
        p = [0, 0, 0, 0]
        for k in range(2):
            out = -(-ins[k] // strides[k])
            total = max(0, (out - 1) * strides[k] + (kshape[k] - 1) * dil[k] + 1 - ins[k])
            small = total // 2
            p[k], p[k + 2] = (small, total - small) if auto == "SAME_UPPER" else (total - small, small)
    elif auto == "VALID":
        p = [0, 0, 0, 0]
    return (p[0], p[2], p[1], p[3]), strides, dil


def _merge(pads, pending) -> tuple:
    return tuple(int(x) + int(y) for x, y in zip(pads, pending or (0, 0, 0, 0)))


def _transposed(c: Const) -> Const:
    """A 2-D constant transposed, with its quantization axis following."""
    q = None
    if c.q is not None:
        raw, scale, zp, axis = c.q
        q = (raw.T, scale, zp, 1 - axis if np.size(scale) > 1 else axis)
    return Const(c.value.T, q)


def _qweights(imp, params: dict, w: Const, b: Const | None, x: Act) -> None:
    """Keep the model's integer weights (zero point removed, must fit int8), per-output-channel
    scales, and its int32 bias when that was quantized at input scale x weight scale."""
    if w.q is None:
        return
    raw, scale, zp, axis = w.q
    co = raw.shape[0]
    scale = np.asarray(scale, np.float32).reshape(-1)
    zp = np.asarray(zp).astype(np.int64).reshape(-1)
    if scale.size > 1 and axis != 0:
        raise Unsupported(f"weights quantized along axis {axis}, not per output channel")
    col = (-1,) + (1,) * (raw.ndim - 1)
    wi = raw.astype(np.int64) - np.broadcast_to(zp, (co,)).reshape(col)
    if wi.min(initial=0) < -128 or wi.max(initial=0) > 127:
        raise Unsupported("weights minus their zero point do not fit int8")
    params["qweight"] = wi.astype(np.int8)
    params["w_scale"] = np.broadcast_to(scale, (co,)).astype(np.float32).copy()
    xq = imp.effective_quant(x.node)
    if b is not None and b.q is not None and xq is not None:
        braw, bs, bzp, _ = b.q
        want = np.float32(xq["scale"]) * params["w_scale"]
        got = np.broadcast_to(np.asarray(bs, np.float32).reshape(-1), (co,))
        if not np.any(bzp) and np.allclose(got, want, rtol=1e-6, atol=0):
            params["qbias"] = np.broadcast_to(braw.astype(np.int64).reshape(-1), (co,)).copy()


def _check_in(imp, x: Act, q: dict) -> None:
    have = imp.effective_quant(x.node)
    if have != q:
        raise Unsupported(f"its input is quantized with {have}, the op expects {q}")


def _bind(imp, node, name: str, quantized: bool = False) -> None:
    imp.env[node.output[0]] = Act(name, quantized)


def _is_q(imp, tensor: str) -> bool:
    """Whether a computed input is the integer view: ops that only move values (max pooling,
    flattening) take it as it is in QOperator-format models."""
    v = imp.env.get(tensor)
    return isinstance(v, Act) and v.quantized


# ---- quantization ---------------------------------------------------------------------------------
def quantize_linear(imp, node, a):
    x = imp.act(node.input[0], pads_ok=True)
    q = quant_of(imp.const(node.input[1]), imp.const(node.input[2]) if len(node.input) > 2 and node.input[2] else None)
    name = imp.quantize_point(x.node, q, _name(node))
    imp.env[node.output[0]] = Act(name, True, x.pads, x.pad_node)


def dequantize_linear(imp, node, a):
    x = imp.act(node.input[0], pads_ok=True, quantized=True)
    q = quant_of(imp.const(node.input[1]), imp.const(node.input[2]) if len(node.input) > 2 and node.input[2] else None)
    if imp.effective_quant(x.node) != q:
        raise Unsupported("dequantizes with other parameters than its tensor was quantized with")
    imp.env[node.output[0]] = Act(x.node, False, x.pads, x.pad_node)


# ---- MAC array ops --------------------------------------------------------------------------------
def _conv(imp, node, a, x: Act, w: Const, b: Const | None, quant: dict | None = None):
    if w.value.ndim != 4:
        raise Unsupported(f"{w.value.ndim - 2}-D convolution (only 2-D)")
    pads, strides, dil = _window(imp, node, a, w.value.shape[2:])
    params = {"weight": w.value.astype(np.float32)}
    if b is not None:
        params["bias"] = b.value.astype(np.float32).reshape(-1)
    _qweights(imp, params, w, b, x)
    attrs = {"quant": quant} if quant else {}
    name = imp.add("conv2d", [x.node], _name(node), params, stride=strides, padding=_merge(pads, x.pads),
                   dilation=dil, groups=int(a.get("group", 1)), **attrs)
    _bind(imp, node, name, quant is not None)


def conv(imp, node, a):
    b = imp.const(node.input[2]) if len(node.input) > 2 and node.input[2] else None
    _conv(imp, node, a, imp.act(node.input[0], pads_ok=True), imp.const(node.input[1]), b)


def _qconst(raw: Const, scale: Const, zp: Const, axis: int) -> Const:
    r, s, z = raw.value, np.asarray(scale.value, np.float32), np.asarray(zp.value).astype(np.int64)
    shape = [1] * r.ndim
    if s.size > 1:
        shape[axis] = -1
    f = ((r.astype(np.int64) - z.reshape(shape)) * s.reshape(shape)).astype(np.float32)
    return Const(f, (r, s, z, axis))


def _qbias(imp, node, k: int, xq: dict, w: Const):
    if len(node.input) <= k or not node.input[k]:
        return None
    b = imp.const(node.input[k]).value
    s = np.float32(xq["scale"]) * np.asarray(w.q[1], np.float32).reshape(-1)
    return Const((b * s).astype(np.float32), (b, s, np.zeros(1, np.int64), 0))


def qlinear_conv(imp, node, a):
    x = imp.act(node.input[0], quantized=True)
    xq = quant_of(imp.const(node.input[1]), imp.const(node.input[2]))
    _check_in(imp, x, xq)
    w = _qconst(imp.const(node.input[3]), imp.const(node.input[4]), imp.const(node.input[5]), 0)
    yq = quant_of(imp.const(node.input[6]), imp.const(node.input[7]))
    _conv(imp, node, a, Act(x.node), w, _qbias(imp, node, 8, xq, w), yq)


def _linear(imp, node, x: Act, w: Const, b: Const | None, quant: dict | None = None, scale: float = 1.0):
    if len(_shape(imp, node.input[0])) != 2:
        raise Unsupported(f"input of shape {list(_shape(imp, node.input[0]))} (only [N, features])")
    n = w.value.shape[0]
    bias = np.zeros(n, np.float32) if b is None else np.broadcast_to(b.value.reshape(-1), (n,)).astype(np.float32)
    params = {"weight": (w.value * np.float32(scale)).astype(np.float32), "bias": bias}
    _qweights(imp, params, w, b, x)
    name = imp.add("linear", [x.node], _name(node), params, **({"quant": quant} if quant else {}))
    _bind(imp, node, name, quant is not None)


def gemm(imp, node, a):
    x = imp.act(node.input[0])
    bmat = imp.const(node.input[1])
    c = imp.const(node.input[2]) if len(node.input) > 2 and node.input[2] else None
    if a.get("transA", 0):
        raise Unsupported("transA=1")
    if bmat.value.ndim != 2:
        raise Unsupported("a weight that is not 2-D")
    w = bmat if a.get("transB", 0) else _transposed(bmat)
    alpha, beta = float(a.get("alpha", 1.0)), float(a.get("beta", 1.0))
    if (alpha, beta) != (1.0, 1.0):
        if w.q is not None or (c is not None and c.q is not None):
            raise Unsupported("alpha / beta other than 1 on quantized weights")
        w = Const(w.value * np.float32(alpha))
        c = None if c is None else Const(c.value * np.float32(beta))
    if c is not None and c.value.size not in (1, w.value.shape[0]):
        raise Unsupported(f"bias of shape {list(c.value.shape)}")
    _linear(imp, node, x, w, c)


def matmul(imp, node, a):
    bmat = imp.const(node.input[1])
    if bmat.value.ndim != 2:
        raise Unsupported("a weight that is not 2-D")
    _linear(imp, node, imp.act(node.input[0]), _transposed(bmat), None)


def _qmatmul_operands(imp, node, transposed: bool):
    """QLinearMatMul's and QGemm's first six inputs (A, its scale and zero point, B, its scale and zero
    point): the checked quantized activation, its quantization and B as a [out, in] weight."""
    x = imp.act(node.input[0], quantized=True)
    xq = quant_of(imp.const(node.input[1]), imp.const(node.input[2]))
    _check_in(imp, x, xq)
    braw = imp.const(node.input[3])
    if braw.value.ndim != 2:
        raise Unsupported("a weight that is not 2-D")
    w = _qconst(braw, imp.const(node.input[4]), imp.const(node.input[5]), 0 if transposed else 1)
    return x, xq, w if transposed else _transposed(w)


def qlinear_matmul(imp, node, a):
    x, _, w = _qmatmul_operands(imp, node, transposed=False)
    _linear(imp, node, Act(x.node), w, None, quant_of(imp.const(node.input[6]), imp.const(node.input[7])))


# ---- elementwise and pooling ----------------------------------------------------------------------
def add(imp, node, a):
    ins = [imp.env.get(i) for i in node.input]
    if all(isinstance(v, Act) for v in ins):
        x, y = imp.act(node.input[0]), imp.act(node.input[1])
        _bind(imp, node, imp.add("add", [x.node, y.node], _name(node)))
        return
    k = 0 if isinstance(ins[1], Const) else 1
    x, c = imp.act(node.input[k]), imp.const(node.input[1 - k])
    p = imp.byname[x.node]
    nout = p.params["weight"].shape[0] if p.op in ("conv2d", "linear") else 0
    if not nout or c.value.size != nout or imp.uses.get(node.input[k], 0) != 1 or "quant" in p.attrs:
        raise Unsupported("adds a constant that is not the bias of the conv / linear before it")
    p.params["bias"] = p.params.get("bias", np.zeros(nout, np.float32)) + c.value.reshape(-1).astype(np.float32)
    p.params.pop("qbias", None)
    _bind(imp, node, x.node)


def _unary(op):
    def handler(imp, node, a):
        _bind(imp, node, imp.add(op, [imp.act(node.input[0]).node], _name(node)))
    return handler


def clip(imp, node, a):
    def bound(k, key, default):
        if len(node.input) > k and node.input[k]:
            return float(np.asarray(imp.const(node.input[k]).value).reshape(-1)[0])
        return float(a.get(key, default))
    lo, hi = bound(1, "min", -np.inf), bound(2, "max", np.inf)
    if lo == 0 and hi == 6:
        op = "relu6"
    elif lo == 0 and hi == np.inf:
        op = "relu"
    else:
        raise Unsupported(f"Clip to [{lo:g}, {hi:g}] (only the ReLU and ReLU6 ranges)")
    _unary(op)(imp, node, a)


def pool(imp, node, a):
    avg = node.op_type == "AveragePool"
    qin = not avg and _is_q(imp, node.input[0])
    x = imp.act(node.input[0], pads_ok=avg, quantized=qin)
    if a.get("ceil_mode", 0):
        raise Unsupported("ceil_mode=1")
    if any(d != 1 for d in a.get("dilations", (1, 1))):
        raise Unsupported("dilated pooling")
    if len(node.output) > 1 and node.output[1]:
        raise Unsupported("the Indices output")
    kernel = tuple(a["kernel_shape"])
    pads, strides, _ = _window(imp, node, a, kernel)
    if avg and any(pads) and not a.get("count_include_pad", 0):
        raise Unsupported("count_include_pad=0 with padding (border windows divide by fewer elements)")
    name = imp.add("avgpool" if avg else "maxpool", [x.node], _name(node), kernel=kernel, stride=strides,
                   padding=_merge(pads, x.pads))
    _bind(imp, node, name, qin)


def flatten(imp, node, a):
    qin = _is_q(imp, node.input[0])
    x = imp.act(node.input[0], quantized=qin)
    rank = len(_shape(imp, node.input[0]))
    if a.get("axis", 1) not in (1, 1 - rank):
        raise Unsupported(f"axis={a.get('axis')} (only 1)")
    _bind(imp, node, imp.add("flatten", [x.node], _name(node)), qin)


def reshape(imp, node, a):
    qin = _is_q(imp, node.input[0])
    x = imp.act(node.input[0], quantized=qin)
    src = _shape(imp, node.input[0])
    want = [int(v) for v in imp.const(node.input[1]).value.reshape(-1)]
    if not a.get("allowzero", 0):
        want = [src[i] if v == 0 and i < len(src) else v for i, v in enumerate(want)]
    if -1 in want:
        rest = int(np.prod([v for v in want if v != -1]))
        want[want.index(-1)] = int(np.prod(src)) // max(rest, 1)
    if tuple(want) == tuple(src):
        _bind(imp, node, x.node, qin)
    elif len(want) == 2 and want[0] == src[0] and want[1] == int(np.prod(src[1:])):
        _bind(imp, node, imp.add("flatten", [x.node], _name(node)), qin)
    else:
        raise Unsupported(f"reshape {list(src)} -> {want} (only flattening to [N, features])")


def pad(imp, node, a):
    x = imp.act(node.input[0], pads_ok=True, quantized=_is_q(imp, node.input[0]))
    if _text(a.get("mode", "constant")) != "constant":
        raise Unsupported(f"mode {_text(a['mode'])} (only constant)")
    if len(node.input) > 3 and node.input[3]:
        raise Unsupported("the axes input")
    p = [int(v) for v in (imp.const(node.input[1]).value.reshape(-1) if len(node.input) > 1 and node.input[1]
                          else a.get("pads", ()))]
    value = float(np.asarray(imp.const(node.input[2]).value).reshape(-1)[0]) if len(node.input) > 2 and \
        node.input[2] else float(a.get("value", 0.0))
    if len(p) != 8 or any(p[i] for i in (0, 1, 4, 5)) or min(p) < 0:
        raise Unsupported(f"pads {p} (only non-negative padding of height and width of a 4-D tensor)")
    zero = float(imp.effective_quant(x.node)["zero_point"]) if x.quantized else 0.0
    if value != zero:
        raise Unsupported(f"constant value {value:g} (only real zero)")
    pending = _merge((p[2], p[6], p[3], p[7]), x.pads)
    imp.env[node.output[0]] = Act(x.node, x.quantized, pending, _name(node))


def concat(imp, node, a):
    rank = len(_shape(imp, node.input[0]))
    if a["axis"] not in (1, 1 - rank):
        raise Unsupported(f"axis={a['axis']} (only channels)")
    xs = [imp.act(i).node for i in node.input]
    _bind(imp, node, imp.add("concat", xs, _name(node)))


def softmax(imp, node, a):
    default = 1 if imp.opsets.get("", 13) < 13 else -1
    shape = _shape(imp, node.input[0])
    if len(shape) != 2 or a.get("axis", default) not in (1, -1):
        raise Unsupported(f"over axis {a.get('axis', default)} of shape {list(shape)} (only the last of [N, C])")
    op = "softmax" if node.op_type == "Softmax" else "log_softmax"
    _bind(imp, node, imp.add(op, [imp.act(node.input[0]).node], _name(node), dim=1))


def identity(imp, node, a):
    if node.op_type == "Dropout" and len(node.output) > 1 and node.output[1] and imp.uses.get(node.output[1]):
        raise Unsupported("the mask output")
    imp.env[node.output[0]] = imp.env[node.input[0]] if isinstance(imp.env.get(node.input[0]), Const) else \
        imp.act(node.input[0], pads_ok=True, quantized=_is_q(imp, node.input[0]))


def batchnorm(imp, node, a):
    if a.get("training_mode", 0) or (len(node.output) > 1 and any(node.output[1:])):
        raise Unsupported("training mode")
    x = imp.act(node.input[0])
    gamma, beta, mean, var = (imp.const(i).value.astype(np.float32) for i in node.input[1:5])
    name = imp.add("batchnorm", [x.node], _name(node), {"gamma": gamma, "beta": beta, "mean": mean, "var": var},
                   eps=float(a.get("epsilon", 1e-5)))
    _bind(imp, node, name)


# ---- ONNX Runtime's contrib QLinear ops (QOperator format) -----------------------------------------
def qlinear_add(imp, node, a):
    xs = []
    for k in (0, 3):
        x = imp.act(node.input[k], quantized=True)
        _check_in(imp, x, quant_of(imp.const(node.input[k + 1]), imp.const(node.input[k + 2])))
        xs.append(x.node)
    yq = quant_of(imp.const(node.input[6]), imp.const(node.input[7]) if len(node.input) > 7 else None)
    _bind(imp, node, imp.add("add", xs, _name(node), quant=yq), True)


def qgemm(imp, node, a):
    """ONNX Runtime's QGemm: A, a_scale, a_zp, B, b_scale, b_zp, C (int32), y_scale, y_zp."""
    if len(node.input) < 9 or not node.input[7]:
        raise Unsupported("a float output (no y_scale)")
    if a.get("transA", 0) or float(a.get("alpha", 1.0)) != 1.0:
        raise Unsupported("transA=1 or alpha other than 1")
    x, xq, w = _qmatmul_operands(imp, node, transposed=bool(a.get("transB", 0)))
    yq = quant_of(imp.const(node.input[7]), imp.const(node.input[8]))
    _linear(imp, node, Act(x.node), w, _qbias(imp, node, 6, xq, w), yq)


def qlinear_gap(imp, node, a):
    if a.get("channels_last", 0):
        raise Unsupported("channels_last=1")
    x = imp.act(node.input[0], quantized=True)
    _check_in(imp, x, quant_of(imp.const(node.input[1]), imp.const(node.input[2])))
    yq = quant_of(imp.const(node.input[3]), imp.const(node.input[4]))
    _bind(imp, node, imp.add("gap", [x.node], _name(node), quant=yq), True)


HANDLERS = {
    ("", "QuantizeLinear"): quantize_linear, ("", "DequantizeLinear"): dequantize_linear,
    ("", "Conv"): conv, ("", "QLinearConv"): qlinear_conv, ("", "Gemm"): gemm, ("", "MatMul"): matmul,
    ("", "QLinearMatMul"): qlinear_matmul, ("", "Add"): add, ("", "Relu"): _unary("relu"), ("", "Clip"): clip,
    ("", "Sigmoid"): _unary("sigmoid"), ("", "HardSwish"): _unary("hardswish"),
    ("", "MaxPool"): pool, ("", "AveragePool"): pool, ("", "GlobalAveragePool"): _unary("gap"),
    ("", "Flatten"): flatten, ("", "Reshape"): reshape, ("", "Pad"): pad, ("", "Concat"): concat,
    ("", "Softmax"): softmax, ("", "LogSoftmax"): softmax, ("", "Dropout"): identity, ("", "Identity"): identity,
    ("", "BatchNormalization"): batchnorm,
    (MS, "QLinearAdd"): qlinear_add, (MS, "QGemm"): qgemm, (MS, "QLinearGlobalAveragePool"): qlinear_gap,
}
