"""Sizes and lifetimes of the values in a span of layers, and their offline placement in SRAM.

What cluster fusion (fusion.py) and wide segments (wide.py) both need to know about a span before
emitting it: which values it reads from before it, which it leaves for after it, when each value
inside it dies, and where each lives in the cluster's SRAM.
"""
from __future__ import annotations

from bisect import insort
from itertools import accumulate
from math import prod

VIEWS = ("flatten", "reshape")
ALIGN = 64


def aligned(n: int) -> int:
    """n rounded up to the 64-byte alignment of every scratchpad buffer."""
    return -(-n // ALIGN) * ALIGN


def group_bytes(t, group: int) -> int:
    """Bytes `group` images of a value take in SRAM, aligned (t: its layout, layout.layouts)."""
    return aligned(device_image_bytes(t) * group)


def element_bytes(node) -> int:
    return 2 if node.q.get("dtype") == "int16" else 1


def image_bytes(node) -> int:
    """Bytes of one image of a node's (quantized) value, by its graph shape (for cost estimates)."""
    return prod(node.shape[1:]) * element_bytes(node)


def device_image_bytes(t) -> int:
    """Bytes of one image of a value as the device holds it (layout.layouts: the space-to-depth input
    is padded, so the graph shape would under-count it)."""
    return prod(t.shape[1:]) * {"f32": 4, "i16": 2}.get(t.dtype, 1)


def base_value(g, name: str) -> str:
    """Views (flatten/reshape) alias their input."""
    node = g.node(name)
    while node.op in VIEWS:
        node = g.node(node.inputs[0])
    return node.name


def escaping(g, nodes, memo: dict | None = None) -> set[str]:
    """Values of the span that are used after it (or are the graph's output): they go to GDRAM.
    `memo`: the planner's cache (see sram_plan), where the answer is kept (not to be changed)."""
    if memo is not None and nodes:
        key = ("escaping", id(nodes[0]), id(nodes[-1]), len(nodes))
        hit = memo.get(key)
        if hit is None:
            span = _span(g, nodes, memo)
            hit = memo[key] = _escaping(g, nodes) if span is None else _escaping_span(g, nodes, span, memo)
        return hit
    return _escaping(g, nodes)


def _escaping(g, nodes) -> set[str]:
    inside = {n.name for n in nodes}
    out = set()
    for n in g.nodes:
        if n.name in inside:
            continue
        for i in n.inputs:
            if i in inside:
                out.add(base_value(g, i))
    for o in g.outputs:
        if o in inside:
            out.add(base_value(g, o))
    return out


def _span(g, nodes, memo: dict) -> tuple[int, int] | None:
    """[a, b): where `nodes` sits in the graph's node list, when it is a run of it (a planner's span)."""
    pos = _graph_facts(g, memo)["position"]
    a = pos.get(nodes[0].name)
    if a is None or g.nodes[a] is not nodes[0] or a + len(nodes) > len(g.nodes) or \
            g.nodes[a + len(nodes) - 1] is not nodes[-1]:
        return None
    return a, a + len(nodes)


def _graph_facts(g, memo: dict) -> dict:
    """Once per planner run (memo): each node's position, the first and last positions reading
    each value, and base_value of every name (views resolved)."""
    facts = memo.get("graph facts")
    if facts is None:
        position: dict[str, int] = {}
        readers: dict[str, tuple[int, int]] = {}
        for k, n in enumerate(g.nodes):
            position.setdefault(n.name, k)
            for i in n.inputs:
                lo, _hi = readers.get(i, (k, k))
                readers[i] = (lo, k)
        base = {n.name: base_value(g, n.name) for n in g.nodes}
        facts = memo["graph facts"] = {"position": position, "readers": readers, "base": base}
    return facts


def _escaping_span(g, nodes, span: tuple[int, int], memo: dict) -> set[str]:
    """_escaping of the run [a, b) of the graph's nodes: a value read at a position outside it."""
    a, b = span
    facts = _graph_facts(g, memo)
    readers, base = facts["readers"], facts["base"]
    out = set()
    for n in nodes:
        r = readers.get(n.name)
        if r is not None and (r[0] < a or r[1] >= b):
            out.add(base[n.name])
    inside = {n.name for n in nodes}
    for o in g.outputs:
        if o in inside:
            out.add(base[o])
    return out


def _base_of(g, memo: dict | None):
    """base_value(g, name) as a function of the name; from the planner's table when it has one."""
    if memo is None:
        return lambda name: base_value(g, name)
    base = _graph_facts(g, memo)["base"]
    return lambda name: base[name] if name in base else base_value(g, name)


def last_use(g, nodes, memo: dict | None = None) -> dict[str, int]:
    """Index in `nodes` of the last node reading each value (views resolved to their base)."""
    base = _base_of(g, memo)
    last: dict[str, int] = {}
    for k, n in enumerate(nodes):
        for i in n.inputs:
            last[base(i)] = k
    return last


def external_inputs(g, nodes, memo: dict | None = None) -> list[str]:
    """Values the span reads that are computed before it (by base name, in first-use order)."""
    base = _base_of(g, memo)
    inside = {n.name for n in nodes}
    out: list[str] = []
    for n in nodes:
        for i in n.inputs:
            b = base(i)
            if b not in inside and b not in out:
                out.append(b)
    return out


def _span_memo(memo: dict | None, what: str, nodes, make):
    """make(), once per span and planner run (`memo`; the answer is not to be changed): the planner
    asks for a span's lifetimes with and without staging and keeping, per group size."""
    if memo is None or not nodes:
        return make()
    key = (what, id(nodes[0]), id(nodes[-1]), len(nodes))
    hit = memo.get(key)
    if hit is None:
        hit = memo[key] = make()
    return hit


def lifetimes(g, nodes, stage: bool = False, keep: bool | frozenset = False, memo: dict | None = None
              ) -> dict[str, tuple[int, int]]:
    """(first, last) layer index of each value sram_plan places: from the layer that writes it
    (staged inputs: -1, before the first) to the last that reads it. `memo`: the planner's cache
    (sram_plan)."""
    esc = escaping(g, nodes, memo)
    last = _span_memo(memo, "last use", nodes, lambda: last_use(g, nodes, memo))
    life: dict[str, tuple[int, int]] = {v: (-1, last.get(v, -1)) for v in (
        _span_memo(memo, "external inputs", nodes, lambda: external_inputs(g, nodes, memo)) if stage else [])}
    for k, n in enumerate(nodes):
        if n.op not in VIEWS and (keep is True or n.name in (keep or ()) or n.name not in esc):
            life[n.name] = (k, max(k, last.get(n.name, k)))
    return life


def free_region(g, nodes, group: int, lay: dict, addrs: dict[str, int], capacity: int, size: int,
                k0: int, also: tuple[str, ...] = (), life: dict | None = None) -> int | None:
    """The lowest SRAM offset where `size` bytes touch no value sram_plan placed that is alive at
    any layer from `k0` on, nor the values in `also` (whenever they live); None if there is none.
    `life`: lifetimes(g, nodes), when the caller already has it."""
    life = lifetimes(g, nodes) if life is None else life
    busy = sorted((addrs[v], addrs[v] + group_bytes(lay[v], group))
                  for v, (f, l_) in life.items() if v in addrs and (l_ >= k0 or v in also))
    return lowest_fit(busy, size, capacity)


def lowest_fit(busy, size: int, capacity: int) -> int | None:
    """The lowest offset where `size` bytes miss every (start, end) in `busy`; None past `capacity`."""
    at = 0
    for a, b in sorted(busy):
        if at + size <= a:
            break
        at = max(at, b)
    return at if at + size <= capacity else None


def sram_plan(g, nodes, group: int, capacity: int, lay: dict, stage: bool = False, keep: bool | frozenset = False,
              extra: dict[str, tuple[int, int, int]] | None = None, memo: dict | None = None
              ) -> tuple[dict[str, int], int] | None:
    """SRAM addresses for the span's internal values and, when `stage`, for its external inputs too
    (copied in once at the start, so the layers that read them, often two, read SRAM instead of
    DRAM); the peak; None if they do not fit.

    Lifetimes are known before anything runs, so placement is offline, TFLite's "greedy by size":
    largest value first, each at the lowest offset clear of every placed value alive at the same
    time. A value lives from the layer that writes it (staged inputs: from the start) to the last
    layer that reads it; a layer's output never shares bytes with its inputs. `keep`: values used
    after the span get SRAM too (a wide segment stores them from there), or those named. `extra`:
    other buffers to place, name -> (bytes, first layer, last layer). `memo`: a dict the caller keeps
    while neither the graph nor `lay` changes (segments.plan_segments asks about the same span for
    several group sizes), for the spans' lifetimes and sizes and for whole answers."""
    if memo is None or not nodes:
        return _place(g, nodes, group, capacity, lay, stage, keep, extra, memo)
    key = ("sram_plan", id(nodes[0]), id(nodes[-1]), len(nodes), stage, keep, group, capacity,
           tuple(sorted((extra or {}).items())))
    if key not in memo:     # the planner asks again for each wide segment's cluster count
        memo[key] = _place(g, nodes, group, capacity, lay, stage, keep, extra, memo)
    hit = memo[key]
    return None if hit is None else (dict(hit[0]), hit[1])


def sram_may_fit(g, nodes, group: int, capacity: int, lay: dict, stage: bool, keep: bool | frozenset,
                 memo: dict) -> bool:
    """False when sram_plan (without `extra`) would answer None for a reason found without placing
    anything (a view made outside a staged span, too many bytes alive at one layer); True when its
    answer could be a plan. The planner asks this first and places only where it must."""
    key = ("sram_plan", id(nodes[0]), id(nodes[-1]), len(nodes), stage, keep, group, capacity, ())
    if key in memo:
        return memo[key] is not None
    return _too_full(g, nodes, group, capacity, lay, stage, keep, memo) is not None


def _too_full(g, nodes, group: int, capacity: int, lay: dict, stage: bool, keep, memo
              ) -> tuple[dict, dict] | None:
    """None when the span's values cannot fit `capacity` whatever the placement (as _place finds
    out first), else their lifetimes and sizes (_life_and_size)."""
    if stage and _outside_view(g, nodes, memo):
        return None          # a view made outside the span: read it where it is
    over = ("overflows from", id(nodes[0]), id(nodes[-1]), len(nodes), stage, keep, capacity) \
        if memo is not None else None
    if over is not None and group >= memo.get(over, group + 1):
        return None          # a smaller group's values alone overflowed (their bytes grow with the group)
    life, size, peak = _life_and_size(g, nodes, group, lay, stage, keep, memo, capacity)
    if peak > capacity:     # what is alive at one layer alone overflows: no placement fits
        if over is not None:
            memo[over] = min(group, memo.get(over, group))
        return None
    return life, size


def _place(g, nodes, group: int, capacity: int, lay: dict, stage: bool, keep, extra, memo
           ) -> tuple[dict[str, int], int] | None:
    """sram_plan without its memo of whole answers."""
    fits = _too_full(g, nodes, group, capacity, lay, stage, keep, memo)
    if fits is None:
        return None
    life, size = fits
    if extra:           # buffers that are not values (share.py's stages)
        life, size = dict(life), dict(size)
        for v, (nbytes, f, l_) in extra.items():
            life[v], size[v] = (f, l_), aligned(nbytes)
        if _peak_live(life, size) > capacity:
            return None
    return _greedy(life, size, capacity)


def _greedy(life: dict, size: dict, capacity: int) -> tuple[dict[str, int], int] | None:
    """Largest first, each at the lowest offset clear of the placed values alive with it (lowest_fit,
    walking the placed values in address order instead of sorting the ones in the way each time)."""
    placed: list[tuple[int, int, int, int]] = []        # (start, end, first, last), in address order
    addrs: dict[str, int] = {}
    top = 0
    for v in sorted(life, key=lambda v: (-size[v], life[v])):
        f, l_ = life[v]
        nbytes = size[v]
        at = 0
        for a, b, f2, l2 in placed:
            if f2 <= l_ and f <= l2:
                if at + nbytes <= a:
                    break
                if b > at:
                    at = b
        if at + nbytes > capacity:
            return None
        addrs[v] = at
        insort(placed, (at, at + nbytes, f, l_))
        top = max(top, at + nbytes)
    return addrs, top


def _outside_view(g, nodes, memo: dict | None) -> bool:
    """Whether the span reads a view made before it."""
    key = ("outside_view", id(nodes[0]), id(nodes[-1]), len(nodes))
    hit = memo.get(key) if memo is not None else None
    if hit is None:
        inside = {n.name for n in nodes}
        hit = any(i not in inside and base_value(g, i) != i for n in nodes for i in n.inputs)
        if memo is not None:
            memo[key] = hit
    return hit


def _peak_live(life: dict, size: dict) -> int:
    """The most bytes alive at any one layer (values whose (first, last) layers include it). A
    placement keeps those apart, so none fits in less: the greedy placement fails on such spans
    anyway, and the planner asks about many (long spans, big image groups)."""
    if not life:
        return 0
    first = min(f for f, _l in life.values())
    delta = [0] * (max(l_ for _f, l_ in life.values()) - first + 2)
    for v, (f, l_) in life.items():
        delta[f - first] += size[v]
        delta[l_ + 1 - first] -= size[v]
    return max(0, max(accumulate(delta)))


def _life_and_size(g, nodes, group: int, lay: dict, stage: bool, keep, memo: dict | None, capacity: int
                   ) -> tuple[dict, dict | None, int]:
    """sram_plan's lifetimes and sizes of the span's values (the memo's own dicts: not to be
    changed), and the most bytes alive at one layer (_peak_live). With a memo, a group whose
    unaligned bytes alone exceed `capacity` gets no sizes (None) and that lower bound as its peak:
    the planner asks about many such (long spans, big image groups)."""
    if memo is None or not nodes:
        life = lifetimes(g, nodes, stage, keep)
        size = {v: group_bytes(lay[v], group) for v in life}
        return life, size, _peak_live(life, size)
    span = ("sram_plan", id(nodes[0]), id(nodes[-1]), len(nodes), stage, keep)
    per_image = memo.setdefault("device_image_bytes", {})
    facts = memo.get(span)
    if facts is None:
        life = lifetimes(g, nodes, stage, keep, memo)
        for v in life:
            if v not in per_image:
                per_image[v] = device_image_bytes(lay[v])
        first = min((f for f, _l in life.values()), default=0)
        # (value, first, last + 1) from the first layer: _peak_live's walk, laid out once per span
        items = [(v, f - first, l_ + 1 - first) for v, (f, l_) in life.items()]
        facts = memo[span] = life, _peak_live(life, per_image), items, max((i[2] for i in items), default=0) + 1
    life, one, items, width = facts
    hit = memo.get(span + (group,))
    if hit is None or (hit[0] is None and hit[1] <= capacity):
        if group * one > capacity:         # aligning only adds bytes
            hit = None, group * one
        else:
            size = {v: aligned(per_image[v] * group) for v in life}
            delta = [0] * width
            for v, f, end in items:
                delta[f] += size[v]
                delta[end] -= size[v]
            hit = size, max(0, max(accumulate(delta))) if items else 0
        memo[span + (group,)] = hit
    return life, hit[0], hit[1]


def split_bytes(n: int, parts: int) -> list[tuple[int, int]]:
    """[0, n) in `parts` runs cut at multiples of 64 bytes."""
    step = aligned(-(-n // parts))
    return [(min(n, i * step), min(n, (i + 1) * step)) for i in range(parts)]
