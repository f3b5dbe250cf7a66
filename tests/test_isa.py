"""The ISA table drives encoding and assembly: every instruction round-trips through both."""
from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mlusim.errors import AssemblyError, EncodingError
from mlusim.isa.asm import (assemble_program, assemble_stream, disassemble_program, disassemble_stream,
                            format_instr, parse_instr)
from mlusim.isa.encoding import Instr, decode_stream, encode, encode_stream
from mlusim.isa.fields import F32, Target, bits_f32
from mlusim.isa.table import BY_MNEMONIC, OPS

SETTINGS = settings(max_examples=300, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.too_slow])


@st.composite
def instructions(draw, op=None, stream_len=None, pc=0):
    op = op or draw(st.sampled_from(OPS))
    args = {}
    for f in op.fields:
        if isinstance(f, Target):
            n = stream_len if stream_len is not None else 1000
            args[f.name] = draw(st.integers(0, n)) - pc
        elif isinstance(f, F32):
            bits = draw(st.integers(0, 2**32 - 1))
            args[f.name] = bits
        else:
            lo, hi = f.range()
            args[f.name] = draw(st.one_of(st.integers(lo, hi), st.sampled_from([lo, hi])))
    return Instr(op, args)


@SETTINGS
@given(instructions())
def test_binary_roundtrip(ins):
    data = encode(ins)
    assert len(data) == ins.op.nwords * 4
    assert decode_stream(data) == [ins]


@st.composite
def streams(draw):
    n = draw(st.integers(1, 12))
    return [draw(instructions(stream_len=n, pc=pc)) for pc in range(n)]


@SETTINGS
@given(streams())
def test_stream_roundtrip_binary_and_text(stream):
    assert decode_stream(encode_stream(stream)) == stream
    text = disassemble_stream(stream)
    assert assemble_stream(text) == stream


@pytest.mark.parametrize("op", [o for o in OPS if not any(isinstance(f, Target) for f in o.fields)],
                         ids=lambda o: o.mnemonic)
def test_each_instruction_text_roundtrip_at_extremes(op):
    for pick in (0, 1):
        args = {}
        for f in op.fields:
            lo, hi = f.range()
            args[f.name] = (lo, hi)[pick] if not isinstance(f, F32) else 0x3F800000
        ins = Instr(op, args)
        assert parse_instr(format_instr(ins)) == ins
        assert decode_stream(encode(ins)) == [ins]


def test_f32_nan_and_negative_zero_roundtrip():
    for bits in (0x7FC00001, 0x80000000, 0xFF800000, 0x00000001):
        ins = Instr.make("vdequant", sdt="i32", odt="f32", dst=0, src=0, n=1, scale=bits)
        assert parse_instr(format_instr(ins)) == ins
    assert bits_f32(Instr.make("vquant", sdt="f32", odt="i8", dst=0, src=0, n=1, scale="0.5").args["scale"]) == 0.5


def test_keyword_and_positional_forms_agree():
    a = parse_instr("dma g2n, [r3+0x40], 0x100, 64, count=4 sstride=128 dstride=64")
    b = parse_instr("dma dir=g2n dst=[r3+64] src=256 size=64 count=4 sstride=128 dstride=64")
    assert a == b
    assert a.op.by_name["dst"].split(a.args["dst"]) == (3, 0x40)


@pytest.mark.parametrize("text,needle", [
    ("frob r1, r2", "2:3: unknown instruction 'frob'"),
    ("li r1", "needs field 'imm'"),
    ("li r99, 3", "expected a register"),
    ("add r1, r2, r3, r4", "unexpected operand 'r4'"),
    ("vadd dt=i7 dst=0 a=0 b=0 n=1", "expected one of"),
    ("vadd dt=i8 dst=0 a=0 b=0 n=1 colour=3", "has no field 'colour'"),
    ("li r1, 0x1000000000000000", "outside"),
    ("dma g2n, 0, 0, 64, wait=xx", "expected queues"),
    ("blt r1, r2, nowhere", "unknown label 'nowhere'"),
    ("li r1, 1, imm=2", "given twice"),
])
def test_syntax_errors_name_line_and_column(text, needle):
    src = "  nop\n  " + text + "\n"
    with pytest.raises(AssemblyError) as e:
        assemble_stream(src, "prog.s")
    msg = str(e.value)
    assert needle in msg and msg.startswith("prog.s:2:"), msg


