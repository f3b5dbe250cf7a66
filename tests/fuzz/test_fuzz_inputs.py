"""Input arrays from the command line (`run --input`, `compile --calibrate`): hostile .npy headers,
pipes and devices, and dtypes that differ from the declaration. Every one is used exactly, or
refused with one line; nothing blocks, allocates the header's fantasy or wraps values silently."""
from __future__ import annotations

import os
import struct
import warnings

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from mlusim import npyfile
from mlusim.cli import main
from mlusim.errors import SimulationError
from mlusim.isa.asm import assemble_program
from mlusim.sim import simulate

from .harness import assert_clean_error, check_outcome, count, fuzz, no_hang

COPY = """.tensor x input {dt} [4, 8]
.tensor y output {dt} [4, 8]
.kernel k block tasks=1
    dma g2n, 0, x, {n}, sig=st
    dma n2g, y, 0, {n}, wait=ld
"""


def _npy(header: str, body: bytes = b"") -> bytes:
    h = header.encode("latin1")
    pad = 64 - (10 + len(h) + 1) % 64
    h = h + b" " * pad + b"\n"
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(h)) + h + body


HEADERS = {
    "bool dimension": ("{'descr': '|i1', 'fortran_order': False, 'shape': (True, 65536)}", "non-negative integers"),
    "call in header": ("{'descr': '|i1', 'fortran_order': False, 'shape': (int(3),)}", "not a valid .npy"),
    "huge shape": ("{'descr': '|i1', 'fortran_order': False, 'shape': (2**40, 2**40)}", "not a valid .npy"),
    "huge literal": ("{'descr': '|i1', 'fortran_order': False, 'shape': (1099511627776, 1099511627776)}",
                     "header declares"),
    "negative": ("{'descr': '|i1', 'fortran_order': False, 'shape': (-1,)}", "not a valid .npy"),
    "object dtype": ("{'descr': '|O', 'fortran_order': False, 'shape': (1,)}", "not a valid .npy"),
    "float shape": ("{'descr': '|i1', 'fortran_order': False, 'shape': (1.5,)}", "not a valid .npy"),
    "nested": ("{'descr': '|i1', 'fortran_order': False, 'shape': ((1,),)}", "not a valid .npy"),
    "not a dict": ("[1, 2, 3]", "not a valid .npy"),
    "lying size": ("{'descr': '|i1', 'fortran_order': False, 'shape': (4, 8)}", "header declares"),
}


@pytest.mark.parametrize("name", sorted(HEADERS))
def test_hostile_npy_headers_are_one_line(tmp_path, name):
    header, needle = HEADERS[name]
    p = tmp_path / "in.npy"
    p.write_bytes(_npy(header, b"\x01" * 7))
    count("inputs: hostile .npy headers")
    with pytest.raises(SimulationError) as e:
        npyfile.load(p, SimulationError, "input file")
    msg = assert_clean_error(e.value)
    assert needle in msg and "<ast." not in msg and "object at 0x" not in msg, msg


@pytest.mark.parametrize("kind", ["fifo", "folder", "device"])
def test_pipes_folders_and_devices_are_refused_without_blocking(tmp_path, capsys, kind):
    count("inputs: special files")
    path = {"folder": str(tmp_path), "device": "/dev/zero"}.get(kind, str(tmp_path / "in.npy"))
    if kind == "fifo":
        os.mkfifo(path)
    src = tmp_path / "copy.s"
    src.write_text(COPY.format(dt="i8", n=32))
    for args in (["run", str(src), "--input", path], ["run", path], ["plot", "roofline", path, "-o", "x"]):
        with no_hang(20, " ".join(args)):
            code = main(args)
        err = capsys.readouterr().err
        assert code == 2 and err.count("\n") == 1 and ("not a regular file" in err or "folder" in err or
                                                       "not an mlusim model" in err or "no such" in err), err


INT_TYPES = [np.int8, np.uint8, np.int16, np.int32, np.int64, np.uint16]


@fuzz(ci=300)
@given(st.sampled_from([("i8", 32), ("i16", 64), ("i32", 128)]),
       st.sampled_from(INT_TYPES).flatmap(lambda t: hnp.arrays(t, (4, 8))))
def test_integer_inputs_are_exact_or_refused(case, arr):
    dt, n = case
    count("inputs: integer dtypes")
    prog = assemble_program(COPY.format(dt=dt, n=n), "copy.s")
    res, err = check_outcome(simulate, prog, "mlu270", cores=1, inputs={"x": arr})
    want = np.iinfo(prog.tensors[0].np_dtype)
    fits = int(arr.min()) >= want.min and int(arr.max()) <= want.max
    if fits:
        assert err is None and np.array_equal(res.outputs["y"].astype(np.int64), arr.astype(np.int64))
    else:
        assert err is not None and "do not fit" in str(err) and "never wrapped" in str(err)


@fuzz(ci=200)
@given(hnp.arrays(np.float64, (4, 8), elements=st.floats(allow_nan=True, allow_infinity=True, width=64)))
def test_float64_into_f16_rounds_or_refuses_without_warnings(arr):
    count("inputs: float64 into f16")
    prog = assemble_program(COPY.format(dt="f16", n=64), "copy.s")
    with warnings.catch_warnings():
        warnings.simplefilter("error")          # a raw RuntimeWarning fails the test
        res, err = check_outcome(simulate, prog, "mlu270", cores=1, inputs={"x": arr})
    finite = np.isfinite(arr)
    if np.any(np.abs(arr[finite]) > 65519):     # rounds to inf in f16
        assert err is not None and "beyond the range" in str(err)
    else:
        assert err is None
        np.testing.assert_array_equal(res.outputs["y"], arr.astype(np.float16))


def test_a_good_input_npy_reads_back_exactly(tmp_path):
    p = tmp_path / "a.npy"
    np.save(p, np.arange(32, dtype=np.int8).reshape(4, 8))
    arr = npyfile.load(p, SimulationError)
    assert arr.dtype == np.int8 and arr.shape == (4, 8) and arr.flags.writeable
    assert np.array_equal(arr, np.arange(32, dtype=np.int8).reshape(4, 8))
