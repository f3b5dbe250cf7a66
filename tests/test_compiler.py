"""The compiler: every zoo model runs bit-exact against the quantized reference on any core count,
close to the float model; tiles fit; tasks write disjoint regions; bad graphs get clear errors."""
from __future__ import annotations

import math

import numpy as np
import pytest

from mlusim import mlufile
from mlusim.compiler import passes, quant, zoo
from mlusim.compiler.driver import compile_graph, compile_model
from mlusim.compiler.graph import Builder, Graph, Node, infer_shapes
from mlusim.compiler.reference import run_float, run_quant
from mlusim.config import load_config
from mlusim.errors import CompileError
from mlusim.sim import simulate

# small resolutions keep CI fast; bench/models runs the full-size models
CASES = {"mnist": 28, "lenet5": 28, "resnet18": 64, "resnet50": 64, "mobilenetv2": 64, "vgg16": 32}
# bounds on max |quantized - float| / max |float| of the output, with margin over what we measure
REL_BOUND = {"mnist": 0.2, "lenet5": 0.1, "resnet18": 0.1, "resnet50": 0.1, "mobilenetv2": 0.2, "vgg16": 0.1}


@pytest.fixture(scope="module", params=list(CASES))
def compiled(request):
    name = request.param
    c = compile_model(name, batch=2, resolution=CASES[name], cluster_fusion=False)
    x = np.random.default_rng(7).uniform(0, 1, c.graph.input.shape).astype(np.float32)
    return name, c, x


def test_bit_exact_on_1_and_4_cores(compiled):
    name, c, x = compiled
    ref = run_quant(c.graph, x)["__output__"]
    for cores in (1, 4):
        out = simulate(c.program, cores=cores, inputs={"input": x}).outputs["output"]
        assert out.dtype == np.float32 and out.shape == ref.shape
        assert np.array_equal(out.view(np.uint32), ref.view(np.uint32)), f"{name} on {cores} cores"


def test_close_to_the_float_model(compiled):
    """Quantization to int8 with per-channel weights: top-1 agrees and the worst element error is a
    small fraction of the output range (8-bit steps compounded over the network's depth)."""
    name, c, x = compiled
    ref = run_quant(c.graph, x)["__output__"]
    flt = run_float(c.graph, x)[c.graph.output]
    assert (ref.argmax(1) == flt.argmax(1)).all()
    assert np.abs(ref - flt).max() / np.abs(flt).max() < REL_BOUND[name]


def test_traffic_bounds_hold_for_the_generated_code(compiled):
    """The compiler's recorded floors are floors: code that runs one layer at a time moves at least
    every layer's inputs, weights and output once, and that is at least the model's minimum."""
    from mlusim.report import roofline_bounds, summarize

    name, c, _ = compiled
    meta = c.program.meta
    assert meta["weight_bytes"] < meta["min_traffic_bytes"] <= meta["layer_traffic_bytes"]
    cfg = load_config("mlu270")
    for n in (1, 4):
        prog = compile_model(name, batch=2, resolution=CASES[name], tasks=n, cluster_fusion=False).program
        s = summarize(simulate(prog, cfg, cores=n, timing_only=True))
        assert s["dram_bus_bytes"] >= meta["layer_traffic_bytes"], (name, n)
        b = roofline_bounds(s)
        assert b["compute"] == pytest.approx(meta["macs"] / (n * cfg.core.mac_int8_per_cycle))
        assert b["layer_traffic"] == pytest.approx(meta["layer_traffic_bytes"] / cfg.dram_bytes_per_cycle)
        assert s["cycles"] >= b["roofline"]


def test_same_output_on_every_core_count():
    c = compile_model("resnet18", batch=1, resolution=32, cluster_fusion=False)
    x = np.random.default_rng(3).uniform(0, 1, c.graph.input.shape).astype(np.float32)
    outs = [simulate(c.program, cores=n, inputs={"input": x}).outputs["output"] for n in (1, 3, 16)]
    assert all(np.array_equal(outs[0], o) for o in outs[1:])


def _store_ranges(kernel, task):
    out = []
    for ins in kernel.stream_of(task):
        a = ins.args
        if ins.op.mnemonic == "dma" and ins.op.by_name["dir"].format(a["dir"]) in ("n2g", "g2g"):
            for j in range(a["count2"]):
                for i in range(a["count"]):
                    s = a["dst"] + j * a["dstride2"] + i * a["dstride"]
                    out.append((s, s + a["size"]))
    return out


