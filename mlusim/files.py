"""Opening a file a user named, without hanging on it.

`open()` on a FIFO blocks until some writer appears, and reading a character device (/dev/zero,
/dev/urandom) never ends; either would turn a typo into a hang. Every input mlusim reads whole
(assembly, .npy arrays, JSON reports) goes through `open_regular`, which refuses anything but a
regular file with a one-line error, and `read_text`, which also bounds the size.
"""
from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import BinaryIO

from mlusim.errors import MlusimError


def open_regular(path: str | Path, what: str, error: type[MlusimError]) -> BinaryIO:
    """`path` opened for reading if it is a regular file; a FIFO, device or folder is refused
    (opening a FIFO blocks until a writer comes, reading /dev/zero never ends)."""
    try:
        st = os.stat(path)
        if stat.S_ISDIR(st.st_mode):
            raise error(f"{path}: a folder, not a file ({what})")
        if not stat.S_ISREG(st.st_mode):
            raise error(f"{path}: a pipe or a device, not a regular file ({what})")
        return open(path, "rb")
    except FileNotFoundError:
        raise error(f"{path}: no such {what}") from None
    except (OSError, ValueError) as e:
        raise error(f"{path}: cannot read {what}: {getattr(e, 'strerror', None) or e}") from None



def read_text(path: str | Path, what: str, error: type[MlusimError], limit: int) -> str:
    """A whole UTF-8 text file of at most `limit` bytes (a leading byte order mark dropped)."""
    with open_regular(path, what, error) as fh:
        if os.fstat(fh.fileno()).st_size > limit:
            raise error(f"{path}: {what} is over the limit of {limit:,} bytes")
        data = fh.read(limit + 1)
    if len(data) > limit:
        raise error(f"{path}: {what} is over the limit of {limit:,} bytes")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise error(f"{path}: {what} is not UTF-8 text (bad byte at offset {e.start})") from None
