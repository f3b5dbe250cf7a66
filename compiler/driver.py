"""The compiler pipeline, top to bottom:

    graph -> optimize (passes) -> calibrate (float reference) -> quantize -> lower -> Program

`compile_graph` is the whole thing; `compile_model` starts from a zoo name, `compile_onnx` from an
ONNX file. Calibration only covers nodes whose quantization the model does not fix itself (an
imported QDQ model usually fixes all of them and is never calibrated).
"""
from __future__ import annotations

import math
import sys
import threading
import time
from dataclasses import dataclass, field, replace
from typing import Callable, TypeVar

import numpy as np

from mlusim.compiler import passes, quant, zoo
from mlusim.compiler.graph import Graph
from mlusim.compiler.lower import lower
from mlusim.compiler.options import FusionOptions
from mlusim.compiler.segments import Segment, plan_segments
from mlusim.compiler.weights import Placeholder, SeededWeight
from mlusim.errors import CompileError
from mlusim.program import Program


@dataclass
class Compiled:
    program: Program | None          # None only for a graph with host nodes compiled with host_ops=True
    graph: Graph                     # optimized, quantized graph (float params kept for the float reference,
                                     # seeded zoo weights as their recipe: weights.SeededWeight)
    absmax: dict[str, float] = field(default_factory=dict)
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)     # warnings for the user (the CLI prints them)


def calibration_samples(g: Graph, count: int = 2, seed: int = 0) -> list[np.ndarray]:
    """Deterministic stand-in data: images uniform in [0, 1] (the zoo has no data set)."""
    shape = (min(count, g.input.shape[0]),) + tuple(g.input.shape[1:])
    rng = np.random.default_rng(seed + 7919)
    return [rng.uniform(0.0, 1.0, shape).astype(np.float32)]


def host_bytes_lower_bound(g: Graph, calibrating: bool = True) -> int:
    """Host memory compiling `g` needs at least: every activation once at one byte (the program's
    GDRAM image), the float activations of the calibration images (up to two) if it is calibrated,
    and the weights. Checked against the memory budget before anything batch- or resolution-sized
    is allocated."""
    acts = sum(math.prod(n.shape) for n in g.nodes)
    per_image = acts // max(1, g.input.shape[0])
    return acts + (4 * min(2, g.input.shape[0]) * per_image if calibrating else 0) + g.parameter_count()


def needs_calibration(g: Graph) -> list[str]:
    """Nodes whose output scale must come from calibration (the model does not fix it)."""
    return [n.name for n in g.nodes if quant.fixed_quant(n) is None and n.op not in quant.PRESERVING
            and n.op not in ("softmax", "log_softmax")]


def prepare_graph(g: Graph, fuse: bool = True, mean=None, std=None) -> Graph:
    """The graph as calibration and quantization see it: optimized (batch norm folded, activations,
    pools and residual adds fused), and, given a mean or std, the input normalisation folded into
    the first conv (Cambricon's firstconv). Modifies `g` in place and returns it."""
    g = passes.optimize(g, fuse=fuse)
    if mean is not None or std is not None:
        quant.firstconv(g, mean if mean is not None else [0.0], std if std is not None else [1.0])
    return g


def _given_absmax(g: Graph, absmax: dict[str, float] | list[float]) -> dict[str, float]:
    """A calibration made beforehand: by node name, or one value per node of the prepared graph in
    order (the torch shim saves it so, in a state_dict buffer)."""
    if isinstance(absmax, dict):
        return absmax
    if len(absmax) != len(g.nodes):
        raise CompileError(f"the calibration has {len(absmax)} values but {g.name}'s prepared graph has "
                           f"{len(g.nodes)} nodes: it was made for another model")
    return {n.name: float(v) for n, v in zip(g.nodes, absmax)}


