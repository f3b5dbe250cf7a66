"""Quantization as Cambricon does it: symmetric int8/int16, scales calibrated from sample inputs.

Every activation tensor gets a real scale s (value = q * s), recorded also in Cambricon's form
`position` and `cambricon_scale` (value = q * 2**position / cambricon_scale, in [1, 2)). Weights are quantized per
output channel or per tensor; biases to int32 at s_in * s_w. Every real multiplier the integer
pipeline needs (s_in * s_w / s_out, average divisors, residual rescales) becomes an int32 `mult` and
a right `shift`: the vrequant instruction's parameters.
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np

from mlusim.compiler.graph import Graph, Node
from mlusim.errors import CompileError

QMAX = {"int8": 127, "int16": 32767}
ADD_BITS = 14          # residual add: both inputs rescaled to a common scale with 14-bit factors


def quantize_multiplier(m: float) -> tuple[int, int]:
    """Real m > 0 as (mult, shift) with m ~= mult * 2**-shift, mult < 2**31, 0 <= shift <= 62."""
    if not m > 0 or not math.isfinite(m):
        raise CompileError(f"cannot represent requantization multiplier {m!r}")
    e = math.floor(math.log2(m))
    shift = min(62, 30 - e)
    if shift < 0:
        shift = 0
    mult = int(round(m * 2.0**shift))
    if mult >= 2**31:
        if shift == 0:
            raise CompileError(f"requantization multiplier {m:g} is too large for int32")
        mult, shift = int(round(m * 2.0 ** (shift - 1))), shift - 1
    return max(mult, 1), shift


def cambricon_form(s: float) -> dict[str, Any]:
    """Cambricon's (position, scale): value = q * 2**position / scale, with scale in [1, 2)."""
    pos = math.ceil(math.log2(s)) if s > 0 else 0
    return {"position": pos, "cambricon_scale": 2.0**pos / s if s > 0 else 1.0}


def calibrate(g: Graph, samples: list[np.ndarray], use_avg: bool = False) -> dict[str, float]:
    """Absolute maximum of every node's output over the samples (min/max method)."""
    from mlusim.compiler.reference import run_float

    per: dict[str, list[float]] = {}
    for x in samples:
        for name, v in run_float(g, x).items():
            per.setdefault(name, []).append(float(np.max(np.abs(v))) if v.size else 0.0)
    return {k: (float(np.mean(v)) if use_avg else max(v)) for k, v in per.items()}


def _act_bounds(act: str | None, s_out: float, qmax: int) -> tuple[int, int]:
    lo, hi = -qmax, qmax
    if act in ("relu", "relu6"):
        lo = 0
    if act == "relu6":
        hi = min(qmax, int(round(6.0 / s_out)))
    return lo, hi


def _weights(w: np.ndarray, per_channel: bool, qmax: int) -> tuple[np.ndarray, np.ndarray]:
    flat = w.reshape(w.shape[0], -1)
    amax = np.abs(flat).max(axis=1).astype(np.float64)
    if not per_channel:
        amax[:] = amax.max()
    s_w = np.where(amax > 0, amax / qmax, 1.0)
    q = flat / s_w.astype(np.float32)[:, None]
    np.rint(q, out=q)
    np.clip(q, -qmax, qmax, out=q)
    return q.astype(np.int16 if qmax > 127 else np.int8).reshape(w.shape), s_w