def test_program_directives_and_symbols():
    prog = assemble_program("""
        .tensor x input i8 [4, 64]
        .tensor w const i8 [64, 64] random(3)
        .kernel k block tasks=2
        .task 0
            dma g2n, 0, x, 256
        .task 1
            dma g2n, 0, [r0+w], 64
    """, "t.s")
    x, w = prog.tensor("x"), prog.tensor("w")
    assert w.addr >= x.end and w.addr % 64 == 0
    assert prog.kernels[0].task_stream == [0, 1]
    assert prog.kernels[0].streams[1][0].args["src"] == w.addr
    again = assemble_program(disassemble_program(prog).replace("; data stored in the model file", "random(3)"))
    assert again.kernels[0].streams == prog.kernels[0].streams


@pytest.mark.parametrize("text,needle", [
    (".kernel k block tasks=2\n.task 0\nnop\n", "task 1 has no .task stream"),
    (".kernel k union1 tasks=3\nnop\n", "multiple of 4"),
    (".kernel k warp tasks=3\nnop\n", "unknown task type"),
    ("nop\n", "instruction outside a .kernel"),
    (".tensor a input i8 [4]\n.tensor a input i8 [4]\n.kernel k block tasks=1\nnop\n", "declared twice"),
    (".kernel k block tasks=1\ndma g2n, 0, nosuch, 4\n", "unknown symbol 'nosuch'"),
    (".frob\n", "unknown directive"),
    (".kernel k block tasks=1\njmp .5\n", "outside the stream"),
])
def test_program_errors(text, needle):
    with pytest.raises(AssemblyError, match=needle):
        assemble_program(text, "p.s")


def test_decode_rejects_garbage():
    with pytest.raises(EncodingError, match="unknown opcode"):
        decode_stream(b"\xff\x00\x00\x00")
    good = encode(Instr.make("li", rd=1, imm=5))
    with pytest.raises(EncodingError, match="truncated"):
        decode_stream(good[:4])
    bad = bytearray(good)
    bad[-1] |= 0x80
    with pytest.raises(EncodingError, match="padding"):
        decode_stream(bytes(bad))
    with pytest.raises(EncodingError, match="whole number of words"):
        decode_stream(good[:5])


def test_make_checks_fields():
    with pytest.raises(EncodingError, match="missing field 'n'"):
        Instr.make("vadd", dt="i8", dst=0, a=0, b=0)
    with pytest.raises(EncodingError, match="unknown field"):
        Instr.make("nop", x=1)
    with pytest.raises(EncodingError, match="outside"):
        Instr.make("vset", dt="i8", dst=0, n=2**24, value=0)


def test_table_is_consistent():
    assert len({o.opcode for o in OPS}) == len(OPS)
    for o in OPS:
        names = [f.name for f in o.fields]
        assert len(names) == len(set(names)), o.mnemonic
        if o.queued:
            assert names[-2:] == ["wait", "sig"], o.mnemonic
            assert o.touches is not None and o.execute is not None
        assert o.doc
    assert BY_MNEMONIC["conv"].unit == "mac"


def test_docs_isa_is_generated_from_the_table():
    from pathlib import Path

    from mlusim.isa.docs import render

    doc = Path(__file__).resolve().parents[1] / "docs" / "isa.md"
    assert doc.read_text() == render(), "run: python -m mlusim.isa.docs"
