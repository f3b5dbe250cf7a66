"""Elementwise kernels over flat chunks: residual add, standalone activations, input quantization,
output dequantization, softmax / log_softmax, and channel concatenation (pure copies)."""
from __future__ import annotations

from math import prod

import numpy as np

from mlusim.compiler.codegen import Arena, TaskStream
from mlusim.compiler.tiling import DOUBLE, split
from mlusim.isa.fields import f32_bits

ALIGN = 64


def _chunks(ctx, total: int, bytes_per_elem: int) -> list[list[tuple[int, int]]]:
    """Split `total` elements over tasks, then into chunks whose buffers fit NRAM."""
    cap = max(ALIGN, (ctx.cfg.nram_bytes - 4096) // bytes_per_elem // ALIGN * ALIGN)
    ntasks = max(1, min(ctx.tasks, total // 4096 or 1))
    out = []
    for t0, t1 in split(total, ntasks):
        out.append([(a, min(t1, a + cap)) for a in range(t0, t1, cap)])
    return out


def _unary_kernel(ctx, node, src_addr, dst_addr, total, in_size, out_size, body, extra_bytes=0, setup=None):
    """A pipelined load -> body -> store loop; body(s, deps, src_buf, dst_buf, count) returns its last op."""
    streams = []
    for chunks in _chunks(ctx, total, DOUBLE * (in_size + out_size) + extra_bytes):
        s = TaskStream()
        nram = Arena("nram", ctx.cfg.nram_bytes)
        cap = max(b - a for a, b in chunks)
        bin_ = [nram.alloc(cap * in_size, "input chunk") for _ in range(DOUBLE)]
        bout = [nram.alloc(cap * out_size, "output chunk") for _ in range(DOUBLE)]
        env = setup(s, nram, cap) if setup else None
        readers, stores = [], []
        for i, (a, b) in enumerate(chunks):
            slot = i % DOUBLE
            ld = s.dma("g2n", bin_[slot], src_addr + a * in_size, (b - a) * in_size,
                       deps=[readers[i - DOUBLE] if i >= DOUBLE else None])
            last = body(s, [ld, stores[i - DOUBLE] if i >= DOUBLE else None], bin_[slot], bout[slot], b - a, env)
            readers.append(last)
            stores.append(s.dma("n2g", dst_addr + a * out_size, bout[slot], (b - a) * out_size, deps=[last]))
        streams.append(s.finish())
    ctx.kernel(node, streams, unit="vector")


def lower_quantize_input(ctx, node, x, y) -> None:
    inv = f32_bits(node.q["inv_scale"])
    dt = "i16" if node.q["dtype"] == "int16" else "i8"
    esz = 2 if dt == "i16" else 1

    def body(s, deps, src, dst, n, _env):
        return s.emit("vquant", deps, sdt="f32", odt=dt, dst=dst, src=src, n=n, scale=inv)

    _unary_kernel(ctx, node, x.addr, y.addr, prod(x.shape), 4, esz, body)


def lower_dequantize(ctx, node, x, y, scale: float, name: str) -> None:
    dt = "i16" if node.q["dtype"] == "int16" else "i8"
    esz = 2 if dt == "i16" else 1
    bits = f32_bits(float(np.float32(scale)))

    def body(s, deps, src, dst, n, _env):
        return s.emit("vdequant", deps, sdt=dt, odt="f32", dst=dst, src=src, n=n, scale=bits)

    _unary_kernel(ctx, _Named(node, name), x.addr, y.addr, prod(x.shape), esz, 4, body)


class _Named:
    """A node seen under another kernel name (the output dequantize step of a node)."""

    def __init__(self, node, name):
        self.name, self.op, self.fused, self.q = name, "dequantize", [], node.q


def lower_act(ctx, node, x, y) -> None:
    dt = "i16" if node.q["dtype"] == "int16" else "i8"
    esz = 2 if dt == "i16" else 1
    hi = node.q.get("hi", node.q["qmax"]) if node.op == "relu6" else node.q["qmax"]

    def body(s, deps, src, dst, n, _env):
        return s.emit("vclamp", deps, dt=dt, dst=dst, src=src, n=n, lo=0, hi=hi)

    _unary_kernel(ctx, node, x.addr, y.addr, prod(x.shape), esz, esz, body)


def lower_add(ctx, node, a, b, y) -> None:
    """out = requant(a*ka + b*kb): both inputs brought to a common scale in int32, then one rescale."""
    q = node.q
    dt = "i16" if q["dtype"] == "int16" else "i8"
    esz = 2 if dt == "i16" else 1
    params = np.array([[0, q["ka"], 0], [0, q["kb"], 0], [0, q["mult"], q["shift"]]], np.int32)
    p_addr = ctx.const(f"{node.name}.params", params)
    total = prod(a.shape)
    streams = []
    for chunks in _chunks(ctx, total, DOUBLE * 3 * esz + 8):
        s = TaskStream()
        nram = Arena("nram", ctx.cfg.nram_bytes)
        cap = max(e - b0 for b0, e in chunks)
        ba = [nram.alloc(cap * esz, "a") for _ in range(DOUBLE)]
        bb = [nram.alloc(cap * esz, "b") for _ in range(DOUBLE)]
        bo = [nram.alloc(cap * esz, "out") for _ in range(DOUBLE)]
        ta, tb = nram.alloc(cap * 4, "a int32"), nram.alloc(cap * 4, "b int32")
        par = nram.alloc(36, "params")
        pl = s.dma("g2n", par, p_addr, 36)
        readers, stores = [], []
        for i, (c0, c1) in enumerate(chunks):
            slot, n = i % DOUBLE, c1 - c0
            free_in = readers[i - DOUBLE] if i >= DOUBLE else None
            la = s.dma("g2n", ba[slot], a.addr + c0 * esz, n * esz, deps=[free_in])
            lb = s.dma("g2n", bb[slot], b.addr + c0 * esz, n * esz, deps=[free_in])
            s.emit("vcast", [la], sdt=dt, ddt="i32", dst=ta, src=ba[slot], n=n)
            last_read = s.emit("vcast", [lb], sdt=dt, ddt="i32", dst=tb, src=bb[slot], n=n)
            s.emit("vrequant", [pl], odt="i32", dst=ta, src=ta, params=par, c=1, n=n)
            s.emit("vrequant", [], odt="i32", dst=tb, src=tb, params=par + 12, c=1, n=n)
            s.emit("vadd", [], dt="i32", dst=ta, a=ta, b=tb, n=n)
            out = s.emit("vrequant", [stores[i - DOUBLE] if i >= DOUBLE else None], odt=dt, dst=bo[slot], src=ta,
                         params=par + 24, c=1, n=n, lo=q["lo"], hi=q["hi"])
            readers.append(last_read)
            stores.append(s.dma("n2g", y.addr + c0 * esz, bo[slot], n * esz, deps=[out]))
        streams.append(s.finish())
    ctx.kernel(node, streams, unit="vector")


def lower_concat(ctx, node, inputs, y) -> None:
    """Channel concatenation in NHWC: each input's channels copied into their slice, GDRAM to GDRAM."""
    n, h, w, c_out = y.shape
    esz = 2 if node.q["dtype"] == "int16" else 1
    streams = []
    off = 0
    for x in inputs:
        c = x.shape[3]
        for img in range(n):
            s = TaskStream()
            s.dma("g2g", y.addr + (img * h * w * c_out + off) * esz, x.addr + img * h * w * c * esz, c * esz,
                  count=h * w, dstride=c_out * esz, sstride=c * esz)
            streams.append(s.finish())
        off += c
    ctx.kernel(node, streams, unit="dma")


def lower_softmax(ctx, node, x, y) -> None:
    """float32 softmax / log_softmax of dequantized logits, one row block per task."""
    rows, cols = x.shape
    dt = "i16" if node.q.get("dtype") == "int16" else "i8"
    esz = 2 if dt == "i16" else 1
    scale = f32_bits(float(np.float32(node.q["in_scale"])))
    per_row = cols * (esz + 8) + 16
    cap = max(1, (ctx.cfg.nram_bytes - 4096) // per_row)
    streams = []
    for r0, r1 in split(rows, min(rows, ctx.tasks)):
        s = TaskStream()
        prev = None
        for a in range(r0, r1, cap):
            b = min(r1, a + cap)
            m = b - a
            nram = Arena("nram", ctx.cfg.nram_bytes)
            raw, f, e = nram.alloc(m * cols * esz, "logits"), nram.alloc(m * cols * 4, "x"), nram.alloc(m * cols * 4, "e")
            mx, sm = nram.alloc(m * 4, "row max"), nram.alloc(m * 4, "row sum")
            ld = s.dma("g2n", raw, x.addr + a * cols * esz, m * cols * esz, deps=[prev])
            s.emit("vdequant", [ld], sdt=dt, odt="f32", dst=f, src=raw, n=m * cols, scale=scale)
            s.emit("vreduce", [], mode="max", dt="f32", dst=mx, src=f, rows=m, cols=cols)
            s.emit("vrow", [], op="sub", dt="f32", dst=f, a=f, b=mx, rows=m, cols=cols)
            s.emit("vexp", [], dt="f32", dst=e, src=f, n=m * cols)
            s.emit("vreduce", [], mode="sum", dt="f32", dst=sm, src=e, rows=m, cols=cols)
            if node.op == "softmax":
                last = s.emit("vrow", [], op="div", dt="f32", dst=f, a=e, b=sm, rows=m, cols=cols)
            else:
                s.emit("vlog", [], dt="f32", dst=sm, src=sm, n=m)
                last = s.emit("vrow", [], op="sub", dt="f32", dst=f, a=f, b=sm, rows=m, cols=cols)
            prev = s.dma("n2g", y.addr + a * cols * 4, f, m * cols * 4, deps=[last])
        streams.append(s.finish())
    ctx.kernel(node, streams, unit="vector")
