"""Shape-only compiles (compiler/driver.py, shape_only): a program compiled for timing from shapes
alone has the full compile's kernels, tensor layout and cycles, draws no weight, calibrates
nothing, and refuses to run with numerics, from memory, from a file or from the compile cache."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from mlusim.cli import main
from mlusim.compiler import quant, weights, zoo
from mlusim.compiler.driver import compile_graph, compile_model
from mlusim.compiler.zoo import ZOO
from mlusim.errors import CompileError, SimulationError
from mlusim.isa.encoding import Instr, encode_stream
from mlusim.programs import BuildOptions, compile_cached
from mlusim.sim import simulate

# Instruction fields holding a calibrated float scale as data (the program input's quantization,
# the outputs' dequantization, a float activation's scales): a shape-only compile has placeholders
# there. Every other field of every instruction is the full compile's.
SCALE_FIELDS = {"vquant": "scale", "vdequant": "scale"}
# tests/test_golden.py's small resolutions (the smallest each model allows, or 32)
SMALL = {"mnist": 28, "lenet5": 28, "resnet18": 32, "resnet50": 32, "mobilenetv2": 32, "vgg16": 32,
         "alexnet_bn": 67, "squeezenet1_0": 48, "squeezenet1_1": 48, "yolov3_tiny": 64, "mobilenetv3_large": 64,
         "mobilenetv3_small": 64, "yolov3": 64}
# larger points for the backend features small inputs never reach (test_golden.FULL), and the
# bench's ResNet-50: (resolution, cores, batch), fused
LARGE = {"resnet18": [(224, 16, 16), (224, 16, 1)], "vgg16": [(64, 16, 16)], "resnet50": [(224, 16, 16)]}


def masked(stream) -> bytes:
    out = []
    for ins in stream:
        field = SCALE_FIELDS.get(ins.op.mnemonic)
        out.append(Instr(ins.op, dict(ins.args, **{field: 0})) if field else ins)
    return encode_stream(out)


def layout(prog) -> tuple:
    """The program without its constants' values and scale immediates."""
    tensors = [(t.name, t.role, t.dtype, tuple(t.shape), t.addr, t.nbytes, t.data is None, t.meta) for t in prog.tensors]
    kernels = [(k.name, k.task_type, k.task_dim, k.task_stream, k.meta, [masked(s) for s in k.streams])
               for k in prog.kernels]
    return tensors, kernels, prog.gdram_bytes, {k: v for k, v in prog.meta.items() if k != "shape_only"}


def points(model: str):
    res = SMALL.get(model, max(32, ZOO[model].min_resolution))
    yield res, 16, 1, True
    yield res, 4, 16 if model in ("mnist", "resnet18", "mobilenetv2") else 1, False
    for r, cores, batch in LARGE.get(model, []):
        yield r, cores, batch, True


@pytest.mark.parametrize("model", sorted(ZOO))
def test_a_shape_only_program_is_the_full_one_without_values(model, mlu270):
    for res, cores, batch, fusion in points(model):
        kw = dict(batch=batch, resolution=res, config=mlu270, tasks=cores, cluster_fusion=fusion)
        full = compile_model(model, **kw).program
        shaped = compile_model(model, shape_only=True, **kw).program
        where = f"{model} r{res} b{batch} on {cores} cores, fusion {fusion}"
        assert shaped.meta["shape_only"] is True and "shape_only" not in full.meta
        assert layout(shaped) == layout(full), where
        assert simulate(shaped, mlu270, cores, timing_only=True).cycles == \
            simulate(full, mlu270, cores, timing_only=True).cycles, where


def test_the_scale_fields_are_the_only_ones_that_differ(mlu270):
    """The mask hides something (the input's scale is calibrated), and nothing but scales."""
    full = compile_model("lenet5", config=mlu270, tasks=4).program
    shaped = compile_model("lenet5", config=mlu270, tasks=4, shape_only=True).program
    differ = {(a.op.mnemonic, f) for ka, kb in zip(full.kernels, shaped.kernels) for sa, sb in zip(ka.streams, kb.streams)
              for a, b in zip(sa, sb) for f in a.args if a.args[f] != b.args[f]}
    assert differ and differ <= set(SCALE_FIELDS.items())


def test_nothing_is_drawn_or_calibrated(monkeypatch, mlu270):
    def refuse(*a, **kw):
        raise AssertionError("a shape-only compile drew a weight or calibrated")

    monkeypatch.setattr(weights, "draw", refuse)
    monkeypatch.setattr(quant, "calibrate", refuse)
    c = compile_model("resnet18", resolution=32, config=mlu270, tasks=4, shape_only=True)
    assert c.absmax == {} and c.program.meta["shape_only"]
    consts = [t for t in c.program.tensors if t.role == "const" and t.name.endswith(".weight")]
    assert consts and all(not t.data.any() for t in consts), "placeholder weights are zeros"


