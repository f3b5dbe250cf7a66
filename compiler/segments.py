"""Where fused segments start and end, and how many images a job takes: the cost model.

fusion.py lowers a segment; this module decides which segments to make. A span of layers is
priced as layer-at-a-time code (each layer's own tiling plan plus a launch) or as a segment of
each possible group size, one-cluster (fusion.py) or wide (wide.py), and a dynamic program over the
points where a single value is live picks the cheapest cover of the graph. The switches it honours
(PREFETCH, SHARE) live in fusion.py, where the tests and experiments set them.
"""
from __future__ import annotations

from dataclasses import dataclass
from math import ceil, prod

from mlusim.compiler import wide
from mlusim.compiler.liveness import VIEWS, _base, _esz, escaping, image_bytes, last_use, sram_plan
from mlusim.errors import CompileError

ELIGIBLE = {"input", "conv2d", "maxpool", "avgpool", "gap", "relu", "relu6", "requant", "add", "linear",
            "flatten", "reshape", "leaky_relu"}
TILED = ("conv2d", "linear")   # layers whose tilers price themselves
JOB_LAYER_OVERHEAD = 900      # cycles per layer per job: pipeline fill (first load) and drain, sync.cluster
KERNEL_OVERHEAD = 3000        # launch plus the first and last DMA latencies of a kernel


@dataclass
class Segment:
    start: int                # node indices [start, end) of the graph
    end: int
    group: int                # images per job
    staged: bool = False      # external inputs copied into SRAM first
    wide: int = 0             # clusters per job splitting each layer's channels (compiler/wide.py); 0: one


def job_shape(batch: int, group: int, clusters: int) -> tuple[int, int]:
    """(jobs, image groups per job). With more groups than clusters and a whole number per cluster,
    one job per cluster works through its groups in turn, so weights that stay in WRAM are loaded
    once per cluster instead of once per group; otherwise one group per job."""
    n = batch // group
    if n > clusters and n % clusters == 0:
        return clusters, n // clusters
    return n, 1


def _fusion():
    """The module holding the switches (imported late: it imports this one)."""
    from mlusim.compiler import fusion

    return fusion


# ---- the cost model -------------------------------------------------------------------------------
def _vec_cycles_per_image(cfg, g, node) -> float:
    """A rough vector-unit figure: every byte in and out handled as int32 once."""
    ins = sum(image_bytes(g.node(i)) for i in node.inputs if g.node(i).op != "input") if node.inputs else 0
    return (ins + image_bytes(node)) * 4 / cfg.core.vector_bytes_per_cycle


def _io_bytes_per_image(g, node) -> int:
    return sum(image_bytes(g.node(i)) for i in node.inputs) + image_bytes(node)


def node_weight_bytes(node) -> int:
    return int(node.q["weight"].nbytes) if "weight" in node.q else 0


def tiler_cost(cfg, g, node, lay: dict, images: int, tasks: int, share: float = 1.0,
               spaces: tuple[str, str, str] = ("gdram",) * 3, cache: dict | None = None, prefetch: bool = False,
               staged: bool = False, gathered: int = 0) -> float:
    """The conv or linear tiler's own estimate for `node` over `images` images on `tasks` tasks with
    a `share` of DRAM, a conv's activations in `spaces`, its weights prefetched (inside a segment;
    prefetch.py) or not, from SRAM (`staged`: share.py) or GDRAM; a linear layer `gathered` from
    that many clusters' images, its outputs split between them (share.gathers); infinite if no
    tiling fits."""
    key = (node.name, images, tasks, share, spaces, prefetch, staged, gathered)
    if cache is not None and key in cache:
        return cache[key]
    from types import SimpleNamespace

    from mlusim.compiler.kernels.conv import plan_conv
    from mlusim.compiler.lower import _s2d_conv, space_to_depth

    ctx = SimpleNamespace(cfg=cfg, tasks=tasks, dram_share=share, prefetch=prefetch,
                          weight_home={node.name: 0} if staged else {})
    try:
        if node.op == "linear" and gathered:
            from mlusim.compiler.kernels.linear import as_conv

            u = as_conv(wide.share(node, 0, gathered), row=True)
            ctx.weights_ready = {u.name}
            cost = plan_conv(ctx, u, (1, 1, images * gathered, node.q["weight"].shape[1]), ("sram", "gdram", "gdram"))[1].cost
        elif node.op == "linear":
            from mlusim.compiler.kernels.linear import plan_linear

            o, k = node.q["weight"].shape
            cost = plan_linear(ctx, node, images, k, o, _esz(node))[0].cost
        else:
            s2d = space_to_depth(g)
            conv = _s2d_conv(node) if s2d and s2d["conv"] == node.name else node
            cost = plan_conv(ctx, conv, (images,) + tuple(lay[node.inputs[0]].shape[1:]), spaces)[1].cost
    except CompileError:
        cost = float("inf")
    if cache is not None:
        cache[key] = cost
    return cost


