"""Names from files (tensors, kernels, models): validated where they enter, so that none can become a
path outside `run --output DIR`, drive a terminal, forge an output line or reach rich's markup; and
escaped where free text is printed."""
from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mlusim import mlufile
from mlusim.cli import main
from mlusim.errors import AssemblyError, ModelFileError, ProgramError
from mlusim.isa.asm import assemble_program
from mlusim.names import MAX_NAME, bad_name, check_name

from .harness import assert_clean_error, check_outcome, count, fuzz

HOSTILE = ["../x", "../../etc/cron.d/x", "/abs", "a/b", "a\\b", "..", ".hidden", "-rf", "k\x1b[31mRED", "a\nb",
           "x\u202egnp.exe", "a\x00b", "x" * (MAX_NAME + 1), "", " ", "a b", "[bold]x", "q[/b]", "x[red]",
           "tab\tname", "\u200bzero", "é\u0301"]


@fuzz(ci=1500)
@given(st.text(max_size=40))
def test_a_valid_name_is_a_plain_file_name_inside_any_folder(name):
    count("names: random text")
    if bad_name(name) is not None:
        with pytest.raises(ProgramError):
            check_name(name, "tensor")
        return
    count("names: random text (valid)")
    assert name.isprintable() and "/" not in name and "\\" not in name and not name.startswith((".", "-"))
    base = Path("/tmp/out")
    assert (base / f"{name}.npy").resolve().parent == base.resolve()
    assert "[" not in name or all(name[i + 1].isdigit() for i, c in enumerate(name) if c == "[")


@pytest.mark.parametrize("name", HOSTILE)
def test_hostile_names_are_refused_by_the_assembler(name):
    count("names: hostile in assembly")
    for src in (f".tensor {name} input i8 [64]\n.kernel k block tasks=1\n    nop\n",
                f".kernel {name} block tasks=1\n    nop\n"):
        prog, err = check_outcome(assemble_program, src, "h.s")
        # the tensor regex reads only \w+, so some names never parse as a name at all
        assert prog is None or all(bad_name(t.name) is None for t in prog.tensors), prog
        if err is not None:
            assert isinstance(err, AssemblyError) and str(err).startswith("h.s:")


def _model_with_names(path: Path, tensor: str, kernel: str) -> Path:
    src = ".tensor x input i8 [64]\n.tensor y output i8 [64]\n.kernel k block tasks=1\n" \
          "    dma g2n, 0, x, 64, sig=st\n    dma n2g, y, 0, 64, wait=ld\n"
    mlufile.save(assemble_program(src, "m.s"), path)
    with zipfile.ZipFile(path) as zf:
        members = {i.filename: zf.read(i) for i in zf.infolist()}
    man = json.loads(members["manifest.json"])
    man["tensors"][1]["name"] = tensor
    man["kernels"][0]["name"] = kernel
    members["manifest.json"] = json.dumps(man).encode()
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for n, d in members.items():
            zf.writestr(n, d, compress_type=zipfile.ZIP_STORED if n == "mimetype" else zipfile.ZIP_DEFLATED)
    path.write_bytes(buf.getvalue())
    return path


@pytest.mark.parametrize("name", HOSTILE)
def test_hostile_output_names_in_a_model_never_write_outside_the_output_folder(tmp_path, capsys, name):
    count("names: hostile in .mlu (run --output)")
    model = _model_with_names(tmp_path / "m.mlu", name, "k")
    out = tmp_path / "a" / "out"
    before = set(tmp_path.rglob("*"))
    code = main(["run", str(model), "--cores", "1", "--output", str(out)])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("mlusim: error: ") and err.count("\n") == 1 and err[:-1].isprintable(), err
    assert set(tmp_path.rglob("*")) == before                 # nothing written, not even the folder
    if "\x00" not in name and "/" in name and not name.startswith("/"):
        assert not (out / f"{name}.npy").resolve().exists()


@pytest.mark.parametrize("name", ["k\x1b[31mRED", "x\u202eevil", "q[/b]", "a\nforged line", "x" * 5000])
def test_hostile_kernel_names_in_a_model_are_refused_before_printing(tmp_path, capsys, name):
    count("names: hostile kernel in .mlu")
    model = _model_with_names(tmp_path / "m.mlu", "y", name)
    for cmd in (["run", str(model), "--cores", "1"], ["disasm", str(model)], ["inspect", str(model)]):
        assert main(cmd) == 2
        out, err = capsys.readouterr()
        assert out == "" and err.count("\n") == 1 and err[:-1].isprintable() and len(err) < 2200, err


def test_a_newline_in_model_meta_cannot_forge_disasm_lines(tmp_path, capsys):
    model = tmp_path / "m.mlu"
    mlufile.save(assemble_program(".kernel k block tasks=1\n    nop\n", "m.s"), model)
    with zipfile.ZipFile(model) as zf:
        members = {i.filename: zf.read(i) for i in zf.infolist()}
    man = json.loads(members["manifest.json"])
    man["meta"] = {"model": "net\n.kernel forged block tasks=1"}
    members["manifest.json"] = json.dumps(man).encode()
    with zipfile.ZipFile(model, "w") as zf:
        for n, d in members.items():
            zf.writestr(n, d)
    with pytest.raises(ModelFileError) as e:
        mlufile.load(model)
    assert "control characters" in assert_clean_error(e.value)


def test_compiler_slice_names_are_valid_and_markup_free():
    """The compiler names slices 'layer1.0.1.conv[0:32]': valid, and never a rich [tag]."""
    assert bad_name("layer1.0.1.conv[0:32].weight") is None
    assert bad_name("x[bold]") is not None and bad_name("x[/b]") is not None


def test_markup_in_a_config_name_prints_as_text(tmp_path, capsys):
    """Config names are free text (printable, <= 64): the report prints them without rich markup."""
    cfg = tmp_path / "c.yaml"
    cfg.write_text('base: mlu270\nname: "x[/b]y[bold]"\n')
    src = tmp_path / "k.s"
    src.write_text(".kernel k block tasks=1\n    nop\n")
    assert main(["run", str(src), "--config", str(cfg), "--cores", "1,2"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("x[/b]y[bold] @ ") and "on x[/b]y[bold], batch 1" in out, out