def test_tasks_write_disjoint_regions_covering_each_output():
    c = compile_model("resnet18", batch=2, resolution=64, cluster_fusion=False)
    prog = c.program
    by_addr = {t.addr: t for t in prog.tensors}
    for k in prog.kernels:
        owner = {}
        for task in range(k.task_dim):
            for s, e in _store_ranges(k, task):
                for b in range(s, e):
                    assert owner.setdefault(b, task) == task, f"{k.name}: byte {b} written by tasks {owner[b]} and {task}"
        lo, hi = min(owner), max(owner) + 1
        t = next(t for a, t in by_addr.items() if a <= lo < t.end)
        assert (lo, hi) == (t.addr, t.end) and len(owner) == t.nbytes, k.name


@pytest.mark.parametrize("nram_kib", [176, 512])
def test_tiles_fit_the_scratchpads_and_follow_the_config(nram_kib):
    cfg = load_config("mlu270", [f"core.nram_kib={nram_kib}"])
    c = compile_model("resnet18", batch=1, resolution=64, config=cfg, cluster_fusion=False)
    for k in c.program.kernels:
        for stream in k.streams:
            for ins in stream:
                for space, addr, nbytes, _rw, _al in ins.op.touches(ins.args):
                    limit = {"nram": cfg.nram_bytes, "wram": cfg.wram_bytes}.get(space)
                    if limit is not None:
                        assert addr + nbytes <= limit, f"{k.name}: {space} [{addr}, {addr + nbytes}) > {limit}"
    x = np.random.default_rng(0).uniform(0, 1, c.graph.input.shape).astype(np.float32)
    out = simulate(c.program, cfg, cores=4, inputs={"input": x}).outputs["output"]
    assert np.array_equal(out, run_quant(c.graph, x)["__output__"])


def test_smaller_nram_changes_the_tiling():
    small = compile_model("resnet18", config=load_config("mlu270", ["core.nram_kib=256"]), cluster_fusion=False)
    big = compile_model("resnet18", cluster_fusion=False)
    tiles = lambda c: [k.meta.get("tiling") for k in c.program.kernels]  # noqa: E731
    assert tiles(small) != tiles(big)


def test_fusion_is_recorded_per_kernel():
    c = compile_model("resnet50", resolution=32, cluster_fusion=False)
    fused = {k.name: k.meta["fused"] for k in c.program.kernels}
    assert fused["stem.conv"] == ["batchnorm", "relu", "space-to-depth"]
    assert "add" in fused["layer1.0.3.conv"] and "relu" in fused["layer1.0.3.conv"]
    assert not any(k.meta["op"] in ("batchnorm", "relu", "add") for k in c.program.kernels)
    m = compile_model("mnist", cluster_fusion=False)
    assert "maxpool" in next(k for k in m.program.kernels if k.name == "conv2").meta["fused"]


def test_space_to_depth_stem_is_exact_and_cheaper():
    """The RGB stem regrouped as a 4x4 stride-1 conv over 12 channels: same output bits, fewer cycles."""
    from mlusim.compiler import lower as lowering

    c = compile_model("resnet18", batch=1, resolution=64, cluster_fusion=False)
    x = np.random.default_rng(5).uniform(0, 1, c.graph.input.shape).astype(np.float32)
    inp = c.program.tensor("input")
    assert inp.shape == (1, 35, 35, 12) and inp.meta["space_to_depth"] == [2, 3, 3, 3, 3]
    res = simulate(c.program, cores=2, inputs={"input": x})
    assert np.array_equal(res.outputs["output"], run_quant(c.graph, x)["__output__"])
    stem = next(k for k in res.kernels if k.name == "stem.conv")
    c.graph.meta["_s2d"] = None                      # the same graph lowered without the regrouping
    plain = simulate(lowering.lower(c.graph, load_config("mlu270")), cores=2, inputs={"input": x})
    assert np.array_equal(plain.outputs["output"], res.outputs["output"])
    mac = lambda rec: sum(c.busy["mac"] for c in rec.cores.values())  # noqa: E731
    assert mac(stem) < 0.5 * mac(next(k for k in plain.kernels if k.name == "stem.conv"))
    assert stem.meta["macs"] == next(k for k in plain.kernels if k.name == "stem.conv").meta["macs"]


