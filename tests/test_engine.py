"""Engine behaviour: dispatch of BLOCK and UNION kernels, barriers, faults, deadlocks, budgets."""
from __future__ import annotations

import numpy as np
import pytest

from conftest import I, program, run, tensors
from mlusim.errors import SimulationError
from mlusim.program import Kernel, Program, TensorDecl


def ids_program(task_type: str, task_dim: int):
    """Each task copies table[taskid], table[clusterid], table[coreid] into out[3*taskid ...]."""
    t = tensors(TensorDecl("table", "const", "i8", (128,), -1, data=np.arange(128, dtype=np.int8)),
                TensorDecl("out", "output", "i8", (3 * task_dim,), -1))
    table, out = t
    s = [I("rdsr", rd=1, sr="taskid"), I("rdsr", rd=2, sr="clusterid"), I("rdsr", rd=3, sr="coreid"),
         I("muli", rd=4, rs1=1, imm=3)]
    for k, reg in enumerate((1, 2, 3)):
        s.append(I("dma", dir="g2g", dst=(4, out.addr + k), src=(reg, table.addr), size=1))
    return program(s, t, task_type=task_type, task_dim=task_dim)


def test_block_tasks_see_their_ids_and_spread_over_cores():
    res = run(ids_program("block", 8), cores=4)
    got = res.outputs["out"].reshape(8, 3)
    assert list(got[:, 0]) == list(range(8))
    assert res.kernels[0].cores[0].tasks == 2 and sum(c.tasks for c in res.kernels[0].cores.values()) == 8


def test_union1_tasks_get_cluster_and_core_ids():
    res = run(ids_program("union1", 8), cores=8)
    got = res.outputs["out"].reshape(8, 3)
    assert list(got[:, 0]) == list(range(8))
    assert list(got[:, 2]) == [0, 1, 2, 3] * 2         # coreid within the cluster
    assert list(got[:, 1]) == [0] * 8                  # one cluster per UNION1 job: clusterId 0
    res2 = run(ids_program("union2", 8), cores=8)
    assert list(res2.outputs["out"].reshape(8, 3)[:, 1]) == [0] * 4 + [1] * 4


def test_union_jobs_run_in_sequence_when_clusters_are_few():
    prog = program([I("conv", dt="i8", odt="i32", dst=0, src=0x40000, wgt=0, n=1, hi=8, wi=8, ci=64, co=64,
                      kh=1, kw=1)], [], task_type="union1", task_dim=8)
    one = run(prog, cores=4, timing_only=True).cycles
    two = run(prog, cores=8, timing_only=True).cycles
    assert one > 1.8 * (two - 2000) and one > two


def test_union_kernel_needs_a_whole_cluster():
    with pytest.raises(SimulationError, match="needs 1 whole cluster"):
        run(ids_program("union1", 4), cores=2)


def test_cores_above_chip_is_an_error():
    with pytest.raises(SimulationError, match="exceeds the 16 cores"):
        run(ids_program("block", 1), cores=17)


def test_nram_overflow_names_instruction_core_and_address():
    prog = program([I("vset", dt="i32", dst=0x5FFF0, n=16, value=1)], [])
    with pytest.raises(SimulationError) as e:
        run(prog)
    msg = str(e.value)
    assert "core 0" in msg and "pc 0" in msg and "vset" in msg and "0x5fff0" in msg and "outside NRAM" in msg


def test_register_address_out_of_bounds_is_caught_at_run_time():
    prog = program([I("li", rd=5, imm=1 << 30), I("vset", dt="i8", dst=(5, 0), n=4, value=1)], [])
    with pytest.raises(SimulationError, match="pc 1 .*outside NRAM"):
        run(prog)


def test_misaligned_wram_operand():
    prog = program([I("matmul", dt="i8", dst=0, a=0, b=8, m=1, k=64, n=64)], [])
    with pytest.raises(SimulationError, match="WRAM address 0x8 is not 64-byte aligned"):
        run(prog)


def test_gdram_outside_program_footprint():
    t = tensors(TensorDecl("x", "input", "i8", (64,), -1))
    prog = program([I("dma", dir="g2n", dst=0, src=t[0].addr, size=128)], t)
    with pytest.raises(SimulationError, match="outside GDRAM"):
        run(prog)


def test_missing_token_is_a_deadlock_with_a_diagnosis():
    prog = program([I("vset", dt="i8", dst=0, n=4, value=1, wait="ld")], [])
    with pytest.raises(SimulationError) as e:
        run(prog)
    msg = str(e.value)
    assert msg.startswith("deadlock at cycle") and "core 0" in msg and "waits for a token from ld" in msg


