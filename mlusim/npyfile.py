""".npy arrays from files we do not trust: model constants and `--input` / `--calibrate` files.

numpy's own header reader is used (it evaluates the header with a literal parser, never pickle),
but its answer is checked before numpy allocates anything: the shape must be a tuple of plain
non-negative integers (numpy accepts `(True, 65536)`), the dtype must not hold Python objects, and
the data must be exactly the declared size. Its error messages can quote parser internals
(`<ast.Call object at 0x...>`); ours say what was wrong in words. Files are opened only if they are
regular files: a FIFO or a device would block or never end.
"""
from __future__ import annotations

import os
import re
from pathlib import Path
from typing import BinaryIO

import numpy as np

from mlusim import budget
from mlusim.errors import MlusimError
from mlusim.files import open_regular

MAX_NDIM = 16
MAX_HEADER = 10_000


def _reason(e: BaseException) -> str:
    text = re.sub(r"<[\w.]+ object at 0x[0-9a-fA-F]+>", "an expression", str(e))
    return text.splitlines()[0][:80] if text else type(e).__name__


def read_header(fh: BinaryIO, where: str, error: type[MlusimError]) -> tuple[tuple[int, ...], bool, np.dtype]:
    """(shape, fortran_order, dtype) of the .npy stream `fh`, positioned at its data afterwards."""
    from tokenize import TokenError      # numpy's header filter tokenizes old-style headers

    from numpy.lib import format as npf

    try:
        version = npf.read_magic(fh)
        if version == (1, 0):
            shape, fortran, dtype = npf.read_array_header_1_0(fh, max_header_size=MAX_HEADER)
        elif version in ((2, 0), (3, 0)):
            shape, fortran, dtype = npf.read_array_header_2_0(fh, max_header_size=MAX_HEADER)
        else:
            raise ValueError(f"unsupported .npy version {version}")
    except (ValueError, TypeError, SyntaxError, OverflowError, RecursionError, EOFError, TokenError,
            MemoryError, KeyError) as e:
        raise error(f"{where}: not a valid .npy array ({_reason(e)})") from None
    if (not isinstance(shape, tuple) or len(shape) > MAX_NDIM
            or not all(type(d) is int and 0 <= d < 2**48 for d in shape)):
        raise error(f"{where}: not a valid .npy array (its header's shape {str(shape)[:60]} is not up to "
                    f"{MAX_NDIM} non-negative integers)")
    if dtype.hasobject:
        raise error(f"{where}: not a valid .npy array for mlusim: it holds pickled Python objects (dtype object), "
                    f"which are never loaded")
    return shape, bool(fortran), dtype


def load(path: str | Path, error: type[MlusimError], what: str = ".npy file") -> np.ndarray:
    """A whole .npy file, checked as above and against the memory budget before its data is read."""
    with open_regular(path, what, error) as fh:
        shape, fortran, dtype = read_header(fh, str(path), error)
        need = dtype.itemsize
        for d in shape:
            need *= d
        have = os.fstat(fh.fileno()).st_size - fh.tell()
        if need != have:
            raise error(f"{path}: header declares {list(shape)} {dtype} ({need:,} bytes) but the file holds "
                        f"{have:,} data bytes")
        budget.check(need, f"{path}: reading this array", error)
        data = bytearray(need)
        if fh.readinto(data) != need:
            raise error(f"{path}: the file shrank while being read")
    arr = np.frombuffer(data, dtype=dtype)
    return arr.reshape(shape, order="F" if fortran else "C")
