"""A ResNet-50-like slice, batch 4, written directly in the mlusim ISA (until the compiler's zoo
models land): the stem, the first bottleneck's convolutions, a stride-2 stage transition with its
projection shortcut, the residual add, and the classifier.

    layer   op            input -> output (per image)       what it stresses
    conv1   conv3x3       56x56x3   -> 56x56x64             3 of 64 MAC input lanes used
    conv2a  conv3x3       56x56x64  -> 56x56x64             MAC array
    conv2b  conv1x1       56x56x64  -> 56x56x256            store DMA (4x the bytes out)
    conv3a  conv3x3/s2    56x56x256 -> 28x28x128            MAC array, 288 KiB of weights per task
    conv3b  conv1x1       28x28x128 -> 28x28x512            store DMA
    proj    conv1x1/s2    56x56x256 -> 28x28x512            load DMA (strided rows)
    add     vadd          2 x 28x28x512 -> 28x28x512        DRAM
    fc      matmul        2048 -> 1000                      DRAM (weights streamed once per task)

Activations are int8 NHWC with one zero row above and below each image, so a 3x3 convolution's
row band reads its halo without special cases; width padding is the conv's own. Each task computes
`nsub` bands of `r` output rows of one image, double-buffered: the load queue fetches band j+1
while the MAC array convolves band j and the store queue writes band j-1 (tokens as in TVM's VTA).
Every task reloads its layer's weights into its core's WRAM, as BLOCK tasks do. The classifier
reads a pooled-feature tensor (global pooling is not modelled).
"""
from __future__ import annotations

import numpy as np

from mlusim.isa.encoding import Instr
from mlusim.program import Kernel, Program, TensorDecl, allocate

I = Instr.make
BATCH = 4


