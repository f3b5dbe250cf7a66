"""Timing obeys the config: each test derives its expectation from config values, not constants."""
from __future__ import annotations

import pytest

from conftest import I, program, run, tensors
from mlusim.config import load_config
from mlusim.program import TensorDecl

KIB = 1024


def dma_busy(res, core=0, queue="ld"):
    return res.kernels[0].cores[core].busy[queue]


@pytest.mark.parametrize("nbytes", [64, 4096, 65536, 1 << 20])
@pytest.mark.parametrize("direction", ["g2n", "n2g"])
def test_dma_costs_latency_plus_bytes_over_bandwidth(mlu270, nbytes, direction):
    g = tensors(TensorDecl("g", "scratch", "i8", (nbytes,), -1))
    size = min(nbytes, 256 * KIB)
    count = nbytes // size
    dst, src = (0, g[0].addr) if direction == "g2n" else (g[0].addr, 0)
    # one DMA of `nbytes`: as `count` contiguous segments so NRAM holds it, segments back to back
    ins = I("dma", dir=direction, dst=dst, src=src, size=size, count=1)
    res = run(program([ins] * count, g), timing_only=True)
    c = mlu270
    bw = min(c.dma.core_bandwidth_bytes_per_cycle, c.dram_bytes_per_cycle)
    expect = count * (c.dma.startup_cycles + c.dram.latency_cycles + size / bw)
    got = dma_busy(res, queue="ld" if direction == "g2n" else "st")
    assert got == pytest.approx(expect, rel=0.01)
    assert res.kernels[0].dram_bus_bytes == nbytes


@pytest.mark.parametrize("sstride", [256, 4096])
def test_strided_dma_pays_segments_and_granules(mlu270, sstride):
    """Each extra segment costs a row change (dma.segment_cycles) when it starts a page or more
    past the previous one's end (4096 - 100 >= 2048), else what an on-chip segment costs."""
    g = tensors(TensorDecl("g", "scratch", "i8", (16 * sstride,), -1))
    ins = I("dma", dir="g2n", dst=0, src=g[0].addr, size=100, count=16, sstride=sstride, dstride=100)
    res = run(program([ins], g), timing_only=True)
    c = mlu270
    bus = 16 * 128      # each 100-byte segment at a 64-aligned offset touches two 64-byte granules
    far = sstride - 100 >= c.dram.page_bytes
    assert far == (sstride == 4096)
    seg = c.dma.segment_cycles if far else c.dma.move_segment_cycles
    expect = c.dma.startup_cycles + 15 * seg + c.dram.latency_cycles + bus / c.dma.core_bandwidth_bytes_per_cycle
    assert dma_busy(res) == pytest.approx(expect, rel=1e-6)
    assert res.kernels[0].dram_bus_bytes == bus
    assert res.kernels[0].bytes_read["gdram"] == 1600


@pytest.mark.parametrize("direction,queue", [("n2s", "st"), ("s2n", "mv")])
def test_onchip_strided_dma_pays_move_segments(mlu270, direction, queue):
    """SRAM <-> NRAM is the Move-DMA: a segment costs move_segment_cycles, no DRAM latency, and the
    bytes go at the core's SRAM rate."""
    ins = I("dma", dir=direction, dst=0, src=0, size=100, count=16, sstride=256, dstride=256)
    res = run(program([ins], []), timing_only=True)
    c = mlu270
    expect = c.dma.startup_cycles + 15 * c.dma.move_segment_cycles + 1600 / c.dma.sram_bandwidth_bytes_per_cycle
    assert dma_busy(res, queue=queue) == pytest.approx(expect, rel=1e-6)
    assert res.kernels[0].dram_bus_bytes == 0
    slow = run(program([ins], []), config=load_config("mlu270", ["dma.move_segment_cycles=50"]), timing_only=True)
    assert dma_busy(slow, queue=queue) - dma_busy(res, queue=queue) == pytest.approx(15 * (50 - c.dma.move_segment_cycles))


def test_partial_granule_write_costs_read_modify_write(mlu270):
    g = tensors(TensorDecl("g", "scratch", "i8", (4096,), -1))
    ins = I("dma", dir="n2g", dst=g[0].addr + 8, src=0, size=100)   # touches granules 0 and 1, both partially
    res = run(program([ins], g), timing_only=True)
    assert res.kernels[0].dram_bus_bytes == 128 + 2 * 64


def stream_program(ncores: int, nbytes: int):
    g = tensors(TensorDecl("g", "scratch", "i8", (ncores * nbytes,), -1))
    stream = [I("rdsr", rd=1, sr="taskid"), I("muli", rd=2, rs1=1, imm=nbytes),
              I("dma", dir="g2n", dst=0, src=(2, g[0].addr), size=nbytes)]
    return program(stream, g, task_dim=ncores)


