"""Assembly: every error names FILE:LINE: (and FILE:LINE:COL: where one token is to blame), for
token soups and for mutations of the real programs in examples/ and bench/kernels/. A program
that does assemble must encode, decode and disassemble back to itself, and simulate cleanly."""
from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mlusim.errors import AssemblyError
from mlusim.isa.asm import assemble_program, assemble_stream, disassemble_program
from mlusim.isa.encoding import decode_stream, encode_stream
from mlusim.isa.table import OPS
from mlusim.sim import simulate

from .harness import assert_clean_error, count, fuzz, no_hang, check_outcome
from .programs import SOURCES

WHERE = re.compile(r"^(?P<file>[^:]+\.s):(?P<line>\d+):(?:(?P<col>\d+):)? ")
# Errors about a whole line or kernel, where no single column is to blame.
LINE_LEVEL = ("no .kernel", "has no .task stream", "already has the stream", "needs field", "multiple of",
              "task_dim", "declared twice", "overlaps tensor", "no such", "characters of assembly",
              "branches to instruction", "empty instruction")


def check_located(err: AssemblyError, text: str, origin: str = "f.s") -> None:
    msg = assert_clean_error(err)
    m = WHERE.match(msg)
    assert m and m["file"] == origin, f"message does not start with {origin}:LINE: -> {msg}"
    lines = text.splitlines()
    line = int(m["line"])
    assert 1 <= line <= max(len(lines), 1), f"line {line} of {len(lines)}: {msg}"
    if m["col"] is not None:
        col = int(m["col"])
        assert 1 <= col <= len(lines[line - 1]) + 1, f"column {col} of {lines[line - 1]!r}: {msg}"
        count("asm: errors with a column")
    else:
        assert any(s in msg for s in LINE_LEVEL), f"no column in a token-level error: {msg}"


def check_assembled(prog, text: str) -> None:
    """Round trips, then a short simulation: an accepted program is a well-formed program."""
    for k in prog.kernels:
        for s in k.streams:
            assert decode_stream(encode_stream(s)) == s
    again = assemble_program(disassemble_program(prog).replace("; data stored in the model file", ""), "re.s")
    assert [k.streams for k in again.kernels] == [k.streams for k in prog.kernels]
    check_outcome(simulate, prog, "mlu270", cores=4, timing_only=True, max_instructions=3000, max_cycles=1e8, timeout=60)


def check_attempt(text: str, kind: str):
    prog, err = check_outcome(assemble_program, text, "f.s", kind=kind, timeout=20)
    if err is not None:
        check_located(err, text)
    else:
        count(kind + " (assembled)")
        check_assembled(prog, text)


MNEMONICS = [op.mnemonic for op in OPS]
FIELDS = sorted({f.name for op in OPS for f in op.fields})
TOKENS = st.one_of(
    st.sampled_from(MNEMONICS),
    st.sampled_from([".kernel", ".tensor", ".task", ".config", ".frob", "block", "union1", "union\u00b2", "tasks=4",
                     "tasks=0", "tasks=99999999999", "input", "output", "const", "i8", "f32", "[4]", "[0, 10**9]",
                     "[64, 64]", "@0x40", "@-5", "random(3)", "zeros", "x", "a", "loop:", "loop", "L0:", ".5", ".-1"]),
    st.sampled_from(["r0", "r1", "r31", "r32", "r\u00b2", "r\u0663", "[r1+0x40]", "[r2+x]", "[r1", "0x", "0x40", "64",
                     "4k", "-1", "1e300", "inf", "nan", "9" * 60, "g2n", "n2g", "w2w", "l2n", "ld+st", "cp", "none",
                     ",", ";", "#", "=", "+", "[", "]", "\t", "\u00a0", "\u202e"]),
    st.builds(lambda f, v: f"{f}={v}", st.sampled_from(FIELDS),
              st.sampled_from(["0", "1", "-1", "64", "0x40", "i8", "f32", "ld", "r1", "[r1+8]", "x", "1e9", "65536"])),
    st.text(max_size=6))


@fuzz(ci=1000)
@given(st.lists(st.lists(TOKENS, max_size=8), max_size=12))
def test_token_soup(lines):
    text = ".tensor x input i8 [4096]\n.kernel k block tasks=4\n" + "\n".join(" ".join(t) for t in lines) + "\n"
    check_attempt(text, "asm: token soup")


@fuzz(ci=400)
@given(st.lists(TOKENS, max_size=40))
def test_token_soup_without_structure(tokens):
    check_attempt(" ".join(tokens), "asm: unstructured soup")


SRC = {p.name: p.read_text() for p in SOURCES}


