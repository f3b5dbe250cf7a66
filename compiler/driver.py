"""The compiler pipeline, top to bottom:

    graph -> optimize (passes) -> calibrate (float reference) -> quantize -> lower -> Program

`compile_graph` is the whole thing; `compile_model` starts from a zoo name.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from mlusim.compiler import passes, quant, zoo
from mlusim.compiler.graph import Graph
from mlusim.compiler.lower import lower
from mlusim.program import Program


@dataclass
class Compiled:
    program: Program
    graph: Graph                     # optimized, quantized graph (float params kept for the float reference)
    absmax: dict[str, float] = field(default_factory=dict)
    seconds: float = 0.0


def calibration_samples(g: Graph, count: int = 2, seed: int = 0) -> list[np.ndarray]:
    """Deterministic stand-in data: images uniform in [0, 1] (the zoo has no data set)."""
    shape = (min(count, g.input.shape[0]),) + tuple(g.input.shape[1:])
    rng = np.random.default_rng(seed + 7919)
    return [rng.uniform(0.0, 1.0, shape).astype(np.float32)]


def compile_graph(g: Graph, config=None, samples: list[np.ndarray] | None = None, dtype: str = "int8",
                  per_channel: bool = True, fuse: bool = True, use_avg: bool = False,
                  mixed: dict[str, str] | None = None, mean=None, std=None, tasks: int | None = None) -> Compiled:
    from mlusim.config import HardwareConfig, load_config

    t0 = time.perf_counter()
    cfg = config if isinstance(config, HardwareConfig) else load_config(config)
    g = passes.optimize(g, fuse=fuse)
    if mean is not None or std is not None:
        quant.firstconv(g, mean if mean is not None else [0.0], std if std is not None else [1.0])
    absmax = quant.calibrate(g, samples or calibration_samples(g), use_avg=use_avg)
    quant.quantize(g, absmax, dtype=dtype, per_channel=per_channel, mixed=mixed)
    prog = lower(g, cfg, tasks)
    inp, out = prog.tensor("input"), prog.tensor("output")
    wbytes = quant.weight_bytes(g)
    prog.config = cfg.to_dict()
    prog.meta.update({k: v for k, v in g.meta.items() if isinstance(v, (int, float, str, bool))})
    prog.meta.update(macs=g.macs(), weight_bytes=wbytes, parameters=g.parameter_count(), quant_dtype=dtype,
                     per_channel=per_channel, target=cfg.name,
                     min_traffic_bytes=wbytes + inp.nbytes // 4 + out.nbytes,
                     fused=", ".join(f"{n.name}: {'+'.join([n.op] + n.fused)}" for n in g.nodes if n.fused))
    prog.meta.setdefault("batch", g.input.shape[0])
    return Compiled(prog, g, absmax, time.perf_counter() - t0)


def compile_model(name: str, batch: int = 1, resolution: int | None = None, config=None, seed: int = 0,
                  **kw) -> Compiled:
    return compile_graph(zoo.build(name, batch, resolution, seed), config, **kw)