def compile_graph(g: Graph, config=None, samples: list[np.ndarray] | None = None, dtype: str = "int8",
                  per_channel: bool = True, fuse: bool = True, use_avg: bool = False,
                  mixed: dict[str, str] | None = None, mean=None, std=None, tasks: int | None = None,
                  warn_synthetic: bool = False, cluster_fusion: bool | FusionOptions = True,
                  absmax: dict[str, float] | list[float] | None = None, data_scale: float = 1.0,
                  host_ops: bool = False, dram_share: float = 1.0, progress=None,
                  shape_only: bool = False) -> Compiled:
    """cluster_fusion: let spans of layers run in cluster SRAM (compiler/fusion.py) where the cost
    model says it pays (True, the default of every entry: CLI, API, shim; or a FusionOptions
    choosing the features); the program then needs whole clusters (`tasks` a multiple of their size).
    tasks: the cores to tile for (default: all of the config's), recorded as `compiled_for_cores`.
    absmax: a calibration already made (of this graph or one it is a prefix of), used as it is: by
    node name, or a list with one value per node of the prepared graph (prepare_graph), in order.
    data_scale: Cambricon's qconfig key (quant.quantize says what it scales).
    host_ops: a graph with host (`cpu`) nodes is quantized but not lowered as a whole
    (Compiled.program is None): the torch shim runs such graphs node by node.
    dram_share: the part of the DRAM bandwidth the program will have (compiler/lower.py).
    progress: `progress(phase, layers_done, layers_total)` while calibrating and lowering.
    shape_only: compile for timing alone, from shapes (int8 only): no calibration (every calibrated
    scale a placeholder, unless `absmax` gives them), zero weights and biases (quant.quantize), so a
    graph with placeholder weights (zoo.build(values=False)) compiles without a weight drawn. Timing
    never depends on values and the planner and lowering read only shapes, types and which
    quantization keys exist: the program has the full compile's kernels, tensor layout and cycles
    (tests/test_shape_only.py), but zero constants and placeholder scale immediates, so it is
    marked (meta `shape_only`) and mlusim.sim.simulate refuses to run it with numerics."""
    from mlusim.config import HardwareConfig, load_config

    from mlusim import budget

    t0 = time.perf_counter()
    notes = []
    cfg = config if isinstance(config, HardwareConfig) else load_config(config)
    budget.check(host_bytes_lower_bound(g, not shape_only), f"compiling {g.meta.get('model', 'this model')} at "
                 f"input shape {list(g.input.shape)}", CompileError, "or a smaller --batch / --resolution")
    g = prepare_graph(g, fuse, mean, std)
    if not shape_only and any(isinstance(n.params.get("weight"), Placeholder) for n in g.nodes):
        raise CompileError(f"{g.name} has placeholder weights (built without values): it can only be compiled "
                           f"shape_only, for timing")
    todo = [] if shape_only else needs_calibration(g)
    if todo and not samples and warn_synthetic:
        notes.append(f"no calibration data given (--calibrate samples.npy): {len(todo)} tensor scale(s) come from "
                     f"random inputs uniform in [0, 1), which may not resemble real data")
    if absmax is None:
        absmax = quant.calibrate(g, samples or calibration_samples(g), use_avg=use_avg, progress=progress) \
            if todo else {}
    absmax = _given_absmax(g, absmax)
    quant.quantize(g, absmax, dtype=dtype, per_channel=per_channel, mixed=mixed, data_scale=data_scale,
                   shape_only=shape_only)
    release_float_weights(g)
    if host_ops and any(n.op == "cpu" for n in g.nodes):
        return Compiled(None, g, absmax, time.perf_counter() - t0, notes)
    prog = lower(g, cfg, tasks, fusion=cluster_fusion, dram_share=dram_share, progress=progress)
    _describe(prog, g, cfg, dtype, per_channel, tasks)
    if shape_only:
        prog.meta["shape_only"] = True
    return Compiled(prog, g, absmax, time.perf_counter() - t0, notes)


def release_float_weights(g: Graph) -> None:
    """Once quantized, a weight the zoo drew from its seed keeps only its recipe: lowering reads
    the integer weights, and the float reference draws the floats again if it runs. (Lowering
    copies the integer weights into the program, so holding the floats too set a VGG-16 compile's
    peak memory.) A weight a pass rewrote (batch norm folded in) is an array and stays."""
    for n in g.nodes:
        w = n.params.get("weight")
        if isinstance(w, SeededWeight) and w.values is not None:
            n.params["weight"] = w.released()