@pytest.mark.skipif(not Path("/proc/self/statm").exists(), reason="reads resident memory from /proc")
def test_the_placeholder_constants_are_never_written(mlu270):
    """Zeros laid out are zeros: VGG-16's 132 MB of weight constants stay untouched pages (they
    were copies, written whole, before)."""
    def resident() -> int:
        return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    before = resident()
    prog = compile_model("vgg16", config=mlu270, tasks=4, shape_only=True).program
    grew = resident() - before
    consts = sum(t.data.nbytes for t in prog.by_role("const"))
    assert consts > 128 << 20 and grew < consts // 4


def test_a_placeholder_graph_compiles_only_shape_only(mlu270):
    g = zoo.build("lenet5", values=False)
    assert all(isinstance(n.params["weight"], weights.Placeholder) for n in g.nodes if "weight" in n.params)
    with pytest.raises(CompileError, match="placeholder weights"):
        compile_graph(g, mlu270)


def test_int16_needs_the_weights(mlu270):
    with pytest.raises(CompileError, match="int8"):
        compile_model("lenet5", config=mlu270, dtype="int16", shape_only=True)
    with pytest.raises(CompileError, match="int8"):
        compile_model("lenet5", config=mlu270, mixed={"fc1": "int16"}, shape_only=True)


