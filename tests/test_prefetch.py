"""Weight prefetch in fused segments (compiler/prefetch.py): a layer's weights load during the
layer before, into WRAM that layer does not use, and the output does not change."""
from __future__ import annotations

import numpy as np
import pytest

from mlusim.compiler import prefetch
from mlusim.compiler.options import FusionOptions
from mlusim.compiler.segments import Segment
from mlusim.compiler.driver import compile_model
from mlusim.compiler.graph import Node
from mlusim.compiler.reference import run_quant
from mlusim.isa.fields import DIR_NAMES
from mlusim.sim import simulate

G2W = DIR_NAMES.index("g2w")
W = 1 << 20


def _node(name, op="conv2d"):
    return Node(name, op, [], {}, {}, (1, 1, 1, 1), [], {})


def test_plan_keeps_each_block_clear_of_the_layer_running_beside_it():
    base = 4096
    metas = [(_node("a"), {"wram_resident_bytes": 200_000, "wram_bytes_used": 200_000}),
             (_node("b"), {"wram_resident_bytes": 300_000, "wram_bytes_used": 300_032}),
             (_node("c"), {"wram_resident_bytes": 250_000, "wram_bytes_used": 250_048}),
             (_node("p", "maxpool"), {}),
             (_node("e"), {"wram_resident_bytes": W, "wram_bytes_used": W}),
             (_node("d"), {"wram_resident_bytes": 0, "wram_bytes_used": 2 * 100_032})]
    plan = prefetch.plan_prefetch(metas, W, base, resident=set())
    assert "e" not in plan and "d" not in plan       # too big for the free WRAM; two blocks per task
    spans = {}
    for n, meta in metas:
        at = plan.get(n.name)
        size = meta.get("wram_resident_bytes", 0)
        spans[n.name] = (at, at + size) if at is not None else (base, base + meta.get("wram_bytes_used", 0))
    order = [n.name for n, _ in metas]
    for k, name in enumerate(order):
        if name in plan:
            a, b = spans[name]
            assert base <= a and b <= W and a % 64 == 0
            lo, hi = spans[order[k - 1]]              # the layer it loads beside (the first: the last)
            assert b <= lo or a >= hi or lo == hi
    assert {"b", "c"} <= set(plan)
    assert plan["b"] >= base + 200_000 and plan["c"] == base     # top beside a's buffers, then the bottom


def test_resident_layers_are_not_prefetched():
    metas = [(_node("a"), {"wram_resident_bytes": 1000, "wram_bytes_used": 1024}),
             (_node("b"), {"wram_resident_bytes": 1000, "wram_bytes_used": 1024})]
    assert set(prefetch.plan_prefetch(metas, W, 2048, resident={"a"})) == {"b"}


def _layer_chunks(stream):
    """A task's instructions cut at its sync.cluster barriers: one chunk per layer (or staging step)."""
    chunks, cur = [], []
    for ins in stream:
        if ins.op.mnemonic == "sync.cluster":
            chunks.append(cur)
            cur = []
        else:
            cur.append(ins)
    return chunks + [cur]


@pytest.fixture(scope="module")
def resnet():
    return compile_model("resnet50", batch=4, resolution=64, tasks=16, cluster_fusion=True)


def test_prefetched_weights_load_in_the_layer_before(resnet):
    """Every weight load of a prefetched layer (told apart by its GDRAM source) sits in the chunk of
    the layer before it, except in a job's very first layer, which has nothing before it."""
    seg = next(k for k in resnet.program.kernels if k.meta.get("op") == "segment" and k.meta["segment"]["prefetched"])
    names = seg.meta["segment"]["layer_names"]
    pre = set(seg.meta["segment"]["prefetched"])
    staged = int(seg.meta["segment"]["staged"])
    weights = {t.name[:-len(".weight")]: (t.addr, t.addr + t.np_dtype.itemsize * int(np.prod(t.shape)))
               for t in resnet.program.tensors if t.name.endswith(".weight")}

    def loads_of(chunk, name):
        a, b = weights[name]
        return [i for i in chunk if i.op.mnemonic == "dma" and i.args["dir"] == G2W and a <= i.args["src"] < b]

    per_group = len(names) + staged
    checked = 0
    for stream in seg.streams:
        chunks = _layer_chunks(stream)
        for i, ch in enumerate(chunks):
            k = i % per_group - staged
            if k < 0 or names[k] not in pre or (k == 0 and i < per_group):
                continue
            before = chunks[i - 1 - (staged if k == 0 else 0)]
            assert not loads_of(ch, names[k]), f"{names[k]} still loads its weights itself"
            checked += len(loads_of(before, names[k]))
    assert checked