@pytest.mark.parametrize("ncores", [2, 4, 8, 16])
def test_cores_streaming_share_dram_bandwidth(ncores):
    nbytes = 256 * KIB
    for overrides in ([], ["dma.core_bandwidth_bytes_per_cycle=1000"]):
        cfg = load_config("mlu270", overrides)
        res = run(stream_program(ncores, nbytes), cfg, cores=ncores, timing_only=True)
        fixed = cfg.dma.startup_cycles + cfg.dram.latency_cycles
        per_core_rate = min(cfg.dma.core_bandwidth_bytes_per_cycle, cfg.dram_bytes_per_cycle / ncores)
        times = [res.kernels[0].cores[c].busy["ld"] - fixed for c in range(ncores)]
        for t in times:
            assert nbytes / t == pytest.approx(per_core_rate, rel=0.01)
        aggregate = ncores * nbytes / max(times)
        assert aggregate <= cfg.dram_bytes_per_cycle * (1 + 1e-9)
        if overrides:   # DRAM-limited: each core gets 1/N of it
            assert nbytes / max(times) == pytest.approx(cfg.dram_bytes_per_cycle / ncores, rel=0.01)


def conv_args(ci, co, hw, k=3):
    return dict(dt="i8", odt="f16", n=1, hi=hw, wi=hw, ci=ci, co=co, kh=k, kw=k, pt=k // 2, pb=k // 2,
                pl=k // 2, pr=k // 2)


def mac_util(res):
    k = res.kernels[0]
    c = k.cores[0]
    return c.macs / (c.busy["mac"] * res.config.core.mac_int8_per_cycle)


def test_large_conv_runs_near_the_mac_rate(mlu270):
    res = run(program([I("conv", dst=0, src=0x40000, wgt=0, **conv_args(256, 256, 16))], []), timing_only=True)
    assert mac_util(res) >= 0.9


def test_int16_conv_runs_near_the_int16_mac_rate(mlu270):
    """int16 halves the input lanes: the same conv costs mac_int8 / mac_int16 times the cycles."""
    args = dict(conv_args(256, 128, 16), dt="i16", odt="f32", pos=-20)
    res = run(program([I("conv", dst=0, src=0x40000, wgt=0, **args)], []), timing_only=True)
    c = res.kernels[0].cores[0]
    util16 = c.macs / (c.busy["mac"] * mlu270.core.mac_int16_per_cycle)
    assert 0.9 <= util16 <= 1.0
    res8 = run(program([I("conv", dst=0, src=0x40000, wgt=0, **conv_args(256, 128, 16))], []), timing_only=True)
    ratio = c.busy["mac"] / res8.kernels[0].cores[0].busy["mac"]
    assert ratio == pytest.approx(mlu270.core.mac_int8_per_cycle / mlu270.core.mac_int16_per_cycle, rel=0.05)


def test_three_channel_conv_pays_for_64_channel_padding(mlu270):
    res = run(program([I("conv", dst=0, src=0x40000, wgt=0, **conv_args(3, 64, 32))], []), timing_only=True)
    lanes = mlu270.core.mac_ci_lanes_int8
    assert mac_util(res) == pytest.approx(3 / lanes, rel=0.05)


def pipelined(steps: int, load_bytes: int, compute, outputs=None):
    """VTA-style double buffering: loads into ping/pong NRAM buffers, compute frees them by token."""
    g = tensors(TensorDecl("g", "scratch", "i8", (steps * load_bytes,), -1))
    s = []
    for i in range(steps + 1):
        if i < steps:
            s.append(I("dma", dir="g2n", dst=(i % 2) * load_bytes, src=g[0].addr + i * load_bytes,
                       size=load_bytes, sig="cp", wait="cp" if i >= 2 else "none"))
        if i >= 1:
            j = i - 1
            body = compute((j % 2) * load_bytes)
            body[0].args["wait"] = 1       # wait=ld on the first compute instruction of the step
            body[-1].args["sig"] = 1       # sig=ld on the last: the buffer is free again
            s.extend(body)
    return program(s, g)


def step_time(build, n1=8, n2=16):
    a = run(build(n1), timing_only=True).cycles
    b = run(build(n2), timing_only=True).cycles
    return (b - a) / (n2 - n1)


@pytest.mark.parametrize("nvec", [1, 8])
def test_double_buffering_overlaps_load_and_compute(mlu270, nvec):
    nbytes = 64 * KIB
    c = mlu270

    def compute(buf):
        return [I("vadd", dt="i8", dst=0x30000, a=buf, b=buf, n=nbytes) for _ in range(nvec)]

    load = c.dma.startup_cycles + c.dram.latency_cycles + nbytes / c.dma.core_bandwidth_bytes_per_cycle
    comp = nvec * (c.core.startup_cycles.vector + nbytes / c.core.vector_bytes_per_cycle)
    step = step_time(lambda n: pipelined(n, nbytes, compute))
    assert step == pytest.approx(max(load, comp), rel=0.02)
    assert step < 0.9 * (load + comp)


def test_compute_bound_conv_pipeline_keeps_the_mac_array_busy(mlu270):
    """Weights loaded once, 8 input tiles double-buffered, outputs double-buffered: >= 90% of peak."""
    c = mlu270
    args = conv_args(256, 256, 16)
    tile = 16 * 16 * 256
    out = 16 * 16 * 256 * 2
    g = tensors(TensorDecl("x", "scratch", "i8", (8 * tile,), -1), TensorDecl("w", "scratch", "i8", (256 * 9 * 256,), -1),
                TensorDecl("y", "scratch", "f16", (8 * out // 2,), -1))
    x, w, y = g
    s = [I("dma", dir="g2w", dst=0, src=w.addr, size=w.nbytes)]
    for i in range(9):
        if i < 8:
            s.append(I("dma", dir="g2n", dst=(i % 2) * tile, src=x.addr + i * tile, size=tile, sig="cp",
                       wait="cp" if i >= 2 else "none"))
        if i >= 1:
            j = i - 1
            s.append(I("conv", dst=2 * tile + (j % 2) * out, src=(j % 2) * tile, wgt=0, **args,
                       wait="ld+st" if j >= 2 else "ld", sig="ld+st"))
            s.append(I("dma", dir="n2g", dst=y.addr + j * out, src=2 * tile + (j % 2) * out, size=out,
                       wait="cp", sig="cp"))
    res = run(program(s, g), timing_only=True)
    k = res.kernels[0]
    util = k.cores[0].macs / (k.cycles * c.core.mac_int8_per_cycle)
    assert util >= 0.9


def test_compute_bound_tasks_scale_with_cores():
    args = conv_args(256, 256, 16)
    prog = program([I("conv", dst=0, src=0x40000, wgt=0, **args)], [], task_dim=16)
    t1 = run(prog, cores=1, timing_only=True).cycles
    for n in (2, 4, 8, 16):
        tn = run(prog, cores=n, timing_only=True).cycles
        assert t1 / tn == pytest.approx(n, rel=0.1)


def test_memory_bound_tasks_do_not_scale_past_dram(mlu270):
    nbytes = 256 * KIB
    c = mlu270
    t1 = run(stream_program(16, nbytes), cores=1, timing_only=True).cycles
    t16 = run(stream_program(16, nbytes), cores=16, timing_only=True).cycles
    ceiling = c.dram_bytes_per_cycle / c.dma.core_bandwidth_bytes_per_cycle   # 3.2 on MLU270
    assert t1 / t16 <= ceiling * 1.02
    assert t1 / t16 >= ceiling * 0.8


def test_move_dma_runs_beside_the_io_dma(mlu270):
    """SRAM -> NRAM goes on the move queue (the Move-DMA), GDRAM -> NRAM on the load queue (the
    IO-DMA): issued together they overlap, so the task takes the longer of the two, not the sum."""
    g = tensors(TensorDecl("g", "scratch", "i8", (64 * KIB,), -1))
    io = I("dma", dir="g2n", dst=0, src=g[0].addr, size=64 * KIB)
    mv = I("dma", dir="s2n", dst=128 * KIB, src=0, size=64 * KIB)
    res = run(program([io, mv], g), timing_only=True)
    c, k = mlu270, res.kernels[0]
    t_io = c.dma.startup_cycles + c.dram.latency_cycles + 64 * KIB / c.dma.core_bandwidth_bytes_per_cycle
    t_mv = c.dma.startup_cycles + 64 * KIB / c.dma.sram_bandwidth_bytes_per_cycle
    assert dma_busy(res, queue="ld") == pytest.approx(t_io, rel=1e-6)
    assert dma_busy(res, queue="mv") == pytest.approx(t_mv, rel=1e-6)
    took = k.end - k.start - c.chip.kernel_launch_cycles
    assert max(t_io, t_mv) <= took < max(t_io, t_mv) + 50 < t_io + t_mv


@pytest.mark.parametrize("dcl", [0, 1])
def test_local_s2s_is_capped_by_the_sram_channel(mlu270, dcl):
    """An SRAM->SRAM copy inside the cluster (dcl=0) and the same copy named as cluster 0 of the
    union job (dcl=1) both take the Move-DMA channel: startup + bytes / dma.sram_bandwidth, not the
    cluster's wider SRAM port (the defect: 256 KiB in 3,128 cycles with dcl=0)."""
    nbytes = 256 * KIB
    prog = program([[I("dma", dir="s2s", dst=nbytes, src=0, size=nbytes, dcl=dcl)]] + [[I("nop")]] * 3, [],
                   task_type="union1", task_dim=4, task_stream=[0, 1, 2, 3])
    busy = run(prog, cores=4, timing_only=True).kernels[0].cores[0].busy["st"]
    d = mlu270.dma
    assert d.sram_bandwidth_bytes_per_cycle < mlu270.cluster.sram_bandwidth_bytes_per_cycle
    assert busy == pytest.approx(d.startup_cycles + nbytes / d.sram_bandwidth_bytes_per_cycle, rel=1e-9)