def test_folding_kernel_columns_into_channels_is_exact_and_cheaper(monkeypatch):
    """A 5x5 conv over 4 channels fills 4 of 64 MAC lanes; with its kernel columns folded into
    channels (one strided DMA with overlapping source segments builds each tile) it fills 20: same
    bits, fewer MAC cycles. Cheap DMA segments (as from SRAM) make the tiler choose it."""
    from mlusim.compiler.kernels import conv as kconv
    from mlusim.compiler.kernels.conv import ConvGeometry

    b = Builder("fold", seed=4)
    x = b.input((2, 4, 20, 20))
    g = b.graph(b.unary("relu", b.conv(x, 32, 5)))
    cfg = load_config("mlu270", ["dma.segment_cycles=1"])
    xin = np.random.default_rng(1).uniform(0, 1, (2, 4, 20, 20)).astype(np.float32)

    def run(graph):
        comp = compile_graph(graph, cfg, cluster_fusion=False)
        res = simulate(comp.program, cfg, cores=2, inputs={"input": xin})
        assert np.array_equal(res.outputs["output"], run_quant(comp.graph, xin)["__output__"])
        conv = next(k for k in res.kernels if k.meta.get("op") == "conv2d")
        return conv, sum(c.busy["mac"] for c in conv.cores.values())

    folded, mac = run(g)
    assert "5 kernel columns folded into channels" in folded.meta["tiling"]
    monkeypatch.setattr(ConvGeometry, "can_fold", lambda self, lanes: False)
    monkeypatch.setattr(kconv, "_PLANS", {})       # plans are cached by value: forget the folded one
    plain, mac_plain = run(b.graph(g.output))
    assert "folded" not in plain.meta["tiling"]
    assert mac < 0.5 * mac_plain


def test_strided_1x1_conv_loads_only_the_rows_it_reads(monkeypatch):
    """A 1x1 conv with stride 2 uses one input row in two: with tiles of several rows it loads
    only those (a strided DMA) and runs with row stride 1; same bits, half the input bytes."""
    from mlusim.compiler.kernels import conv as kconv
    from mlusim.compiler.kernels.conv import ConvGeometry

    b = Builder("skip", seed=6)
    x = b.input((2, 32, 16, 16))
    g = b.graph(b.conv(x, 64, 1, stride=2))
    cfg = load_config("mlu270", ["dma.segment_cycles=1"])       # strided DMA segments cheap, as from SRAM
    xin = np.random.default_rng(2).uniform(0, 1, (2, 32, 16, 16)).astype(np.float32)

    def run(graph):
        comp = compile_graph(graph, cfg, tasks=1, cluster_fusion=False)
        res = simulate(comp.program, cfg, cores=1, inputs={"input": xin})
        assert np.array_equal(res.outputs["output"], run_quant(comp.graph, xin)["__output__"])
        conv = next(k for k in res.kernels if k.meta.get("op") == "conv2d")
        return conv, conv.bytes_read["gdram"]

    skipping, read = run(g)
    assert "loading one input row in 2" in skipping.meta["tiling"]
    monkeypatch.setattr(ConvGeometry, "can_skip_rows", lambda self: False)
    monkeypatch.setattr(kconv, "_PLANS", {})       # plans are cached by value: forget the skipping one
    plain, read_plain = run(b.graph(g.output))
    assert "input row" not in plain.meta["tiling"]
    x_bytes = 2 * 32 * 16 * 16
    consts = 64 * 32 + 64 * 12                                     # int8 weights, int32 (bias, mult, shift) per channel
    assert read - consts == x_bytes // 2 and read_plain > read      # every other row; plain tiles carry rows between


