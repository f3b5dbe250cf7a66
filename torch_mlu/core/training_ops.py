"""The vector-unit side of training: activations, pooling, dropout, losses and the SGD update, each a
small simulator program (see torch_mlu.core.adaptive_training for the MAC-array side and switching
training on). Every kernel takes the TrainCtx it runs under as its first argument."""
from __future__ import annotations

import numpy as np
import torch

from mlusim.compiler import training_programs as K
from torch_mlu.core.device import MluTensor
from torch_mlu.core.training_sim import TrainCtx, host_array, mlu_tensor, sym_pad

aten = torch.ops.aten


def _scalar_vrow(s, op, dst, a, b_scalar, count, deps=()):
    """dst[i] = a[i] <op> scalar: vrow over count rows of one column."""
    return s.emit("vrow", list(deps), op=op, dt="f32", dst=dst, a=a, b=b_scalar, rows=count, cols=1, axis="col")


def relu(ctx: TrainCtx, func, args, kwargs):
    cfg = ctx.cfg
    x = host_array(args[0])

    def body(s, buf, n, deps, sc):
        return s.emit("vrelu", deps, dt="f32", dst=buf["y"], src=buf["x"], n=n)

    out = ctx.run(K.eltwise(cfg, "relu", x.size, ["x"], ["y"], body), {"x": x.reshape(-1)}, "forward")["y"]
    return mlu_tensor(out, x.shape)


def threshold_backward(ctx: TrainCtx, func, args, kwargs):
    g, out, thr = args
    if float(thr) != 0.0:
        return NotImplemented
    cfg = ctx.cfg
    gn, on = host_array(g), host_array(out)

    def body(s, buf, n, deps, sc):
        z = s.emit("vset", deps, dt="f32", dst=buf["tmp"], n=n, value=0)
        m = s.emit("vcmp", [z], mode="gt", dt="f32", dst=buf["tmp"], a=buf["o"], b=buf["tmp"], n=n)
        return s.emit("vmul", [m], dt="f32", dst=buf["dx"], a=buf["g"], b=buf["tmp"], n=n)

    prog = K.eltwise(cfg, "relu_backward", gn.size, ["g", "o"], ["dx"], body)
    return mlu_tensor(ctx.run(prog, {"g": gn.reshape(-1), "o": on.reshape(-1)}, "backward")["dx"], gn.shape)


def _pool_args(args):
    """(kernel, stride, pad) of a square, symmetric, undilated pool; None otherwise."""
    k = list(args[1])
    stride = list(args[2]) if len(args) > 2 and len(args[2]) else k
    pad = list(args[3]) if len(args) > 3 else [0]
    dil = list(args[4]) if len(args) > 4 else [1]
    ceil_mode = args[5] if len(args) > 5 else False
    if len(set(k)) != 1 or len(set(stride)) != 1 or sym_pad(pad) is None or set(dil) != {1} or ceil_mode:
        return None
    return k[0], stride[0], sym_pad(pad)


def max_pool(ctx: TrainCtx, func, args, kwargs):
    p = _pool_args(args)
    if p is None or args[0].dim() != 4:
        return NotImplemented
    cfg = ctx.cfg
    x = host_array(args[0])
    n, c, h, w = x.shape
    y = ctx.run(K.maxpool_fwd(cfg, n, c, h, w, *p), {"x": x}, "forward")["y"]
    # the indices only serve autograd's bookkeeping; the backward kernel recomputes the argmax
    with torch.no_grad():
        _, idx = torch.nn.functional.max_pool2d(torch.from_numpy(x), p[0], p[1], p[2], return_indices=True)
    return mlu_tensor(y), MluTensor(idx)


def max_pool_backward(ctx: TrainCtx, func, args, kwargs):
    g, x = args[0], args[1]
    p = _pool_args((x,) + tuple(args[2:7]))
    if p is None:
        return NotImplemented
    cfg = ctx.cfg
    xn, gn = host_array(x), host_array(g)
    n, c, h, w = xn.shape
    return mlu_tensor(ctx.run(K.maxpool_bwd(cfg, n, c, h, w, *p), {"x": xn, "dy": gn}, "backward")["dx"])


