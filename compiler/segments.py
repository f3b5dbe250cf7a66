"""Where fused segments start and end, and how many images a job takes: the cost model.

fusion.py lowers a segment; this module decides which segments to make. A span of layers is
priced as layer-at-a-time code (each layer's own tiling plan plus a launch) or as a segment of
each possible group size, one-cluster (fusion.py) or wide (wide.py), and a dynamic program over the
points where a single value is live picks the cheapest cover of the graph. What it may use
(prefetch, weight sharing, wide segments) comes in a FusionOptions (options.py).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from math import ceil, prod

from mlusim.compiler import share as sh
from mlusim.compiler import wide
from mlusim.compiler.context import KernelCtx, dram_rate
from mlusim.compiler.kernels.conv import plan_conv
from mlusim.compiler.kernels.linear import as_conv, plan_linear
from mlusim.compiler.layout import layouts, s2d_conv, space_to_depth
from mlusim.compiler.liveness import (VIEWS, base_value, element_bytes, escaping, image_bytes, last_use, sram_may_fit,
                                      sram_plan)
from mlusim.compiler.options import FusionOptions
from mlusim.compiler.tiling import dma_cycles
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


# ---- the cost model -------------------------------------------------------------------------------
def _vec_cycles_per_image(cfg, g, node) -> float:
    """A rough vector-unit figure: every byte in and out handled as int32 once."""
    ins = sum(image_bytes(g.node(i)) for i in node.inputs if g.node(i).op != "input") if node.inputs else 0
    return (ins + image_bytes(node)) * 4 / cfg.core.vector_bytes_per_cycle


def _io_bytes_per_image(g, node) -> int:
    return sum(image_bytes(g.node(i)) for i in node.inputs) + image_bytes(node)


def node_weight_bytes(node) -> int:
    return int(node.q["weight"].nbytes) if "weight" in node.q else 0


def tiler_cost(cfg, g, node, lay: dict, images: int, tasks: int, dram_share: float = 1.0,
               spaces: tuple[str, str, str] = ("gdram",) * 3, cache: dict | None = None, prefetch: bool = False,
               staged: bool = False, gathered: int = 0) -> float:
    """The conv or linear tiler's own estimate for `node` over `images` images on `tasks` tasks with
    a `dram_share` of DRAM, a conv's activations in `spaces`, its weights prefetched (inside a segment;
    prefetch.py) or not, from SRAM (`staged`: share.py) or GDRAM; a linear layer `gathered` from
    that many clusters' images, its outputs split between them (share.gathers); infinite if no
    tiling fits."""
    key = (node.name, images, tasks, dram_share, spaces, prefetch, staged, gathered)
    if cache is not None and key in cache:
        return cache[key]
    ctx = KernelCtx(cfg, tasks, dram_share=dram_share, prefetch=prefetch, weight_home={node.name: 0} if staged else {},
                    cfg_repr=_cfg_repr(cfg, cache))
    try:
        if node.op == "linear" and gathered:
            u = as_conv(wide.part(node, 0, gathered), row=True)
            ctx.weights_ready = {u.name}
            cost = plan_conv(ctx, u, (1, 1, images * gathered, node.q["weight"].shape[1]), ("sram", "gdram", "gdram"))[1].cost
        elif node.op == "linear":
            o, k = node.q["weight"].shape
            cost = plan_linear(ctx, node, images, k, o, element_bytes(node))[0].cost
        else:
            s2d = space_to_depth(g)
            conv = s2d_conv(node) if s2d and s2d["conv"] == node.name else node
            cost = plan_conv(ctx, conv, (images,) + tuple(lay[node.inputs[0]].shape[1:]), spaces)[1].cost
    except CompileError:
        cost = float("inf")
    if cache is not None:
        cache[key] = cost
    return cost


def _cfg_repr(cfg, cache: dict | None) -> str | None:
    """repr(cfg) (the tilers' memo key), once per planner run (`cache`); None without one."""
    if cache is None:
        return None
    hit = cache.get(("cfg repr", id(cfg)))
    if hit is None:
        hit = cache[("cfg repr", id(cfg))] = repr(cfg)
    return hit


def _tiler_bound(cfg, g, node, images: int, tasks: int, key: tuple | None, cache: dict) -> float:
    """At most tiler_cost: its price when `key` (tiler_cost's cache key) is priced already, else the
    conv's multiply-accumulates spread evenly over `tasks` cores' MAC arrays (_mac_cycles)."""
    hit = cache.get(key) if key is not None else None
    if hit is not None:
        return hit
    per_image = cache.get(("mac cycles", node.name))
    if per_image is None:
        per_image = cache[("mac cycles", node.name)] = _mac_cycles(cfg, g, node)
    return images * per_image / tasks


def _mac_cycles(cfg, g, node) -> float:
    """MAC-array cycles of one image of a plain conv with every lane busy: each tiling, its kernel
    columns folded into channels or not, takes at least that; 0 for what is not a plain conv
    (depthwise, grouped, the space-to-depth stem, fully connected)."""
    if node.op != "conv2d" or node.attrs.get("groups", 1) != 1:
        return 0.0
    s2d = space_to_depth(g)
    if s2d and s2d["conv"] == node.name:
        return 0.0
    co, cig, kh, kw = node.q["weight"].shape
    core = cfg.core
    lanes = core.mac_ci_lanes_int16 if node.q.get("dtype") == "int16" else core.mac_ci_lanes_int8
    ho, wo = node.attrs.get("conv_shape", node.shape)[2:4]
    return ho * wo * kh * ceil(kw * cig / lanes) * co / core.mac_co_lanes


@dataclass
class _SpanBytes:
    """What segment_cost and wide_cost add up over a span whatever the group, once per span."""
    read_bytes: int           # bytes of an image of the external inputs, once per reader
    input_bytes: int          # ... once each (staged: copied in once)
    wide_read_bytes: int      # the same, for wide_cost: inputs whose base value is external
    wide_input_bytes: int
    out_bytes: int            # bytes of an image of the values that escape
    weights: int              # weight bytes of its layers


def _span_bytes(g, nodes, cache: dict | None) -> _SpanBytes:
    key = ("span bytes", id(nodes[0]), id(nodes[-1]), len(nodes))
    hit = cache.get(key) if cache is not None else None
    if hit is None:
        inside = {n.name for n in nodes}
        reads = [b for n in nodes for i, b in zip(n.inputs, _bases(g, n, cache)) if i not in inside]
        ext = [b for n in nodes for b in _bases(g, n, cache) if b not in inside]
        hit = _SpanBytes(*(sum(image_bytes(g.node(v)) for v in vs) for vs in (reads, set(reads), ext, set(ext))),
                         sum(image_bytes(g.node(v)) for v in _escaping(g, nodes, cache)),
                         sum(node_weight_bytes(n) for n in nodes))
        if cache is not None:
            cache[key] = hit
    return hit


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
    return max(comp, io / dram_rate(cfg, tasks)) + KERNEL_OVERHEAD


def _bases(g, node, memo: dict | None) -> tuple[str, ...]:
    """base_value of each of the node's inputs, once per planner run (`memo`: its cache)."""
    if memo is None:
        return tuple(base_value(g, i) for i in node.inputs)
    key = ("bases", node.name)
    hit = memo.get(key)
    if hit is None:
        hit = memo[key] = tuple(base_value(g, i) for i in node.inputs)
    return hit


def _escaping(g, nodes, memo: dict | None) -> set[str]:
    """liveness.escaping, once per span and planner run (`memo`: its cache; not to be changed)."""
    return escaping(g, nodes, memo)


def segment_cost(cfg, g, nodes, group: int, batch: int, clusters: int, staged: bool, lay: dict,
                 cache: dict | None = None, opts: FusionOptions = FusionOptions(), bound: bool = False,
                 searches: int = 0) -> float:
    """Estimated cycles of a segment: per image group, each conv or linear layer's tiling plan on one
    cluster (other layers: a vector estimate) plus a barrier, times the groups a cluster takes; or its DRAM
    bytes, whichever is slower. Unstaged external inputs are read once per reader. `bound`: a lower
    bound of that instead, without a weight-sharing schedule (_tiler_bound for each layer; no layer
    left out of sharing, so the fewest weight reads), searching the tilings of at most `searches`
    layers not priced yet (the bound then holds their prices: _span_choice tightens it so)."""
    cpc = cfg.chip.cores_per_cluster
    if bound and cache is None:
        cache = {}
    n_groups = batch // group
    jobs_run, groups = job_shape(batch, group, clusters)
    dram_share = 1.0 / min(jobs_run, clusters)
    shared = shares_weights(jobs_run, groups, clusters, 1, opts)
    esc = _escaping(g, nodes, cache)
    inside = {n.name for n in nodes}
    gath, sliced, lead1, alone = _shared_steps(cfg, g, nodes, group, jobs_run, staged, lay, opts, cache) \
        if shared and not bound else (None, {}, {}, set())

    def space(v: str) -> str:
        return "sram" if (v in inside and v not in esc) or (staged and v not in inside) else "gdram"

    per_group = 0.0
    for n in nodes:
        if n.op in VIEWS:
            continue
        if n.op in TILED:
            ins = _bases(g, n, cache)
            spaces = (space(ins[0]), "gdram" if n.name in esc else "sram", space(ins[1]) if len(ins) > 1 else "gdram")
            if bound:       # (shared: which layers stay per cluster, and so the search's key, is unknown)
                key = (n.name, group, cpc, dram_share, spaces, opts.prefetch, False, 0) if not shared else None
                if searches and key is not None and key not in cache:
                    searches -= 1
                    tiler_cost(cfg, g, n, lay, group, cpc, dram_share, spaces, cache, prefetch=opts.prefetch)
                per_group += _tiler_bound(cfg, g, n, group, cpc, key, cache) + cfg.cluster.sync_cycles
                continue
            cost = sum(tiler_cost(cfg, g, u, lay, group, cpc, dram_share, spaces, cache, prefetch=opts.prefetch,
                                  staged=shared and n.op == "conv2d" and n.name not in alone,
                                  gathered=jobs_run if n is gath else 0) for u in sliced.get(n.name, [n]))
            # a step filled one step ahead copies its weights SRAM -> WRAM at its start, then meets
            cost += lead1.get(n.name, 0) / (cpc * cfg.dma.sram_bandwidth_bytes_per_cycle)
        else:
            cost = group * _vec_cycles_per_image(cfg, g, n) / cpc + JOB_LAYER_OVERHEAD
        per_group += cost + cfg.cluster.sync_cycles
    if staged:
        per_group += group * _span_bytes(g, nodes, cache).input_bytes / dram_rate(cfg, cpc, dram_share)
    alone_w = sum(node_weight_bytes(n) for n in nodes if n.name in alone)
    compute = ceil(n_groups / min(n_groups, clusters)) * per_group
    return max(compute, segment_dram(cfg, g, nodes, group, batch, clusters, staged, cache, opts, alone_w)) + \
        KERNEL_OVERHEAD


def segment_dram(cfg, g, nodes, group: int, batch: int, clusters: int, staged: bool, cache: dict | None,
                 opts: FusionOptions, alone_w: int = 0) -> float:
    """segment_cost's DRAM time: weights (once for the chip when shared, but the `alone_w` bytes of
    the layers sharing leaves per cluster; else per job, less what stays in WRAM between its
    groups), inputs and escaping values. With alone_w 0 a lower bound of it, needing no schedule."""
    cpc = cfg.chip.cores_per_cluster
    jobs_run, groups = job_shape(batch, group, clusters)
    shared = shares_weights(jobs_run, groups, clusters, 1, opts)
    sb = _span_bytes(g, nodes, cache)
    io = (sb.input_bytes if staged else sb.read_bytes) + sb.out_bytes
    if nodes[0].op == "input":
        io += prod(nodes[0].shape[1:]) * 4
    weights = sb.weights
    kept = min(weights, cfg.wram_bytes * 3 // 4)   # roughly what stays in WRAM between a job's groups
    loads = 1 if shared else jobs_run     # share.py: once for the chip, but for the layers it leaves alone
    dram = loads * (weights - alone_w + (groups - 1) * (weights - kept)) + jobs_run * alone_w + batch * io
    return dram / dram_rate(cfg, min(jobs_run, clusters) * cpc)


def _shared_steps(cfg, g, nodes, group: int, peers: int, staged: bool, lay: dict, opts: FusionOptions,
                  memo: dict | None = None):
    """What share.schedule makes of a segment whose clusters share weights, for pricing: the
    gathered fc (or None), the sliced layers (name -> the slice nodes: each reads all the layer's
    input again), the weight bytes copied at a step's start (lead 1), and the layers left per
    cluster (big ones with no room for a stage: each cluster reads them from DRAM)."""
    gath = nodes[-1] if sh.gathers(g, nodes[-1], _escaping(g, nodes, memo), peers, 1) else None
    extra = sh.gather_buffer(g, nodes, lay, group, peers, gath) if gath else {}
    plan = sram_plan(g, nodes, group, cfg.sram_bytes, lay, staged, extra=extra, memo=memo)
    if plan is None and gath:       # no room for the gather: the fc stays per cluster (as fusion.py does)
        gath, extra = None, {}
        plan = sram_plan(g, nodes, group, cfg.sram_bytes, lay, staged, memo=memo)
    if plan is None:
        return gath, {}, {}, set()
    _plan, steps, _kept = sh.schedule(g, nodes, group, lay, cfg, staged, 1, plan, extra, opts.share_min_bytes, memo)
    sliced: dict = {}
    lead1: dict = {}
    for s in steps:
        if s.slice:
            sliced.setdefault(s.node, []).append(_slice(g.node(s.node), *s.slice, memo))
        if s.stage is not None and s.lead == 1:
            lead1[s.node] = lead1.get(s.node, 0) + s.nbytes
    staged_ = {s.node for s in steps if s.stage is not None}
    alone = {n.name for n in nodes if sh.eligible(n, g) and n.name not in staged_}
    return gath, sliced, lead1, alone


def _slice(node, c0: int, c1: int, memo: dict | None):
    """wide.slice_node, made once per planner run (`memo`: its cache): the planner prices the same
    slices for many spans and group sizes."""
    if memo is None:
        return wide.slice_node(node, c0, c1)
    key = ("slice", node.name, c0, c1)
    hit = memo.get(key)
    if hit is None:
        hit = memo[key] = wide.slice_node(node, c0, c1)
    return hit


def shares_weights(jobs: int, groups: int, clusters: int, per_job: int, opts: FusionOptions) -> bool:
    """Whether a segment's jobs (of `per_job` clusters each) run side by side on all the clusters,
    one image group each, and so share their weights through SRAM (share.py)."""
    return opts.share and jobs * per_job == clusters and jobs > 1 and groups == 1


def wide_cost(cfg, g, nodes, group: int, batch: int, clusters: int, n: int, staged: bool, lay: dict, cache=None,
              opts: FusionOptions = FusionOptions(), bound: bool = False, searches: int = 0) -> float:
    """Estimated cycles of a wide segment with n clusters per job: per image group, each layer's
    slice as its tiler plans it on one cluster (its share of DRAM) plus the exchange; or the DRAM
    bytes (weights once per group, inputs once per cluster or per reader), whichever is slower.
    `bound`: a lower bound of that instead (_tiler_bound), searching the tilings of at most
    `searches` layers not priced yet (segment_cost)."""
    cpc = cfg.chip.cores_per_cluster
    if bound and cache is None:
        cache = {}
    slots = max(1, clusters // n)
    jobs, rounds = job_shape(batch, group, slots)
    active = min(jobs, slots) * n
    esc = _escaping(g, nodes, cache)
    inside = {x.name for x in nodes}
    shared = shares_weights(jobs, rounds, clusters, n, opts)
    per_group = 0.0
    for x in nodes:
        ins = _bases(g, x, cache)
        sp = ["sram" if (i in inside or staged) else "gdram" for i in ins]
        spaces = (sp[0], "sram", sp[1] if len(sp) > 1 else "gdram")
        part = _slice(x, 0, x.q["weight"].shape[0] // n, cache)
        key = (part.name, group, cpc, 1.0 / active, spaces, opts.prefetch, shared, 0)
        if not bound or searches and key not in cache:
            searches -= bound
            price = tiler_cost(cfg, g, part, lay, group, cpc, 1.0 / active, spaces, cache, prefetch=opts.prefetch,
                               staged=shared)
        per_group += _tiler_bound(cfg, g, part, group, cpc, key, cache) if bound else price
        per_group += _exchange(cfg, x, n, group, cache)
        if x.name in esc:
            per_group += group * image_bytes(x) / (n * cpc) / dram_rate(cfg, 1, 1.0, active * cpc)
    sb = _span_bytes(g, nodes, cache)
    reads = sb.wide_input_bytes if staged else sb.wide_read_bytes
    if staged:          # each cluster reads 1/n of the inputs and copies it to the n - 1 others
        per_group += group * reads / n / dram_rate(cfg, cpc, 1.0, active)
        per_group += (n - 1) * dma_cycles(cfg, group * reads / n / cpc, 1, "sram") + cfg.cluster.sync_cycles
    compute = ceil(jobs / slots) * rounds * per_group
    return max(compute, wide_dram(cfg, g, nodes, group, batch, clusters, n, staged, cache, opts)) + KERNEL_OVERHEAD


def wide_dram(cfg, g, nodes, group: int, batch: int, clusters: int, n: int, staged: bool, cache: dict | None,
              opts: FusionOptions) -> float:
    """wide_cost's DRAM time: weights once per group (for the chip when shared), inputs once per
    cluster or per reader, escaping values."""
    cpc = cfg.chip.cores_per_cluster
    slots = max(1, clusters // n)
    jobs, rounds = job_shape(batch, group, slots)
    active = min(jobs, slots) * n
    shared = shares_weights(jobs, rounds, clusters, n, opts)
    sb = _span_bytes(g, nodes, cache)
    reads = sb.wide_input_bytes if staged else sb.wide_read_bytes
    weights = sb.weights
    kept = min(weights, n * cpc * cfg.wram_bytes * 3 // 4) if rounds > 1 else 0
    loads = 1 if shared else jobs     # share.py: once for the chip
    dram = loads * (weights + (rounds - 1) * (weights - kept)) + batch * ((1 if staged else n) * reads + sb.out_bytes)
    return dram / dram_rate(cfg, active * cpc)


def _exchange(cfg, x, n: int, group: int, cache: dict | None) -> float:
    """wide.exchange_cycles of layer x's output over n clusters, once per planner run (`cache`)."""
    key = ("exchange", x.name, n, group)
    hit = cache.get(key) if cache is not None else None
    if hit is None:
        hit = wide.exchange_cycles(cfg, n, group * image_bytes(x), group * int(prod(x.shape[2:])))
        if cache is not None:
            cache[key] = hit
    return hit


def _cut_points(g) -> list[int]:
    """Positions k (before node k) where at most one value computed earlier is still needed."""
    nodes = g.nodes
    last = last_use(g, nodes)
    cuts = [0]
    for k in range(1, len(nodes)):
        live = {base_value(g, n.name) for n in nodes[:k] if last.get(base_value(g, n.name), -1) >= k}
        if len(live) <= 1:
            cuts.append(k)
    cuts.append(len(nodes))
    return cuts


def plan_segments(g, cfg, tasks: int, opts: FusionOptions = FusionOptions(), progress=None) -> list[Segment]:
    """The fused segments (possibly none) that minimise the estimated time of the whole graph
    (or `opts.segments`, when the caller fixes them). `progress("planning fusion", layers, total)`
    as the search passes each cut point (it is a long phase of a big network's compile)."""
    if opts.segments is not None:
        return list(opts.segments)
    cpc = cfg.chip.cores_per_cluster
    batch = g.input.shape[0]
    if tasks < cpc or tasks % cpc or batch < 1:
        return []
    clusters = min(tasks // cpc, cfg.chip.clusters)
    nodes = g.nodes
    lay = layouts(g)
    layer = [layer_cost(cfg, g, n, tasks, batch, lay) for n in nodes]
    cuts = _cut_points(g)
    cache: dict = {}
    groups = [d for d in range(1, batch + 1) if batch % d == 0]
    best: dict[int, tuple[float, list[Segment]]] = {0: (0.0, [])}
    for bi, b in enumerate(cuts[1:], 1):
        if progress:
            progress("planning fusion", cuts[bi - 1], len(nodes))
        cand = None
        for a in cuts[:bi]:
            base, segs = best[a]
            cost, seg = _span_choice(g, cfg, a, b, sum(layer[a:b]), base, cand[0] if cand else None, groups, clusters,
                                     lay, cache, opts)
            total = base + cost
            if cand is None or total < cand[0]:
                cand = (total, segs + ([seg] if seg else []))
        best[b] = cand
    return best[len(nodes)][1]


SLACK = 1 - 1e-9        # a lower bound, scaled by this, stays one whatever its own float rounding


def _span_choice(g, cfg, a: int, b: int, layers: float, base: float, beat: float | None, groups: list[int],
                 clusters: int, lay: dict, cache: dict, opts: FusionOptions) -> tuple[float, Segment | None]:
    """The first of the cheapest ways to run nodes [a, b): layer at a time (`layers` cycles, seg
    None), as a segment of each group size that fits SRAM, as a wide segment of each cluster
    count and group size, in that order. A fused choice whose lower bound (segment_cost and
    wide_cost with `bound`) is no cheaper than the best so far, or that would not bring `base` +
    its cycles below `beat` (the plan_segments candidate to beat), is not priced: it could not
    change what the planner picks, so only answers the planner throws away differ."""
    span = g.nodes[a:b]
    batch = g.input.shape[0]
    best: tuple[float, Segment | None] = (layers, None)

    def futile(lower: float) -> bool:
        lower *= SLACK
        return lower >= best[0] or (beat is not None and base + lower >= beat)

    def hopeless(bound) -> bool:
        """Whether bound(searches) turns futile as the layers' prices come in one search at a time
        (a choice ruled out by its first layers' tilings needs none of the rest)."""
        while True:
            known = len(cache)
            if futile(bound(1)):
                return True
            if len(cache) == known:
                return False

    def placed(gr: int, stages, keep: bool, dram, lower) -> tuple[bool, bool] | None:
        """(staged, futile) of the first of `stages` whose values sram_plan places, or None: no
        stage fits, or each that might is futile (then which one fits does not matter). dram(st),
        the choice's DRAM time, bounds it from below at once (lower(st): the whole bound)."""
        if all(futile(dram(st) + KERNEL_OVERHEAD) for st in stages):
            return None
        passed: list = []         # stages that might fit but are futile, in order
        for st in stages:
            if not sram_may_fit(g, span, gr, cfg.sram_bytes, lay, st, keep, cache):
                continue
            if futile(dram(st) + KERNEL_OVERHEAD) or futile(lower(st)):
                passed.append(st)
                continue
            # worth pricing if the stages before it do not fit after all
            for before in passed:
                if sram_plan(g, span, gr, cfg.sram_bytes, lay, before, keep=keep, memo=cache) is not None:
                    return before, True
            passed = []
            if sram_plan(g, span, gr, cfg.sram_bytes, lay, st, keep=keep, memo=cache) is not None:
                return st, False
        return None

    if len(span) > 1 and all(n.op in ELIGIBLE for n in span) and all(n.op != "input" or k == 0 for k, n in enumerate(span)):
        for gr in groups:
            got = placed(gr, (True, False) if span[0].op != "input" else (False,), False,
                         lambda st: segment_dram(cfg, g, span, gr, batch, clusters, st, cache, opts),
                         lambda st: segment_cost(cfg, g, span, gr, batch, clusters, st, lay, cache, opts, bound=True))
            if got is not None and not got[1] and not hopeless(lambda k: segment_cost(
                    cfg, g, span, gr, batch, clusters, got[0], lay, cache, opts, bound=True, searches=k)):
                cost = segment_cost(cfg, g, span, gr, batch, clusters, got[0], lay, cache, opts)
                if cost < best[0]:
                    best = (cost, Segment(a, b, gr, got[0]))
    if opts.wide and clusters > 1 and wide.eligible(span, g):
        for n in (w for w in (2, 4, 8, 16) if w <= clusters and clusters % w == 0 and wide.divides(span, w)):
            for gr in groups:
                got = placed(gr, (True, False), True,
                             lambda st: wide_dram(cfg, g, span, gr, batch, clusters, n, st, cache, opts),
                             lambda st: wide_cost(cfg, g, span, gr, batch, clusters, n, st, lay, cache, opts, bound=True))
                if got is not None and not got[1] and not hopeless(lambda k: wide_cost(
                        cfg, g, span, gr, batch, clusters, n, got[0], lay, cache, opts, bound=True, searches=k)):
                    cost = wide_cost(cfg, g, span, gr, batch, clusters, n, got[0], lay, cache, opts)
                    if cost < best[0]:
                        best = (cost, Segment(a, b, gr, got[0], n))
    return best


# ---- one segment's placement: what the emitter (fusion.py) follows ---------------------------------
@dataclass
class SegmentPlan:
    """Where a chosen segment's jobs run and its values live, before any code exists."""
    seg: Segment
    nodes: list                       # the graph's nodes [seg.start, seg.end)
    real: list                        # ... without views
    clusters: int                     # clusters the program runs on
    per_job: int                      # clusters per job (a wide segment's n; else 1)
    jobs: int
    rounds: int                       # image groups per job
    peers: int                        # jobs side by side sharing weights through SRAM (share.py); 1: none
    escaping: set                     # values used after the segment (they go to GDRAM)
    gathered: object                  # the last fc split by outputs over gathered images (share.gathers), or None
    addrs: dict                       # SRAM address of each value (and buffer) held in SRAM
    peak: int                         # SRAM bytes the plan uses
    steps: list = field(default_factory=list)       # share.Step per layer or slice, when jobs share weights
    steps_of: dict = field(default_factory=dict)    # layer -> its steps whose weights are staged in SRAM
    kept: frozenset = frozenset()     # a sliced last layer's output, kept in SRAM (share.schedule)

    @property
    def group(self) -> int:
        return self.seg.group

    @property
    def dram_share(self) -> float:
        """Of the chip's DRAM bandwidth, per cluster."""
        return 1.0 / (min(self.jobs, self.clusters // self.per_job) * self.per_job)


def place_segment(g, cfg, tasks: int, seg: Segment, lay: dict, opts: FusionOptions) -> SegmentPlan:
    """The SegmentPlan of `seg` on `tasks` cores: job shape, weight sharing, the gathered fc, SRAM."""
    cpc = cfg.chip.cores_per_cluster
    nodes = g.nodes[seg.start:seg.end]
    real = [n for n in nodes if n.op not in VIEWS]
    group = seg.group
    clusters = min(tasks // cpc, cfg.chip.clusters)
    per_job = seg.wide or 1
    jobs, rounds = job_shape(g.input.shape[0], group, clusters // per_job)
    esc = escaping(g, nodes)
    # clusters that run the same layers side by side share their weights through SRAM (share.py)
    peers = jobs if shares_weights(jobs, rounds, clusters, per_job, opts) else 1
    # a last fc over one pixel is split by outputs instead, over every cluster's images gathered
    # into each cluster's SRAM (share.gathers)
    gath = real[-1] if sh.gathers(g, real[-1], esc, peers, per_job) else None
    gbuf = sh.gather_buffer(g, nodes, lay, group, peers, gath) if gath else {}
    plan = sram_plan(g, nodes, group, cfg.sram_bytes, lay, seg.staged, keep=bool(seg.wide), extra=gbuf)
    if plan is None and gath:
        gath, gbuf = None, {}
        plan = sram_plan(g, nodes, group, cfg.sram_bytes, lay, seg.staged, keep=bool(seg.wide))
    if plan is None:
        raise CompileError(f"segment {nodes[0].name}..{nodes[-1].name}: {group} image(s) of activations do not "
                           f"fit SRAM of {cfg.sram_bytes:,} B")
    sp = SegmentPlan(seg, nodes, real, clusters, per_job, jobs, rounds, peers, esc, gath, *plan)
    if peers > 1:
        (sp.addrs, sp.peak), sp.steps, sp.kept = sh.schedule(g, nodes, group, lay, cfg, seg.staged, per_job, plan,
                                                             gbuf, opts.share_min_bytes)
    for stp in sp.steps:
        if stp.stage is not None:
            sp.steps_of.setdefault(stp.node, []).append(stp)
    if not sp.steps_of and not gath:   # nothing worth sharing: independent jobs, no job-wide barriers
        sp.peers, sp.steps = 1, []
    return sp
