"""The per-cluster schedule (the MLU370 vendor runtime's): how a batch is split, the fc head, and
that it computes what the spread schedule computes."""
from __future__ import annotations

import numpy as np
import pytest

from mlusim.compiler import zoo
from mlusim.config import load_config
from mlusim.schedule import head_start, plan_per_cluster, run_per_cluster
from mlusim.sim import simulate


@pytest.fixture(scope="module")
def s4():
    return load_config("mlu370-s4")


@pytest.fixture(scope="module")
def s4_int8():
    """The S4 with int8 fully connected layers: LeNet's and MNIST's heads then weigh what their
    trunks' tests assume (the preset's 2-byte head weights would dominate their DRAM bytes)."""
    return load_config("mlu370-s4", ["runtime.linear_dtype=int8"])


def test_head_is_the_per_image_vector_suffix():
    g = zoo.build("vgg16", 1, 32)
    k = head_start(g)
    assert g.nodes[k - 1].op == "maxpool" and {n.op for n in g.nodes[k:]} >= {"flatten", "linear"}
    assert all(len(n.shape) <= 2 for n in g.nodes[k:])


@pytest.mark.parametrize("batch,per,clusters", [(1, 1, 1), (4, 1, 4), (6, 1, 6), (8, 2, 4), (13, 3, 5)])
def test_batch_split_over_clusters(s4, batch, per, clusters):
    plan = plan_per_cluster("mnist", batch, s4, s4.chip.cores)
    assert (plan.per_cluster, plan.clusters, plan.chip_clusters) == (per, clusters, 6)
    assert all(k.task_dim <= s4.chip.cores_per_cluster for k in plan.trunk.kernels)
    assert plan.head is not None and plan.trunk.tensor("input").shape[0] == per


def test_per_cluster_outputs_equal_the_spread_schedule(s4_int8):
    """Same quantization, exact integer arithmetic: splitting the batch changes time, not results
    (batch 7 on 6 clusters: groups of 2, the last padded)."""
    from mlusim.compiler.driver import compile_model

    s4 = s4_int8
    plan = plan_per_cluster("mnist", 7, s4, s4.chip.cores)
    got = run_per_cluster(plan, s4).outputs["output"]
    spread = compile_model("mnist", batch=7, config=s4, tasks=s4.chip.cores, cluster_fusion=True).program
    want = simulate(spread, s4).outputs["output"]
    assert got.shape == want.shape == (7, 10)
    np.testing.assert_array_equal(got, want)


def test_clusters_side_by_side_share_dram(s4_int8):
    """Batch 6 runs six trunks at once: each as long as batch 1's, unless their DRAM bytes
    together need longer at the chip's bandwidth; never shorter than one trunk."""
    from mlusim.schedule import side_by_side

    s4 = s4_int8
    plan1 = plan_per_cluster("lenet5", 1, s4, 24)
    one = run_per_cluster(plan1, s4, timing_only=True)
    six = run_per_cluster(plan_per_cluster("lenet5", 6, s4, 24), s4, timing_only=True)
    assert one.cycles <= six.cycles < 6 * one.cycles
    trunk = simulate(plan1.trunk, s4, cores=4, timing_only=True).dram_bytes
    assert six.dram_bytes - one.dram_bytes >= 5 * trunk > 0     # five more trunks; the head's weights once

    class Trunk:
        cycles, dram_bytes = 1000.0, 200_000.0
    bw = s4.dram_bytes_per_cycle
    assert side_by_side(Trunk, s4, 1) == 1000.0
    assert side_by_side(Trunk, s4, 6) == pytest.approx(max(1000.0, 6 * 200_000 / bw))


def test_fewer_cores_run_the_head_on_those_cores(s4_int8):
    """`--cores 8`: two clusters' trunks, and the head tiled for 8 cores runs on those 8, not on
    the chip's 24 (the run and its report are of 8 cores; its outputs equal the 24-core run's)."""
    plan8 = plan_per_cluster("lenet5", 2, s4_int8, 8)
    res = run_per_cluster(plan8, s4_int8)
    assert plan8.chip_clusters == 2 and max(k.task_dim for k in plan8.head.kernels) <= 8
    assert res.cores == 8
    full = run_per_cluster(plan_per_cluster("lenet5", 2, s4_int8, 24), s4_int8)
    assert full.cores == 24
    np.testing.assert_array_equal(res.outputs["output"], full.outputs["output"])


def test_run_defaults_follow_the_configs_kernels(s4):
    """`mlusim run NAME --config mlu370-s4` with no flags runs what `mlusim calibrate` calibrated:
    the config's runtime.kernels (per-layer on the MLU370 presets); --cluster-fusion overrides it,
    and the report's schedule line says which ran."""
    from mlusim.programs import BuildOptions
    from mlusim.runs import prepare

    default = prepare("resnet18", s4, 24, BuildOptions(resolution=32)).plan
    fused = prepare("resnet18", s4, 24, BuildOptions(resolution=32, cluster_fusion=True)).plan
    assert s4.runtime.kernels == "per-layer" and not default.fused and fused.fused
    assert "a kernel per layer" in default.describe() and "cluster-fused" in fused.describe()
    assert len(default.trunk.kernels) > len(fused.trunk.kernels)


def test_fully_connected_layers_take_the_runtimes_dtype(s4, s4_int8):
    """runtime.linear_dtype int16 (the MLU370 presets: MagicMind's fp16 fully connected layers)
    doubles the head's weight bytes and DRAM traffic; the convs stay int8."""
    wide = plan_per_cluster("lenet5", 1, s4, 24)
    narrow = plan_per_cluster("lenet5", 1, s4_int8, 24)
    wbytes = lambda p: sum(t.nbytes for t in p.tensors if t.role == "const" and t.name.endswith(".weight"))
    assert s4.runtime.linear_dtype == "int16"
    assert wbytes(wide.head) == 2 * wbytes(narrow.head) > 0
    assert wbytes(wide.trunk) == wbytes(narrow.trunk) > 0
    t16 = run_per_cluster(wide, s4, timing_only=True)
    t8 = run_per_cluster(narrow, s4_int8, timing_only=True)
    assert t16.dram_bytes > t8.dram_bytes