def _describe(prog: Program, g: Graph, cfg, dtype: str, per_channel: bool, tasks: int | None) -> None:
    """The program's config and the facts reports print about it (sizes, traffic bounds, fusions)."""
    inp = prog.tensor("input")
    out_bytes = sum(t.nbytes for t in prog.tensors if t.role == "output")
    wbytes = quant.weight_bytes(g)
    prog.config = cfg.to_dict()
    prog.meta.update({k: v for k, v in g.meta.items() if isinstance(v, (int, float, str, bool))})
    prog.meta.update(macs=g.macs(), weight_bytes=wbytes, parameters=g.parameter_count(), quant_dtype=dtype,
                     per_channel=per_channel, target=cfg.name, compiled_for_cores=tasks or cfg.chip.cores,
                     min_traffic_bytes=wbytes + inp.nbytes // 4 + out_bytes,
                     layer_traffic_bytes=layer_traffic_bytes(g),
                     fused=", ".join(f"{n.name}: {'+'.join([n.op] + n.fused)}" for n in g.nodes if n.fused))
    prog.meta.setdefault("batch", g.input.shape[0])
    segs = [k for k in prog.kernels if k.meta.get("op") == "segment"]
    if segs:
        prog.meta["cluster_fusion"] = (f"{len(segs)} segment(s) in cluster SRAM covering "
                                       f"{sum(len(k.meta['fused']) for k in segs)} layers; needs whole clusters")


def layer_traffic_bytes(g: Graph) -> int:
    """DRAM bytes of a layer-by-layer schedule at its best: each layer reads its inputs and weights
    once and writes its output once, at their quantized widths. `min_traffic_bytes` assumes every
    activation stays on chip; real layer-at-a-time code cannot go below this figure instead, so the
    gap between the two is what cross-layer fusion could win."""
    width = {n.name: 2 if n.q.get("dtype") == "int16" else 1 for n in g.nodes}
    size = {n.name: int(np.prod(n.shape)) * width[n.name] for n in g.nodes}
    total = 0
    for n in g.nodes:
        if n.op in ("input", "flatten", "reshape"):    # the input is quantized on the way in; views move nothing
            continue
        total += size[n.name] + sum(size[i] for i in n.inputs if i in size)
        if "weight" in n.q:
            total += int(n.q["weight"].nbytes)
    return total


def load_samples(path: str, g: Graph, chunk: int = 8) -> list[np.ndarray]:
    """Calibration inputs from a .npy array [S, *input shape[1:]] (or one sample without the S),
    in chunks so the float reference never holds more than `chunk` images at once."""
    from mlusim import npyfile

    a = npyfile.load(path, CompileError, "calibration file")     # header and size checked, no FIFO
    want = tuple(g.input.shape[1:])
    if a.shape == want:
        a = a[None]
    if a.ndim != len(want) + 1 or tuple(a.shape[1:]) != want or a.shape[0] == 0 or a.dtype.kind not in "fiu":
        raise CompileError(f"{path}: calibration samples of shape {list(a.shape)} ({a.dtype}); the model takes "
                           f"[S, {', '.join(map(str, want))}] numbers")
    a = a.astype(np.float32)
    return [a[i:i + chunk] for i in range(0, len(a), chunk)]


def compile_onnx(model, batch: int | None = None, config=None, calibrate: str | None = None, samples=None,
                 **kw) -> Compiled:
    """Import an ONNX file (or ModelProto) and compile it; float models are calibrated on `samples`,
    on the .npy file `calibrate`, or on random data with a note saying so."""
    from mlusim.compiler.frontend_onnx import from_onnx

    g = from_onnx(model, batch)
    if calibrate and kw.get("shape_only"):
        c = compile_graph(g, config, **kw)
        c.notes.append(f"{calibrate}: calibration samples not read: a timing-only compile works from shapes, "
                       f"and timing never depends on the scales the samples would set")
        return c
    if calibrate:
        samples = load_samples(calibrate, g)
    return compile_graph(g, config, samples=samples, warn_synthetic=True, **kw)