def _align(n: int, a: int = 64) -> int:
    return -(-n // a) * a


def conv(name, op, x, y, w, p, B, H, W, ci, co, k, s, r, nsub) -> Kernel:
    """Kernel: y[:, 1:Ho+1] = requant(conv(x)) with `r` output rows per band, `nsub` bands per task."""
    Ho, Wo = H // s, W // s
    bands = Ho // (r * nsub)
    assert bands * r * nsub == Ho, (name, Ho, r, nsub)
    r_in = (r - 1) * s + k
    in_b, o32, o8 = r_in * W * ci, r * Wo * co * 4, r * Wo * co
    IN = [0, _align(in_b)]
    OUT32 = 2 * _align(in_b)
    OUT8 = [OUT32 + _align(o32), OUT32 + _align(o32) + _align(o8)]
    PAR = OUT8[1] + _align(o8)
    img_in, img_out = (H + 2) * W * ci, (Ho + 2) * Wo * co
    streams = []
    for t in range(B * bands):
        b, band = divmod(t, bands)
        s_ = [I("dma", dir="g2w", dst=0, src=w.addr, size=w.nbytes),
              I("dma", dir="g2n", dst=PAR, src=p.addr, size=p.nbytes)]
        for j in range(nsub + 1):
            if j < nsub:
                row0 = (band * nsub + j) * r                     # first output row of the band
                src = x.addr + b * img_in + (row0 * s + 1 - k // 2) * W * ci
                s_.append(I("dma", dir="g2n", dst=IN[j % 2], src=src, size=in_b, sig="cp",
                            wait="cp" if j >= 2 else "none"))
            if j >= 1:
                jj = j - 1
                more = jj + 2 < nsub
                s_.append(I("conv", dt="i8", odt="i32", dst=OUT32, src=IN[jj % 2], wgt=0, n=1, hi=r_in, wi=W,
                            ci=ci, co=co, kh=k, kw=k, sh=s, sw=s, pl=k // 2, pr=k // 2, wait="ld",
                            sig="ld" if more else "none"))
                s_.append(I("vrequant", odt="i8", dst=OUT8[jj % 2], src=OUT32, params=PAR, c=co, n=o8, lo=-128,
                            hi=127, wait="st" if jj >= 2 else "none", sig="st"))
                row0 = (band * nsub + jj) * r
                s_.append(I("dma", dir="n2g", dst=y.addr + b * img_out + (row0 + 1) * Wo * co, src=OUT8[jj % 2],
                            size=o8, wait="cp", sig="cp" if more else "none"))
        streams.append(s_)
    return Kernel(name, "block", len(streams), streams, list(range(len(streams))), {"layer": name, "op": op})


def add(name, a, b_, z, B, H, W, C, r, nsub) -> Kernel:
    """Kernel: z = a + b (saturating int8), row bands double-buffered like conv."""
    bands = H // (r * nsub)
    n = r * W * C
    A, Bf, O = [0, _align(n)], [2 * _align(n), 3 * _align(n)], [4 * _align(n), 5 * _align(n)]
    img = (H + 2) * W * C
    streams = []
    for t in range(B * bands):
        im, band = divmod(t, bands)
        s_ = []
        for j in range(nsub + 1):
            if j < nsub:
                off = im * img + ((band * nsub + j) * r + 1) * W * C
                s_.append(I("dma", dir="g2n", dst=A[j % 2], src=a.addr + off, size=n, wait="cp" if j >= 2 else "none"))
                s_.append(I("dma", dir="g2n", dst=Bf[j % 2], src=b_.addr + off, size=n, sig="cp"))
            if j >= 1:
                jj = j - 1
                more = jj + 2 < nsub
                s_.append(I("vadd", dt="i8", dst=O[jj % 2], a=A[jj % 2], b=Bf[jj % 2], n=n,
                            wait="ld+st" if jj >= 2 else "ld", sig="st+ld" if more else "st"))
                off = im * img + ((band * nsub + jj) * r + 1) * W * C
                s_.append(I("dma", dir="n2g", dst=z.addr + off, src=O[jj % 2], size=n, wait="cp",
                            sig="cp" if more else "none"))
        streams.append(s_)
    return Kernel(name, "block", len(streams), streams, list(range(len(streams))), {"layer": name, "op": "add"})


def fc(name, x, w, y, B, K, N, tasks) -> Kernel:
    """Kernel: y[B, N] = x[B, K] . w[N, K]^T, output columns split over tasks."""
    n = N // tasks
    streams = []
    for t in range(tasks):
        streams.append([
            I("dma", dir="g2n", dst=0, src=x.addr, size=x.nbytes),
            I("dma", dir="g2w", dst=0, src=w.addr + t * n * K, size=n * K, sig="cp"),
            I("matmul", dt="i8", dst=_align(x.nbytes), a=0, b=0, m=B, k=K, n=n, wait="ld", sig="st"),
            I("dma", dir="n2g", dst=y.addr + t * n * 4, src=_align(x.nbytes), size=n * 4, count=B,
              dstride=N * 4, sstride=n * 4, wait="cp"),
        ])
    return Kernel(name, "block", tasks, streams, list(range(tasks)), {"layer": name, "op": "fc"})


def build(batch: int = BATCH, seed: int = 0) -> Program:
    """The program; weights are seeded random int8, requantization shifts products back to int8."""
    rng = np.random.default_rng(seed)
    B = batch

    def act(name, h, w, c, role="scratch"):
        return TensorDecl(name, role, "i8", (B, h + 2, w, c), -1)

    def weights(name, co, k, ci):
        t = TensorDecl(f"{name}.w", "const", "i8", (co, k, k, ci), -1)
        t.data = rng.integers(-8, 8, t.shape, dtype=np.int8)
        p = TensorDecl(f"{name}.q", "const", "i32", (co, 3), -1)
        p.data = np.tile(np.array([0, 1, 8], np.int32), (co, 1))   # bias 0, x1, >> 8
        return t, p

    image = act("image", 56, 56, 3, "input")
    a1, a2, a3 = act("conv1.out", 56, 56, 64), act("conv2a.out", 56, 56, 64), act("conv2b.out", 56, 56, 256)
    a4, a5, a6 = act("conv3a.out", 28, 28, 128), act("conv3b.out", 28, 28, 512), act("proj.out", 28, 28, 512)
    a7 = act("add.out", 28, 28, 512, "output")
    feats = TensorDecl("pooled", "scratch", "i8", (B, 2048), -1)
    fcw = TensorDecl("fc.w", "const", "i8", (1000, 2048), -1)
    fcw.data = rng.integers(-8, 8, fcw.shape, dtype=np.int8)
    logits = TensorDecl("logits", "output", "i32", (B, 1000), -1)
    layers = [("conv1", "conv3x3", image, a1, 3, 64, 3, 1, 56, 4, 2), ("conv2a", "conv3x3", a1, a2, 64, 64, 3, 1, 56, 4, 2),
              ("conv2b", "conv1x1", a2, a3, 64, 256, 1, 1, 56, 4, 2), ("conv3a", "conv3x3/s2", a3, a4, 256, 128, 3, 2, 56, 2, 2),
              ("conv3b", "conv1x1", a4, a5, 128, 512, 1, 1, 28, 2, 2), ("proj", "conv1x1/s2", a3, a6, 256, 512, 1, 2, 56, 2, 2)]
    tensors = [image, a1, a2, a3, a4, a5, a6, a7, feats, fcw, logits]
    wts = {}
    for name, _op, _x, _y, ci, co, k, *_ in layers:
        wts[name] = weights(name, co, k, ci)
        tensors += wts[name]
    allocate(tensors)
    kernels = [conv(name, op, x, y, *wts[name], B, hw, hw, ci, co, k, s, r, nsub)
               for name, op, x, y, ci, co, k, s, hw, r, nsub in layers]
    kernels.append(add("add", a5, a6, a7, B, 28, 28, 512, 4, 2))
    kernels.append(fc("fc", feats, fcw, logits, B, 2048, 1000, 8))
    return Program(kernels, tensors, meta={"name": "convnet-demo", "batch": B,
                                           "description": "ResNet-50-like slice, batch 4, hand-written ISA"})


if __name__ == "__main__":
    import sys

    from mlusim import mlufile

    out = sys.argv[1] if len(sys.argv) > 1 else "convnet.mlu"
    prog = build()
    mlufile.save(prog, out)
    print(f"wrote {out}: {len(prog.kernels)} kernels, {prog.instruction_count} instructions")