@pytest.mark.parametrize("dtype", ["int8", "int16"])
@pytest.mark.parametrize("wram_kib, whole_groups", [(16, True), (4, False)])
def test_grouped_conv_too_big_for_wram_splits_its_groups_exactly(dtype, wram_kib, whole_groups):
    """A grouped conv keeps all its groups in one block while its weights fit WRAM; when they do not
    (AlexNet's conv4 at int16), blocks of whole groups, or of part of one group, each load only
    their groups' input channels. Same bits as the reference, on 1 and 3 cores, every block's
    weights in WRAM (double-buffered)."""
    b = Builder("grouped", seed=5)
    x = b.input((2, 64, 9, 9))
    g = b.graph(b.unary("relu", b.conv(x, 128, 3, padding=1, groups=4)))      # 4 groups of 16 -> 32 channels
    esz = 2 if dtype == "int16" else 1
    cfg = load_config("mlu270", [f"core.wram_kib={wram_kib * esz}"])      # 4 KiB: not even one group's weights
    assert 128 * 16 * 9 * esz > cfg.wram_bytes                                  # one block of all groups cannot fit
    xin = np.random.default_rng(3).uniform(0, 1, (2, 64, 9, 9)).astype(np.float32)
    for cores in (1, 3):
        comp = compile_graph(g, cfg, dtype=dtype, tasks=cores)
        res = simulate(comp.program, cfg, cores=cores, inputs={"input": xin})
        assert np.array_equal(res.outputs["output"], run_quant(comp.graph, xin)["__output__"]), (dtype, cores)
        conv = next(k for k in comp.program.kernels if k.meta.get("op") == "conv2d")
        block = int(conv.meta["tiling"].split(" x ")[1].split()[0])
        assert "(groups split)" in conv.meta["tiling"] and 0 < conv.meta["wram_bytes_used"] <= cfg.wram_bytes
        assert (block >= 32) == whole_groups and (block % 32 == 0 or 32 % block == 0), conv.meta["tiling"]
        assert f"{max(1, block // 32) * 16} input channels per block" in conv.meta["tiling"]


def test_batchnorm_folding_preserves_the_float_model():
    g = zoo.build("resnet18", 1, 32)
    x = np.random.default_rng(0).uniform(0, 1, g.input.shape).astype(np.float32)
    before = run_float(g, x)[g.output]
    g2 = passes.optimize(zoo.build("resnet18", 1, 32))
    after = run_float(g2, x)[g2.output]
    assert np.allclose(before, after, rtol=1e-3, atol=1e-3 * np.abs(before).max())


def test_batchnorm_folds_a_drawn_weight_in_place_and_a_given_array_into_a_new_one():
    """The zoo's own draw is scaled where it lies (no fresh copy); an array the caller passed (the
    torch shim's views of a model's tensors) is left as it was; both get the same bits as the
    float64 product rounded once."""
    g = zoo.build("resnet18", 1, 32)
    drawn = next(n for n in g.nodes if n.op == "conv2d").params["weight"]
    first = np.array(drawn.values)
    given = np.array(first)
    k = np.linspace(0.5, 1.5, first.shape[0])
    want = (first.astype(np.float64) * k.reshape(-1, 1, 1, 1)).astype(np.float32)
    folded = passes._scaled_rows(drawn, k)
    assert folded is drawn.values and np.array_equal(folded.view(np.uint32), want.view(np.uint32))
    other = passes._scaled_rows(given, k)
    assert other is not given and np.array_equal(given, first) and np.array_equal(other, want)


def test_draw_beside_runs_both_and_restores_the_switch_interval():
    import sys

    from mlusim.compiler.driver import draw_beside

    was = sys.getswitchinterval()
    assert draw_beside(lambda: 1, lambda: 2) == (1, 2)
    assert sys.getswitchinterval() == was

    def fails():
        raise CompileError("no such weight")

    with pytest.raises(CompileError, match="no such weight"):
        draw_beside(fails, lambda: 2)
    assert sys.getswitchinterval() == was
    # compiles in two threads at once, the first to start ending first: the interval stays short
    # until the last ends, and is then what it was before the first
    import threading

    first_in, second_in, first_out = threading.Event(), threading.Event(), threading.Event()
    inside = []

    def first():
        draw_beside(lambda: None, lambda: (first_in.set(), second_in.wait()))
        first_out.set()

    other = threading.Thread(target=first)
    other.start()
    first_in.wait()
    draw_beside(lambda: None, lambda: (second_in.set(), first_out.wait(), inside.append(sys.getswitchinterval())))
    other.join()
    assert inside == [pytest.approx(2e-4)] and sys.getswitchinterval() == was


