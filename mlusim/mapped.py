"""Constants read straight from a model file: read-only memory maps whose pages go back to the OS.

A program from the compile cache keeps its constants (a network's weights) as views of its .mlu
file mapped read-only, not as copies in the process's memory. Pages come in when read and can be
given back after use (`release`): the simulator copies each constant into its GDRAM image in
chunks and releases each chunk's pages behind it, so the weights are resident once (in GDRAM),
not twice. The views stay valid: a released page is read from the file again if touched.

Only files mlusim itself writes and never modifies in place are mapped (cache entries are
written to a temporary file and renamed over the old name; a reader's mapping keeps the old
file alive), so the bytes under a mapping never change.
"""
from __future__ import annotations

import mmap
import zlib

import numpy as np

CHUNK = 8 << 20       # bytes copied or checked between page releases
PAGE = mmap.PAGESIZE


def map_file(fileno: int) -> mmap.mmap:
    return mmap.mmap(fileno, 0, access=mmap.ACCESS_READ)


def mapping_of(arr) -> mmap.mmap | None:
    """The read-only file mapping an array (or memoryview) is a view of, or None."""
    obj = arr
    for _ in range(8):            # ndarray -> ndarray / memoryview -> mmap
        if isinstance(obj, mmap.mmap):
            return obj
        if isinstance(obj, memoryview):
            obj = obj.obj
        elif isinstance(obj, np.ndarray) and obj.base is not None:
            obj = obj.base
        else:
            return None
    return None


def release(mm: mmap.mmap, piece: np.ndarray) -> None:
    """Give back the pages of `mm` under `piece` (a view of it); a no-op where the OS cannot."""
    if not hasattr(mm, "madvise") or not hasattr(mmap, "MADV_DONTNEED") or piece.nbytes == 0:
        return
    base = np.frombuffer(mm, np.uint8, count=1).ctypes.data
    start = piece.ctypes.data - base
    lo = start // PAGE * PAGE
    hi = min(len(mm), start + piece.nbytes)
    mm.madvise(mmap.MADV_DONTNEED, lo, hi - lo)


def copy_releasing(dst: np.ndarray, src: np.ndarray) -> None:
    """dst[:] = src for flat uint8 arrays; when src lives in a file mapping, chunk by chunk,
    releasing each chunk's pages once copied."""
    mm = mapping_of(src)
    if mm is None:
        dst[:] = src
        return
    for lo in range(0, src.size, CHUNK):
        piece = src[lo:lo + CHUNK]
        dst[lo:lo + piece.size] = piece
        release(mm, piece)


def crc32_releasing(view: memoryview, mm: mmap.mmap) -> int:
    """zlib.crc32 of a view of `mm`, releasing its pages as it goes (checking a mapped member must
    not bring the whole file in)."""
    arr = np.frombuffer(view, np.uint8)
    crc = 0
    for lo in range(0, arr.size, CHUNK):
        piece = arr[lo:lo + CHUNK]
        crc = zlib.crc32(piece, crc)
        release(mm, piece)
    return crc
