"""`mlusim compile`, `mlusim models`, and zoo names given to `mlusim run`."""
from __future__ import annotations

import json

import numpy as np

from mlusim import mlufile
from mlusim.cli import main


def cli(capsys, *args):
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def test_models_lists_the_zoo(capsys):
    code, out, _ = cli(capsys, "models")
    assert code == 0
    for name in ("mnist", "lenet5", "resnet18", "resnet50", "mobilenetv2", "vgg16"):
        assert name in out
    assert "25.56 M" in out and "4.089" in out      # ResNet-50 parameters and GMAC


def test_compile_then_run_then_inspect(capsys, tmp_path):
    model = tmp_path / "lenet.mlu"
    code, out, err = cli(capsys, "compile", "--model", "lenet5", "--batch", "2", "--cores", "2", "-o", str(model))
    assert code == 0, err
    assert "on 2 core(s)" in out and "fused" not in out       # quiet by default
    code, out, err = cli(capsys, "compile", "--model", "lenet5", "--batch", "2", "--cores", "2", "-o", str(model), "-v")
    assert code == 0, err
    assert "fused conv1: conv2d + relu + maxpool" in out
    prog = mlufile.load(model)
    assert prog.meta["model"] == "lenet5" and prog.meta["batch"] == 2 and prog.config["name"] == "mlu270"
    x = np.random.default_rng(0).uniform(0, 1, (2, 1, 28, 28)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    code, out, err = cli(capsys, "run", str(model), "--cores", "2", "--input", str(tmp_path / "x.npy"),
                         "--output", str(tmp_path / "y.npy"), "--json", str(tmp_path / "r.json"))
    assert code == 0, err
    y = np.load(tmp_path / "y.npy")
    assert y.shape == (2, 10) and y.dtype == np.float32
    rep = json.loads((tmp_path / "r.json").read_text())
    assert [k["name"] for k in rep["kernels"]][:2] == ["input", "conv1"]


def test_zoo_name_runs_directly(capsys):
    code, out, err = cli(capsys, "run", "mnist", "--cores", "4", "--timing-only")
    assert code == 0, err
    assert "4 core(s)" in out and "input..fc2" in out    # compiled for 4 cores: one fused segment


def test_compile_errors(capsys, tmp_path):
    code, _, err = cli(capsys, "compile", "--model", "resnet51", "-o", str(tmp_path / "x.mlu"))
    assert code == 2 and "unknown model 'resnet51' (did you mean 'resnet50'" in err and err.count("\n") == 1
    code, _, err = cli(capsys, "run", "resnet51", "--timing-only")
    assert code == 2 and "did you mean 'resnet50'" in err and err.count("\n") == 1
    code, _, err = cli(capsys, "compile", "--model", "mnist", "--resolution", "4", "-o", str(tmp_path / "x.mlu"))
    assert code == 2 and "below the minimum" in err


def test_help_names_the_zoo(capsys):
    for cmd in ("run", "sweep", "compile"):
        assert main([cmd, "--help"]) == 0
        out = capsys.readouterr().out
        assert "mlusim models" in out and "mlusim zoo" not in out
        assert "resnet18, resnet50" in out and "--dtype" in out and "--no-cluster-fusion" in out
