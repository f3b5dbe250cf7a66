"""The command line as a user meets it: every failure is `mlusim: error: ...` on one line with
exit code 2, `--debug` adds the traceback, budgets stop runaway programs, the host memory cap
refuses up front, and random argument lists never produce a traceback."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mlusim import mlufile
from mlusim.cli import main
from mlusim.isa.asm import assemble_program

from .harness import count, fuzz, no_hang

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = str(ROOT / "examples" / "matmul.s")
LOOP = """
.tensor x input i8 [64]
.kernel spin block tasks=1
top:
    vset dt=i8 dst=0 n=64
    jmp top
"""


def cli(capsys, *args):
    with no_hang(120, "mlusim " + " ".join(args)):
        code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def one_error_line(err: str) -> str:
    assert err.startswith("mlusim: error: ") and err.count("\n") == 1, err
    return err


def test_errors_exit_2_with_one_line_and_debug_adds_the_traceback(capsys, tmp_path):
    code, _, err = cli(capsys, "run", str(tmp_path / "none.mlu"))
    assert code == 2 and "Traceback" not in one_error_line(err) and "no such model file" in err
    code, _, err = cli(capsys, "--debug", "run", str(tmp_path / "none.mlu"))
    assert code == 2 and "Traceback (most recent call last)" in err and "ModelFileError" in err
    assert err.rstrip("\n").splitlines()[-1].startswith("mlusim: error: ") and "no such model file" in err


def test_debug_flag_from_a_real_process(tmp_path):
    bad = tmp_path / "bad.s"
    bad.write_text(".kernel k block tasks=1\n    frob r1\n")
    r = subprocess.run([sys.executable, "-m", "mlusim", "--debug", "asm", str(bad)], capture_output=True, text=True)
    assert r.returncode == 2 and "Traceback" in r.stderr and f"{bad}:2:5: unknown instruction" in r.stderr
    r = subprocess.run([sys.executable, "-m", "mlusim", "asm", str(bad)], capture_output=True, text=True)
    assert r.returncode == 2 and r.stderr == f"mlusim: error: {bad}:2:5: unknown instruction 'frob'\n"


@pytest.mark.parametrize("flags,needle", [
    (["--max-instructions", "500"], "instruction budget of 500"),
    (["--max-cycles", "20000"], "cycle budget of 20,000 exhausted"),
])
def test_budgets_stop_a_runaway_loop(capsys, tmp_path, flags, needle):
    src = tmp_path / "spin.s"
    src.write_text(LOOP)
    code, _, err = cli(capsys, "run", str(src), "--cores", "1", *flags)
    assert code == 2 and needle in one_error_line(err) and "raise --max" in err
    assert "kernel 'spin' task 0 on core 0" in err or "cycle budget" in err


def test_host_memory_cap_from_the_environment(tmp_path):
    env = {**os.environ, "MLUSIM_HOST_MEM_GIB": "0.01"}
    r = subprocess.run([sys.executable, "-m", "mlusim", "run", EXAMPLE, "--cores", "1"], capture_output=True,
                       text=True, env=env)
    assert r.returncode == 2 and "of host memory, over the cap" in r.stderr and "Traceback" not in r.stderr
    r = subprocess.run([sys.executable, "-m", "mlusim", "run", EXAMPLE, "--cores", "1", "--timing-only"],
                       capture_output=True, text=True, env=env)
    assert r.returncode == 0, r.stderr


def test_model_loading_respects_the_host_memory_cap(tmp_path, monkeypatch, capsys):
    model = tmp_path / "m.mlu"
    mlufile.save(assemble_program(Path(EXAMPLE).read_text(), EXAMPLE), model)
    monkeypatch.setenv("MLUSIM_HOST_MEM_GIB", "0.00001")
    code, _, err = cli(capsys, "inspect", str(model))
    assert code == 2 and "loading this model needs about" in one_error_line(err)
    monkeypatch.setenv("MLUSIM_HOST_MEM_GIB", "zero")
    code, _, err = cli(capsys, "inspect", str(model))
    assert code == 2 and "MLUSIM_HOST_MEM_GIB='zero'" in one_error_line(err)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("cli")
    (d / "ok.s").write_text(Path(EXAMPLE).read_text())
    (d / "spin.s").write_text(LOOP)
    (d / "bad.s").write_text(".kernel k block tasks=1\n    dma w2w, 0, 0, 4\n")
    (d / "bin.s").write_bytes(b"\xff\xfe\x00junk")
    (d / "cfg.yaml").write_text("base: mlu270\ncore:\n  nram_kib: 256\n")
    (d / "bad.yaml").write_text("a: &x [1]\nb: *x\n")
    mlufile.save(assemble_program(LOOP, "spin.s"), d / "spin.mlu")
    (d / "junk.mlu").write_bytes(b"PK\x03\x04" + b"\0" * 40)
    return d


def argv(d: Path):
    paths = st.sampled_from([str(d / n) for n in ("ok.s", "spin.s", "bad.s", "bin.s", "spin.mlu", "junk.mlu",
                                                 "missing.s", "missing.mlu", "cfg.yaml")] + [str(d)])
    configs = st.sampled_from(["mlu270", "mlu220", "mlu999", str(d / "cfg.yaml"), str(d / "bad.yaml"), "", "../x"])
    sets = st.sampled_from(["core.nram_kib=256", "dram.bandwidth_gbps=1e-300", "chip.cores=0", "x=1", "=", "chip",
                            "dram.bandwidth_gbps=25.6", "core.startup_cycles.scalar=1", "name=\x1b[31m"])
    run_opts = st.lists(st.one_of(
        st.tuples(st.just("--cores"), st.sampled_from(["1", "2", "1,4", "all", "0", "-1", "17", "x", "", "99999999999"])),
        st.tuples(st.just("--config"), configs), st.tuples(st.just("--set"), sets),
        st.tuples(st.just("--max-cycles"), st.sampled_from(["1", "1000", "1e7", "inf", "x"])),
        st.tuples(st.just("--max-instructions"), st.sampled_from(["1", "100", "0", "-3", "x"])),
        st.tuples(st.just("--input"), st.sampled_from(["a=" + str(d / "nope.npy"), str(d / "ok.s"), "zz=1.npy"])),
        st.tuples(st.just("--json"), st.just(str(d / "r.json"))),
        st.tuples(st.just("--timing-only")),
    ), max_size=4).map(lambda xs: [a for x in xs for a in x])
    return st.one_of(
        st.tuples(st.just("run"), paths, run_opts).map(lambda t: ["run", t[1], "--max-instructions", "5000",
                                                                  "--timing-only", *t[2]]),
        st.tuples(st.sampled_from(["asm", "disasm", "inspect"]), paths).map(list)
        .map(lambda a: a + (["-o", str(d / "out.mlu")] if a[0] == "asm" else [])),
        st.tuples(st.just("config"), st.just("show"), configs, st.lists(st.tuples(st.just("--set"), sets), max_size=2))
        .map(lambda t: ["config", "show", t[2], *[a for x in t[3] for a in x]]),
    )


@fuzz(ci=300)
@given(st.data())
def test_random_command_lines_never_trace_back(files, capsys, data):
    args = data.draw(argv(files))
    count("cli: random command lines")
    try:
        code, out, err = cli(capsys, *args)
    except SystemExit as e:                # argparse's own usage errors
        assert e.code == 2
        capsys.readouterr()
        return
    assert code in (0, 2), (args, code, err)
    if code == 2:
        one_error_line(err)
        count("cli: random command lines (exit 2)")


# ------------------------------------------------------------------------------------------------
# Options: numbers are ASCII and in range, and argparse's own errors keep the one-line contract.

NUMBERS = st.one_of(st.sampled_from(["١٦", "16", " 16", "1_6", "+4", "-1", "0", "1e3", "nan", "inf", "-inf", "",
                                     "0x10", "99999999999999999999999999999999", "1.5", "²", "4\x00"]),
                    st.text(max_size=6))


@fuzz(ci=80)
@given(st.lists(st.tuples(st.sampled_from(["--cores", "--max-instructions", "--max-cycles", "--max-seconds",
                                           "--batch"]), NUMBERS), min_size=1, max_size=3))
def test_numeric_options_are_ascii_in_range_or_one_line(capsys, opts):
    args = ["run", EXAMPLE, "--timing-only"] + [a for o in opts for a in o]
    count("cli: numeric option values")
    code, out, err = cli(capsys, *args)
    assert code in (0, 2), (args, err)
    if code == 2:
        one_error_line(err)
        count("cli: numeric option values (exit 2)")
    for flag, text in dict(opts).items():      # the last of a repeated option counts
        if flag in ("--cores", "--batch") and text and not text.isascii():
            assert code == 2, (args, out)


@pytest.mark.parametrize("args,needle", [
    (["run", EXAMPLE, "--cores", "١٦"], "ASCII digits"),
    (["compile", "--model", "mnist", "--batch", "0"], "argument --batch: must be in 1.."),
    (["run", "mnist", "--batch", "0"], "argument --batch: must be in 1.."),
    (["compile", "--model", "mnist", "--seed", "-1"], "argument --seed: must be in 0.."),
    (["compile", "--model", "mnist", "--cores", "-1"], "argument --cores: must be in 1.."),
    (["sweep", EXAMPLE, "--cluster", "not a url"], "expected a scheduler address"),
    (["sweep", EXAMPLE, "--cluster-timeout", "-1"], "argument --cluster-timeout"),
    (["sweep", EXAMPLE, "--cluster-timeout", "nan"], "argument --cluster-timeout"),
    (["--mem-gib", "1e300", "run", EXAMPLE], "argument --mem-gib"),
    (["run", EXAMPLE, "--bogus"], "unrecognized arguments"),
    (["plot"], "the following arguments are required"),
])
def test_option_errors_are_one_line_and_write_nothing(capsys, tmp_path, monkeypatch, args, needle):
    monkeypatch.chdir(tmp_path)
    count("cli: targeted option errors")
    code, _, err = cli(capsys, *args)
    assert code == 2 and needle in one_error_line(err), err
    assert list(tmp_path.iterdir()) == []            # compile --cores -1 used to write mnist.mlu


def test_the_memory_budget_variable_of_1e300_is_one_line():
    r = subprocess.run([sys.executable, "-m", "mlusim", "run", EXAMPLE, "--timing-only"], capture_output=True,
                       text=True, env={**os.environ, "MLUSIM_HOST_MEM_GIB": "1e300"})
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "MLUSIM_HOST_MEM_GIB='1e300'" in r.stderr


@pytest.mark.parametrize("args", [["run", EXAMPLE, "--timing-only"], ["disasm", EXAMPLE], ["config", "show"]])
def test_a_full_disk_on_stdout_is_one_line(args):
    with open("/dev/full", "w") as full:
        r = subprocess.run([sys.executable, "-m", "mlusim", *args], stdout=full, stderr=subprocess.PIPE, text=True)
    assert r.returncode == 2 and r.stderr == "mlusim: error: cannot write the output: No space left on device\n"


def test_what_asm_writes_run_reads(tmp_path, capsys):
    """A zero-filled const deflates past the loader's bomb ratio: asm stores it, so run loads it."""
    src = tmp_path / "z.s"
    src.write_text("\ufeff.tensor w const i8 [4194304]\n.kernel k block tasks=1\n    nop\n")   # with a BOM
    assert cli(capsys, "asm", str(src), "-o", str(tmp_path / "z.mlu"))[0] == 0
    code, out, err = cli(capsys, "run", str(tmp_path / "z.mlu"), "--cores", "1", "--timing-only")
    assert code == 0, err


def test_deadlocks_are_dated_alike_with_and_without_a_cycle_budget(tmp_path, capsys):
    src = tmp_path / "dl.s"
    src.write_text(".kernel k block tasks=1\n    vset dt=i8 dst=0 n=4 wait=ld\n")
    msgs = [one_error_line(cli(capsys, "run", str(src), "--cores", "1", *extra)[2])
            for extra in ([], ["--max-cycles", "1e6"])]
    assert msgs[0] == msgs[1] and msgs[0].startswith(f"mlusim: error: {src}: deadlock at cycle 2,000:"), msgs


def test_wall_clock_budget_from_the_command_line(tmp_path, capsys):
    src = tmp_path / "spin.s"
    src.write_text(LOOP)
    code, _, err = cli(capsys, "run", str(src), "--cores", "1", "--max-instructions", "1000000000000",
                       "--max-seconds", "0.3")
    assert code == 2 and "wall-clock budget of 0.3 s exhausted" in one_error_line(err) and str(src) in err