def test_mismatched_cluster_barriers_deadlock():
    extra = [I("sync.cluster"), I("sync.cluster")]
    once = [I("sync.cluster")]
    prog = Program([Kernel("k", "union1", 4, [extra, once], [0, 1, 1, 1])], [])
    with pytest.raises(SimulationError) as e:
        run(prog, cores=4)
    assert "deadlock" in str(e.value) and "sync.cluster of cluster 0 (1/4 arrived)" in str(e.value)


def test_sync_all_with_more_tasks_than_cores_deadlocks_clearly():
    prog = program([I("sync.all")], [], task_dim=8)
    with pytest.raises(SimulationError, match=r"deadlock.*sync.all of kernel 'k' \(4/8 arrived\)"):
        run(prog, cores=4)
    assert run(prog, cores=8).cycles > 0


def test_cluster_barrier_in_block_kernel_is_illegal():
    with pytest.raises(SimulationError, match="illegal in a BLOCK kernel"):
        run(program([I("sync.cluster")], []))


def test_runaway_loop_hits_the_instruction_budget():
    prog = program([I("jmp", target=0)], [])
    with pytest.raises(SimulationError, match="instruction budget of 10,000 .* runaway loop"):
        run(prog, max_instructions=10_000)


def test_cycle_budget():
    prog = program([I("vset", dt="i8", dst=0, n=1 << 16, value=0)] * 50, [])
    with pytest.raises(SimulationError, match="cycle budget of 1,000 exhausted"):
        run(prog, max_cycles=1000)


def test_barriers_synchronise_and_cost_their_config_latency(mlu270):
    # Task 0 is slow; everyone leaves the barrier together, sync_cycles after the last arrival.
    slow = [I("vset", dt="i8", dst=0, n=128 * 1000, value=0), I("sync.cluster"), I("vset", dt="i8", dst=0, n=128, value=0)]
    fast = [I("sync.cluster"), I("vset", dt="i8", dst=0, n=128, value=0)]
    prog = Program([Kernel("k", "union1", 4, [slow, fast], [0, 1, 1, 1])], [])
    res = run(prog, cores=4, timing_only=True)
    c = mlu270.core.startup_cycles.vector
    expect = mlu270.chip.kernel_launch_cycles + (c + 1000) + mlu270.cluster.sync_cycles + (c + 1)
    assert res.cycles == pytest.approx(expect)
    assert res.kernels[0].cores[1].sync_wait == pytest.approx(c + 1000 + mlu270.cluster.sync_cycles)


def test_full_queue_stalls_the_issue_stage():
    prog = program([I("vset", dt="i8", dst=0, n=1 << 16, value=0)] * 20, [])
    res = run(prog, timing_only=True)
    assert res.kernels[0].cores[0].issue_stall > 0


def test_same_inputs_same_cycles_and_outputs():
    a = run(ids_program("block", 8), cores=3)
    b = run(ids_program("block", 8), cores=3)
    assert a.cycles == b.cycles and np.array_equal(a.outputs["out"], b.outputs["out"])


def test_timing_only_gives_the_same_cycles():
    t = tensors(TensorDecl("x", "input", "i8", (4096,), -1), TensorDecl("y", "output", "i8", (4096,), -1))
    s = [I("dma", dir="g2n", dst=0, src=t[0].addr, size=4096, sig="cp"),
         I("vrelu", dt="i8", dst=4096, src=0, n=4096, wait="ld", sig="st"),
         I("dma", dir="n2g", dst=t[1].addr, src=4096, size=4096, wait="cp")]
    prog = program(s, t, task_dim=4)
    full, fast = run(prog, cores=2), run(prog, cores=2, timing_only=True)
    assert full.cycles == fast.cycles and fast.outputs == {}
    x = full.outputs["y"]
    assert (x >= 0).all()


def test_host_memory_cap_fails_up_front():
    t = tensors(TensorDecl("big", "scratch", "i8", (1 << 30,), -1))
    prog = program([I("nop")], t)
    with pytest.raises(SimulationError, match="GiB of host memory, over the cap"):
        run(prog, host_cap_gib=0.5)
    assert run(prog, timing_only=True).cycles > 0


def _remote_copy_program(nbytes=4096, dcl=2):
    """Cluster 0's core 0 stages data in its SRAM and copies it into cluster 1's SRAM (s2s with
    dcl); after sync.all, cluster 1's core 0 writes its SRAM to the output."""
    t = tensors(TensorDecl("data", "const", "i8", (nbytes,), -1, data=(np.arange(nbytes) % 251).astype(np.int8)),
                TensorDecl("out", "output", "i8", (nbytes,), -1))
    data, out = t
    send = [I("dma", dir="g2s", dst=0, src=data.addr, size=nbytes),
            I("sync"),
            I("dma", dir="s2s", dst=8192, src=0, size=nbytes, dcl=dcl), I("sync.all")]
    wait = [I("sync.all")]
    recv = [I("sync.all"), I("dma", dir="s2g", dst=out.addr, src=8192, size=nbytes)]
    return program([send, wait, recv], t, task_type="union2", task_dim=8, task_stream=[0, 1, 1, 1, 2, 1, 1, 1])