def compile_model(name: str, batch: int = 1, resolution: int | None = None, config=None, seed: int = 0,
                  shape_only: bool = False, **kw) -> Compiled:
    """Zoo model `name` compiled (compile_graph's keywords); shape_only: for timing alone, built
    without drawing a weight (see compile_graph). A full compile whose segment plan its shapes
    fix (plans_from_shapes) plans them while a thread draws the weights (draw_beside), given a
    second CPU (quant.usable_cpus)."""
    if shape_only or not plans_from_shapes(kw) or quant.usable_cpus() < 2:
        return compile_graph(zoo.build(name, batch, resolution, seed, values=not shape_only), config,
                             shape_only=shape_only, **kw)
    from mlusim.config import HardwareConfig, load_config

    cfg = config if isinstance(config, HardwareConfig) else load_config(config)
    opts = FusionOptions() if kw.get("cluster_fusion", True) is True else kw["cluster_fusion"]
    g, segments = draw_beside(lambda: zoo.build(name, batch, resolution, seed),
                              lambda: _shape_plan(zoo.build(name, batch, resolution, seed, values=False), cfg,
                                                  kw.get("tasks") or cfg.chip.cores, opts, kw.get("progress")))
    return compile_graph(g, cfg, **dict(kw, cluster_fusion=replace(opts, segments=tuple(segments))))


Drawn = TypeVar("Drawn")
Worked = TypeVar("Worked")

# compile_graph keywords under which a zoo model's segment plan is what its shapes give: the
# quantization is the default int8 one (no mixed int16 layers, whose accumulator positions depend
# on values; tests/test_shape_only.py holds full and shape-only programs equal there), its ranges
# calibrated or given (they set scales only: tests/test_golden.py compiles with recorded ones)
SHAPE_PLANNED = {"config", "tasks", "cluster_fusion", "dram_share", "progress", "warn_synthetic", "absmax"}


def plans_from_shapes(kw: dict) -> bool:
    """Whether compile_model may plan its segments from the model's shapes (SHAPE_PLANNED): only
    the keywords above, and fusion on with no plan given."""
    fusion = kw.get("cluster_fusion", True)
    return set(kw) <= SHAPE_PLANNED and (fusion is True or isinstance(fusion, FusionOptions)
                                         and fusion.segments is None)


def _shape_plan(g: Graph, cfg, tasks: int, opts: FusionOptions, progress) -> list[Segment]:
    """The segment plan of `g` (a zoo model built without values) as lower() would make it for
    the drawn model: the same graph optimized and quantized from shapes (the planner reads only
    shapes, types and which quantization keys exist)."""
    g = prepare_graph(g)
    quant.quantize(g, {}, shape_only=True)
    return plan_segments(g, cfg, tasks, opts, progress)


def draw_beside(draw: Callable[[], Drawn], work: Callable[[], Worked]) -> tuple[Drawn, Worked]:
    """(draw(), work()), draw() in a thread while this one runs work(). Meant for a zoo build,
    whose time is the random generator's fill (numpy releases the GIL there), beside the segment
    planner (pure Python): what overlaps is the fill alone. Each of the build's few hundred numpy
    calls hands the GIL back and forth; the switch interval is cut for the while (from Python's
    5 ms, which a thread waiting for the GIL may sit out each time) so that those waits do not add
    up to more than the fill."""
    box: dict = {}

    def run():
        try:
            box["value"] = draw()
        except BaseException as e:      # re-raised in the caller's thread
            box["error"] = e

    thread = threading.Thread(target=run, name="mlusim-draw", daemon=True)
    with _SHORT_SWITCH:
        thread.start()
        try:
            got = work()
        finally:
            thread.join()
    if "error" in box:
        raise box["error"]
    return box["value"], got


class _ShortSwitch:
    """The GIL switch interval at DRAW_SWITCH_SECONDS while any draw_beside runs (compiles in
    several threads at once, as a threaded sweep may run, nest: the first in sets it, the last
    out puts back what it found)."""

    def __init__(self):
        self.lock, self.depth, self.was = threading.Lock(), 0, 0.0

    def __enter__(self):
        with self.lock:
            if self.depth == 0:
                self.was = sys.getswitchinterval()
                sys.setswitchinterval(DRAW_SWITCH_SECONDS)
            self.depth += 1

    def __exit__(self, *exc):
        with self.lock:
            self.depth -= 1
            if self.depth == 0:
                sys.setswitchinterval(self.was)


DRAW_SWITCH_SECONDS = 2e-4      # the GIL switch interval while a draw runs beside (draw_beside)
_SHORT_SWITCH = _ShortSwitch()