def log_softmax(ctx: TrainCtx, func, args, kwargs):
    x, dim = args[0], args[1]
    if x.dim() != 2 or dim not in (1, -1):
        return NotImplemented
    cfg = ctx.cfg
    xn = host_array(x)
    r, c = xn.shape

    def body(s, buf, deps, sc):
        mx = s.emit("vreduce", deps, mode="max", dt="f32", dst=buf["t2"], src=buf["x"], rows=r, cols=c)
        z = s.emit("vrow", [mx], op="sub", dt="f32", dst=buf["y"], a=buf["x"], b=buf["t2"], rows=r, cols=c)
        e = s.emit("vexp", [z], dt="f32", dst=buf["t0"], src=buf["y"], n=r * c)
        sm = s.emit("vreduce", [e], mode="sum", dt="f32", dst=buf["t3"], src=buf["t0"], rows=r, cols=c)
        lg = s.emit("vlog", [sm], dt="f32", dst=buf["t3"], src=buf["t3"], n=r)
        return s.emit("vrow", [lg], op="sub", dt="f32", dst=buf["y"], a=buf["y"], b=buf["t3"], rows=r, cols=c)

    prog = K.rows(cfg, "log_softmax", r, c, {"x": (r * c,)}, {"y": (r * c,)}, body)
    return mlu_tensor(ctx.run(prog, {"x": xn.reshape(-1)}, "forward")["y"], (r, c))


def log_softmax_backward(ctx: TrainCtx, func, args, kwargs):
    g, out, dim = args[0], args[1], args[2]
    if g.dim() != 2 or dim not in (1, -1):
        return NotImplemented
    cfg = ctx.cfg
    gn, on = host_array(g), host_array(out)
    r, c = gn.shape

    def body(s, buf, deps, sc):      # dx = g - exp(out) * rowsum(g)
        e = s.emit("vexp", deps, dt="f32", dst=buf["t0"], src=buf["o"], n=r * c)
        sm = s.emit("vreduce", [e], mode="sum", dt="f32", dst=buf["t2"], src=buf["g"], rows=r, cols=c)
        t = s.emit("vrow", [sm], op="mul", dt="f32", dst=buf["t0"], a=buf["t0"], b=buf["t2"], rows=r, cols=c)
        return s.emit("vsub", [t], dt="f32", dst=buf["dx"], a=buf["g"], b=buf["t0"], n=r * c)

    prog = K.rows(cfg, "log_softmax_backward", r, c, {"g": (r * c,), "o": (r * c,)}, {"dx": (r * c,)}, body)
    return mlu_tensor(ctx.run(prog, {"g": gn.reshape(-1), "o": on.reshape(-1)}, "backward")["dx"], (r, c))


def _onehot(target, r, c) -> np.ndarray:
    t = target._elem if hasattr(target, "_elem") else target
    oh = np.zeros((r, c), np.float32)
    oh[np.arange(r), t.numpy()] = 1.0       # one-hot targets are prepared by the host
    return oh


def nll_loss(ctx: TrainCtx, func, args, kwargs):
    x, target, weight, reduction, ignore = args
    if weight is not None or reduction != 1 or x.dim() != 2 or bool((target._elem == ignore).any()):
        return NotImplemented
    cfg = ctx.cfg
    xn = host_array(x)
    r, c = xn.shape

    def body(s, buf, deps, sc):       # -mean(x[n, target[n]])
        p = s.emit("vmul", deps, dt="f32", dst=buf["t0"], a=buf["x"], b=buf["oh"], n=r * c)
        rs = s.emit("vreduce", [p], mode="sum", dt="f32", dst=buf["t2"], src=buf["t0"], rows=r, cols=c)
        tot = s.emit("vreduce", [rs], mode="sum", dt="f32", dst=buf["t3"], src=buf["t2"], rows=1, cols=r)
        return _scalar_vrow(s, "mul", buf["loss"], buf["t3"], sc[0], 1, [tot])

    prog = K.rows(cfg, "nll_loss", r, c, {"x": (r * c,), "oh": (r * c,)}, {"loss": (1,)}, body, [-1.0 / r])
    loss = ctx.run(prog, {"x": xn.reshape(-1), "oh": _onehot(target, r, c).reshape(-1)}, "forward")["loss"]
    return mlu_tensor(loss, ()), MluTensor(torch.tensor(float(r)))


def nll_loss_backward(ctx: TrainCtx, func, args, kwargs):
    g, x, target, weight, reduction, ignore, total = args
    if weight is not None or reduction != 1 or x.dim() != 2:
        return NotImplemented
    cfg = ctx.cfg
    r, c = x.shape
    scale = -float(g.item()) / r

    def body(s, buf, deps, sc):
        return _scalar_vrow(s, "mul", buf["dx"], buf["oh"], sc[0], r * c, deps)

    prog = K.rows(cfg, "nll_loss_backward", r, c, {"oh": (r * c,)}, {"dx": (r * c,)}, body, [scale])
    return mlu_tensor(ctx.run(prog, {"oh": _onehot(target, r, c).reshape(-1)}, "backward")["dx"], (r, c))


def _masked_scale(ctx: TrainCtx, phase, x: np.ndarray, mask: np.ndarray, scale: float, name: str) -> np.ndarray:
    cfg = ctx.cfg

    def body(s, buf, n, deps, sc):
        m = s.emit("vmul", deps, dt="f32", dst=buf["tmp"], a=buf["x"], b=buf["m"], n=n)
        return _scalar_vrow(s, "mul", buf["y"], buf["tmp"], sc[0], n, [m])

    prog = K.eltwise(cfg, name, x.size, ["x", "m"], ["y"], body, [scale])
    return ctx.run(prog, {"x": x.reshape(-1), "m": mask.reshape(-1)}, phase)["y"].reshape(x.shape)


