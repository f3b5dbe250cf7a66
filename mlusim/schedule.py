"""How a batch is laid over the chip: the vendor runtime's per-cluster schedule, and mlusim's own.

`spread` (mlusim's own, and the MLU270 default) compiles the whole batch for every core it is
given: each layer is tiled over all of them, one image spread over every cluster.

`per-cluster` is what the MLU370's MagicMind runtime does, read from its published runs
(docs/calibration.md): the batch is split over the clusters, ceil(B / clusters) images each, and
each cluster runs its images through the convolutional trunk on its own four cores; batch 1 uses
one cluster (the logs' ~16% chip utilisation on a 6-cluster S4), batch 4 four of them (~60%), batch
8 two images on each of four. The fully connected head (the per-image vectors after the last
pool/flatten) runs once for the whole batch over every core, so its weights cross DRAM once:
AlexNet's 61 MB of fc weights read by each of 4 clusters would need 400 GB/s at batch 4, more than
the chip has, and the logs' higher utilisation at batch 1 on fc-heavy nets (AlexNet 52%, VGG 36%)
is the head's share of the time.

The clusters run the same trunk program side by side and share nothing in the model but DRAM.
One trunk is simulated with the chip to itself; k of them take max(t1, k x its DRAM bytes / DRAM
bandwidth): the clusters' DMA bursts interleave, so only their average demand competes. The other
reading, clusters in lockstep whose bursts all coincide (one trunk with 1/k of the bandwidth), is
the upper bound; it made batch 4 40-60% slower than batch 1 on SqueezeNet, ResNeXt and
SE-ResNet, where the published runs are 3-10% slower (docs/calibration.md). With numerics every
group of images runs (their timings are identical); timing-only runs one.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

from mlusim.config import HardwareConfig
from mlusim.errors import SimulationError
from mlusim.program import Program

HEAD_OPS = ("flatten", "reshape", "dropout", "linear", "batchnorm", "relu", "relu6", "sigmoid", "hardswish",
                "softmax", "log_softmax", "requant")


@dataclass
class ClusterPlan:
    """A batch split over clusters: `groups` image groups of `per_cluster` images (the last may
    have fewer), one per cluster, then the head over the whole chip."""

    batch: int
    per_cluster: int
    clusters: int                 # clusters running trunks side by side
    chip_clusters: int
    trunk: Program
    head: Program | None
    boundary_scale: float = 1.0   # quantization of the value crossing from trunk to head
    boundary_zp: int = 0
    cores_per_cluster: int = 4
    fused: bool = False           # the trunk's layers in cluster-fused spans, not a kernel each

    def describe(self) -> str:
        cores = self.chip_clusters * self.cores_per_cluster
        head = f"; fully connected head over all {cores} cores, whole batch" if self.head is not None else ""
        kernels = "cluster-fused spans of layers" if self.fused else "a kernel per layer"
        return (f"per-cluster (vendor runtime): batch {self.batch} on {self.clusters} of {self.chip_clusters} "
                f"clusters, {self.per_cluster} image(s) each on its {self.cores_per_cluster} cores, "
                f"{kernels}{head}")


def head_start(g) -> int | None:
    """Index of the first node of the graph's fully connected head: the longest suffix of per-image
    vector ops (2-D outputs) fed by one value of the trunk. None when there is no trunk or no head."""
    k = len(g.nodes)
    while k > 1 and len(g.nodes[k - 1].shape) <= 2 and g.nodes[k - 1].op in HEAD_OPS:
        k -= 1
    if k == len(g.nodes) or k <= 1:
        return None
    inside = {n.name for n in g.nodes[k:]}
    outside = {i for n in g.nodes[k:] for i in n.inputs if i not in inside}
    return k if outside == {g.nodes[k - 1].name} else None


def _truncated(g, k: int):
    from mlusim.compiler.graph import Graph

    return Graph(g.name, g.nodes[:k], g.nodes[k - 1].name, dict(g.meta))


def plan_per_cluster(name: str, batch: int, cfg: HardwareConfig, cores: int,
                     resolution: int | None = None, absmax: dict | None = None, fuse: bool | None = None,
                     cache: bool = True, progress=None, shape_only: bool = False) -> ClusterPlan:
    """Compile zoo model `name` for the per-cluster schedule on `cores` cores of `cfg`; `absmax`:
    a calibration of the network to reuse (scales change values, never cycles); `fuse`: cluster
    fusion of the trunk (default: the config's `runtime.kernels`). Trunk and head come from the
    compile cache unless `cache` is False (mlusim/compile_cache.py). `progress`: the compiler's
    `progress(phase, layers_done, layers_total)` (mlusim.progress). `shape_only`: a plan for a
    timing-only run: its trunk compiled from shapes alone, its head too where `from_shapes` says
    so; the mode is part of the cache key."""
    from mlusim.compile_cache import cache_for, cached

    cpc = cfg.chip.cores_per_cluster
    if fuse is None:
        fuse = cfg.runtime.kernels == "fused"
    if cores % cpc:
        raise SimulationError(f"the per-cluster schedule needs whole clusters: --cores {cores} is not a multiple "
                              f"of {cpc} (or use --schedule spread)")
    chip_clusters = cores // cpc
    per = -(-batch // chip_clusters)
    groups = -(-batch // per)
    parts = {"per-cluster": name.lower(), "batch": batch, "resolution": resolution, "cores": cores, "fuse": fuse,
             "config": cfg.to_dict(), "shape_only": shape_only,
             "absmax": sorted((k, float(v)) for k, v in absmax.items()) if absmax is not None else None}
    progs, extra = cached(cache_for(cache), parts,
                          lambda: _compile_per_cluster(name, batch, per, cfg, cores, resolution, absmax, fuse,
                                                       progress, shape_only))
    head = progs[1] if len(progs) > 1 else None
    return ClusterPlan(batch, per, groups, chip_clusters, progs[0], head, extra["scale"], extra["zp"], cpc, fuse)


def from_shapes(cfg: HardwareConfig, shape_only: bool) -> bool:
    """Whether a plan asked for `shape_only` compiles its head from shapes too, so that nothing is
    drawn or calibrated. Not with int16 fully connected layers (runtime.linear_dtype: int16, the
    MLU370 presets'): an int16 layer's accumulator position depends on its weights and calibrated
    scales, and decides how its kernel is tiled (compiler/kernels/linear.py), so such a head
    compiles in full, from the calibrated network, and only the trunk's weights are left undrawn."""
    return shape_only and cfg.runtime.linear_dtype == "int8"


def _compile_per_cluster(name: str, batch: int, per: int, cfg: HardwareConfig, cores: int,
                         resolution: int | None, absmax: dict | None, fuse: bool,
                         progress=None, shape_only: bool = False) -> tuple[list[Program], dict]:
    """[trunk] or [trunk, head], and the quantization of the value crossing between them;
    `shape_only`: the trunk from shapes alone, the head too where `from_shapes` says so; each
    program so compiled is marked (zero weights, and placeholder scales where not calibrated)."""
    from mlusim.compiler import passes, quant, zoo
    from mlusim.compiler.driver import calibration_samples, compile_graph
    from mlusim.compiler.lower import lower

    cpc = cfg.chip.cores_per_cluster
    whole = from_shapes(cfg, shape_only)        # nothing drawn or calibrated
    full = passes.optimize(zoo.build(name, batch, resolution, values=not whole))
    if whole:
        absmax = absmax or {}
    elif absmax is None:      # once, for trunk and head alike
        absmax = quant.calibrate(full, calibration_samples(full), progress=progress)
    mixed = {n.name: cfg.runtime.linear_dtype for n in full.nodes if n.op == "linear"}
    trunk_graph = zoo.build(name, per, resolution, values=not shape_only)
    k = head_start(trunk_graph)
    head, scale, zp = None, 1.0, 0
    if k is not None:
        names = {n.name for n in trunk_graph.nodes[k:]}
        trunk_graph = _truncated(trunk_graph, k)
        quant.quantize(full, absmax, mixed=mixed, shape_only=whole)
        head_nodes = [n.name for n in full.nodes if n.name in names]
        feeds = {i for n in head_nodes for i in full.node(n).inputs if i not in set(head_nodes)}
        if len(feeds) != 1:
            raise SimulationError(f"{name}: no single value feeds the fully connected head; use --schedule spread")
        src = full.node(feeds.pop())
        scale, zp = float(src.q["scale"]), int(src.q.get("zp", 0))
        head = lower(full, cfg, cores, nodes=head_nodes)
        head.config = cfg.to_dict()
        if whole:
            head.meta["shape_only"] = True
    mixed = {n.name: mixed[n.name] for n in trunk_graph.nodes if n.name in mixed}
    if shape_only and "int16" in mixed.values():       # int16 layers in the trunk: it needs its weights
        shape_only, trunk_graph = False, zoo.build(name, per, resolution)
    # the trunk runs on ceil(batch / per) clusters at once: its tiles are priced at their share of DRAM
    compiled = compile_graph(trunk_graph, cfg, absmax=absmax, tasks=cpc, cluster_fusion=fuse, mixed=mixed,
                             dram_share=1.0 / -(-batch // per), progress=progress, shape_only=shape_only)
    trunk = compiled.program
    trunk.meta.update(macs=full.macs(), batch=batch, per_cluster=per, weight_bytes=quant.weight_bytes(full),
                      compiled_for_cores=cores)
    return [trunk] + ([head] if head is not None else []), {"scale": scale, "zp": zp}


def side_by_side(trunk, cfg: HardwareConfig, clusters: int) -> float:
    """Cycles of `clusters` copies of a trunk run at once: its own time, or the DRAM's time for
    all their bytes, whichever is longer."""
    return max(trunk.cycles, clusters * trunk.dram_bytes / cfg.dram_bytes_per_cycle)


def batch_input(plan: ClusterPlan, given: dict | None) -> np.ndarray:
    """The whole batch's image input in host layout: the user's, or drawn as `simulate` draws a
    float input (the same images a spread run of the same batch gets)."""
    t = plan.trunk.by_role("input")[0]
    from mlusim.sim import host_shape

    shape = (plan.batch,) + tuple(host_shape(t))[1:]
    if given:
        arr = np.asarray(next(iter(given.values())), dtype=np.float32)
        if arr.shape != shape:
            raise SimulationError(f"input '{t.name}': shape {list(arr.shape)} != declared {list(shape)}")
        return arr
    rng = np.random.default_rng(0)
    rng.standard_normal(shape, dtype=np.float32)
    lo, hi = t.meta.get("range", (0.0, 1.0))
    return rng.uniform(lo, hi, shape).astype(np.float32)


def run_per_cluster(plan: ClusterPlan, cfg: HardwareConfig, inputs: dict | None = None,
                    timing_only: bool = False, **kw):
    """Simulate the plan; returns one RunResult covering trunk and head."""
    from mlusim.sim import simulate

    cpc = plan.cores_per_cluster
    if timing_only:
        trunk = simulate(plan.trunk, cfg, cores=cpc, timing_only=True, **kw)
        outs = None
    else:
        x = batch_input(plan, inputs)
        name = plan.trunk.by_role("input")[0].name
        parts, trunk = [], None
        for g in range(plan.clusters):
            xs = x[g * plan.per_cluster:(g + 1) * plan.per_cluster]
            pad = plan.per_cluster - len(xs)
            if pad:
                xs = np.concatenate([xs, np.zeros((pad,) + xs.shape[1:], xs.dtype)])
            r = simulate(plan.trunk, cfg, cores=cpc, inputs={name: xs}, **kw)
            trunk = trunk or r
            parts.append({k: v[:len(v) - pad] for k, v in r.outputs.items()})
        outs = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    trunk = dataclasses.replace(trunk, cycles=side_by_side(trunk, cfg, plan.clusters))
    for r in trunk.kernels:       # every busy cluster ran them (energy counts each cluster's)
        r.meta = dict(r.meta, clusters=plan.clusters)
    if plan.head is None:
        res = dataclasses.replace(trunk, config=cfg, program_meta=dict(trunk.program_meta, schedule=plan.describe()))
        if outs is not None:
            res.outputs = outs
        return res
    head_in = None
    if outs is not None:
        q = np.clip(np.rint(outs["output"] / plan.boundary_scale) + plan.boundary_zp, -128, 127).astype(np.int8)
        t = plan.head.by_role("input")[0]
        head_in = {t.name: (q.transpose(0, 2, 3, 1) if q.ndim == 4 else q).reshape(t.shape)}
    # the head is tiled for the run's clusters, not the chip's: it runs on those cores alone
    head = simulate(plan.head, cfg, cores=plan.chip_clusters * cpc, inputs=head_in, timing_only=timing_only, **kw)
    return merge(trunk, head, cfg, plan)


def merge(trunk, head, cfg: HardwareConfig, plan: ClusterPlan):
    """One RunResult: the trunk's kernels (one cluster's, as every busy cluster ran them), then
    the head's, shifted to start when the trunks end. DRAM totals count every cluster's trunk."""
    for r in head.kernels:
        r.start += trunk.cycles
        r.end += trunk.cycles
        for j in r.jobs:
            if isinstance(j, dict):
                for key in ("start", "end"):
                    if key in j:
                        j[key] += trunk.cycles
                for key in ("syncs", "all_syncs"):
                    j[key] = [t + trunk.cycles for t in j.get(key, [])]
    meta = dict(trunk.program_meta, schedule=plan.describe(), batch=plan.batch)
    return dataclasses.replace(
        head, config=cfg, cycles=trunk.cycles + head.cycles, kernels=trunk.kernels + head.kernels,
        instructions=trunk.instructions + head.instructions, wall_seconds=trunk.wall_seconds + head.wall_seconds,
        dram_bytes=plan.clusters * trunk.dram_bytes + head.dram_bytes, dram_busy=trunk.dram_busy + head.dram_busy,
        program_meta=meta, trace=None)
