"""Cluster fusion (compiler/fusion.py): segments of layers run in cluster SRAM, bit-exact, within
SRAM, on whole clusters only, and moving less DRAM than layer-at-a-time code."""
from __future__ import annotations

import numpy as np
import pytest

from mlusim.compiler.driver import compile_model
from mlusim.compiler.layout import layouts
from mlusim.compiler.liveness import base_value, device_image_bytes, sram_plan
from mlusim.compiler.segments import plan_segments
from mlusim.compiler.reference import run_quant
from mlusim.config import load_config
from mlusim.errors import SimulationError
from mlusim.isa.fields import DIR_NAMES
from mlusim.report import summarize
from mlusim.sim import simulate


G2W = DIR_NAMES.index("g2w")


def _segments(prog):
    return [k for k in prog.kernels if k.meta.get("op") == "segment"]


def _exact(c, cores, cfg=None, seed=5):
    x = np.random.default_rng(seed).uniform(0, 1, c.graph.input.shape).astype(np.float32)
    out = simulate(c.program, cfg, cores=cores, inputs={"input": x}).outputs["output"]
    ref = run_quant(c.graph, x)["__output__"]
    return np.array_equal(out.view(np.uint32), ref.view(np.uint32))


@pytest.mark.parametrize("name,batch,res,cores", [("resnet50", 4, 64, 16), ("resnet18", 2, 64, 4),
                                                  ("mobilenetv2", 4, 64, 16), ("lenet5", 8, 28, 8)])
def test_fused_programs_are_bit_exact(name, batch, res, cores):
    c = compile_model(name, batch=batch, resolution=res, tasks=cores, cluster_fusion=True)
    segs = _segments(c.program)
    assert segs, "the cost model chose no segment: the test would not exercise fusion"
    for k in segs:       # UNION1, or one union task of all clusters when they share weights (share.py)
        assert k.task_type in ("union1", f"union{cores // 4}") and k.task_dim % 4 == 0
    assert _exact(c, cores)


def test_staged_inputs_and_small_sram_stay_exact():
    """A 64 KiB SRAM forces small groups and short segments (and staging decisions change); the
    output does not."""
    cfg = load_config("mlu270", ["cluster.sram_kib=64"])
    c = compile_model("mobilenetv2", batch=4, resolution=64, tasks=16, config=cfg, cluster_fusion=True)
    big = compile_model("mobilenetv2", batch=4, resolution=64, tasks=16, cluster_fusion=True)
    peaks = [k.meta["segment"]["sram_peak"] for k in _segments(c.program)]
    assert peaks and max(peaks) <= 64 * 1024
    assert [k.name for k in _segments(c.program)] != [k.name for k in _segments(big.program)]
    assert any(k.meta["segment"]["staged"] for k in _segments(c.program) + _segments(big.program))
    assert _exact(c, 16, cfg)


def test_sram_plan_never_overlaps_live_values():
    """Replay the allocator's decisions: values alive at the same node never share bytes."""
    g = compile_model("resnet50", batch=2, resolution=64, tasks=16, cluster_fusion=False).graph
    lay = layouts(g)
    cfg = load_config("mlu270")
    checked = 0
    for seg in plan_segments(g, cfg, 16):
        nodes = g.nodes[seg.start:seg.end]
        addrs, peak = sram_plan(g, nodes, seg.group, cfg.sram_bytes, lay, seg.staged)
        assert peak <= cfg.sram_bytes
        pos = {n.name: k for k, n in enumerate(nodes)}
        span = {}
        for v, a in addrs.items():
            first = pos.get(v, -1)
            last = max([k for k, n in enumerate(nodes) if v in [base_value(g, i) for i in n.inputs]], default=first)
            span[v] = (first, last, a, a + device_image_bytes(lay[v]) * seg.group)
        for v, (f1, l1, a1, b1) in span.items():
            for w, (f2, l2, a2, b2) in span.items():
                if v < w and f1 <= l2 and f2 <= l1:          # alive together
                    assert b1 <= a2 or b2 <= a1, (v, w)
                    checked += 1
    assert checked > 10


def test_fused_programs_need_whole_clusters():
    c = compile_model("resnet18", batch=2, resolution=32, tasks=4, cluster_fusion=True)
    assert _segments(c.program)
    with pytest.raises(SimulationError, match="UNION1.*whole cluster"):
        simulate(c.program, cores=2, timing_only=True)
    assert compile_model("resnet18", batch=2, resolution=32, tasks=2, cluster_fusion=True).program.kernels[0].task_type \
        == "block"     # compiled for 2 cores: nothing to fuse on