def test_a_zoo_compile_planned_beside_its_draw_is_the_plain_one(mlu270):
    """compile_model plans from shapes while the weights are drawn (plans_from_shapes): the same
    program, byte for byte, as planning the drawn, calibrated model."""
    from mlusim.compiler.driver import plans_from_shapes
    from mlusim.compiler.options import FusionOptions

    assert plans_from_shapes({"tasks": 16}) and plans_from_shapes({"cluster_fusion": FusionOptions(share=False)})
    assert not plans_from_shapes({"dtype": "int16"}) and not plans_from_shapes({"cluster_fusion": False})
    assert not plans_from_shapes({"cluster_fusion": FusionOptions(segments=())})
    beside = compile_model("resnet18", batch=2, resolution=32, config=mlu270, tasks=16)
    plain = compile_graph(zoo.build("resnet18", 2, 32), mlu270, tasks=16)
    assert any(k.meta.get("op") == "segment" for k in beside.program.kernels)
    assert mlufile.dumps(beside.program) == mlufile.dumps(plain.program) and beside.absmax == plain.absmax


def test_on_one_cpu_the_compile_runs_in_turn(mlu270, monkeypatch):
    """A process allowed one CPU (taskset, a container) draws, plans and calibrates in one
    thread, and compiles the same program."""
    import os
    import threading

    from mlusim.compiler import quant

    two = compile_model("resnet18", batch=2, resolution=32, config=mlu270, tasks=16)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0})
    assert quant.usable_cpus() == 1
    started = []
    monkeypatch.setattr(threading.Thread, "start", lambda self: started.append(self.name))
    one = compile_model("resnet18", batch=2, resolution=32, config=mlu270, tasks=16)
    assert started == []
    assert mlufile.dumps(one.program) == mlufile.dumps(two.program) and one.absmax == two.absmax


@pytest.mark.parametrize("m", [1e-9, 3e-5, 0.0123, 0.5, 0.99999, 1.0, 7.3, 1234.5])
def test_quantize_multiplier(m):
    mult, shift = quant.quantize_multiplier(m)
    assert 0 < mult < 2**31 and 0 <= shift <= 62
    assert abs(mult * 2.0**-shift - m) <= m * 2**-29 + 2.0**-shift


def test_per_channel_multipliers_are_quantize_multipliers():
    """quant._mults works on whole arrays; every pair must be the scalar function's, also where
    log2 rounds across an integer (just below and above powers of two) and at the 31-bit edge."""
    rng = np.random.default_rng(0)
    vals = list(np.exp(rng.uniform(-60, 21, 20000)))
    for k in range(-70, 31):
        p = 2.0 ** k
        vals += [p + d * math.ulp(p) for d in range(-8, 9)] + [p * (1 + d * 2.0**-41) for d in range(-8, 9)]
    mult, shift = quant._mults(np.array(vals))
    assert [(int(a), int(b)) for a, b in zip(mult, shift)] == [quant.quantize_multiplier(v) for v in vals]
    with pytest.raises(CompileError):
        quant._mults(np.array([0.5, 2.0**31 - 0.01]))
    for v in (1.0, 2.0**-20, 0.75, 3e-5):         # one ratio for every channel: the same pairs, as int32
        mult, shift = quant._mults(np.full(5, v))
        assert mult.dtype == shift.dtype == np.int32 and {(int(a), int(b)) for a, b in zip(mult, shift)} == \
            {quant.quantize_multiplier(v)} and len(mult) == 5
    with pytest.raises(CompileError):
        quant._mults(np.full(3, 2.0**31))


def test_int16_and_per_tensor_models_are_exact():
    for kw in ({"dtype": "int16"}, {"per_channel": False}):
        c = compile_model("lenet5", batch=2, **kw, cluster_fusion=False)
        x = np.random.default_rng(1).uniform(0, 1, c.graph.input.shape).astype(np.float32)
        out = simulate(c.program, cores=2, inputs={"input": x}).outputs["output"]
        assert np.array_equal(out, run_quant(c.graph, x)["__output__"])


def test_int16_reductions_that_overflow_int32_stay_exact():
    """int16 products summed over VGG-16's fully connected layers overflow the int32 accumulator.
    The reference wraps the whole sum once; the linear kernel splits the reduction into chunks whose
    partial sums it adds with vadd, which wraps on i32 as the accumulator does, so they agree."""
    c = compile_model("vgg16", batch=1, resolution=32, dtype="int16", cluster_fusion=False)
    x = np.random.default_rng(2).uniform(0, 1, c.graph.input.shape).astype(np.float32)
    out = simulate(c.program, cores=4, inputs={"input": x}).outputs["output"]
    assert np.array_equal(out, run_quant(c.graph, x)["__output__"])


