"""Per-layer results (mlusim/layers.py): keyed by layer name, layers inside fused kernels included,
every figure recomputed from the engine's counters, the same layer matched across core counts."""
from __future__ import annotations

import numpy as np
import pytest
from conftest import I, tensors

from mlusim.compiler.driver import compile_model
from mlusim.cores.dma import operand
from mlusim.layers import TRAFFIC_FIELDS
from mlusim.program import Kernel, Program, TensorDecl
from mlusim.report import summarize
from mlusim.sim import simulate

KIB = 1024


@pytest.fixture(scope="module")
def resnet_runs():
    """ResNet-18 at 64x64: plain kernels on 1 core, one fused segment on 4, a four-cluster job
    sharing weights at batch 16 on 16."""
    out = {}
    for cores, batch in ((1, 1), (4, 1), (16, 16)):
        prog = compile_model("resnet18", batch=batch, resolution=64, tasks=cores).program
        out[cores] = summarize(simulate(prog, cores=cores, timing_only=True))
    return out


def test_layers_add_up_to_the_run(resnet_runs):
    for s in resnet_runs.values():
        layers = s["layers"]
        assert sum(x["cycles"] for x in layers) == pytest.approx(s["cycles"])
        assert sum(x["macs"] for x in layers) == s["macs"]
        assert sum(x["dram_bytes"] for x in layers) == pytest.approx(s["dram_bus_bytes"])
        starved = sum(c["cp_starved"] for c in s["per_core"])
        assert sum(x["stall_cycles"] * x["cores_ran"] for x in layers) == pytest.approx(starved)
        assert [x["layer_id"] for x in layers] == list(range(len(layers)))


def test_fused_layers_keep_their_names_and_macs_at_every_core_count(resnet_runs):
    """The engine's MACs of each layer are the same whether it ran as its own kernel (1 core) or
    inside a fused segment's jobs (4 and 16 cores): the step boundaries are in the right places."""
    plain = {x["layer"]: x for x in resnet_runs[1]["layers"]}
    assert not any(x["fused"] for x in plain.values())
    for cores in (4, 16):
        s = resnet_runs[cores]
        fused = [x for x in s["layers"] if x["fused"]]
        assert len(fused) > 15
        batch = s["program"]["batch"]
        for x in fused:
            assert x["layer"] in plain, x["layer"]        # the same names as the unfused program's
            assert x["macs"] == batch * plain[x["layer"]]["macs"], (cores, x["layer"])
            assert x["start"] <= x["end"] and x["cycles"] > 0
            assert 0 <= x["mac_utilization"] <= 1 and x["stall_cycles"] <= x["cycles"]


def test_layer_figures_are_their_counters_arithmetic(resnet_runs, mlu270):
    peak = mlu270.core.mac_int8_per_cycle
    for s in resnet_runs.values():
        for x in s["layers"]:
            secs = x["cycles"] / (mlu270.chip.clock_mhz * 1e6)
            assert x["mac_utilization"] == pytest.approx(x["macs"] / (x["cycles"] * peak * x["cores_used"]))
            if x["mac_busy"]:
                assert x["compute_utilization"] == pytest.approx(x["macs"] / (x["mac_busy"] * peak))
            moved = x["dram_weights_read"] + x["dram_weights_write"]
            assert x["dram_weights_gbps"] == pytest.approx(moved / secs / 1e9)
            assert x["dram_gbps"] == pytest.approx(x["dram_bytes"] / secs / 1e9)


def test_operands_follow_where_a_transfer_goes():
    assert operand("gdram", "wram", False) == "weights"
    assert operand("gdram", "nram", True) == "weights"       # a constant tensor (bias, scales)
    assert operand("gdram", "nram", False) == "input"
    assert operand("sram", "nram", False) == "input"
    assert operand("nram", "gdram", False) == "output"
    assert operand("nram", "sram", False) == "output"
    assert operand("sram", "gdram", False) == "output"


def test_engine_counts_bytes_by_operand(mlu270):
    """A conv's weights from a constant tensor into WRAM, its input into NRAM, its output back."""
    w = TensorDecl("w", "const", "i8", (64 * KIB,), -1)
    x = TensorDecl("x", "input", "i8", (32 * KIB,), -1)
    y = TensorDecl("y", "output", "i8", (16 * KIB,), -1)
    g = tensors(w, x, y)
    w.data = np.zeros(64 * KIB, np.int8)
    s = [I("dma", dir="g2w", dst=0, src=w.addr, size=64 * KIB),
         I("dma", dir="g2n", dst=0, src=x.addr, size=32 * KIB),
         I("dma", dir="n2g", dst=y.addr, src=0x10000, size=16 * KIB)]
    prog = Program([Kernel("k", "block", 1, [s], meta={"layer": "conv", "op": "conv2d"})], g)
    lay = summarize(simulate(prog, mlu270, cores=1, timing_only=True))["layers"]
    assert len(lay) == 1 and lay[0]["layer"] == "conv"
    got = {k: lay[0][k] for k in TRAFFIC_FIELDS if lay[0][k]}
    assert got == {"dram_weights_read": 64 * KIB, "dram_input_read": 32 * KIB, "dram_output_write": 16 * KIB}


def test_a_layer_in_two_kernels_is_one_row(mlu270):
    g = tensors(TensorDecl("g", "scratch", "i8", (64 * KIB,), -1))
    load = [I("dma", dir="g2n", dst=0, src=g[0].addr, size=64 * KIB)]
    prog = Program([Kernel("a1", "block", 1, [load], meta={"layer": "a"}),
                    Kernel("b", "block", 1, [load], meta={"layer": "b"}),
                    Kernel("a2", "block", 1, [load], meta={"layer": "a"})], g)
    res = simulate(prog, mlu270, cores=1, timing_only=True)
    lay = summarize(res)["layers"]
    assert [x["layer"] for x in lay] == ["a", "b"]
    a = lay[0]
    k1, _, k2 = res.kernels
    assert a["cycles"] == k1.cycles + k2.cycles and a["start"] == k1.start and a["end"] == k2.end
    assert a["kernel"] == "a1+a2" and a["dram_input_read"] == 2 * 64 * KIB
