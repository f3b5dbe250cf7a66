"""One model, one answer: every entry compiles a zoo model the same way and times it the same."""
from __future__ import annotations

import json

import numpy as np
import pytest

from mlusim.cli import main
from mlusim.compiler.driver import compile_model
from mlusim.errors import CompileError
from mlusim.experiments import scaling
from mlusim.programs import BuildOptions, compile_spec, resolve_program, unknown_model
from mlusim.sim import simulate

MODEL, BATCH, CORES = "lenet5", 2, 4


def cli_cycles(capsys, tmp_path, *args) -> tuple[float, dict]:
    j = tmp_path / "r.json"
    code = main([*args, "--timing-only", "--json", str(j)])
    out, err = capsys.readouterr()
    assert code == 0, err
    doc = json.loads(j.read_text())
    return doc["cycles"], doc


def shim_cycles() -> float:
    torch = pytest.importorskip("torch")
    import torch_mlu.core.mlu_model as ct
    import torch_mlu.core.mlu_quantize as mq
    from torch_mlu import models

    torch.set_grad_enabled(False)
    ct.set_core_number(CORES)
    x = torch.rand((BATCH, 1, 28, 28), generator=torch.Generator().manual_seed(3))
    q = mq.quantize_dynamic_mlu(models.build(MODEL), {"per_channel": True, "firstconv": False}, gen_quant=True)
    q(x)
    torch.jit.trace(q.to(ct.mlu_device()), x.to(ct.mlu_device()), check_trace=False)
    return ct.get_last_report().cycles


def test_every_entry_gives_the_same_cycles(capsys, tmp_path, mlu270):
    by_name, doc = cli_cycles(capsys, tmp_path, "run", MODEL, "--cores", str(CORES), "--batch", str(BATCH))
    f = tmp_path / "m.mlu"
    assert main(["compile", "--model", MODEL, "--cores", str(CORES), "--batch", str(BATCH), "-o", str(f)]) == 0
    from_file, fdoc = cli_cycles(capsys, tmp_path, "run", str(f), "--cores", str(CORES))
    prog = compile_model(MODEL, batch=BATCH, config=mlu270, tasks=CORES).program
    api = simulate(prog, mlu270, cores=CORES, timing_only=True).cycles
    rows = scaling(MODEL, "mlu270", [CORES], options=BuildOptions(batch=BATCH))
    got = {"run NAME": by_name, "compile + run FILE": from_file, "compile_model + simulate": api,
           "experiments.scaling": rows[0]["cycles"], "torch_mlu fused": shim_cycles()}
    assert len(set(got.values())) == 1, got
    assert any(k.get("meta", {}).get("op") == "segment" for k in doc["kernels"])   # cluster fusion on everywhere
    assert fdoc["program"]["compiled_for_cores"] == CORES


def test_compile_takes_the_defaults_of_run(capsys, tmp_path, mlu270):
    """No --cores, --batch, ...: compile tiles for all the config's cores, as run does."""
    f = tmp_path / "m.mlu"
    assert main(["compile", "--model", MODEL, "-o", str(f)]) == 0
    capsys.readouterr()
    from_file, _ = cli_cycles(capsys, tmp_path, "run", str(f))
    by_name, _ = cli_cycles(capsys, tmp_path, "run", MODEL)
    assert from_file == by_name
    assert resolve_program(MODEL, mlu270).meta["compiled_for_cores"] == mlu270.chip.cores


def test_a_file_run_on_other_cores_says_so(capsys, tmp_path):
    f = tmp_path / "m.mlu"
    assert main(["compile", "--model", MODEL, "--cores", "16", "--no-cluster-fusion", "-o", str(f)]) == 0
    capsys.readouterr()
    assert main(["run", str(f), "--cores", "4", "--timing-only"]) == 0
    out = capsys.readouterr().out
    assert "compiled for 16 cores and runs on 4" in out
    assert main(["run", str(f), "--cores", "16", "--timing-only"]) == 0
    assert "compiled for" not in capsys.readouterr().out
    # cluster-fused for 16 cores, it cannot run on less than a cluster: one line that says what it
    # was compiled for
    assert main(["compile", "--model", MODEL, "--cores", "16", "-o", str(f)]) == 0
    capsys.readouterr()
    assert main(["run", str(f), "--cores", "2", "--timing-only"]) == 2
    err = capsys.readouterr().err
    assert "compiled for 16 cores" in err and err.count("\n") == 1


def test_build_options_reach_the_program_and_are_refused_for_a_file(capsys, tmp_path, mlu270):
    c = compile_spec(MODEL, mlu270, 2, BuildOptions(batch=3, dtype="int16", cluster_fusion=False))
    assert c.program.meta["batch"] == 3 and c.program.meta["quant_dtype"] == "int16"
    f = tmp_path / "m.mlu"
    assert main(["compile", "--model", MODEL, "-o", str(f)]) == 0
    capsys.readouterr()
    assert main(["run", str(f), "--dtype", "int16", "--timing-only"]) == 2
    err = capsys.readouterr().err
    assert "dtype=int16" in err and "already compiled" in err and err.count("\n") == 1


def test_unknown_model_suggests_the_closest_names():
    assert "did you mean 'resnet18'" in str(unknown_model("resnet81"))
    assert "did you mean" not in str(unknown_model("qqqq")) and "lenet5" in str(unknown_model("qqqq"))
    with pytest.raises(CompileError, match="did you mean 'mobilenetv2'"):
        compile_spec("mobilenet2", None, 4)


def test_unnamed_input_binds_to_the_only_input(tmp_path, capsys):
    x = np.random.default_rng(0).uniform(0, 1, (1, 1, 28, 28)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    assert main(["run", MODEL, "--cores", "4", "--input", str(tmp_path / "x.npy"), "--output",
                 str(tmp_path / "y.npy")]) == 0
    capsys.readouterr()
    y = np.load(tmp_path / "y.npy")
    prog = resolve_program(MODEL, None, 4)
    ref = simulate(prog, cores=4, inputs={"input": x}).outputs["output"]
    assert np.array_equal(y, ref)