def test_firstconv_folds_mean_and_std():
    """Exact (up to float rounding) for an unpadded first conv, like the MNIST net's."""
    g = zoo.build("mnist", 1)
    x = np.random.default_rng(2).uniform(0, 255, g.input.shape).astype(np.float32)
    norm = run_float(passes.optimize(zoo.build("mnist", 1)), (x - 100.0) / 50.0)
    c = compile_graph(g, mean=[100.0], std=[50.0], samples=[x], cluster_fusion=False)
    raw = run_float(c.graph, x)
    assert np.allclose(raw[c.graph.output], norm[c.graph.output], rtol=1e-3, atol=1e-2)
    assert "firstconv" in c.graph.node("conv1").fused


def _padded_stem(stride: int) -> Graph:
    b = Builder("stem", 3)
    x = b.input((2, 3, 12, 12))
    x = b.unary("relu", b.conv(x, 8, 3, stride=stride, padding=1, name="conv1"))
    x = b.unary("flatten", b.unary("gap", b.conv(x, 8, 3, padding=1, name="conv2")))
    return b.graph(b.linear(x, 8, 4, name="fc"), batch=2)


@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("dtype", ["int8", "int16"])
def test_firstconv_is_exact_at_the_borders_of_padded_and_strided_convs(stride, dtype):
    """The raw image is padded with each channel's mean, which normalises to the float model's 0:
    the folded model equals host normalisation everywhere (zero padding was 0.4 off at the borders).
    The quantized, simulated output is as close to host normalisation as without firstconv."""
    mean, std = [120.0, 100.0, 80.0], [60.0, 50.0, 40.0]
    x = np.random.default_rng(5).uniform(0, 255, (2, 3, 12, 12)).astype(np.float32)
    xn = ((x - np.float32(mean).reshape(1, 3, 1, 1)) / np.float32(std).reshape(1, 3, 1, 1)).astype(np.float32)
    host = passes.optimize(_padded_stem(stride))
    want = run_float(host, xn)
    c = compile_graph(_padded_stem(stride), mean=mean, std=std, samples=[x], dtype=dtype, tasks=2, cluster_fusion=False)
    got = run_float(c.graph, x)
    for name in ("conv1", c.graph.output):         # conv1: every border pixel, before any pooling
        assert np.abs(got[name] - want[name]).max() <= 1e-5 * np.abs(want[name]).max(), name
    q = run_quant(c.graph, x)["__output__"]
    plain = compile_graph(_padded_stem(stride), samples=[xn], dtype=dtype, tasks=2, cluster_fusion=False)
    base = np.abs(run_quant(plain.graph, xn)["__output__"] - want[host.output]).max()
    err = np.abs(q - want[host.output]).max()
    assert err <= 2 * base + 1e-6 * np.abs(want[host.output]).max(), (err, base)
    out = simulate(c.program, cores=2, inputs={"input": x}).outputs["output"]
    assert np.array_equal(out, q)


def test_data_scale_scales_layer_inputs_and_per_channel_weights():
    """Cambricon's data_scale: the range of each conv/linear input (LeNet-5: the image, conv1,
    conv2 through the flatten, fc1, fc2) and of each per-channel weight channel is multiplied by it;
    the logits (fc3, read by no layer) and per-tensor weights keep their ranges. The program stays
    bit-exact against the reference quantized the same way."""
    x = np.random.default_rng(3).uniform(0, 1, (2, 1, 28, 28)).astype(np.float32)
    for per_channel in (True, False):
        one, half = (compile_model("lenet5", batch=2, samples=[x], per_channel=per_channel, data_scale=ds, tasks=2)
                     for ds in (1.0, 0.5))
        for name in ("input", "conv1", "conv2", "fc1", "fc2"):
            assert half.graph.node(name).q["scale"] == pytest.approx(one.graph.node(name).q["scale"] / 2), name
        assert half.graph.node("fc3").q["scale"] == one.graph.node("fc3").q["scale"]
        for name in ("conv1", "conv2", "fc1", "fc2", "fc3"):
            ws = (one.graph.node(name).q["w_scale"], half.graph.node(name).q["w_scale"])
            assert np.allclose(ws[1], ws[0] / 2) if per_channel else np.array_equal(ws[1], ws[0]), name
        out = simulate(half.program, cores=2, inputs={"input": x}).outputs["output"]
        assert np.array_equal(out, run_quant(half.graph, x)["__output__"])
    with pytest.raises(CompileError, match="data_scale must be a positive number"):
        compile_model("lenet5", batch=1, data_scale=0.0)