def test_prefetched_program_is_exact(resnet):
    x = np.random.default_rng(3).uniform(0, 1, resnet.graph.input.shape).astype(np.float32)
    res = simulate(resnet.program, None, cores=16, inputs={"input": x})
    ref = run_quant(resnet.graph, x)["__output__"]
    assert np.array_equal(res.outputs["output"].view(np.uint32), ref.view(np.uint32))


def test_prefetch_makes_resnet18_batch16_faster():
    """Full size, where weights are most of a deep layer's time: with prefetch (and tilers priced
    for it, and weights staged in SRAM for the clusters to share, share.py) against neither."""
    def cycles(opts=FusionOptions()):
        c = compile_model("resnet18", batch=16, tasks=16, cluster_fusion=opts)
        segs = [k for k in c.program.kernels if k.meta.get("op") == "segment"]
        return simulate(c.program, None, cores=16, timing_only=True).cycles, segs

    fast, segs = cycles()
    assert any(k.meta["segment"]["prefetched"] for k in segs)
    slow, plain = cycles(FusionOptions(prefetch=False, share=False))   # tilers priced without prefetch too
    assert not any(k.meta["segment"]["prefetched"] for k in plain)
    assert fast < 0.9 * slow


# ---- the next image group's float input ----------------------------------------------------------------
G2S = DIR_NAMES.index("g2s")


@pytest.fixture(scope="module")
def streamed():
    """ResNet-18 at 64x64, batch 4 on one cluster, its first layers forced into one segment of four
    one-image groups: the case where the next image's input can stream in."""
    g = compile_model("resnet18", batch=4, resolution=64, tasks=4, cluster_fusion=False).graph
    names = [n.name for n in g.nodes]
    seg = Segment(0, names.index("layer2.0.2.conv") + 1, 1)
    return compile_model("resnet18", batch=4, resolution=64, tasks=4, cluster_fusion=FusionOptions(segments=(seg,)))


def test_next_images_input_is_copied_during_the_group_before(streamed):
    """Each core copies its share of image r+1 from GDRAM into SRAM during image r's layers (never
    during the input layer itself), and the input layer of images 1.. reads SRAM, not GDRAM."""
    seg = streamed.program.kernels[0]
    assert seg.meta["segment"]["input_prefetch"]
    inp = streamed.program.tensor("input")
    per_image = inp.nbytes // 4
    per_layer = len(seg.meta["segment"]["layer_names"])
    copied = {}
    for stream in seg.streams:
        for i, ch in enumerate(_layer_chunks(stream)):
            for ins in ch:
                if ins.op.mnemonic == "dma" and ins.args["dir"] == G2S and inp.addr <= ins.args["src"] < inp.addr + inp.nbytes:
                    img, k = divmod(i, per_layer)
                    assert k > 0                                  # not in the input layer
                    assert (ins.args["src"] - inp.addr) // per_image == img + 1
                    copied[img + 1] = copied.get(img + 1, 0) + ins.args["size"]
    assert copied == {1: per_image, 2: per_image, 3: per_image}


def test_streamed_input_program_is_exact(streamed):
    x = np.random.default_rng(5).uniform(0, 1, streamed.graph.input.shape).astype(np.float32)
    res = simulate(streamed.program, None, cores=4, inputs={"input": x})
    ref = run_quant(streamed.graph, x)["__output__"]
    assert np.array_equal(res.outputs["output"].view(np.uint32), ref.view(np.uint32))


def test_free_region_avoids_every_value_alive_from_the_window_on():
    """Values a (layers 0-1), b (1-3), c (2-4) and the window from layer 3: b and c are alive, a is
    not, unless named in `also`."""
    from mlusim.compiler.graph import Graph
    from mlusim.compiler.liveness import free_region

    class T:       # a device tensor of one image of `n` bytes
        def __init__(self, n):
            self.shape, self.dtype = (1, n), "i8"
    nodes = [Node("a", "relu", [], {}, {}, (1, 8), [], {}), Node("b", "relu", ["a"], {}, {}, (1, 8), [], {}),
             Node("c", "relu", ["b"], {}, {}, (1, 8), [], {}), Node("d", "relu", ["b"], {}, {}, (1, 8), [], {}),
             Node("e", "relu", ["c"], {}, {}, (1, 8), [], {})]
    g = Graph.__new__(Graph)
    g.nodes, g.output, g.extra_outputs = nodes, "e", []
    g.node = {n.name: n for n in nodes}.__getitem__
    lay = {"a": T(1024), "b": T(1024), "c": T(512), "d": T(64), "e": T(64)}
    addrs = {"a": 0, "b": 1024, "c": 2048, "d": 4096, "e": 0}
    assert free_region(g, nodes, 1, lay, addrs, 8192, 1024, 3) == 0              # a is dead by then
    assert free_region(g, nodes, 1, lay, addrs, 8192, 1024, 3, also=("a",)) == 2560
    assert free_region(g, nodes, 1, lay, addrs, 3000, 1024, 3, also=("a",)) is None