@st.composite
def mutated_source(draw):
    name = draw(st.sampled_from(sorted(SRC)))
    lines = SRC[name].splitlines()
    for _ in range(draw(st.integers(1, 3))):
        i = draw(st.integers(0, len(lines) - 1))
        op = draw(st.sampled_from(["delete_char", "insert", "replace_token", "delete_line", "duplicate_line",
                                   "swap_lines", "truncate_line", "truncate_file"]))
        line = lines[i]
        if op == "delete_char" and line:
            j = draw(st.integers(0, len(line) - 1))
            lines[i] = line[:j] + line[j + 1:]
        elif op == "insert":
            j = draw(st.integers(0, len(line)))
            lines[i] = line[:j] + draw(TOKENS) + line[j:]
        elif op == "replace_token" and line.split():
            toks = line.split()
            k = draw(st.integers(0, len(toks) - 1))
            toks[k] = draw(TOKENS)
            lines[i] = "    " + " ".join(toks)
        elif op == "delete_line":
            del lines[i]
        elif op == "duplicate_line":
            lines.insert(i, line)
        elif op == "swap_lines":
            j = draw(st.integers(0, len(lines) - 1))
            lines[i], lines[j] = lines[j], lines[i]
        elif op == "truncate_line":
            lines[i] = line[:draw(st.integers(0, len(line)))]
        elif op == "truncate_file":
            lines = lines[:i]
        if not lines:
            break
    return "\n".join(lines) + "\n"


@fuzz(ci=1000)
@given(mutated_source())
def test_mutations_of_real_programs(text):
    check_attempt(text, "asm: mutated programs")


@pytest.mark.parametrize("name", sorted(SRC))
def test_the_real_programs_assemble_and_round_trip(name):
    prog = assemble_program(SRC[name], name)
    check_assembled(prog, SRC[name])


# Each of these names the exact line and column of the culprit.
LOCATED = [
    (".kernel k block tasks=4\n    frob r1\n", 2, 5, "unknown instruction 'frob'"),
    (".kernel k block tasks=4\n    add r1, r2, r99\n", 2, 17, "expected a register"),
    (".kernel k block tasks=4\n    add r1, r\u00b2, r3\n", 2, 13, "expected a register"),
    (".kernel k block tasks=4\n    li r1, 99999999999999999999\n", 2, 12, "outside"),
    (".kernel k block tasks=4\n    vset dt=i9 dst=0 n=1\n", 2, 10, "expected one of"),
    (".kernel k block tasks=4\n    vdequant sdt=i8 odt=f32 dst=0 src=0 n=1 scale=1e300\n", 2, 45, "float32 range"),
    (".kernel k block tasks=4\n    dma w2w, 0, 0, 4\n", 2, 9, "expected one of"),
    (".kernel k block tasks=4\n    jmp nowhere\n", 2, 9, "unknown label"),
    (".kernel k block tasks=4\nx:\nx:\n", 3, 1, "label 'x' defined twice"),
    (".kernel k warp tasks=4\n", 1, 11, "unknown task type"),
    (".kernel k union\u00b2 tasks=4\n", 1, 11, "unknown task type"),
    (".kernel k block tasks=99999999999\n", 1, 17, "tasks=99999999999 must be"),
    (".kernel k block tasks=4\n.task 0-99999999999\n", 2, 7, "bad task list"),
    (".kernel k block tasks=4\n.task 0,7\n", 2, 7, "task 7 is outside"),
    (".tensor a input i8 [4] @-5\n.kernel k block tasks=1\n", 1, 25, "address '-5'"),
    (".tensor a input i8 [0, 100000000000000000000000]\n.kernel k block tasks=1\n", 1, 24, "dimension"),
    (".tensor a const i8 [65536, 65536] random(1)\n.kernel k block tasks=1\n", 1, 35, "assembler's"),
    (".tensor a input q8 [4]\n.kernel k block tasks=1\n", 1, 17, "dtype must be"),
    ("    nop\n", 1, 5, "instruction outside a .kernel"),
    (".kernel k block tasks=1\n    .frob\n", 2, 5, "unknown directive"),
    (".kernel k block tasks=4\n.task 0-3\nnop\n.task 2\nnop\n", 4, 1, "task 2 already has the stream of the .task at line 2"),
    (".tensor a4 input i8 [4, a]\n.kernel k block tasks=1\n", 1, 25, "dimension 'a'"),
    ("  .tensor a input i8 [4] @0x40 ones\n.kernel k block tasks=1\n", 1, 32, "only const tensors"),
]


@pytest.mark.parametrize("text,line,col,needle", LOCATED)
def test_errors_name_line_and_column(text, line, col, needle):
    with pytest.raises(AssemblyError) as e:
        assemble_program(text, "f.s")
    msg = assert_clean_error(e.value)
    assert msg.startswith(f"f.s:{line}:{col}: ") and needle in msg, msg


def test_large_task_counts_cost_time_linear_in_the_source():
    """tasks= and .task ranges are capped and checked as they come: a short text cannot make the
    assembler build millions of task entries over and over."""
    big = ".kernel k block tasks=1048576\n"
    with no_hang(10, "repeated .task ranges"), pytest.raises(AssemblyError, match="already has the stream"):
        assemble_program(big + ".task 0-1048575\nnop\n" * 2000, "t.s")
    with no_hang(10, "many big kernels"):
        assert len(assemble_program((big + "nop\n") * 2000, "t.s").kernels) == 2000


def test_stream_errors_are_located_too():
    with pytest.raises(AssemblyError) as e:
        assemble_stream("nop\n  jmp .9\n", "s.s")
    assert str(e.value).startswith("s.s:2:3: ") and "outside the stream" in str(e.value)