def test_a_calibration_given_in_node_order_is_used_as_it_is():
    """absmax as one value per node of the prepared graph (how the torch shim saves it) compiles to
    the same program as the calibration by name; a list of another length is refused."""
    x = np.random.default_rng(4).uniform(0, 1, (2, 1, 28, 28)).astype(np.float32)
    ref = compile_model("lenet5", batch=2, samples=[x])
    ordered = [ref.absmax[n.name] for n in ref.graph.nodes]
    again = compile_graph(zoo.build("lenet5", 2), absmax=ordered)
    assert mlufile.dumps(again.program) == mlufile.dumps(ref.program)
    with pytest.raises(CompileError, match="calibration has 6 values but lenet5's prepared graph has 7 nodes"):
        compile_graph(zoo.build("lenet5", 2), absmax=ordered[:-1])


def test_firstconv_rejects_a_mean_of_the_wrong_length():
    with pytest.raises(CompileError, match="mean has 2 values but the input has 3 channels"):
        compile_graph(_padded_stem(1), mean=[0.5, 0.5], std=[0.2], cluster_fusion=False)


def test_unsupported_op_names_op_and_node():
    b = Builder("bad")
    x = b.input((1, 3, 8, 8))
    b.nodes.append(Node("mystery", "gelu", [x]))
    with pytest.raises(CompileError, match=r"node 'mystery' \(gelu\): unsupported op 'gelu'"):
        infer_shapes(Graph("bad", b.nodes, "mystery"))


def test_shape_mismatch_names_both_shapes():
    b = Builder("bad")
    x = b.input((1, 3, 8, 8))
    y = b.conv(x, 4, 3, padding=1)
    z = b.conv(x, 4, 3, stride=2, padding=1)
    with pytest.raises(CompileError, match=r"node 'sum' \(add\): adds shapes \[1, 4, 8, 8\] and \[1, 4, 4, 4\]"):
        b.graph(b.binary("add", y, z, name="sum"))


def test_unknown_model_and_bad_batch():
    with pytest.raises(CompileError, match="unknown model 'resnet51'"):
        zoo.build("resnet51")
    with pytest.raises(CompileError, match="batch must be >= 1"):
        zoo.build("mnist", batch=0)


def test_concat_and_avgpool_lower_exactly():
    b = Builder("branches", seed=3)
    x = b.input((2, 8, 12, 12))
    a = b.unary("relu", b.conv(x, 8, 3, padding=1))
    c = b.unary("relu", b.conv(x, 8, 1))
    y = b.binary("concat", a, c)
    y = b.unary("avgpool", y, kernel=2)
    y = b.unary("flatten", b.unary("gap", y))
    g = b.graph(b.unary("softmax", b.linear(y, 16, 5)))
    comp = compile_graph(g, cluster_fusion=False)
    xin = np.random.default_rng(0).uniform(0, 1, (2, 8, 12, 12)).astype(np.float32)
    out = simulate(comp.program, cores=3, inputs={"input": xin}).outputs["output"]
    assert np.array_equal(out, run_quant(comp.graph, xin)["__output__"])
    assert np.allclose(out.sum(axis=1), 1.0, atol=1e-5)


def test_concat_of_convs_is_elided():
    """SqueezeNet's fire expands store straight into their channel slices of the concat's tensor:
    no concat kernel, both convs' stores land in one tensor, and the result stays exact."""
    from mlusim.compiler.lower import elided_concats

    c = compile_model("squeezenet1_1", resolution=48, tasks=4, cluster_fusion=False)
    sliced = elided_concats(c.graph, set())
    assert {cc.name for cc, _ in sliced.values()} == {n.name for n in c.graph.nodes if n.op == "concat"}
    names = [k.name for k in c.program.kernels]
    assert not any(n.endswith("_concat") for n in names) and "fire2_expand3x3" in names
    assert sliced["fire2_expand3x3"][1] == c.graph.node("fire2_expand1x1").shape[1]
    x = np.random.default_rng(1).uniform(0, 1, c.graph.input.shape).astype(np.float32)
    out = simulate(c.program, cores=4, inputs={"input": x}).outputs["output"]
    assert np.array_equal(out.view(np.uint32), run_quant(c.graph, x)["__output__"].view(np.uint32))