def layer_cost(cfg, g, node, tasks: int, batch: int, lay: dict) -> float:
    """Layer-at-a-time estimate: a conv or linear layer's own tiling plan (priced with the engine's
    formulas) plus a kernel launch; other layers the slower of vector work and DRAM traffic."""
    if node.op in VIEWS:
        return 0.0
    if node.op in TILED:
        return cfg.chip.kernel_launch_cycles + tiler_cost(cfg, g, node, lay, batch, tasks)
    comp = batch * _vec_cycles_per_image(cfg, g, node) / tasks
    io = batch * _io_bytes_per_image(g, node)
    if node.op == "input":
        io = batch * prod(node.shape[1:]) * 5
    return max(comp, io / _dram_rate(cfg, tasks)) + KERNEL_OVERHEAD


def _dram_rate(cfg, cores: int) -> float:
    """DRAM bytes per cycle `cores` cores can pull: the DRAM's bandwidth or their DMA channels'."""
    return min(cfg.dram_bytes_per_cycle, cores * cfg.dma.core_bandwidth_bytes_per_cycle)


def segment_cost(cfg, g, nodes, group: int, batch: int, clusters: int, staged: bool, lay: dict,
                 cache: dict | None = None) -> float:
    """Estimated cycles of a segment: per image group, each conv or linear layer's tiling plan on one
    cluster (other layers: a vector estimate) plus a barrier, times the groups a cluster takes; or its DRAM
    bytes, whichever is slower. Unstaged external inputs are read once per reader."""
    cpc = cfg.chip.cores_per_cluster
    n_groups = batch // group
    jobs_run, groups = job_shape(batch, group, clusters)
    share = 1.0 / min(jobs_run, clusters)
    shared = shares(jobs_run, groups, clusters)
    esc = escaping(g, nodes)
    inside = {n.name for n in nodes}
    gath, sliced, lead1, alone = _shared_steps(cfg, g, nodes, group, jobs_run, staged, lay) if shared else \
        (None, {}, {}, set())

    def space(v: str) -> str:
        return "sram" if (v in inside and v not in esc) or (staged and v not in inside) else "gdram"

    per_group = 0.0
    for n in nodes:
        if n.op in VIEWS:
            continue
        if n.op in TILED:
            ins = [_base(g, i) for i in n.inputs]
            spaces = (space(ins[0]), "gdram" if n.name in esc else "sram", space(ins[1]) if len(ins) > 1 else "gdram")
            cost = sum(tiler_cost(cfg, g, u, lay, group, cpc, share, spaces, cache, prefetch=_fusion().PREFETCH,
                                  staged=shared and n.op == "conv2d" and n.name not in alone,
                                  gathered=jobs_run if n is gath else 0) for u in sliced.get(n.name, [n]))
            # a step filled one step ahead copies its weights SRAM -> WRAM at its start, then meets
            cost += lead1.get(n.name, 0) / (cpc * cfg.dma.sram_bandwidth_bytes_per_cycle)
        else:
            cost = group * _vec_cycles_per_image(cfg, g, n) / cpc + JOB_LAYER_OVERHEAD
        per_group += cost + cfg.cluster.sync_cycles
    reads = [_base(g, i) for n in nodes for i in n.inputs if i not in inside]
    io = sum(image_bytes(g.node(v)) for v in (set(reads) if staged else reads)) + \
        sum(image_bytes(g.node(v)) for v in esc)
    if staged:
        per_group += group * sum(image_bytes(g.node(v)) for v in set(reads)) / \
            min(cfg.dram_bytes_per_cycle * share, cpc * cfg.dma.core_bandwidth_bytes_per_cycle)
    if nodes[0].op == "input":
        io += prod(nodes[0].shape[1:]) * 4
    weights = sum(node_weight_bytes(n) for n in nodes)
    kept = min(weights, cfg.wram_bytes * 3 // 4)   # roughly what stays in WRAM between a job's groups
    alone_w = sum(node_weight_bytes(n) for n in nodes if n.name in alone)
    loads = 1 if shared else jobs_run     # share.py: once for the chip, but for the layers it leaves alone
    dram = loads * (weights - alone_w + (groups - 1) * (weights - kept)) + jobs_run * alone_w + batch * io
    compute = ceil(n_groups / min(n_groups, clusters)) * per_group
    return max(compute, dram / _dram_rate(cfg, min(jobs_run, clusters) * cpc)) + KERNEL_OVERHEAD


def _shared_steps(cfg, g, nodes, group: int, peers: int, staged: bool, lay: dict):
    """What share.schedule makes of a segment whose clusters share weights, for pricing: the
    gathered fc (or None), the sliced layers (name -> the slice nodes: each reads all the layer's
    input again), the weight bytes copied at a step's start (lead 1), and the layers left per
    cluster (big ones with no room for a stage: each cluster reads them from DRAM)."""
    from mlusim.compiler import share as sh
    from mlusim.compiler.wide import slice_node

    gath = nodes[-1] if sh.gathers(g, nodes[-1], escaping(g, nodes), peers, 1) else None
    extra = sh.gather_buffer(g, nodes, lay, group, peers, gath) if gath else {}
    plan = sram_plan(g, nodes, group, cfg.sram_bytes, lay, staged, extra=extra)
    if plan is None and gath:       # no room for the gather: the fc stays per cluster (as fusion.py does)
        gath, extra = None, {}
        plan = sram_plan(g, nodes, group, cfg.sram_bytes, lay, staged)
    if plan is None:
        return gath, {}, {}, set()
    _plan, steps, _kept = sh.schedule(g, nodes, group, lay, cfg, staged, 1, plan, extra, _fusion().SHARE_MIN_BYTES)
    sliced: dict = {}
    lead1: dict = {}
    for s in steps:
        if s.slice:
            sliced.setdefault(s.node, []).append(slice_node(g.node(s.node), *s.slice))
        if s.stage is not None and s.lead == 1:
            lead1[s.node] = lead1.get(s.node, 0) + s.nbytes
    staged_ = {s.node for s in steps if s.stage is not None}
    alone = {n.name for n in nodes if sh.eligible(n, g) and n.name not in staged_}
    return gath, sliced, lead1, alone


def shares(jobs: int, groups: int, clusters: int, per_job: int = 1) -> bool:
    """Whether a segment's jobs (of `per_job` clusters each) run side by side on all the clusters,
    one image group each, and so share their weights through SRAM (share.py)."""
    return _fusion().SHARE and jobs * per_job == clusters and jobs > 1 and groups == 1


def _cut_points(g) -> list[int]:
    """Positions k (before node k) where at most one value computed earlier is still needed."""
    nodes = g.nodes
    last = last_use(g, nodes)
    cuts = [0]
    for k in range(1, len(nodes)):
        live = {_base(g, n.name) for n in nodes[:k] if last.get(_base(g, n.name), -1) >= k}
        if len(live) <= 1:
            cuts.append(k)
    cuts.append(len(nodes))
    return cuts


def plan_segments(g, cfg, tasks: int) -> list[Segment]:
    """The fused segments (possibly none) that minimise the estimated time of the whole graph."""
    cpc = cfg.chip.cores_per_cluster
    batch = g.input.shape[0]
    if tasks < cpc or tasks % cpc or batch < 1:
        return []
    clusters = min(tasks // cpc, cfg.chip.clusters)
    from mlusim.compiler.lower import layouts

    nodes = g.nodes
    lay = layouts(g)
    layer = [layer_cost(cfg, g, n, tasks, batch, lay) for n in nodes]
    cuts = _cut_points(g)
    cache: dict = {}
    groups = [d for d in range(1, batch + 1) if batch % d == 0]
    best: dict[int, tuple[float, list[Segment]]] = {0: (0.0, [])}
    for bi, b in enumerate(cuts[1:], 1):
        cand = None
        for a in cuts[:bi]:
            if a not in best:
                continue
            base, segs = best[a]
            span = nodes[a:b]
            opts = [(sum(layer[a:b]), None)]
            if len(span) > 1 and all(n.op in ELIGIBLE for n in span) and \
                    all(n.op != "input" or k == 0 for k, n in enumerate(span)):
                for gr in groups:
                    for stage in ((True, False) if span[0].op != "input" else (False,)):
                        plan = sram_plan(g, span, gr, cfg.sram_bytes, lay, stage)
                        if plan is not None:
                            cost = segment_cost(cfg, g, span, gr, batch, clusters, stage, lay, cache)
                            opts.append((cost, Segment(a, b, gr, stage)))
                            break
            if clusters > 1 and wide.eligible(span, g):
                for n in (w for w in (2, 4, 8, 16) if w <= clusters and clusters % w == 0 and wide.divides(span, w)):
                    for gr in groups:
                        plan = next(((stage, p) for stage in (True, False)
                                     if (p := sram_plan(g, span, gr, cfg.sram_bytes, lay, stage, keep=True))), None)
                        if plan is not None:
                            cost = wide.cost(cfg, g, span, gr, batch, clusters, n, plan[0], lay, cache)
                            opts.append((cost, Segment(a, b, gr, plan[0], n)))
            cost, seg = min(opts, key=lambda o: o[0])
            total = base + cost
            if cand is None or total < cand[0]:
                cand = (total, segs + ([seg] if seg else []))
        best[b] = cand
    return best[len(nodes)][1]