def test_s2s_to_another_cluster_lands_in_its_sram():
    res = run(_remote_copy_program(), cores=8)
    assert np.array_equal(res.outputs["out"], (np.arange(4096) % 251).astype(np.int8))


def test_s2s_to_another_cluster_costs_startup_plus_bytes_at_the_sram_port(mlu270):
    k = run(_remote_copy_program(64 * 1024), cores=8, timing_only=True).kernels[0]
    d = mlu270.dma
    g2s = d.startup_cycles + mlu270.dram.latency_cycles + 64 * 1024 / min(d.core_bandwidth_bytes_per_cycle,
                                                                          mlu270.dram_bytes_per_cycle)
    s2s = d.startup_cycles + 64 * 1024 / d.sram_bandwidth_bytes_per_cycle
    assert k.cores[0].busy["ld"] == pytest.approx(g2s, rel=1e-6)     # GDRAM into SRAM: the load queue
    assert k.cores[0].busy["st"] == pytest.approx(s2s, rel=1e-6)
    assert k.bytes_written["sram"] == 2 * 64 * 1024


def test_s2s_to_a_cluster_outside_the_job_is_an_error():
    with pytest.raises(SimulationError, match=r"copies to cluster 2 of the job, but its union job has 2 cluster"):
        run(_remote_copy_program(dcl=3), cores=8)
    bad = program([I("dma", dir="s2s", dst=0, src=64, size=64, dcl=1)], [])
    with pytest.raises(SimulationError, match="not in a union job"):
        run(bad, cores=1)
    with pytest.raises(SimulationError, match="only for s2s"):
        run(program([I("dma", dir="g2n", dst=0, src=0, size=64, dcl=1)], []), cores=1)


def test_prepared_instructions_are_shared_by_content():
    """Instructions equal in every field are prepared once per chip, whichever core, task or
    kernel issues them; one differing field, or a different register base, is another entry."""
    from mlusim.config import load_config
    from mlusim.cores.chip import Chip

    chip = Chip(load_config("mlu270"), 1 << 20, numerics=False, ncores=2)
    a, b = chip.cores
    ld = I("dma", dir="g2n", dst=0, src=64, size=64)
    assert a._prepare(ld, 0) is b._prepare(I("dma", dir="g2n", dst=0, src=64, size=64), 3)
    assert a._prepare(I("dma", dir="g2n", dst=0, src=128, size=64), 0) is not a._prepare(ld, 0)
    rel = I("dma", dir="g2n", dst=0, src=(1, 64), size=64)
    a.regs[1], b.regs[1] = 0, 64
    assert a._prepare(rel, 0).args["src"] == 64 and b._prepare(rel, 0).args["src"] == 128
    assert len(chip.prepared) == 4


def test_dma_plans_remembered_across_addresses_equal_a_fresh_plan():
    """A chip prices a DMA by its fields with GDRAM addresses taken modulo the access granule:
    for transfers differing in address, stride and direction, the remembered plan is field for
    field what plan() and with_operand() give for that transfer itself."""
    import dataclasses
    import random

    from mlusim.config import load_config
    from mlusim.cores import dma as dmamod

    cfg = load_config("mlu270")
    rng = random.Random(7)
    weights = (4096, 8192)
    is_weights = lambda addr: weights[0] <= addr < weights[1]     # noqa: E731
    memo, hits = {}, 0
    for _ in range(400):
        d = rng.choice(["g2n", "n2g", "g2s", "s2g", "g2w", "n2n", "s2n"])
        size, count, count2 = rng.choice([16, 48, 64]), rng.choice([1, 3]), rng.choice([1, 2])
        stride = size + rng.choice([0, 16, 100])
        a = I("dma", dir=d, dst=rng.randrange(0, 16384, 8), src=rng.randrange(0, 16384, 8), size=size,
              count=count, sstride=stride, dstride=stride, count2=count2, sstride2=stride * count + 64,
              dstride2=stride * count + 64).args
        before = len(memo)
        got = dmamod.plan_cached(a, cfg, memo, is_weights)
        hits += len(memo) == before
        want = dmamod.plan(a, cfg)
        dmamod.with_operand(want, want.src == "gdram" and is_weights(a["src"]))
        assert dataclasses.asdict(got) == dataclasses.asdict(want)
    assert hits > 50          # (71 of 400 transfers found their plan remembered)
