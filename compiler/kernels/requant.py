"""Requantization shared by the MAC kernels (conv, linear) and average pooling: an int32 sum back to
int8 / int16.

Two ways, chosen by the quantized node: the MLU's own vrequant (bias, integer multiplier, shift,
activation clamp, zero point) with its per-channel parameters packed as one [c, 3] int32 constant,
or ONNX Runtime's float requantization for imported models (float_requant). Both correct the bias
for an input zero point at compile time (zero_point_bias). One module, so conv and pooling need
not reach into the linear kernel for it.
"""
from __future__ import annotations

import numpy as np

from mlusim.errors import CompileError
from mlusim.isa.fields import f32_bits


def zero_point_bias(node, bias, weight: np.ndarray, zp: int) -> np.ndarray:
    """The bias that makes a product of raw inputs exact for an input zero point zp:
    sum_k (x_k - zp) w_k = sum_k x_k w_k - zp * sum_k w_k, per output (row of `weight`)."""
    b = bias.astype(np.int64)
    if zp:                  # (a 100 M-weight layer's int64 copy costs seconds: only when needed)
        b = b - zp * weight.reshape(weight.shape[0], -1).sum(axis=1, dtype=np.int64)
    if b.min(initial=0) < -2**31 or b.max(initial=0) >= 2**31:
        raise CompileError(f"node '{node.name}' ({node.op}): bias corrected for input zero point {zp} leaves int32")
    return b.astype(np.int32)


ONE = f32_bits(1.0)


def float_requant(s, deps, q, acc: int, dst: int, params: int, scales: int, rows: int, cols: int, odt: str) -> int:
    """ONNX Runtime's requantization (MlasRequantizeOutput) on the vector unit, for imported
    models: the int32 sum plus bias (a vrequant with multiplier 1), converted to float32, times the
    float32 per-column scale, rounded to nearest even with the zero point added and saturated
    (vquant by 1.0), then any narrower activation clamp. `params` holds (bias, 1, 0) per column,
    `scales` the float32 scales. Every step is in place on the accumulator. Returns the last op."""
    n = rows * cols
    s.emit("vrequant", deps, odt="i32", dst=acc, src=acc, params=params, c=cols, n=n)
    s.emit("vcast", [], sdt="i32", ddt="f32", dst=acc, src=acc, n=n)
    s.emit("vrow", [], op="mul", dt="f32", dst=acc, a=acc, b=scales, rows=rows, cols=cols, axis="col")
    last = s.emit("vquant", [], sdt="f32", odt=odt, dst=dst, src=acc, n=n, scale=ONE, zp=q.get("zp", 0))
    qmax = q["qmax"]
    if q["lo"] > -qmax - 1 or q["hi"] < qmax:
        last = s.emit("vclamp", [], dt=odt, dst=dst, src=dst, n=n, lo=q["lo"], hi=q["hi"])
    return last


def requant_params(q, bias: np.ndarray) -> np.ndarray:
    """The [c, 3] vrequant parameters: (bias, mult, shift), or (bias, 1, 0) for float_requant."""
    if "fscale" in q:
        return np.stack([bias, np.ones_like(bias), np.zeros_like(bias)], axis=1).astype(np.int32)
    return np.stack([bias, q["mult"], q["shift"]], axis=1).astype(np.int32)