def test_numerics_are_refused_in_memory_and_from_a_file(tmp_path, mlu270, capsys):
    prog = compile_model("lenet5", config=mlu270, tasks=4, shape_only=True).program
    with pytest.raises(SimulationError, match="compiled for timing only"):
        simulate(prog, mlu270, 4)
    assert main(["compile", "--model", "lenet5", "--cores", "4", "--timing-only", "-o", str(tmp_path / "t.mlu")]) == 0
    assert "no weights (timing only)" in capsys.readouterr().out
    assert main(["run", str(tmp_path / "t.mlu"), "--cores", "4", "--timing-only"]) == 0
    assert main(["run", str(tmp_path / "t.mlu"), "--cores", "4"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "compiled for timing only" in err[0] and "--timing-only" in err[0]


def test_the_compile_cache_keeps_the_modes_apart(compile_cache_dir, mlu270):
    shaped, _ = compile_cached("lenet5", mlu270, 4, BuildOptions(shape_only=True))
    full, _ = compile_cached("lenet5", mlu270, 4, BuildOptions())
    assert len(list(compile_cache_dir.glob("*.mlu"))) == 2
    assert shaped.meta.get("shape_only") and not full.meta.get("shape_only")
    simulate(full, mlu270, 4)        # the full entry runs with numerics


def test_run_timing_only_compiles_from_shapes(compile_cache_dir, capsys):
    assert main(["run", "lenet5", "--cores", "4", "--timing-only"]) == 0
    shaped = capsys.readouterr().out.splitlines()[0]
    assert main(["run", "lenet5", "--cores", "4"]) == 0        # numerics: another entry, the full compile
    full = capsys.readouterr().out.splitlines()[0]
    assert len(list(compile_cache_dir.glob("*.mlu"))) == 2
    assert shaped.split(" cycles")[0] == full.split(" cycles")[0]


def test_compile_timing_only_refuses_int16(tmp_path, capsys):
    assert main(["compile", "--model", "lenet5", "--dtype", "int16", "--timing-only", "-o", str(tmp_path / "a.mlu")]) == 2
    assert "int8" in capsys.readouterr().err


def test_onnx_models_float_and_quantized(tmp_path, mlu270):
    """A float ONNX model (calibrated in full, not at all shape-only) and its QDQ quantization
    (the model's own scales and int8 weights, kept) compile from shapes to the same layout and cycles."""
    import warnings

    torch = pytest.importorskip("torch")
    pytest.importorskip("onnx")
    qz = pytest.importorskip("onnxruntime.quantization")
    import numpy as np

    import torch_mlu.models as zoo_torch
    from mlusim.compiler.driver import compile_onnx

    torch.manual_seed(0)
    net, f = zoo_torch.build("resnet18", resolution=32).eval(), tmp_path / "f.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(net, (torch.rand(1, 3, 32, 32),), str(f), dynamo=False, opset_version=13,
                          input_names=["input"], output_names=["output"])
    images = iter([{"input": np.random.default_rng(i).uniform(0, 1, (1, 3, 32, 32)).astype(np.float32)} for i in range(2)])
    reader = type("Images", (qz.CalibrationDataReader,), {"get_next": lambda self: next(images, None)})()
    qz.quantize_static(str(f), str(tmp_path / "q.onnx"), reader, quant_format=qz.QuantFormat.QDQ, per_channel=True,
                       activation_type=qz.QuantType.QUInt8, weight_type=qz.QuantType.QInt8)
    for path in (f, tmp_path / "q.onnx"):
        for cores, fusion in ((4, False), (16, True)):
            kw = dict(config=mlu270, tasks=cores, cluster_fusion=fusion)
            full, shaped = compile_onnx(str(path), **kw).program, compile_onnx(str(path), shape_only=True, **kw).program
            assert shaped.meta["shape_only"] and layout(shaped) == layout(full), (path.name, cores)
            assert simulate(shaped, mlu270, cores, timing_only=True).cycles == \
                simulate(full, mlu270, cores, timing_only=True).cycles


@pytest.mark.parametrize("argv, shape_only", [(["lenet5"], True), (["lenet5", "--numerics"], False),
                                              (["lenet5", "--dtype", "int16"], False)])
def test_a_timing_only_sweep_of_a_zoo_model_compiles_from_shapes(argv, shape_only):
    from mlusim.cli import build_parser
    from mlusim.commands.sweep import _options

    args = build_parser().parse_args(["sweep", *argv, "--set", "dram.bandwidth_gbps=[25.6,51.2]"])
    assert _options(args)["options"].shape_only is shape_only


def test_a_shape_only_miss_returns_the_built_program(compile_cache_dir, mlu270):
    """The stored file of a timing-only entry is not read back on a miss (a numerics run maps it to
    copy its constants page by page; a timing-only run copies none), and a hit reads the same."""
    built, _ = compile_cached("lenet5", mlu270, 4, BuildOptions(shape_only=True))
    assert all(t.data.flags.writeable for t in built.tensors if t.data is not None), "not mapped"
    hit, _ = compile_cached("lenet5", mlu270, 4, BuildOptions(shape_only=True))
    assert layout(hit) == layout(built) and hit.meta["shape_only"]


@pytest.mark.parametrize("spec, dtype, shape_only", [("resnet50", "int8", True), ("model.onnx", "int8", True),
                                                     ("model.mlu", "int8", False), ("resnet50", "int16", False)])
def test_which_timing_runs_compile_from_shapes(spec, dtype, shape_only):
    o = BuildOptions(dtype=dtype).for_timing(spec)
    assert o.shape_only is shape_only and o.changed() == BuildOptions(dtype=dtype).changed()


def test_a_per_cluster_timing_only_run_compiles_from_shapes(compile_cache_dir, monkeypatch):
    """The per-cluster schedule (trunk per cluster, fc head over the chip) compiles trunk and head
    from shapes for a timing-only run: the same cycles as its full compile, nothing drawn or
    calibrated, both programs marked, numerics refused, and the compile cache keeps the modes apart."""
    from mlusim.config import load_config
    from mlusim.runs import execute, prepare

    s4 = load_config("mlu370-s4", ["runtime.linear_dtype=int8"])
    opts = BuildOptions(batch=8, resolution=32)
    full = prepare("resnet18", s4, s4.chip.cores, opts, "per-cluster")
    want = execute(full, s4, s4.chip.cores).cycles

    def refuse(*a, **kw):
        raise AssertionError("a shape-only per-cluster compile drew a weight or calibrated")

    monkeypatch.setattr(weights, "draw", refuse)
    monkeypatch.setattr(quant, "calibrate", refuse)
    shaped = prepare("resnet18", s4, s4.chip.cores, BuildOptions(batch=8, resolution=32, shape_only=True),
                     "per-cluster")
    assert shaped.plan is not None and shaped.plan.head is not None
    assert all(p.meta.get("shape_only") for p in shaped.programs())
    assert not any(p.meta.get("shape_only") for p in full.programs())
    assert execute(shaped, s4, s4.chip.cores).cycles == want
    assert len({f.name.split("-")[0] for f in compile_cache_dir.glob("*.mlu")}) == 2     # a key per mode
    with pytest.raises(SimulationError, match="compiled for timing only"):
        execute(shaped, s4, s4.chip.cores, timing_only=False)


def test_an_int16_head_compiles_in_full_and_the_trunk_from_shapes(compile_cache_dir):
    """The MLU370 presets' int16 fc layers need their weights and calibration (their accumulator
    position tiles the kernel): a shape-only plan there has the full head and a trunk from
    shapes, the full plan's cycles, and refuses numerics."""
    from mlusim.config import load_config
    from mlusim.runs import execute, prepare

    s4 = load_config("mlu370-s4")
    assert s4.runtime.linear_dtype == "int16"
    full = prepare("mnist", s4, s4.chip.cores, BuildOptions(batch=3), "per-cluster")
    prep = prepare("mnist", s4, s4.chip.cores, BuildOptions(batch=3, shape_only=True), "per-cluster")
    assert prep.plan.trunk.meta.get("shape_only") and not prep.plan.head.meta.get("shape_only")
    assert prep.plan.boundary_scale == full.plan.boundary_scale       # calibrated, as the head needs
    assert execute(prep, s4, s4.chip.cores).cycles == execute(full, s4, s4.chip.cores).cycles
    with pytest.raises(SimulationError, match="compiled for timing only"):
        execute(prep, s4, s4.chip.cores, timing_only=False)
