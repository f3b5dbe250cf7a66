"""The values the ONNX importer passes between op handlers (frontend_onnx.py, onnx_ops.py): constants,
activations, the error an unsupported op raises, and an activation's quantization."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

MS = "com.microsoft"


@dataclass
class Const:
    value: np.ndarray                       # float value (dequantized when q is set)
    q: tuple | None = None                  # (integers, scale, zero point, axis) of a DequantizeLinear


@dataclass
class Act:
    node: str | None                        # IR node; None: poisoned by an earlier unsupported op
    quantized: bool = False                 # the integer view (a QuantizeLinear / QLinear* output)
    pads: tuple | None = None               # a pending Pad (top, bottom, left, right) ...
    pad_node: str = ""                      # ... from this ONNX node, folded into the consumer


class Unsupported(Exception):
    """An op (or an op's use) the importer cannot map; collected, reported together."""



def quant_of(scale: Const, zp: Const | None) -> dict:
    s = np.asarray(scale.value, np.float32)
    if s.size != 1:
        raise Unsupported("per-channel quantization of an activation")
    z = np.asarray(zp.value) if zp is not None else np.zeros((), np.uint8)
    if z.dtype not in (np.uint8, np.int8):
        raise Unsupported(f"quantized type {z.dtype} (uint8 and int8 are supported)")
    return {"scale": float(s.reshape(-1)[0]), "zero_point": int(z.reshape(-1)[0]), "dtype": str(z.dtype)}