def test_fusion_moves_less_dram_than_the_layer_floor_and_is_faster():
    """At batch 16 the activations dominate DRAM traffic; keeping them in SRAM must move less than
    any layer-at-a-time schedule can, and take fewer cycles than this compiler's own."""
    cfg = load_config("mlu270")
    fused = compile_model("resnet50", batch=16, resolution=64, tasks=16, cluster_fusion=True).program
    plain = compile_model("resnet50", batch=16, resolution=64, tasks=16, cluster_fusion=False).program
    sf, sp = (summarize(simulate(p, cfg, cores=16, timing_only=True)) for p in (fused, plain))
    assert sf["dram_bus_bytes"] < fused.meta["layer_traffic_bytes"] <= sp["dram_bus_bytes"]
    assert sf["cycles"] < sp["cycles"]


def test_weights_resident_across_image_groups_stay_exact():
    """A 64 KiB SRAM fits few images, so a job works through several image groups; layers whose
    weights stay in WRAM load them for the first group only, and the output does not change."""
    cfg = load_config("mlu270", ["cluster.sram_kib=64"])
    c = compile_model("resnet18", batch=8, resolution=64, tasks=4, config=cfg, cluster_fusion=True)
    segs = [k.meta["segment"] for k in _segments(c.program)]
    kept = [s for s in segs if s["groups_per_job"] > 1 and s["wram_resident"]]
    assert kept, segs
    for k in _segments(c.program):
        top = k.meta["segment"]["wram_resident_bytes"]
        for st in k.streams:     # the resident region [0, top) of WRAM is loaded once per address
            dsts = [ins.args["dst"] for ins in st if ins.op.mnemonic == "dma" and ins.args["dir"] == G2W
                    and ins.args["dst"] < top]
            assert len(dsts) == len(set(dsts))
    assert any(ins.op.mnemonic == "dma" and ins.args["dir"] == G2W and ins.args["dst"] < s["wram_resident_bytes"]
               for k, s in zip(_segments(c.program), segs) for st in k.streams for ins in st)
    assert _exact(c, 4, cfg)


def test_fused_program_round_trips_through_a_model_file(tmp_path):
    """A fused .mlu (UNION1 kernels, sync.cluster, SRAM DMAs) saves, loads and disassembles; the loaded
    file gives the same cycles and bits."""
    from mlusim import mlufile
    from mlusim.isa.asm import disassemble_program

    c = compile_model("resnet18", batch=4, resolution=32, tasks=8, cluster_fusion=True)
    path = tmp_path / "r18.mlu"
    mlufile.save(c.program, path)
    loaded = mlufile.load(path)
    assert [k.task_type for k in loaded.kernels] == [k.task_type for k in c.program.kernels]
    text = disassemble_program(loaded)
    assert "sync.cluster" in text and "s2n" in text and "n2s" in text
    x = np.random.default_rng(2).uniform(0, 1, c.graph.input.shape).astype(np.float32)
    a = simulate(c.program, cores=8, inputs={"input": x})
    b = simulate(loaded, cores=8, inputs={"input": x})
    assert a.cycles == b.cycles and np.array_equal(a.outputs["output"], b.outputs["output"])


def test_report_times_each_layer_of_a_segment():
    """The report splits a segment's cycles by layer from each job's sync.cluster releases: the names
    are the segment's layers, the parts add up to the jobs' mean duration, and the text shows them."""
    from mlusim.report import render

    c = compile_model("resnet18", batch=8, resolution=64, tasks=8, cluster_fusion=True)
    res = simulate(c.program, cores=8, timing_only=True)
    s = summarize(res)
    segs = [(k, rec) for k, rec in zip(s["kernels"], res.kernels) if k["meta"].get("op") == "segment"]
    assert segs
    for k, rec in segs:
        seg = k["meta"]["segment"]
        names = [layer["name"] for layer in k["layers"]]      # a sliced layer's slices make one row
        assert names == list(dict.fromkeys((["(stage inputs)"] if seg["staged"] else []) + seg["layer_names"]))
        jobs = [j["end"] - j["start"] for j in rec.jobs]
        assert len(jobs) == (1 if seg["shared_by"] > 1 else seg["jobs"])    # sharing: one union task
        assert sum(layer["cycles"] for layer in k["layers"]) == pytest.approx(sum(jobs) / len(jobs))
        assert max(jobs) <= k["cycles"]
        assert all(layer["cycles"] > 0 for layer in k["layers"])
    text = render(res, s)
    last = [x["layer"] for x in s["layers"] if x["fused"]][-1]      # (dequantize output) -> <output>.dequantize
    assert "indented rows: the layers of a fused segment" in text and f"  {last} " in text
