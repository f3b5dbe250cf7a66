"""mlusim.compiler: lowers quantized conv/fc graphs to the mlusim ISA.

    from mlusim.compiler import compile_model
    c = compile_model("resnet18", batch=1, config="mlu270")
    c.program            # an mlusim Program: run it with mlusim.sim.simulate, save with mlusim.mlufile.save

    from mlusim.compiler import from_torch, from_onnx, compile_onnx
    g = from_torch(module, example_input)      # a torch.nn.Module, traced with torch.fx
    g = from_onnx("model.onnx")                # float, QDQ or QLinear* ONNX (needs the onnx extra)
    c = compile_graph(g)                       # or compile_onnx("model.onnx", calibrate="samples.npy")
"""
from __future__ import annotations


def __getattr__(name):
    if name in ("compile_graph", "compile_model", "compile_onnx", "Compiled"):
        from mlusim.compiler import driver

        return getattr(driver, name)
    if name in ("ZOO", "build"):
        from mlusim.compiler import zoo

        return getattr(zoo, name)
    if name == "from_torch":
        from mlusim.compiler.frontend_torch import from_torch

        return from_torch
    if name == "from_onnx":
        from mlusim.compiler.frontend_onnx import from_onnx

        return from_onnx
    raise AttributeError(f"module 'mlusim.compiler' has no attribute {name!r}")