def dropout(ctx: TrainCtx, func, args, kwargs):
    x, p, train = args
    if not train:
        return NotImplemented
    keep = torch.empty(x.shape).bernoulli_(1.0 - p)         # the host draws the mask (the RNG)
    scale = 1.0 / (1.0 - p) if p < 1 else 0.0
    y = _masked_scale(ctx, "forward", host_array(x), keep.numpy().astype(np.float32), scale, "dropout")
    return mlu_tensor(y), MluTensor(keep.bool())


def dropout_backward(ctx: TrainCtx, func, args, kwargs):
    g, mask, scale = args
    m = mask._elem.numpy().astype(np.float32) if hasattr(mask, "_elem") else mask.numpy().astype(np.float32)
    return mlu_tensor(_masked_scale(ctx, "backward", host_array(g), m, float(scale), "dropout_backward"))


def mul(ctx: TrainCtx, func, args, kwargs):
    """Elementwise product with broadcasting (Dropout2d's per-channel mask): the host expands the
    smaller operand, the vector unit multiplies."""
    a, b = args
    if not (isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor)) or a.dtype != torch.float32 \
            or b.dtype != torch.float32 or a.dim() < 2:
        return NotImplemented
    phase = "backward" if torch._C._current_graph_task_id() != -1 else "forward"
    shape = torch.broadcast_shapes(a.shape, b.shape)
    an = np.broadcast_to(host_array(a), shape).astype(np.float32)
    bn = np.broadcast_to(host_array(b), shape).astype(np.float32)
    return mlu_tensor(_masked_scale(ctx, phase, an, bn, 1.0, "mul"))


def sgd_step(ctx: TrainCtx, optimizer) -> None:
    """torch.optim.SGD's update (weight decay, momentum, no dampening or nesterov) as vector kernels:
    d = g + wd * p; buf = momentum * buf + d; p = p - lr * buf."""
    cfg = ctx.cfg
    for group in optimizer.param_groups:
        lr, mom, wd = group["lr"], group.get("momentum", 0.0), group.get("weight_decay", 0.0)
        for p in group["params"]:
            if p.grad is None:
                continue
            st = optimizer.state[p]
            buf = st.get("momentum_buffer")
            pn, gn = host_array(p), host_array(p.grad)
            bn = host_array(buf) if buf is not None else np.zeros_like(pn)

            def body(s, b, n, deps, sc):
                t = _scalar_vrow(s, "mul", b["tmp"], b["p"], sc[0], n, deps)
                d = s.emit("vadd", [t], dt="f32", dst=b["tmp"], a=b["g"], b=b["tmp"], n=n)
                m = _scalar_vrow(s, "mul", b["buf_out"], b["buf"], sc[1], n, [d])
                nb = s.emit("vadd", [m], dt="f32", dst=b["buf_out"], a=b["buf_out"], b=b["tmp"], n=n)
                u = _scalar_vrow(s, "mul", b["tmp"], b["buf_out"], sc[2], n, [nb])
                return s.emit("vadd", [u], dt="f32", dst=b["p_out"], a=b["p"], b=b["tmp"], n=n)

            prog = K.eltwise(cfg, "sgd", pn.size, ["p", "g", "buf"], ["p_out", "buf_out"], body, [wd, mom, -lr])
            out = ctx.run(prog, {"p": pn.reshape(-1), "g": gn.reshape(-1), "buf": bn.reshape(-1)}, "update")
            with torch.no_grad():
                p._elem.copy_(torch.from_numpy(out["p_out"].reshape(pn.shape)))
                if mom:
                    st["momentum_buffer"] = mlu_tensor(out["buf_out"], pn.shape)
    train = ctx.train
    train.history.append(dict(train.step, host_ops=dict(train.host_ops)))
    train.step.clear()
    train.host_ops.clear()


def handlers() -> dict:
    """aten op -> kernel(ctx, func, args, kwargs) for the vector-unit ops."""
    return {aten.relu.default: relu, aten.threshold_backward.default: threshold_backward,
            aten.max_pool2d_with_indices.default: max_pool,
            aten.max_pool2d_with_indices_backward.default: max_pool_backward,
            aten._log_softmax.default: log_softmax, aten._log_softmax_backward_data.default: log_softmax_backward,
            aten.nll_loss_forward.default: nll_loss, aten.nll_loss_backward.default: nll_loss_backward,
            aten.native_dropout.default: dropout, aten.native_dropout_backward.default: dropout_backward,
            aten.mul.Tensor: mul}

