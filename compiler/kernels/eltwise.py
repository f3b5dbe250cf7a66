"""Elementwise kernels over flat chunks: residual add, standalone activations, input quantization,
output dequantization, requantization to another scale / zero point, sigmoid and hardswish (in
float32 on the vector unit), softmax / log_softmax, and channel concatenation (pure copies).

Zero points: every integer value here means (q - zp) * scale. Activations clamp at the zero point
(real 0), the add subtracts each input's zero point in its first requantize (its bias field), and
the final requantize adds the output's."""
from __future__ import annotations

from math import prod

import numpy as np

from mlusim.compiler.codegen import Arena, TaskStream, load_dir, store_dir
from mlusim.compiler.tiling import DOUBLE, split
from mlusim.isa.fields import f32_bits

ALIGN = 64
ONE = f32_bits(1.0)


def _chunks(ctx, total: int, bytes_per_elem: int) -> list[list[tuple[int, int]]]:
    """Split `total` elements over tasks, then into chunks whose buffers fit NRAM."""
    cap = max(ALIGN, (ctx.cfg.nram_bytes - 4096) // bytes_per_elem // ALIGN * ALIGN)
    ntasks = max(1, min(ctx.tasks, total // 4096 or 1))
    out = []
    for t0, t1 in split(total, ntasks):
        out.append([(a, min(t1, a + cap)) for a in range(t0, t1, cap)])
    return out


def _unary_kernel(ctx, node, x, y, total, in_size, out_size, body, extra_bytes=0, setup=None):
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
            ld = s.dma(load_dir(x), bin_[slot], x.addr + a * in_size, (b - a) * in_size,
                       deps=[readers[i - DOUBLE] if i >= DOUBLE else None])
            last = body(s, [ld, stores[i - DOUBLE] if i >= DOUBLE else None], bin_[slot], bout[slot], b - a, env)
            readers.append(last)
            stores.append(s.dma(store_dir(y), y.addr + a * out_size, bout[slot], (b - a) * out_size, deps=[last]))
        streams.append(s.finish())
    ctx.kernel(node, streams, unit="vector")


def lower_quantize_input(ctx, node, x, y) -> None:
    """vquant by 1/scale; for an imported model, ONNX's QuantizeLinear: a float32 division by the
    scale (vrow div against a one-element buffer) and then rounding, as ONNX Runtime does."""
    inv = f32_bits(node.q["inv_scale"])
    dt = "i16" if node.q["dtype"] == "int16" else "i8"
    esz = 2 if dt == "i16" else 1
    div = "div_scale" in node.q
    s_addr = ctx.const(f"{node.name}.scale", np.array([node.q["div_scale"]], np.float32)) if div else None

    def setup(s, nram, cap):
        buf = nram.alloc(4, "scale")
        return buf, s.dma("g2n", buf, s_addr, 4)

    def body(s, deps, src, dst, n, env):
        if div:
            s.emit("vrow", deps + [env[1]], op="div", dt="f32", dst=src, a=src, b=env[0], rows=n, cols=1, axis="col")
            return s.emit("vquant", [], sdt="f32", odt=dt, dst=dst, src=src, n=n, scale=ONE, zp=node.q.get("zp", 0))
        return s.emit("vquant", deps, sdt="f32", odt=dt, dst=dst, src=src, n=n, scale=inv, zp=node.q.get("zp", 0))

    _unary_kernel(ctx, node, x, y, prod(x.shape), 4, esz, body, setup=setup if div else None)


def lower_dequantize(ctx, node, x, y, scale: float, name: str, zp: int = 0) -> None:
    dt = "i16" if node.q["dtype"] == "int16" else "i8"
    esz = 2 if dt == "i16" else 1
    bits = f32_bits(float(np.float32(scale)))

    def body(s, deps, src, dst, n, _env):
        return s.emit("vdequant", deps, sdt=dt, odt="f32", dst=dst, src=src, n=n, scale=bits, zp=zp)

    _unary_kernel(ctx, _Named(node, name), x, y, prod(x.shape), esz, 4, body)


class _Named:
    """A node seen under another kernel name (the output dequantize step of a node)."""

    def __init__(self, node, name):
        self.name, self.op, self.fused, self.q = name, "dequantize", [], node.q


def lower_act(ctx, node, x, y) -> None:
    dt = "i16" if node.q["dtype"] == "int16" else "i8"
    esz = 2 if dt == "i16" else 1
    hi = node.q.get("hi", node.q["qmax"]) if node.op == "relu6" else node.q["qmax"]
    lo = node.q.get("zp", 0)

    def body(s, deps, src, dst, n, _env):
        return s.emit("vclamp", deps, dt=dt, dst=dst, src=src, n=n, lo=lo, hi=hi)

    _unary_kernel(ctx, node, x, y, prod(x.shape), esz, esz, body)


def lower_requant(ctx, node, x, y) -> None:
    """Same real values in another scale and zero point: int32, then one vrequant whose bias is
    minus the input zero point."""
    q = node.q
    requant_kernel(ctx, node, x, y, q["in_zp"], dict(zp=q["zp"], lo=q["lo"], hi=q["hi"]))


def requant_kernel(ctx, node, x, y, in_zp: int, out: dict, then=None) -> None:
    """Each chunk widened to int32 and requantized by the node's (mult, shift) with bias -in_zp and
    vrequant's `out` fields (zp, lo, hi); `then(s, src, dst, n, dt)` may add steps on the result
    (leaky ReLU's max with the input) and returns the last."""
    q = node.q
    dt = "i16" if q["dtype"] == "int16" else "i8"
    esz = 2 if dt == "i16" else 1
    p_addr = ctx.const(f"{node.name}.params", np.array([[-in_zp, q["mult"], q["shift"]]], np.int32))

    def setup(s, nram, cap):
        par = nram.alloc(12, "params")
        return par, nram.alloc(cap * 4, "int32"), s.dma("g2n", par, p_addr, 12)

    def body(s, deps, src, dst, n, env):
        par, wide, pl = env
        s.emit("vcast", deps, sdt=dt, ddt="i32", dst=wide, src=src, n=n)
        last = s.emit("vrequant", [pl], odt=dt, dst=dst, src=wide, params=par, c=1, n=n, **out)
        return then(s, src, dst, n, dt) if then else last

    _unary_kernel(ctx, node, x, y, prod(x.shape), esz, esz, body, extra_bytes=4, setup=setup)


def lower_float_unary(ctx, node, x, y) -> None:
    """sigmoid, hardswish and hardsigmoid in float32: dequantize, a few vector steps, quantize.
    Sigmoid is 1 / (1 + exp(-x)) with -x from dequantizing with the negated scale; hardswish is
    x * min(max(x + 3, 0), 6) and hardsigmoid min(max(x + 3, 0), 6), the / 6 folded into the
    quantize scale. The order of the steps is
    the contract the reference (reference._unary_float) follows."""
    q = node.q
    dt = "i16" if q["dtype"] == "int16" else "i8"
    esz = 2 if dt == "i16" else 1
    sig = node.op == "sigmoid"
    in_bits = f32_bits(float(np.float32(-q["in_scale"] if sig else q["in_scale"])))
    out_bits = f32_bits(q["inv_scale"])
    consts = (1,) if sig else (3, 0, 6)
    times_x = node.op == "hardswish"      # hardsigmoid stops at relu6(x + 3); both / 6 in the scale

    def setup(s, nram, cap):
        bufs = [nram.alloc(cap * 4, f"constant {v}") for v in consts]
        sets = [s.emit("vset", [], dt="f32", dst=b, n=cap, value=v) for b, v in zip(bufs, consts)]
        return bufs, nram.alloc(cap * 4, "x"), nram.alloc(cap * 4, "t"), sets

    def body(s, deps, src, dst, n, env):
        bufs, f, t, sets = env
        s.emit("vdequant", deps + sets, sdt=dt, odt="f32", dst=f, src=src, n=n, scale=in_bits, zp=q["in_zp"])
        if sig:
            s.emit("vexp", [], dt="f32", dst=t, src=f, n=n)
            s.emit("vadd", [], dt="f32", dst=t, a=t, b=bufs[0], n=n)
            s.emit("vrow", [], op="div", dt="f32", dst=t, a=bufs[0], b=t, rows=n, cols=1)
        else:
            s.emit("vadd", [], dt="f32", dst=t, a=f, b=bufs[0], n=n)
            s.emit("vmax", [], dt="f32", dst=t, a=t, b=bufs[1], n=n)
            s.emit("vmin", [], dt="f32", dst=t, a=t, b=bufs[2], n=n)
            if times_x:
                s.emit("vmul", [], dt="f32", dst=t, a=f, b=t, n=n)
        return s.emit("vquant", [], sdt="f32", odt=dt, dst=dst, src=t, n=n, scale=out_bits, zp=q["zp"])

    _unary_kernel(ctx, node, x, y, prod(x.shape), esz, esz, body,
                  extra_bytes=4 * (len(consts) + 2), setup=setup)


def lower_add(ctx, node, a, b, y) -> None:
    """out = requant(a*ka + b*kb): both inputs brought to a common scale in int32, then one rescale.
    For an imported model, ONNX Runtime's formula instead (see _ort_add_chunk)."""
    q = node.q
    dt = "i16" if q["dtype"] == "int16" else "i8"
    esz = 2 if dt == "i16" else 1
    ort = "fma" in q
    if ort:
        ra, rb, fixed = q["fma"]
        oa, ob, oc = q["offsets"]
        params = np.array([ra, rb, fixed, oa, ob, 0], np.float32).view(np.int32)
    else:
        params = np.array([[-q.get("zpa", 0), q["ka"], 0], [-q.get("zpb", 0), q["kb"], 0], [0, q["mult"], q["shift"]]],
                          np.int32).reshape(-1)
    p_addr = ctx.const(f"{node.name}.params", params)
    total = prod(a.shape)
    streams = []
    for chunks in _chunks(ctx, total, DOUBLE * 3 * esz + (8 + 12 if ort else 4)):
        s = TaskStream()
        nram = Arena("nram", ctx.cfg.nram_bytes)
        cap = max(e - b0 for b0, e in chunks)
        ba = [nram.alloc(cap * esz, "a") for _ in range(DOUBLE)]
        bb = [nram.alloc(cap * esz, "b") for _ in range(DOUBLE)]
        bo = [nram.alloc(cap * esz, "out") for _ in range(DOUBLE)]
        ta = nram.alloc(cap * 4, "a wide")
        tb = None if not ort else nram.alloc(cap * 4, "b wide")
        par = nram.alloc(36, "params")
        pl = s.dma("g2n", par, p_addr, params.nbytes)
        consts = _ort_add_constants(s, nram, cap, par, pl) if ort else None
        readers, stores = [], []
        for i, (c0, c1) in enumerate(chunks):
            slot, n = i % DOUBLE, c1 - c0
            free_in = readers[i - DOUBLE] if i >= DOUBLE else None
            free_out = stores[i - DOUBLE] if i >= DOUBLE else None
            la = s.dma(load_dir(a), ba[slot], a.addr + c0 * esz, n * esz, deps=[free_in])
            lb = s.dma(load_dir(b), bb[slot], b.addr + c0 * esz, n * esz, deps=[free_in])
            if ort:
                last_read, out = _ort_add_chunk(s, q, dt, ba[slot], bb[slot], bo[slot], ta, tb, n, consts,
                                                [la, lb, free_out])
            else:
                # a to int32 at the common scale, then b's rescale, the saturating sum and the
                # output requantization in one vrqadd pass (the reference's clip(a*ka + b*kb))
                s.emit("vcast", [la], sdt=dt, ddt="i32", dst=ta, src=ba[slot], n=n)
                s.emit("vrequant", [pl], odt="i32", dst=ta, src=ta, params=par, c=1, n=n)
                out = last_read = s.emit("vrqadd", [lb, free_out], sdt=dt, odt=dt, dst=bo[slot], a=ta,
                                         src=bb[slot], rparams=par + 12, params=par + 24, c=1, n=n,
                                         lo=q["lo"], hi=q["hi"], zp=q.get("zp", 0))
            readers.append(last_read)
            stores.append(s.dma(store_dir(y), y.addr + c0 * esz, bo[slot], n * esz, deps=[out]))
        streams.append(s.finish())
    ctx.kernel(node, streams, unit="vector")


def _ort_add_constants(s, nram, cap, par, pl):
    """Vectors of rA, rB and F (vfma takes vector operands): zeros plus a broadcast parameter.
    Returns them with the parameter buffer (whose slots 3 and 4 hold the inputs' offsets)."""
    bufs = []
    for k in range(3):
        buf = nram.alloc(cap * 4, "add constant")
        s.emit("vset", [], dt="f32", dst=buf, n=cap, value=0)
        s.emit("vrow", [pl], op="add", dt="f32", dst=buf, a=buf, b=par + 4 * k, rows=cap, cols=1, axis="col")
        bufs.append(buf)
    return bufs + [par]


def _ort_add_chunk(s, q, dt, a, b, out, fa, fb, n, consts, deps):
    """ONNX Runtime's quantized add (its x86 AVX2 kernel), bit for bit: on raw model values
    (device value + 128 for uint8), c = fma(a, rA, fma(b, rB, F)), rounded to nearest even and
    saturated, back to the device's int8. Returns (last reader of the inputs, last op)."""
    ra, rb, ff, par = consts
    oa, ob, oc = q["offsets"]
    s.emit("vcast", deps, sdt=dt, ddt="f32", dst=fa, src=a, n=n)
    last_read = s.emit("vcast", [], sdt=dt, ddt="f32", dst=fb, src=b, n=n)
    for buf, off, slot in ((fa, oa, 3), (fb, ob, 4)):
        if off:    # device int8 -> the model's uint8 value, exact in float32
            s.emit("vrow", [], op="add", dt="f32", dst=buf, a=buf, b=par + 4 * slot, rows=n, cols=1, axis="col")
    s.emit("vfma", [], dt="f32", dst=fb, a=fb, b=rb, c=ff, n=n)
    s.emit("vfma", [], dt="f32", dst=fa, a=fa, b=ra, c=fb, n=n)
    last = s.emit("vquant", [], sdt="f32", odt=dt, dst=out, src=fa, n=n, scale=ONE, zp=-oc)
    qmax = q["qmax"]
    if q["lo"] > -qmax - 1 or q["hi"] < qmax:
        last = s.emit("vclamp", [], dt=dt, dst=out, src=out, n=n, lo=q["lo"], hi=q["hi"])
    return last_read, last


def lower_concat(ctx, node, inputs, y) -> None:
    """Channel concatenation in NHWC, interleaved on chip: each task takes a run of pixels, loads
    every input's run contiguously into NRAM, moves each into its channel slice of an output run
    there (one NRAM->NRAM segment per pixel: the Move-DMA's cheap segments) and stores the output
    run contiguously. Copying GDRAM to GDRAM instead costs one IO-DMA segment (~200 cycles) per
    pixel per input: 650k cycles for a 56x56 SqueezeNet concat where this takes a few thousand."""
    n, h, w, c_out = y.shape
    esz = 2 if node.q["dtype"] == "int16" else 1
    pixels = n * h * w
    per_pixel = 2 * c_out * esz                     # the input runs and the output run
    cap = max(1, (ctx.cfg.nram_bytes - 4096) // (DOUBLE * per_pixel))
    streams = []
    for p0, p1 in split(pixels, max(1, min(ctx.tasks, pixels // 64 or 1))):
        s = TaskStream()
        nram = Arena("nram", ctx.cfg.nram_bytes)
        bufs = [(nram.alloc(cap * c_out * esz, "inputs"), nram.alloc(cap * c_out * esz, "output"))
                for _ in range(DOUBLE)]
        stores = [None] * DOUBLE
        for i, a in enumerate(range(p0, p1, cap)):
            m = min(p1, a + cap) - a
            src, dst = bufs[i % DOUBLE]
            moves, off, at = [], 0, src
            for x in inputs:
                c = x.shape[3]
                ld = s.dma("g2n", at, x.addr + a * c * esz, m * c * esz, deps=[stores[i % DOUBLE]])
                moves.append(s.dma("n2n", dst + off * esz, at, c * esz, count=m, dstride=c_out * esz,
                                   sstride=c * esz, deps=[ld, stores[i % DOUBLE]]))
                off, at = off + c, at + m * c * esz
            stores[i % DOUBLE] = s.dma("n2g", y.addr + a * c_out * esz, dst, m * c_out * esz, deps=moves)
        streams.append(s.finish())
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
            s.emit("vdequant", [ld], sdt=dt, odt="f32", dst=f, src=raw, n=m * cols, scale=scale,
                   zp=node.q.get("in_zp", 0))
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
