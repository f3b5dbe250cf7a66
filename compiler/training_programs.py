"""Single-op programs for training on the simulated MLU (Cambricon's CNNL-style layer-by-layer path).

Each builder returns a Program whose float32 inputs and outputs are staged by the host in the
layout given by their tensor metadata (e.g. torch's NCHW held as NHWC on the device). Convolutions
and matmuls quantize their operands on the device (`vquant` by a power-of-two scale: Cambricon's
fix position) and run on the MAC array, the float result rounded once (`odt=f32, pos`); everything
else runs in float32 on the vector unit. Transposes the MAC array needs are done by `vtrans`.
"""
from __future__ import annotations

from math import ceil

import numpy as np

from mlusim.compiler.codegen import Arena, TaskStream
from mlusim.compiler.tiling import split
from mlusim.errors import ShimError
from mlusim.isa.fields import f32_bits
from mlusim.program import GDRAM_ALIGN, Kernel, Program, TensorDecl

QDT = {8: "i8", 16: "i16"}
QBYTES = {8: 1, 16: 2}
QMAX = {8: 127, 16: 32767}


class Builder:
    """GDRAM tensors and kernels of one training program."""

    def __init__(self, cfg, name: str):
        self.cfg, self.name = cfg, name
        self.tensors: list[TensorDecl] = []
        self.kernels: list[Kernel] = []
        self.top = 0

    def tensor(self, name, role, shape, dtype="f32", meta=None, data=None) -> int:
        t = TensorDecl(name, role, dtype, tuple(int(d) for d in shape), 0, data, meta or {})
        self.top = -(-self.top // GDRAM_ALIGN) * GDRAM_ALIGN
        t.addr = self.top
        self.top += t.nbytes
        self.tensors.append(t)
        return t.addr

    def kernel(self, name, streams, **meta) -> None:
        self.kernels.append(Kernel(name, "block", len(streams), streams, list(range(len(streams))),
                                   {"op": name, "layer": self.name, **meta}))

    def program(self) -> Program:
        return Program(self.kernels, self.tensors, self.top, meta={"training_op": self.name})

    @property
    def tasks(self) -> int:
        return self.cfg.chip.cores

    def nram(self) -> Arena:
        return Arena("nram", self.cfg.nram_bytes)


def _scale(pos: int) -> int:
    """vquant's multiplier 2**-pos as float32 bits (exact for |pos| < 127)."""
    return f32_bits(float(2.0 ** -pos))


def _fits(b: Builder, *sizes) -> None:
    if not b.nram().fits(*sizes):
        raise ShimError(f"{b.name}: operands of {sum(sizes):,} bytes do not fit NRAM ({b.cfg.nram_bytes:,}); "
                        f"use a smaller batch or image")


# ---- matmul ----------------------------------------------------------------------------------------
def _stage(s, base, rows, k, r0, nr, k0, kk, transposed, bufs, dt, pos, deps):
    """Load rows [r0, r0+nr) x reduction [k0, k0+kk) of an operand stored [rows, k] (or [k, rows] if
    transposed), quantize it, and leave it as [nr, kk] in bufs[1]; returns the last instruction."""
    f32, q, tmp = bufs
    if transposed:     # load the [kk, nr] block, quantize, transpose
        ld = s.dma("g2n", f32, base + (k0 * rows + r0) * 4, nr * 4, deps=deps, count=kk, dstride=nr * 4,
                   sstride=rows * 4)
        s.emit("vquant", [ld], sdt="f32", odt=dt, dst=tmp, src=f32, n=kk * nr, scale=_scale(pos))
        return s.emit("vtrans", [], dt=dt, dst=q, src=tmp, rows=kk, cols=nr)
    ld = s.dma("g2n", f32, base + (r0 * k + k0) * 4, kk * 4, deps=deps, count=nr, dstride=kk * 4, sstride=k * 4)
    return s.emit("vquant", [ld], sdt="f32", odt=dt, dst=q, src=f32, n=nr * kk, scale=_scale(pos))


def qmatmul(cfg, name, m, k, n, a_t: bool, b_t: bool, pos_a: int, pos_b: int, bits: int,
            bias: bool = False) -> Program:
    """C[m, n] = A[m, k] . B[n, k]^T. A is stored [m, k] (or [k, m] if a_t); B is stored [n, k] (or
    [k, n] if b_t). Inputs 'a', 'b' (and 'bias' [n]) are float32; output 'c' is float32. The
    reduction is cut into chunks of at most 2048 (each chunk's float32 result added in order); int16
    chunks sum exactly on the MAC array, int8 ones within its 32-bit accumulator."""
    b = Builder(cfg, name)
    A = b.tensor("a", "input", (k, m) if a_t else (m, k))
    B = b.tensor("b", "input", (k, n) if b_t else (n, k))
    Bias = b.tensor("bias", "input", (n,)) if bias else None
    C = b.tensor("c", "output", (m, n))
    q, dt = QBYTES[bits], QDT[bits]
    kc = min(k, 2048)
    nb = n
    while nb > 1 and (nb * kc * q > cfg.wram_bytes or nb * kc * (4 + 2 * q) > cfg.nram_bytes // 2):
        nb = ceil(nb / 2)
    mb = m
    while mb > 1 and not b.nram().fits(mb * kc * 4, mb * kc * q, mb * kc * q, nb * kc * 4, nb * kc * q, nb * kc * q,
                                       mb * nb * 4, mb * nb * 4, nb * 4):
        mb = ceil(mb / 2)
    _fits(b, mb * kc * 4, mb * kc * q, mb * kc * q, nb * kc * 4, nb * kc * q, nb * kc * q, mb * nb * 4, mb * nb * 4, nb * 4)
    tiles = [(i, j) for j in range(ceil(n / nb)) for i in range(ceil(m / mb))]
    streams = []
    for t0, t1 in split(len(tiles), min(len(tiles), b.tasks)):
        s, ar = TaskStream(), b.nram()
        fa, aq, at = ar.alloc(mb * kc * 4, "A f32"), ar.alloc(mb * kc * q, "A"), ar.alloc(mb * kc * q, "A^T")
        fb, bq, bt = ar.alloc(nb * kc * 4, "B f32"), ar.alloc(nb * kc * q, "B"), ar.alloc(nb * kc * q, "B^T")
        acc, part, bb = ar.alloc(mb * nb * 4, "C"), ar.alloc(mb * nb * 4, "chunk"), ar.alloc(nb * 4, "bias")
        prev = last = qa_op = qb_op = None
        for i, j in tiles[t0:t1]:
            m0, m1, n0, n1 = i * mb, min(m, (i + 1) * mb), j * nb, min(n, (j + 1) * nb)
            mm_, nn_ = m1 - m0, n1 - n0
            for c, k0 in enumerate(range(0, k, kc)):
                kk = min(k, k0 + kc) - k0
                qa_op = _stage(s, A, m, k, m0, mm_, k0, kk, a_t, (fa, aq, at), dt, pos_a, [prev, qa_op])
                qb_op = _stage(s, B, n, k, n0, nn_, k0, kk, b_t, (fb, bq, bt), dt, pos_b, [prev, qb_op])
                w = s.dma("n2w", 0, bq, nn_ * kk * q, deps=[qb_op, last])
                last = s.emit("matmul", [w, qa_op, prev], dt=dt, odt="f32", dst=acc if c == 0 else part, a=aq, b=0,
                              m=mm_, k=kk, n=nn_, pos=pos_a + pos_b)
                if c:
                    last = s.emit("vadd", [], dt="f32", dst=acc, a=acc, b=part, n=mm_ * nn_)
            if bias:
                lbias = s.dma("g2n", bb, Bias + n0 * 4, nn_ * 4, deps=[prev])
                last = s.emit("vrow", [lbias], op="add", dt="f32", dst=acc, a=acc, b=bb, rows=mm_, cols=nn_, axis="col")
            prev = s.dma("n2g", C + (m0 * n + n0) * 4, acc, nn_ * 4, deps=[last], count=mm_, dstride=n * 4,
                         sstride=nn_ * 4)
        streams.append(s.finish())
    b.kernel(name, streams, macs=m * k * n)
    return b.program()


# ---- convolution -----------------------------------------------------------------------------------
IMG = {"layout": "NHWC", "host_layout": "NCHW"}
WGT = {"layout": "OHWI", "host_layout": "OIHW"}


def conv_fwd(cfg, n, ci, h, w, co, kh, kw, pad, pos_x, pos_w, bits, bias: bool) -> Program:
    """y = conv(x, w) + b, stride 1 (MNIST-style nets), operands quantized on the device."""
    b = Builder(cfg, "conv_fwd")
    X = b.tensor("x", "input", (n, h, w, ci), meta=IMG)
    W = b.tensor("w", "input", (co, kh, kw, ci), meta=WGT)
    Bs = b.tensor("bias", "input", (co,)) if bias else None
    ho, wo = h + 2 * pad - kh + 1, w + 2 * pad - kw + 1
    Y = b.tensor("y", "output", (n, ho, wo, co), meta=IMG)
    q = QBYTES[bits]
    wsz = co * kh * kw * ci
    _fits(b, h * w * ci * 4, h * w * ci * q, ho * wo * co * 4, wsz * 4, wsz * q, co * 4)
    streams = []
    for i0, i1 in split(n, min(n, b.tasks)):
        s, ar = TaskStream(), b.nram()
        fx, xq, y = ar.alloc(h * w * ci * 4, "x"), ar.alloc(h * w * ci * q, "xq"), ar.alloc(ho * wo * co * 4, "y")
        fw, wq, bb = ar.alloc(wsz * 4, "w"), ar.alloc(wsz * q, "wq"), ar.alloc(co * 4, "bias")
        lw = s.dma("g2n", fw, W, wsz * 4)
        qw = s.emit("vquant", [lw], sdt="f32", odt=QDT[bits], dst=wq, src=fw, n=wsz, scale=_scale(pos_w))
        ww = s.dma("n2w", 0, wq, wsz * q, deps=[qw])
        lb = s.dma("g2n", bb, Bs, co * 4) if bias else None
        prev_conv, prev_st = None, None
        for img in range(i0, i1):
            lx = s.dma("g2n", fx, X + img * h * w * ci * 4, h * w * ci * 4, deps=[prev_conv])
            qx = s.emit("vquant", [lx], sdt="f32", odt=QDT[bits], dst=xq, src=fx, n=h * w * ci, scale=_scale(pos_x))
            prev_conv = s.emit("conv", [qx, ww, prev_st], dt=QDT[bits], odt="f32", dst=y, src=xq, wgt=0, n=1, hi=h,
                               wi=w, ci=ci, co=co, kh=kh, kw=kw, pt=pad, pb=pad, pl=pad, pr=pad, pos=pos_x + pos_w)
            last = s.emit("vrow", [lb], op="add", dt="f32", dst=y, a=y, b=bb, rows=ho * wo, cols=co, axis="col") \
                if bias else prev_conv
            prev_st = s.dma("n2g", Y + img * ho * wo * co * 4, y, ho * wo * co * 4, deps=[last])
        streams.append(s.finish())
    b.kernel("conv_fwd", streams, macs=n * ho * wo * co * kh * kw * ci)
    return b.program()


def conv_bwd_input(cfg, n, ci, h, w, co, kh, kw, pad, pos_g, pos_w, bits) -> Program:
    """dx = conv(pad(dy, k-1-p), w flipped and transposed): the transposed convolution, stride 1."""
    b = Builder(cfg, "conv_bwd_input")
    ho, wo = h + 2 * pad - kh + 1, w + 2 * pad - kw + 1
    G = b.tensor("dy", "input", (n, ho, wo, co), meta=IMG)
    W = b.tensor("w", "input", (co, kh, kw, ci), meta=WGT)
    DX = b.tensor("dx", "output", (n, h, w, ci), meta=IMG)
    q, wsz, qpad = QBYTES[bits], co * kh * kw * ci, kh - 1 - pad
    _fits(b, ho * wo * co * 4, h * w * ci * 4, wsz * 4, wsz * q)     # dy and w are quantized in place
    streams = []
    for i0, i1 in split(n, min(n, b.tasks)):
        s, ar = TaskStream(), b.nram()
        fg, dx = ar.alloc(ho * wo * co * 4, "dy"), ar.alloc(h * w * ci * 4, "dx")
        fw, wt = ar.alloc(wsz * 4, "w"), ar.alloc(wsz * q, "w^T")
        gq, wq = fg, fw
        lw = s.dma("g2n", fw, W, wsz * 4)
        s.emit("vquant", [lw], sdt="f32", odt=QDT[bits], dst=wq, src=fw, n=wsz, scale=_scale(pos_w))
        tr = s.emit("vtrans", [], dt=QDT[bits], dst=wt, src=wq, rows=co, cols=kh * kw * ci)   # [(i, j, ci), co]
        flips = []
        for i in range(kh):            # W'[ci, i, j, co] = W[co, kh-1-i, kw-1-j, ci]
            for j in range(kw):
                src = wt + ((kh - 1 - i) * kw + (kw - 1 - j)) * ci * co * q
                flips.append(s.dma("n2w", (i * kw + j) * co * q, src, co * q, deps=[tr], count=ci,
                                   dstride=kh * kw * co * q, sstride=co * q))
        prev_conv, prev_st = None, None
        for img in range(i0, i1):
            lg = s.dma("g2n", fg, G + img * ho * wo * co * 4, ho * wo * co * 4, deps=[prev_conv])
            qg = s.emit("vquant", [lg], sdt="f32", odt=QDT[bits], dst=gq, src=fg, n=ho * wo * co, scale=_scale(pos_g))
            prev_conv = s.emit("conv", [qg, prev_st] + flips, dt=QDT[bits], odt="f32", dst=dx, src=gq, wgt=0, n=1, hi=ho,
                               wi=wo, ci=co, co=ci, kh=kh, kw=kw, pt=qpad, pb=qpad, pl=qpad, pr=qpad, pos=pos_g + pos_w)
            prev_st = s.dma("n2g", DX + img * h * w * ci * 4, dx, h * w * ci * 4, deps=[prev_conv])
        streams.append(s.finish())
    b.kernel("conv_bwd_input", streams, macs=n * h * w * ci * kh * kw * co)
    return b.program()


def conv_bwd_weight(cfg, n, ci, h, w, co, kh, kw, pad, pos_x, pos_g, bits) -> Program:
    """dw[co, i, j, ci] = sum over images and pixels of dy[p, co] * x[p + (i, j), ci]: per tap and
    block of output rows, one matmul of dy^T [co, rows*wo] by the shifted window^T [ci, rows*wo];
    tasks split the images and a second kernel adds their partial sums in task order."""
    b = Builder(cfg, "conv_bwd_weight")
    ho, wo = h + 2 * pad - kh + 1, w + 2 * pad - kw + 1
    hp, wp, q = h + 2 * pad, w + 2 * pad, QBYTES[bits]
    X = b.tensor("x", "input", (n, h, w, ci), meta=IMG)
    G = b.tensor("dy", "input", (n, ho, wo, co), meta=IMG)
    tasks = min(n, b.tasks)
    PART = b.tensor("partials", "scratch", (tasks, kh * kw * co * ci))
    DW = b.tensor("dw", "output", (co, kh, kw, ci), meta=WGT)

    def sizes(r):     # x staging (also the windows once x is placed), padded x, dy block, dy^T, dw, tap
        pr = r * wo
        return (max(h * w * ci * 4, 2 * pr * ci * q + 64), hp * wp * ci * q, pr * co * 4, pr * co * q,
                kh * kw * co * ci * 4, co * ci * 4)

    rows = ho
    while rows > 1 and not b.nram().fits(*sizes(rows)):
        rows = ceil(rows / 2)
    _fits(b, *sizes(rows))
    streams = []
    for t, (i0, i1) in enumerate(split(n, tasks)):
        s, ar = TaskStream(), b.nram()
        sz = sizes(rows)
        fx, xp, fg, gt = (ar.alloc(sz[0], "x / windows"), ar.alloc(sz[1], "x padded"), ar.alloc(sz[2], "dy rows"),
                          ar.alloc(sz[3], "dy^T"))
        acc, part = ar.alloc(sz[4], "dw"), ar.alloc(sz[5], "tap")
        s.emit("vset", [], dt="f32", dst=acc, n=kh * kw * co * ci, value=0)
        zero = s.emit("vset", [], dt=QDT[bits], dst=xp, n=hp * wp * ci, value=0)
        prev = None
        for img in range(i0, i1):
            lx = s.dma("g2n", fx, X + img * h * w * ci * 4, h * w * ci * 4, deps=[prev])
            qx = s.emit("vquant", [lx], sdt="f32", odt=QDT[bits], dst=fx, src=fx, n=h * w * ci, scale=_scale(pos_x))
            place = s.dma("n2n", xp + (pad * wp + pad) * ci * q, fx, w * ci * q, deps=[qx, zero], count=h,
                          dstride=wp * ci * q, sstride=w * ci * q)
            for r0 in range(0, ho, rows):
                r = min(ho, r0 + rows) - r0
                pr = r * wo
                win, wint = fx, fx + -(-pr * ci * q // 64) * 64
                lg = s.dma("g2n", fg, G + (img * ho + r0) * wo * co * 4, pr * co * 4, deps=[prev])
                s.emit("vquant", [lg], sdt="f32", odt=QDT[bits], dst=fg, src=fg, n=pr * co, scale=_scale(pos_g))
                tg = s.emit("vtrans", [], dt=QDT[bits], dst=gt, src=fg, rows=pr, cols=co)          # [co, pr]
                for i in range(kh):
                    for j in range(kw):
                        cut = s.dma("n2n", win, xp + ((r0 + i) * wp + j) * ci * q, wo * ci * q, deps=[place, prev],
                                    count=r, dstride=wo * ci * q, sstride=wp * ci * q)
                        tw = s.emit("vtrans", [cut], dt=QDT[bits], dst=wint, src=win, rows=pr, cols=ci)   # [ci, pr]
                        ldw = s.dma("n2w", 0, wint, pr * ci * q, deps=[tw, prev])
                        mm = s.emit("matmul", [ldw, tg], dt=QDT[bits], odt="f32", dst=part, a=gt, b=0, m=co, k=pr,
                                    n=ci, pos=pos_x + pos_g)
                        tap = acc + (i * kw + j) * co * ci * 4
                        prev = s.emit("vadd", [mm], dt="f32", dst=tap, a=tap, b=part, n=co * ci)
        s.dma("n2g", PART + t * kh * kw * co * ci * 4, acc, kh * kw * co * ci * 4, deps=[prev])
        streams.append(s.finish())
    b.kernel("conv_bwd_weight", streams, macs=n * ho * wo * co * kh * kw * ci)
    # reduce the partials (in task order) and reorder taps [kh, kw, co, ci] -> [co, kh, kw, ci]
    s, ar = TaskStream(), b.nram()
    tot, one = ar.alloc(kh * kw * co * ci * 4, "sum"), ar.alloc(kh * kw * co * ci * 4, "partial")
    last = s.dma("g2n", tot, PART, kh * kw * co * ci * 4)
    for t in range(1, tasks):
        ld = s.dma("g2n", one, PART + t * kh * kw * co * ci * 4, kh * kw * co * ci * 4, deps=[last])
        last = s.emit("vadd", [ld], dt="f32", dst=tot, a=tot, b=one, n=kh * kw * co * ci)
    for i in range(kh * kw):
        s.dma("n2g", DW + i * ci * 4, tot + i * co * ci * 4, ci * 4, deps=[last], count=co, dstride=kh * kw * ci * 4,
              sstride=ci * 4)
    b.kernel("conv_bwd_weight_reduce", [s.finish()])
    return b.program()


# ---- vector-unit ops --------------------------------------------------------------------------------
def eltwise(cfg, name: str, n: int, inputs: list[str], outputs: list[str], body, scalars=None) -> Program:
    """A float32 elementwise program over n elements: per chunk load `inputs`, let
    body(s, buf, count, deps, sc) emit vector ops writing the `outputs` buffers (returning the last
    op), store. `scalars` (floats) sit in NRAM at sc[i] for vrow broadcasts (rows=count, cols=1)."""
    b = Builder(cfg, name)
    gin = {k: b.tensor(k, "input", (n,)) for k in inputs}
    gout = {k: b.tensor(k, "output", (n,)) for k in outputs}
    S = b.tensor("scalars", "const", (len(scalars),), data=np.array(scalars, np.float32)) if scalars else None
    per = 4 * (len(inputs) + len(outputs) + 1)
    cap = max(64, (cfg.nram_bytes - 4096) // per // 64 * 64)
    streams = []
    for a0, a1 in split(n, max(1, min(b.tasks, ceil(n / 4096)))):
        s, ar = TaskStream(), b.nram()
        size = min(cap, a1 - a0)
        buf = {k: ar.alloc(size * 4, k) for k in inputs + outputs + ["tmp"]}
        sc = None
        if scalars:
            base = ar.alloc(len(scalars) * 4, "scalars")
            s.dma("g2n", base, S, len(scalars) * 4)
            sc = [base + 4 * i for i in range(len(scalars))]
        prev = None
        for c0 in range(a0, a1, size):
            cnt = min(a1, c0 + size) - c0
            loads = [s.dma("g2n", buf[k], gin[k] + c0 * 4, cnt * 4, deps=[prev]) for k in inputs]
            last = body(s, buf, cnt, loads + [prev], sc)
            stores = [s.dma("n2g", gout[k] + c0 * 4, buf[k], cnt * 4, deps=[last]) for k in outputs]
            prev = stores[-1] if stores else last
        streams.append(s.finish())
    b.kernel(name, streams)
    return b.program()


def rows(cfg, name: str, r: int, c: int, inputs: dict[str, tuple], outputs: dict[str, tuple], body, scalars=None) -> Program:
    """A single-task float32 program over whole small matrices (softmax rows, losses, column sums):
    every input and output is loaded/stored whole; body(s, buf, deps, sc) emits the vector ops."""
    b = Builder(cfg, name)
    gin = {k: b.tensor(k, "input", shp) for k, shp in inputs.items()}
    gout = {k: b.tensor(k, "output", shp) for k, shp in outputs.items()}
    S = b.tensor("scalars", "const", (len(scalars),), data=np.array(scalars, np.float32)) if scalars else None
    sizes = {k: int(np.prod(v)) * 4 for k, v in {**inputs, **outputs}.items()}
    scratch = [r * c * 4, r * c * 4, max(r, c) * 4, max(r, c) * 4]
    _fits(b, *sizes.values(), *scratch, 64)
    s, ar = TaskStream(), b.nram()
    buf = {k: ar.alloc(v, k) for k, v in sizes.items()}
    for i, sz in enumerate(scratch):
        buf[f"t{i}"] = ar.alloc(sz, f"scratch {i}")
    sc = None
    if scalars:
        base = ar.alloc(len(scalars) * 4, "scalars")
        s.dma("g2n", base, S, len(scalars) * 4)
        sc = [base + 4 * i for i in range(len(scalars))]
    loads = [s.dma("g2n", buf[k], gin[k], sizes[k]) for k in inputs]
    last = body(s, buf, loads, sc)
    for k in outputs:
        s.dma("n2g", gout[k], buf[k], sizes[k], deps=[last])
    b.kernel(name, [s.finish()])
    return b.program()


def channel_sums(cfg, n, c, hw) -> Program:
    """s[c] = sum of g[n, c, :] over n and the last axis: per image row sums added in image order
    (tasks split the images; a second kernel adds their partials in task order)."""
    b = Builder(cfg, "channel_sums")
    G = b.tensor("g", "input", (n, c, hw))
    tasks = min(n, b.tasks)
    PART = b.tensor("partials", "scratch", (tasks, c))
    S = b.tensor("s", "output", (c,))
    _fits(b, c * hw * 4, c * 4, c * 4)
    streams = []
    for t, (i0, i1) in enumerate(split(n, tasks)):
        s, ar = TaskStream(), b.nram()
        bg, acc, one = ar.alloc(c * hw * 4, "g"), ar.alloc(c * 4, "sum"), ar.alloc(c * 4, "row sums")
        prev = None
        for img in range(i0, i1):
            lg = s.dma("g2n", bg, G + img * c * hw * 4, c * hw * 4, deps=[prev])
            r = s.emit("vreduce", [lg], mode="sum", dt="f32", dst=acc if img == i0 else one, src=bg, rows=c, cols=hw)
            prev = r if img == i0 else s.emit("vadd", [r], dt="f32", dst=acc, a=acc, b=one, n=c)
        s.dma("n2g", PART + t * c * 4, acc, c * 4, deps=[prev])
        streams.append(s.finish())
    b.kernel("channel_sums", streams)
    s, ar = TaskStream(), b.nram()
    tot, one = ar.alloc(tasks * c * 4, "partials"), ar.alloc(c * 4, "sum")
    ld = s.dma("g2n", tot, PART, tasks * c * 4)
    t1 = s.emit("vtrans", [ld], dt="f32", dst=tot, src=tot, rows=tasks, cols=c)      # [c, tasks]
    tr = s.emit("vreduce", [t1], mode="sum", dt="f32", dst=one, src=tot, rows=c, cols=tasks)
    s.dma("n2g", S, one, c * 4, deps=[tr])
    b.kernel("channel_sums_reduce", [s.finish()])
    return b.program()


def maxpool_fwd(cfg, n, c, h, w, k, stride, pad) -> Program:
    b = Builder(cfg, "maxpool_fwd")
    ho, wo = (h + 2 * pad - k) // stride + 1, (w + 2 * pad - k) // stride + 1
    X = b.tensor("x", "input", (n, h, w, c), meta=IMG)
    Y = b.tensor("y", "output", (n, ho, wo, c), meta=IMG)
    _fits(b, h * w * c * 4, ho * wo * c * 4)
    streams = []
    for i0, i1 in split(n, min(n, b.tasks)):
        s, ar = TaskStream(), b.nram()
        bx, by = ar.alloc(h * w * c * 4, "x"), ar.alloc(ho * wo * c * 4, "y")
        prev = None
        for img in range(i0, i1):
            lx = s.dma("g2n", bx, X + img * h * w * c * 4, h * w * c * 4, deps=[prev])
            p = s.emit("vpool", [lx, prev], mode="max", dt="f32", dst=by, src=bx, n=1, hi=h, wi=w, c=c, kh=k, kw=k,
                       sh=stride, sw=stride, pt=pad, pb=pad, pl=pad, pr=pad)
            prev = s.dma("n2g", Y + img * ho * wo * c * 4, by, ho * wo * c * 4, deps=[p])
        streams.append(s.finish())
    b.kernel("maxpool_fwd", streams)
    return b.program()


def maxpool_bwd(cfg, n, c, h, w, k, stride, pad) -> Program:
    b = Builder(cfg, "maxpool_bwd")
    ho, wo = (h + 2 * pad - k) // stride + 1, (w + 2 * pad - k) // stride + 1
    X = b.tensor("x", "input", (n, h, w, c), meta=IMG)
    G = b.tensor("dy", "input", (n, ho, wo, c), meta=IMG)
    DX = b.tensor("dx", "output", (n, h, w, c), meta=IMG)
    _fits(b, h * w * c * 4, ho * wo * c * 4, h * w * c * 4)
    streams = []
    for i0, i1 in split(n, min(n, b.tasks)):
        s, ar = TaskStream(), b.nram()
        bx, bg, bd = ar.alloc(h * w * c * 4, "x"), ar.alloc(ho * wo * c * 4, "dy"), ar.alloc(h * w * c * 4, "dx")
        prev = None
        for img in range(i0, i1):
            lx = s.dma("g2n", bx, X + img * h * w * c * 4, h * w * c * 4, deps=[prev])
            lg = s.dma("g2n", bg, G + img * ho * wo * c * 4, ho * wo * c * 4, deps=[prev])
            p = s.emit("vpoolbp", [lx, lg, prev], dt="f32", dst=bd, src=bx, grad=bg, n=1, hi=h, wi=w, c=c, kh=k, kw=k,
                       sh=stride, sw=stride, pt=pad, pb=pad, pl=pad, pr=pad)
            prev = s.dma("n2g", DX + img * h * w * c * 4, bd, h * w * c * 4, deps=[p])
        streams.append(s.finish())
    b.kernel("maxpool_bwd", streams)
    return b.program()