def quantize(g: Graph, absmax: dict[str, float], dtype: str = "int8", per_channel: bool = True,
             mixed: dict[str, str] | None = None) -> Graph:
    """Attach integer parameters to every node (node.q). `mixed` maps node names to 'int16'."""
    if dtype not in QMAX:
        raise CompileError(f"quantization dtype must be int8 or int16, got {dtype!r}")
    mixed = mixed or {}
    scale: dict[str, float] = {}
    # concat inputs share the output's scale, so concatenation is a pure copy
    forced: dict[str, float] = {}
    for n in g.nodes:
        if n.op == "concat":
            m = max(absmax[i] for i in n.inputs + [n.name])
            for i in n.inputs + [n.name]:
                forced[i] = m
    for n in g.nodes:
        dt = mixed.get(n.name, dtype)
        qmax = QMAX[dt]
        amax = forced.get(n.name, absmax.get(n.name, 1.0))
        s = max(amax, 1e-8) / qmax
        src = scale.get(n.inputs[0]) if n.inputs else None
        q: dict[str, Any] = {"dtype": dt, "qmax": qmax}
        if n.op in ("maxpool", "relu", "relu6", "flatten", "reshape"):
            s = src
        if n.op in ("softmax", "log_softmax"):
            s = None
            q["in_scale"] = src
        if n.op == "input":
            q["inv_scale"] = float(np.float32(1.0 / s))
        elif n.op in ("conv2d", "linear"):
            wq, s_w = _weights(n.params["weight"], per_channel, qmax)
            bias = n.params.get("bias")
            acc_scale = src * s_w
            bq = np.zeros(len(s_w), np.int64) if bias is None else np.rint(bias.astype(np.float64) / acc_scale)
            q["weight"] = wq
            q["w_scale"] = s_w
            q["bias"] = np.clip(bq, -2**31, 2**31 - 1).astype(np.int32)
            mults = [quantize_multiplier(a / s) for a in acc_scale]
            q["mult"] = np.array([m for m, _ in mults], np.int32)
            q["shift"] = np.array([sh for _, sh in mults], np.int32)
            q["lo"], q["hi"] = _act_bounds(n.attrs.get("act"), s, qmax)
            if n.attrs.get("residual"):
                res = [quantize_multiplier(scale[n.inputs[1]] / a) for a in acc_scale]
                q["res_mult"] = np.array([m for m, _ in res], np.int32)
                q["res_shift"] = np.array([sh for _, sh in res], np.int32)
        elif n.op in ("avgpool", "gap"):
            count = (n.attrs["kernel"][0] * n.attrs["kernel"][1]) if n.op == "avgpool" else None
            if count is None:
                inp = g.node(n.inputs[0])
                count = inp.shape[2] * inp.shape[3]
            q["count"] = count
            q["mult"], q["shift"] = quantize_multiplier(src / (s * count))
            q["lo"], q["hi"] = -qmax, qmax
        elif n.op == "add":
            sa, sb = scale[n.inputs[0]], scale[n.inputs[1]]
            sc = max(sa, sb) / 2**ADD_BITS
            q["ka"], q["kb"] = int(round(sa / sc)), int(round(sb / sc))
            q["mult"], q["shift"] = quantize_multiplier(sc / s)
            q["lo"], q["hi"] = _act_bounds(n.attrs.get("act"), s, qmax)
        elif n.op == "relu6":
            q["hi"] = min(qmax, int(round(6.0 / s)))
        elif n.op == "concat":
            if any(scale[i] != s for i in n.inputs):
                raise CompileError(f"node '{n.name}' (concat): inputs were not given the output scale")
        scale[n.name] = s
        if s is not None:
            q["scale"] = s
            q.update(cambricon_form(s))
        n.q = q
    out = g.node(g.output)
    g.meta["output_float"] = out.op in ("softmax", "log_softmax")
    return g


def firstconv(g: Graph, mean: list[float], std: list[float]) -> Graph:
    """Fold input normalisation (x - mean) / std into the first conv, as Cambricon's `firstconv`:
    the model then takes raw pixels. (Exact inside the image; zero padding of the raw input now
    stands for -mean/std, as on the real toolchain.)"""
    first = g.consumers(g.input.name)
    if len(first) != 1 or first[0].op != "conv2d":
        raise CompileError("firstconv needs the input to feed exactly one conv")
    conv = first[0]
    c = conv.params["weight"].shape[1] * conv.attrs.get("groups", 1)
    mean_a = np.broadcast_to(np.asarray(mean, np.float64), (c,))
    std_a = np.broadcast_to(np.asarray(std, np.float64), (c,))
    if conv.attrs.get("groups", 1) != 1:
        raise CompileError("firstconv does not support a grouped first conv")
    w = conv.params["weight"].astype(np.float64)
    conv.params["weight"] = (w / std_a[None, :, None, None]).astype(np.float32)
    b = conv.params.get("bias", np.zeros(w.shape[0], np.float32)).astype(np.float64)
    conv.params["bias"] = (b - (w * (mean_a / std_a)[None, :, None, None]).sum(axis=(1, 2, 3))).astype(np.float32)
    conv.fused.append("firstconv")
    return g


def weight_bytes(g: Graph) -> int:
    return sum(int(n.q["weight"].nbytes) for n in g.nodes if "weight" in n.q)


__all__ = ["quantize", "calibrate", "quantize_multiplier", "cambricon_form", "firstconv", "Node"]
