"""mlusim.compiler: lowers quantized conv/fc graphs to the mlusim ISA.

    from mlusim.compiler import compile_model
    c = compile_model("resnet18", batch=1, config="mlu270")
    c.program            # an mlusim Program: run it with mlusim.sim.simulate, save with mlusim.mlufile.save
"""
from __future__ import annotations


def __getattr__(name):
    if name in ("compile_graph", "compile_model", "Compiled"):
        from mlusim.compiler import driver

        return getattr(driver, name)
    if name in ("ZOO", "build"):
        from mlusim.compiler import zoo

        return getattr(zoo, name)
    raise AttributeError(f"module 'mlusim.compiler' has no attribute {name!r}")
