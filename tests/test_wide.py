"""Wide segments (compiler/wide.py): conv layers split by output channel across the clusters of a
UNIONn job, slices exchanged cluster to cluster; exact, chosen where they pay, reported per layer."""
from __future__ import annotations

import numpy as np
import pytest

from mlusim.compiler import wide
from mlusim.compiler.options import FusionOptions
from mlusim.compiler.segments import Segment, plan_segments
from mlusim.compiler.driver import compile_model
from mlusim.compiler.reference import run_quant
from mlusim.config import load_config
from mlusim.report import summarize
from mlusim.sim import simulate


def test_channel_shares_partition_a_conv():
    g = compile_model("resnet18", batch=1, resolution=32, cluster_fusion=False).graph
    conv = next(n for n in g.nodes if n.name == "layer4.0.2.conv")
    parts = [wide.part(conv, c, 4) for c in range(4)]
    co = conv.q["weight"].shape[0]
    assert [p.attrs["out_slice"] for p in parts] == [(c * co // 4, co) for c in range(4)]
    assert np.array_equal(np.concatenate([p.q["weight"] for p in parts]), conv.q["weight"])
    assert np.array_equal(np.concatenate([p.q["mult"] for p in parts]), conv.q["mult"])
    assert len({p.name for p in parts}) == 4 and all(p.shape[1] == co // 4 for p in parts)


def _forced(first: str, last: str, group: int, clusters: int, staged: bool):
    """ResNet-50 (batch 4, 64x64) on 16 cores with layers first..last forced into one wide segment."""
    cfg = load_config("mlu270")
    g = compile_model("resnet50", batch=4, resolution=64, tasks=16, cluster_fusion=False).graph
    names = [n.name for n in g.nodes]
    a, b = names.index(first), names.index(last) + 1
    segs = [s for s in plan_segments(g, cfg, 16) if s.end <= a or s.start >= b]
    segs = sorted(segs + [Segment(a, b, group, staged, clusters)], key=lambda s: s.start)
    return compile_model("resnet50", batch=4, resolution=64, tasks=16, cluster_fusion=FusionOptions(segments=tuple(segs)))


@pytest.mark.parametrize("first,group,clusters,staged", [("layer4.0.1.conv", 2, 2, False),
                                                         ("layer3.0.1.conv", 1, 4, True)])
def test_wide_segments_are_bit_exact(first, group, clusters, staged):
    """Two jobs of two clusters, and one job of four working through image groups with staged
    inputs, resident and prefetched weights: the output equals the reference bit for bit."""
    c = _forced(first, "layer4.2.3.conv", group, clusters, staged)
    k = next(k for k in c.program.kernels if k.meta.get("segment", {}).get("wide"))
    shared = k.meta["segment"]["shared_by"] > 1      # jobs sharing weights: one union task of all
    assert k.task_type == f"union{4 if shared else clusters}" and k.meta["segment"]["wide"] == clusters
    text = "\n".join(str(i) for i in k.streams[0])
    assert "s2s" in text and "sync.all" in text
    x = np.random.default_rng(2).uniform(0, 1, c.graph.input.shape).astype(np.float32)
    res = simulate(c.program, None, cores=16, inputs={"input": x})
    assert np.array_equal(res.outputs["output"].view(np.uint32), run_quant(c.graph, x)["__output__"].view(np.uint32))
    s = summarize(res)
    seg = next(kk for kk in s["kernels"] if kk["meta"].get("segment", {}).get("wide"))
    rec = next(r for r in res.kernels if r.name == seg["name"])
    names = [layer["name"] for layer in seg["layers"]]
    assert names == (["(stage inputs)"] if staged else []) + seg["meta"]["segment"]["layer_names"]
    jobs = [j["end"] - j["start"] for j in rec.jobs]
    assert sum(layer["cycles"] for layer in seg["layers"]) == pytest.approx(sum(jobs) / len(jobs))
    # boundaries in the right places: no layer takes less than its MACs at the job's peak rate
    cfg = res.config
    peak = clusters * cfg.chip.cores_per_cluster * cfg.core.mac_int8_per_cycle
    groups = seg["meta"]["segment"]["groups_per_job"]
    for layer in seg["layers"]:
        if layer["name"] != "(stage inputs)":
            node = c.graph.node(layer["name"])
            macs = group * groups * int(np.prod(node.shape[1:])) * int(np.prod(node.q["weight"].shape[1:]))
            assert layer["cycles"] >= macs / peak, layer["name"]


def test_wide_segment_is_chosen_where_it_pays():
    """ResNet-50 at batch 1 on 16 cores: one image cannot keep four one-cluster jobs busy, so the
    planner splits the deep layers' channels over all four clusters, and that beats every plan
    without wide segments. (At batch 16 the four clusters' jobs share their weights instead,
    share.py, and wide segments no longer pay.)"""
    c = compile_model("resnet50", batch=1, tasks=16, cluster_fusion=True)
    assert any(k.meta["segment"]["wide"] == 4 for k in c.program.kernels if k.meta.get("op") == "segment")
    cycles = simulate(c.program, None, cores=16, timing_only=True).cycles
    plain = compile_model("resnet50", batch=1, tasks=16, cluster_fusion=FusionOptions(wide=False))
    assert not any(k.meta.get("segment", {}).get("wide") for k in plain.program.kernels)
    assert cycles < simulate(plain.program, None, cores=16, timing_only=True).cycles


def test_staged_inputs_cross_dram_once_per_job():
    """A staged wide segment's clusters each read their 1/n of the input group from DRAM and copy it
    to the others: over the job, every input byte is read once and arrives n - 1 times by s2s."""
    from mlusim.isa.fields import DIR_NAMES

    c = _forced("layer3.0.1.conv", "layer4.2.3.conv", 1, 4, True)
    k = next(k for k in c.program.kernels if k.meta.get("segment", {}).get("wide"))
    g2s, s2s = DIR_NAMES.index("g2s"), DIR_NAMES.index("s2s")
    src = c.program.tensor(c.graph.node("layer3.0.1.conv").inputs[0] + ".out")
    per_image = src.nbytes // 4
    read = [i for st in k.streams for i in st if i.op.mnemonic == "dma" and i.args["dir"] == g2s
            and src.addr <= i.args["src"] < src.addr + src.nbytes]
    assert sum(i.args["size"] for i in read) == 4 * per_image                   # 4 groups of one image
    assert sorted(i.args["src"] - src.addr for i in read) == sorted({i.args["src"] - src.addr for i in read})
    staged = {i.args["dst"] for i in read}
    copies = [i for st in k.streams for i in st if i.op.mnemonic == "dma" and i.args["dir"] == s2s
              and i.args["dst"] in staged and i.args["count"] == 1]
    assert sum(i.args["size"] for i in copies) == 3 * 4 * per_image
