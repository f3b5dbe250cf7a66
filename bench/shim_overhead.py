#!/usr/bin/env python3
"""Per-op overhead of the torch_mlu shim and wall time of the seed's MNIST inference flow.

* eager ops on mlu tensors (computed on the held CPU tensors): microseconds per op vs the CPU;
* a quantized MNIST net on the MLU: layer-by-layer (one simulator program per node) vs fused
  (one program, torch.jit.trace) vs the CPU float model, wall ms per call, with simulated cycles.

Run: python bench/shim_overhead.py
"""
from __future__ import annotations

import os
import time
import warnings

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")   # before numpy loads, as mlusim/cli.py does

import torch

import torch_mlu  # noqa: F401
import torch_mlu.core.mlu_model as ct
import torch_mlu.core.mlu_quantize as mq
from torch_mlu import models


def per_op(n: int = 2000) -> None:
    a = torch.randn(64, 64)
    b = torch.randn(64, 64)
    am, bm = a.to(ct.mlu_device()), b.to(ct.mlu_device())
    for label, x, y in (("cpu", a, b), ("mlu", am, bm)):
        t0 = time.perf_counter()
        for _ in range(n):
            x = x + y
        dt = (time.perf_counter() - t0) / n
        print(f"elementwise add on {label}: {dt * 1e6:8.1f} us per op")


def mnist(calls: int = 5) -> None:
    torch.set_grad_enabled(False)
    x = torch.rand(1, 1, 28, 28)
    net = models.MnistNet().eval()
    q = mq.quantize_dynamic_mlu(net, {"mean": [0], "std": [1 / 255]}, dtype="int8", gen_quant=True)
    q(x)
    m, xm = q.to(ct.mlu_device()), x.to(ct.mlu_device())
    t0 = time.perf_counter()
    m(xm)
    first = time.perf_counter() - t0
    t0 = time.perf_counter()
    for _ in range(calls):
        m(xm)
    lbl = (time.perf_counter() - t0) / calls
    traced = torch.jit.trace(m, xm, check_trace=False)
    t0 = time.perf_counter()
    for _ in range(calls):
        traced(xm)
    fused = (time.perf_counter() - t0) / calls
    rep = ct.get_last_report()
    t0 = time.perf_counter()
    for _ in range(calls):
        net(x)
    cpu = (time.perf_counter() - t0) / calls
    print(f"MNIST batch 1: first MLU call (trace+compile) {first * 1e3:.1f} ms; layer-by-layer {lbl * 1e3:.1f} ms/call; "
          f"fused {fused * 1e3:.1f} ms/call; CPU float {cpu * 1e3:.2f} ms/call; simulated {rep.cycles:,.0f} cycles "
          f"= {rep.latency_ms:.3f} ms on {rep.cores} core(s)")


if __name__ == "__main__":
    warnings.simplefilter("ignore")
    per_op()
    mnist()
