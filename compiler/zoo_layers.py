"""Layer idioms shared by the zoo's model definitions: conv + batch norm + activation, and the
pooling conventions of the frameworks the published models come from (Caffe's ceil-mode output
size, darknet's right/bottom padding), expressed as the graph IR's explicit asymmetric padding."""
from __future__ import annotations

from mlusim.compiler.graph import Builder


def conv_bn(b: Builder, x: str, co: int, k: int, stride=1, padding=0, groups=1, act="relu", name=""):
    x = b.bn(b.conv(x, co, k, stride, padding, groups, bias=False, name=f"{name}.conv" if name else None),
             name=f"{name}.bn" if name else None)
    return b.unary(act, x) if act else x


def ceil_pool_pads(size: int, k: int, s: int, pad: int = 0) -> tuple[int, int]:
    """(before, after) padding that makes a floor-mode pool give Caffe's ceil-mode output size:
    out = ceil((size + 2 pad - k) / s) + 1, less one if the last window would start in the padding
    (Caffe's pooling_layer.cpp). The extra rows go after (bottom/right), where a max never picks
    them; torch's ceil_mode=True gives the same sizes."""
    out = -(-(size + 2 * pad - k) // s) + 1
    if pad and (out - 1) * s >= size + pad:
        out -= 1
    return pad, max(pad, (out - 1) * s + k - size - pad)


def caffe_maxpool(b: Builder, x: str, side: int, k: int, s: int, pad: int = 0, name: str | None = None) -> str:
    """Caffe's MAX pooling (ceil mode) over a square input of `side` pixels."""
    top, bottom = ceil_pool_pads(side, k, s, pad)
    return b.unary("maxpool", x, name=name, kernel=k, stride=s, padding=(top, bottom, top, bottom))


def side_of(b: Builder, x: str) -> int:
    """Current spatial size of value x (square inputs), from the builder's shape inference."""
    return b.shape(x)[2]
