"""The binary encoding and Instr.make: random bytes decode or raise EncodingError; every
instruction that exists encodes, decodes and prints back to itself; Instr.make takes any Python
values and either builds a checked instruction or raises EncodingError."""
from __future__ import annotations

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from mlusim.isa.asm import assemble_stream, disassemble_stream
from mlusim.isa.encoding import Instr, decode_stream, encode_stream
from mlusim.isa.fields import Addr, Target
from mlusim.isa.table import OPS

from .harness import count, fuzz, check_outcome
from .programs import clamp_targets, field_strategy, instruction


@fuzz(ci=2000)
@given(st.binary(max_size=64).map(lambda b: b[: len(b) - len(b) % 4]))
def test_random_words_decode_or_fail_cleanly(data):
    stream, err = check_outcome(decode_stream, data, kind="encoding: random words")
    if stream is not None:
        assert encode_stream(stream) == data          # decoding is exact: no bit is ignored


@fuzz(ci=400)
@given(st.lists(instruction(), max_size=8))
def test_every_instruction_round_trips_through_bits_and_text(stream):
    count("encoding: instruction round trips")
    stream = clamp_targets(stream)
    assert decode_stream(encode_stream(stream)) == stream
    assert assemble_stream(disassemble_stream(stream), "rt.s") == stream


any_value = st.one_of(st.integers(-(2**70), 2**70), st.integers(-2, 70), st.text(max_size=8), st.none(), st.booleans(),
                      st.floats(), st.tuples(st.integers(-3, 40), st.integers(-2, 2**41)),
                      st.tuples(st.integers()), st.lists(st.integers(), max_size=2),
                      st.integers(0, 255).map(np.int64), st.sampled_from(["r1", "[r1+8]", "0x40", "i8", "ld+cp", "L0"]))


@st.composite
def make_call(draw):
    """A mnemonic (usually real) and keyword values that are mostly right for its fields: valid
    ints, their assembly spelling, or (one in four) anything at all; fields with defaults may be
    left out and a stray keyword may be added."""
    if draw(st.integers(0, 9)) == 0:
        return draw(st.one_of(st.text(max_size=6), st.none(), st.integers())), {}
    op = draw(st.sampled_from(OPS))
    kwargs = {}
    for f in op.fields:
        how = draw(st.sampled_from(["int", "int", "text", "any", "omit"]))
        if how == "omit" and f.default is not None:
            continue
        v = draw(field_strategy(f))
        if how == "text" and not isinstance(f, Target):
            kwargs[f.name] = f.format(v)
        elif how == "any":
            kwargs[f.name] = draw(any_value)
        else:
            kwargs[f.name] = v if not isinstance(f, Addr) or draw(st.booleans()) else f.split(v)
    if draw(st.integers(0, 9)) == 0:
        kwargs["bogus"] = 1
    return op.mnemonic, kwargs


@fuzz(ci=800)
@given(make_call())
def test_instr_make_takes_any_python_values(call):
    mnemonic, kwargs = call
    ins, err = check_outcome(Instr.make, mnemonic, **kwargs, kind="encoding: Instr.make")
    if ins is not None:
        assert decode_stream(encode_stream([ins])) == [ins]
        assert all(type(v) is int for v in ins.args.values())
