"""The offline model file `.mlu`: a zip with a JSON manifest, encoded instruction streams and .npy
constants. Never a pickle.

Layout:
    mimetype                  "application/x-mlusim-model" (first, stored: identifies the file)
    manifest.json             format, version, target config, tensors, kernels, member sizes
    kernels/<k>/<s>.bin       instruction stream s of kernel k (mlusim binary encoding)
    tensors/<i>.npy           data of const tensor i (read with allow_pickle=False)

Reading trusts nothing: member names must be exactly those the manifest lists, sizes are checked
against the manifest and against caps before a byte is decompressed, every field of the manifest
is type- and range-checked (a declared shape is sized with Python ints, never numpy's wrapping
ones, before anything is allocated), a .npy header is parsed and checked against its declaration
before its data is touched, and every decode error becomes a ModelFileError naming the file and
the member or manifest field. docs/robustness.md lists the caps.
"""
from __future__ import annotations

import io
import json
import zipfile
import zlib
from pathlib import Path

import numpy as np

from mlusim import __version__
from mlusim import budget
from mlusim.errors import MlusimError, ModelFileError
from mlusim.metacheck import check_kernel_meta, check_program_meta
from mlusim.names import check_name, shown
from mlusim.program import Kernel, Program, TensorDecl

MIMETYPE = b"application/x-mlusim-model"
FORMAT = "mlusim-model"
VERSION = 3      # 2: four dependency-token queues (the move queue), so instruction words differ from 1;
                 # 3: g2s moved from the store queue to the load queue, so v2 tokens would pair wrongly
MAX_MEMBER_BYTES = 2 * 1024**3        # one constant tensor or stream
MAX_TOTAL_BYTES = 8 * 1024**3         # everything uncompressed
MAX_MANIFEST_BYTES = 64 * 1024**2
MAX_RATIO = 1000                      # uncompressed / compressed, beyond which it is a bomb
MAX_STREAM_BYTES = 32 * 1024**2       # one encoded instruction stream (~1.3M instructions)
MAX_TOTAL_STREAM_BYTES = 128 * 1024**2
INSTR_HOST_FACTOR = 24                # host bytes per encoded byte once decoded (measured ~18)
MAX_TENSOR_BYTES = 1 << 40            # one declared tensor: more than any MLU's GDRAM
MAX_GDRAM_BYTES = 1 << 42
MAX_NDIM = 16
MAX_TASKS = 1 << 20                   # same cap as the assembler's tasks=
MAX_KERNELS = 1 << 14                 # a network has hundreds; each costs ~1 KiB per core per run
MAX_NAME = 256
ZIP_DATE = (2020, 1, 1, 0, 0, 0)      # fixed, so the same program gives the same bytes
CHUNK = 1 << 20


def _member(zf: zipfile.ZipFile, name: str, data, compress: bool = True) -> None:
    """Write one member: bytes, or (npy header, array) streamed from the array's own buffer so
    that saving a program never holds a second copy of its constants."""
    head, body = (b"", data) if isinstance(data, (bytes, bytearray)) else data
    if not isinstance(body, (bytes, bytearray)):
        body = np.ascontiguousarray(body).reshape(-1).view(np.uint8)     # a view, not a copy
    info = zipfile.ZipInfo(name, date_time=ZIP_DATE)
    size = len(head) + len(body)
    if compress and size > MAX_RATIO * 64:
        # A member that deflates past the loader's bomb ratio (a zero-filled constant) is stored
        # as it is, so that mlusim never writes a file it would then refuse to read. A prefix that
        # already deflates to more than 1/MAX_RATIO of the whole settles it without a second pass.
        compress = _deflated_size(body[:CHUNK]) * MAX_RATIO > 2 * size or _deflated_size(body) * MAX_RATIO >= size
    info.compress_type = zipfile.ZIP_DEFLATED if compress else zipfile.ZIP_STORED
    info.external_attr = 0o644 << 16
    info.file_size = size
    with zf.open(info, "w") as f:
        f.write(head)
        for lo in range(0, len(body), CHUNK):
            f.write(body[lo:lo + CHUNK])


def _deflated_size(data) -> int:
    z = zlib.compressobj(zlib.Z_DEFAULT_COMPRESSION, zlib.DEFLATED, -15)     # what zipfile writes
    return len(z.compress(data)) + len(z.flush())


def _check_savable(program: Program, origin: str) -> None:
    """What `load` would refuse is refused before writing: names, task counts, recorded meta."""
    try:
        program.validate()
        for i, k in enumerate(program.kernels):
            if not 1 <= k.task_dim <= MAX_TASKS:
                raise ModelFileError(f"kernel {i} ('{k.name}'): task_dim {k.task_dim} is outside 1..{MAX_TASKS:,}")
            check_kernel_meta(k.meta, f"kernel {i} ('{k.name}')")
        check_program_meta(program.meta, "program")
        _check_strings(program.meta, "program meta")
    except MlusimError as e:
        raise ModelFileError(f"{origin}: not written: {e}") from None


def _npy_parts(arr: np.ndarray) -> tuple[bytes, np.ndarray]:
    """What np.save writes for `arr` (C order), as its header and the array to stream after it."""
    from numpy.lib import format as npf

    arr = np.ascontiguousarray(arr)
    buf = io.BytesIO()
    npf.write_array_header_1_0(buf, npf.header_data_from_array_1_0(arr))
    return buf.getvalue(), arr


def _size(member) -> int:
    return len(member) if isinstance(member, (bytes, bytearray)) else len(member[0]) + member[1].nbytes


def save(program: Program, path: str | Path, compress: bool = True) -> None:
    """Write `program` to `path` (the target config, if any, is recorded alongside).
    compress=False stores members as they are: a bigger file, written and read several times
    faster (the compile cache's entries)."""
    _write(program, path, str(path), compress)


def dumps(program: Program, origin: str = "<program>") -> bytes:
    """The bytes `save` would write (the torch shim keeps a traced program in memory this way)."""
    buf = io.BytesIO()
    _write(program, buf, origin)
    return buf.getvalue()


def _encoder():
    """encode_stream, with each distinct instruction encoded once per file: the encoder checks
    every field (~10 us an instruction), and a compiled model repeats its instructions (ResNet-50
    b16: 141,592, 20,016 distinct objects, 7,355 distinct contents), which made encoding most of a
    compile-cache store. Known by object first (the program holds them all while it is written,
    so no id is reused), then by content."""
    from mlusim.isa.encoding import encode

    by_object: dict[int, bytes] = {}
    by_content: dict[tuple, bytes] = {}

    def encoded(stream) -> bytes:
        parts = []
        for ins in stream:
            b = by_object.get(id(ins))
            if b is None:
                key = (ins.op.opcode, *ins.args.items())
                b = by_content.get(key)
                if b is None:
                    b = by_content[key] = encode(ins)
                by_object[id(ins)] = b
            parts.append(b)
        return b"".join(parts)
    return encoded


def _write(program: Program, target, origin: str, compress: bool = True) -> None:
    """Write the zip to `target`, a path or a binary file object; errors name `origin`."""
    _check_savable(program, origin)
    encoded = _encoder()
    members: dict[str, bytes | tuple[bytes, np.ndarray]] = {}
    tensors = []
    for i, t in enumerate(program.tensors):
        entry = {"name": t.name, "role": t.role, "dtype": t.dtype, "shape": list(t.shape), "addr": t.addr,
                 "meta": t.meta, "data": None}
        if t.data is not None:
            entry["data"] = f"tensors/{i}.npy"
            members[entry["data"]] = _npy_parts(t.data)
        tensors.append(entry)
    kernels = []
    for ki, k in enumerate(program.kernels):
        names = []
        for si, stream in enumerate(k.streams):
            name = f"kernels/{ki}/{si}.bin"
            members[name] = encoded(stream)
            names.append(name)
        kernels.append({"name": k.name, "task_type": k.task_type, "task_dim": k.task_dim, "streams": names,
                        "task_stream": k.task_stream, "meta": k.meta})
    manifest = {"format": FORMAT, "version": VERSION, "created_by": f"mlusim {__version__}",
                "gdram_bytes": program.gdram_bytes, "config": program.config, "meta": program.meta,
                "tensors": tensors, "kernels": kernels, "members": {n: _size(b) for n, b in members.items()}}
    try:
        text = json.dumps(manifest, indent=1, sort_keys=True, allow_nan=False).encode()
    except (TypeError, ValueError, RecursionError) as e:
        raise ModelFileError(f"{origin}: cannot record program metadata: {e}") from None
    try:
        with zipfile.ZipFile(target, "w") as zf:
            _member(zf, "mimetype", MIMETYPE, compress=False)
            _member(zf, "manifest.json", text)
            for name, data in members.items():
                _member(zf, name, data, compress)
    except OSError as e:
        raise ModelFileError(f"{origin}: cannot write model file: {e.strerror or e}") from None


def _read(zf: zipfile.ZipFile, info: zipfile.ZipInfo, origin: str, expect: int | None) -> bytearray:
    _check_member(info, origin, expect)
    data = bytearray(info.file_size)
    got = 0
    with zf.open(info) as fh:      # chunk by chunk into one buffer: the member is held once, not twice
        while got < info.file_size:
            chunk = fh.read(min(CHUNK, info.file_size - got))
            if not chunk:
                break
            data[got:got + len(chunk)] = chunk
            got += len(chunk)
        more = fh.read(1)
    if got != info.file_size or more:
        raise ModelFileError(f"{origin}: member '{info.filename}' holds {'more than ' if more else ''}{got:,} bytes, "
                             f"its header says {info.file_size:,}")
    return data


def _mapped(mm, info: zipfile.ZipInfo, origin: str, expect: int | None) -> memoryview:
    """A stored (uncompressed) member as a read-only view of the file mapping, its CRC checked."""
    from mlusim.mapped import crc32_releasing

    _check_member(info, origin, expect)
    h = info.header_offset
    if h + 30 > len(mm) or mm[h:h + 4] != b"PK\x03\x04":
        raise ModelFileError(f"{origin}: member '{info.filename}': no local header where the directory says")
    start = h + 30 + int.from_bytes(mm[h + 26:h + 28], "little") + int.from_bytes(mm[h + 28:h + 30], "little")
    if start + info.file_size > len(mm):
        raise ModelFileError(f"{origin}: member '{info.filename}' runs past the end of the file")
    view = memoryview(mm)[start:start + info.file_size]
    if crc32_releasing(view, mm) != info.CRC:
        raise ModelFileError(f"{origin}: member '{info.filename}': CRC mismatch (a damaged file)")
    return view


def _check_member(info: zipfile.ZipInfo, origin: str, expect: int | None) -> None:
    if info.file_size > MAX_MEMBER_BYTES:
        raise ModelFileError(f"{origin}: member '{info.filename}' is {info.file_size:,} bytes, over the "
                             f"{MAX_MEMBER_BYTES:,}-byte limit")
    if expect is not None and info.file_size != expect:
        raise ModelFileError(f"{origin}: member '{info.filename}' is {info.file_size:,} bytes but the "
                             f"manifest says {expect:,}")
    if info.compress_size and info.file_size / info.compress_size > MAX_RATIO:
        raise ModelFileError(f"{origin}: member '{info.filename}' expands {info.file_size / info.compress_size:.0f}x "
                             f"(a zip bomb?)")


KIND_NAMES = {int: "an integer", str: "a string", list: "a list", dict: "a mapping"}


def _need(d: dict, key: str, kind, where: str, lo: int | None = None, hi: int | None = None):
    """d[key], which must exist and be of `kind` (ints: not bools, within [lo, hi])."""
    if not isinstance(d, dict):
        raise ModelFileError(f"{where}: expected a mapping, got {type(d).__name__}")
    if key not in d:
        raise ModelFileError(f"{where}: missing '{key}'")
    v = d[key]
    if kind is int and (isinstance(v, bool) or not isinstance(v, int)):
        raise ModelFileError(f"{where}: '{key}' must be an integer, got {type(v).__name__}")
    if kind is not int and not isinstance(v, kind):
        raise ModelFileError(f"{where}: '{key}' must be {KIND_NAMES.get(kind, kind.__name__)}, got "
                             f"{type(v).__name__}")
    if kind is int and ((lo is not None and v < lo) or (hi is not None and v > hi)):
        raise ModelFileError(f"{where}: '{key}' = {v} is outside [{lo}, {hi}]")
    return v


def _name(d: dict, key: str, where: str) -> str:
    """A tensor or kernel name: printed in reports and made into file names by `run --output`, so
    held to the identifier rules of mlusim.names."""
    return check_name(_need(d, key, str, where), where, ModelFileError)


def _check_strings(obj, where: str, depth: int = 0) -> None:
    """Every string of the manifest one printable line: `inspect` and `disasm` print them, and an
    ESC sequence, a bidi override or a newline (a forged line) from a stranger's file must not reach
    a terminal."""
    if depth > 64:
        raise ModelFileError(f"{where}: nested deeper than 64")
    if isinstance(obj, str):
        if not obj.isprintable():
            raise ModelFileError(f"{where}: string {shown(obj, 40)} contains control characters (or other "
                                 f"non-printable ones)")
    elif isinstance(obj, dict):
        for k, v in obj.items():
            _check_strings(k, where, depth + 1)
            _check_strings(v, f"{where}.{k}"[:200], depth + 1)
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            _check_strings(v, f"{where}[{i}]"[:200], depth + 1)


def _elements(shape) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def _npy(raw: bytes, dtype: np.dtype, shape: tuple[int, ...], where: str) -> np.ndarray:
    """Decode a .npy member that must hold exactly `dtype` and `shape`. The header is parsed and
    checked first (numpy's own parser: literal_eval, never pickle), so that a header declaring a
    huge shape or an object dtype is refused before any allocation; the data must then be exactly
    the declared size."""
    from mlusim.npyfile import MAX_HEADER, read_header

    fh = io.BytesIO(bytes(raw[:MAX_HEADER + 16]))       # the header only: never a copy of the data
    hshape, fortran, hdtype = read_header(fh, where, ModelFileError)
    if hdtype != dtype:
        raise ModelFileError(f"{where}: holds dtype {str(hdtype)[:40]}, the manifest declares {dtype}")
    if tuple(hshape) != shape:
        raise ModelFileError(f"{where}: holds shape {str(list(hshape))[:80]}, the manifest declares "
                             f"{list(shape)}")
    body = memoryview(raw)[fh.tell():]
    need = dtype.itemsize * _elements(shape)
    if len(body) != need:
        raise ModelFileError(f"{where}: holds {len(body):,} data bytes, its header says {need:,}")
    arr = np.frombuffer(body, dtype=dtype)     # a view of the member's (writable) buffer: no second copy
    return arr.reshape(shape, order="F" if fortran else "C")


def _layout(meta: dict, key: str, ndim: int, where: str) -> None:
    v = meta.get(key)
    if v is None:
        return
    if not isinstance(v, str) or len(v) != ndim or len(set(v)) != ndim or not v.isascii() or not v.isalpha():
        raise ModelFileError(f"{where}: meta '{key}' must be {ndim} distinct letters (one per dimension), "
                             f"got {str(v)[:40]!r}")


def _tensor_meta(meta, shape: tuple, where: str) -> dict:
    """The tensor meta keys the simulator reads, checked here so that a run cannot trip over them."""
    if meta is None:
        return {}
    if not isinstance(meta, dict):
        raise ModelFileError(f"{where}: meta must be a mapping, got {type(meta).__name__}")
    _layout(meta, "layout", len(shape), where)
    _layout(meta, "host_layout", len(shape), where)
    host, dev = meta.get("host_layout"), meta.get("layout")
    if host and not dev:
        raise ModelFileError(f"{where}: meta 'host_layout' needs a 'layout' to map to")
    if host and dev and sorted(host) != sorted(dev):
        raise ModelFileError(f"{where}: meta 'host_layout' {host!r} is not a permutation of 'layout' {dev!r}")
    if "space_to_depth" in meta or "host_shape" in meta:
        v, hs = meta.get("space_to_depth"), meta.get("host_shape")
        ok = (isinstance(v, list) and len(v) == 5 and all(isinstance(x, int) and not isinstance(x, bool)
                                                              and 0 <= x < 2**16 for x in v) and v[0] >= 1
              and isinstance(hs, list) and len(hs) == 4 and len(shape) == 4
              and all(isinstance(x, int) and not isinstance(x, bool) and 0 <= x < 2**31 for x in hs))
        if ok:
            b, pt, pb, pl, pr = v
            n, c, h, w = hs
            ok = (h + pt + pb) % b == 0 and (w + pl + pr) % b == 0 and \
                tuple(shape) == (n, (h + pt + pb) // b, (w + pl + pr) // b, b * b * c)
        if not ok:
            raise ModelFileError(f"{where}: meta 'space_to_depth' must be [block, pt, pb, pl, pr] with a "
                                 f"'host_shape' [n, c, h, w] that folds into the tensor's shape")
    if "range" in meta:
        r = meta["range"]
        if (not isinstance(r, list) or len(r) != 2
                or not all(isinstance(x, (int, float)) and not isinstance(x, bool) and abs(x) < 1e30 for x in r)
                or not r[0] <= r[1]):
            raise ModelFileError(f"{where}: meta 'range' must be [low, high] with finite numbers, got "
                                 f"{str(r)[:40]}")
    return meta


def load(path: str | Path, mapped: bool = False) -> Program:
    """Read a .mlu file; any problem with it is a ModelFileError naming the file.
    mapped=True: constants of stored (uncompressed) members are read-only views of the file mapped
    into memory (mlusim/mapped.py), for files mlusim wrote and never rewrites in place (the
    compile cache's)."""
    origin = str(path)
    p = Path(path)
    try:
        if not p.is_file():
            raise ModelFileError(f"{origin}: no such model file")
        with open(p, "rb") as fh:
            head = fh.read(4)
    except (OSError, ValueError) as e:
        raise ModelFileError(f"{origin}: cannot read model file: {getattr(e, 'strerror', None) or e}") from None
    return _read_zip(p, head, origin, mapped)


def loads(data: bytes, origin: str = "<bytes>") -> Program:
    """A program from the bytes of a .mlu file (`dumps`), checked as `load` checks a file."""
    return _read_zip(io.BytesIO(data), bytes(data[:4]), origin)


def _read_zip(source, head: bytes, origin: str, mapped: bool = False) -> Program:
    """Open the zip at `source` (a path or a binary file object whose first bytes are `head`);
    mapped: `source` is a path whose stored constants become views of it mapped read-only."""
    if head != b"PK\x03\x04":
        raise ModelFileError(f"{origin}: not an mlusim model (no zip signature; is it an assembly file? "
                             f"use `mlusim asm`)")
    try:
        if mapped:      # a file mlusim wrote and never rewrites: constants stay in it (mapped.py)
            from mlusim.mapped import map_file

            with open(source, "rb") as fh, zipfile.ZipFile(fh) as zf:
                return _load(zf, origin, map_file(fh.fileno()))
        with zipfile.ZipFile(source) as zf:
            return _load(zf, origin)
    except MlusimError:
        raise
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, OSError, ValueError, KeyError,
            NotImplementedError, RuntimeError, UnicodeDecodeError) as e:
        raise ModelFileError(f"{origin}: corrupt model file ({type(e).__name__}: {str(e)[:120]})") from None
    except Exception as e:   # zlib.error and friends from a damaged stream
        if type(e).__module__ in ("zlib", "zipfile", "binascii"):
            raise ModelFileError(f"{origin}: corrupt model file ({type(e).__name__}: {str(e)[:120]})") from None
        raise


def _no_constant(name: str):
    raise ValueError(f"{name} is not a JSON number")


def _listing(zf: zipfile.ZipFile, origin: str) -> dict[str, zipfile.ZipInfo]:
    """The zip's members by name: no duplicates, no unsafe names, not too much in total."""
    infos = {}
    total = 0
    for info in zf.infolist():
        name = info.filename
        if name in infos:
            raise ModelFileError(f"{origin}: member {name!r} appears twice")
        if (name.startswith(("/", "\\")) or ".." in name.split("/") or "\\" in name or ":" in name
                or not name.isprintable()):
            raise ModelFileError(f"{origin}: unsafe member name {name!r}")
        total += info.file_size
        infos[name] = info
    if total > MAX_TOTAL_BYTES:
        raise ModelFileError(f"{origin}: {total:,} bytes uncompressed, over the {MAX_TOTAL_BYTES:,}-byte limit")
    if "mimetype" not in infos or _read(zf, infos["mimetype"], origin, None) != MIMETYPE:
        raise ModelFileError(f"{origin}: a zip file, but not an mlusim model (bad or missing mimetype)")
    if "manifest.json" not in infos:
        raise ModelFileError(f"{origin}: no manifest.json")
    if infos["manifest.json"].file_size > MAX_MANIFEST_BYTES:
        raise ModelFileError(f"{origin}: manifest.json is {infos['manifest.json'].file_size:,} bytes, over the "
                             f"{MAX_MANIFEST_BYTES:,}-byte limit")
    return infos


def _manifest(zf: zipfile.ZipFile, infos: dict, origin: str) -> dict:
    """manifest.json parsed, of this format and version, its strings and member sizes checked."""
    try:
        man = json.loads(_read(zf, infos["manifest.json"], origin, None), parse_constant=_no_constant)
    except (ValueError, UnicodeDecodeError, RecursionError) as e:
        raise ModelFileError(f"{origin}: manifest.json is not valid JSON ({str(e)[:80]})") from None
    where = f"{origin}: manifest"
    if not isinstance(man, dict):
        raise ModelFileError(f"{where}: expected a JSON object, got {type(man).__name__}")
    if _need(man, "format", str, where) != FORMAT:
        raise ModelFileError(f"{where}: format is {man['format'][:40]!r}, not {FORMAT!r}")
    version = _need(man, "version", int, where)
    if version > VERSION:
        raise ModelFileError(f"{origin}: format version {version} is newer than this mlusim reads ({VERSION}); "
                             f"upgrade mlusim")
    if version < 1:
        raise ModelFileError(f"{origin}: format version {version} is invalid")
    if version < VERSION:
        raise ModelFileError(f"{origin}: format version {version} was written by an older mlusim whose instruction "
                             f"encoding or queues differ; recompile the model")
    if isinstance(man.get("kernels"), list) and len(man["kernels"]) > MAX_KERNELS:
        raise ModelFileError(f"{where}: {len(man['kernels']):,} kernels, over the limit of {MAX_KERNELS:,}")
    _check_strings(man, where)
    sizes = _need(man, "members", dict, where)
    for name, size in sizes.items():
        if isinstance(size, bool) or not isinstance(size, int) or not 0 <= size <= MAX_MEMBER_BYTES:
            raise ModelFileError(f"{where}: members: size of {name!r} must be an integer in "
                                 f"0..{MAX_MEMBER_BYTES:,}, got {str(size)[:40]}")
    extra = sorted(set(infos) - set(sizes) - {"mimetype", "manifest.json"})
    if extra:
        raise ModelFileError(f"{origin}: member {extra[0]!r} is not in the manifest")
    return man


class _Members:
    """Reads the members the manifest refers to, each at most once and at its declared size."""

    def __init__(self, zf: zipfile.ZipFile, infos: dict, sizes: dict, origin: str, mm=None):
        self.zf, self.infos, self.sizes, self.origin, self.mm = zf, infos, sizes, origin, mm
        self.used: set[str] = set()

    def read(self, name, what: str, limit: int = MAX_MEMBER_BYTES) -> bytearray | memoryview:
        origin = self.origin
        if not isinstance(name, str) or name not in self.sizes:
            raise ModelFileError(f"{origin}: manifest: {what} refers to unlisted member {str(name)[:60]!r}")
        if name not in self.infos:
            raise ModelFileError(f"{origin}: member {name!r} ({what}) is missing")
        if name in self.used:
            raise ModelFileError(f"{origin}: manifest: member {name!r} is used twice ({what})")
        self.used.add(name)
        if self.sizes[name] > limit:
            raise ModelFileError(f"{origin}: member {name!r} ({what}) is {self.sizes[name]:,} bytes, over the "
                                 f"{limit:,}-byte limit")
        info = self.infos[name]
        if self.mm is not None and info.compress_type == zipfile.ZIP_STORED and info.file_size:
            return _mapped(self.mm, info, origin, self.sizes[name])
        return _read(self.zf, info, origin, self.sizes[name])


def _check_host_memory(tensors_raw: list, kernels_raw: list, sizes: dict, origin: str) -> None:
    """Constants as stored plus instruction streams as decoded, refused before anything is read."""
    stream_bytes = sum(sizes.get(s, 0) for k in kernels_raw if isinstance(k, dict)
                       for s in (k.get("streams") if isinstance(k.get("streams"), list) else [])
                       if isinstance(s, str))
    if stream_bytes > MAX_TOTAL_STREAM_BYTES:
        raise ModelFileError(f"{origin}: {stream_bytes:,} bytes of instruction streams, over the "
                             f"{MAX_TOTAL_STREAM_BYTES:,}-byte limit")
    data_bytes = sum(sizes.get(t.get("data"), 0) for t in tensors_raw
                     if isinstance(t, dict) and isinstance(t.get("data"), str))
    budget.check(data_bytes + INSTR_HOST_FACTOR * stream_bytes, f"{origin}: loading this model", ModelFileError)


def _tensor(t, i: int, where: str, members: _Members) -> TensorDecl:
    from mlusim.program import NP_OF

    tw = f"{where}: tensor {i}"
    name = _name(t, "name", tw)
    tw = f"{where}: tensor {i} ('{name}')"
    role = _need(t, "role", str, tw)
    dtype = _need(t, "dtype", str, tw)
    if dtype not in NP_OF:
        raise ModelFileError(f"{tw}: unknown dtype {dtype[:20]!r} (one of {', '.join(NP_OF)})")
    shape = _need(t, "shape", list, tw)
    if len(shape) > MAX_NDIM or not all(isinstance(d, int) and not isinstance(d, bool) and 0 <= d < 2**40
                                        for d in shape):
        raise ModelFileError(f"{tw}: bad shape {str(shape)[:80]} (at most {MAX_NDIM} dimensions, each "
                             f"an integer in 0..2**40)")
    shape = tuple(shape)
    npdt = np.dtype(NP_OF[dtype])
    nbytes = _elements(shape) * npdt.itemsize
    if nbytes > MAX_TENSOR_BYTES:
        raise ModelFileError(f"{tw}: shape {list(shape)} is {nbytes:,} bytes, over the "
                             f"{MAX_TENSOR_BYTES:,}-byte limit")
    addr = _need(t, "addr", int, tw, 0, MAX_GDRAM_BYTES)
    decl = TensorDecl(name, role, dtype, shape, addr, None, _tensor_meta(t.get("meta"), shape, tw))
    if t.get("data") is not None:
        decl.data = _npy(members.read(t["data"], f"tensor '{name}'"), npdt, shape,
                         f"{members.origin}: member {t['data']!r} (tensor '{name}')")
    return decl


def _kernel(k, i: int, where: str, members: _Members, decoded: dict) -> Kernel:
    from mlusim.isa.encoding import decode_stream

    kw = f"{where}: kernel {i}"
    kname = _name(k, "name", kw)
    kw = f"{where}: kernel {i} ('{kname}')"
    task_dim = _need(k, "task_dim", int, kw, 1, MAX_TASKS)
    streams = []
    for s in _need(k, "streams", list, kw):
        raw = members.read(s, f"kernel '{kname}'", MAX_STREAM_BYTES)
        try:
            streams.append(decode_stream(raw, decoded))
        except MlusimError as e:
            raise ModelFileError(f"{members.origin}: member {s!r} (kernel '{kname}'): {e}") from None
    ts = k.get("task_stream")
    if ts is not None and (not isinstance(ts, list) or len(ts) != task_dim or not all(
            isinstance(x, int) and not isinstance(x, bool) and 0 <= x < len(streams) for x in ts)):
        raise ModelFileError(f"{kw}: task_stream must list, for each of the {task_dim} tasks, a stream "
                             f"index in 0..{len(streams) - 1}")
    meta = check_kernel_meta(k.get("meta"), kw)
    return Kernel(kname, _need(k, "task_type", str, kw), task_dim, streams, ts, meta)


def _load(zf: zipfile.ZipFile, origin: str, mm=None) -> Program:
    infos = _listing(zf, origin)
    man = _manifest(zf, infos, origin)
    where = f"{origin}: manifest"
    sizes = man["members"]
    tensors_raw = _need(man, "tensors", list, where)
    kernels_raw = _need(man, "kernels", list, where)
    _check_host_memory(tensors_raw, kernels_raw, sizes, origin)
    members = _Members(zf, infos, sizes, origin, mm)
    tensors = [_tensor(t, i, where, members) for i, t in enumerate(tensors_raw)]
    decoded: dict = {}     # instruction bytes -> Instr, shared by all kernels' streams
    kernels = [_kernel(k, i, where, members, decoded) for i, k in enumerate(kernels_raw)]
    config = man.get("config")
    if config is not None:
        if not isinstance(config, dict):
            raise ModelFileError(f"{where}: config must be a mapping, got {type(config).__name__}")
        if "name" in config:
            v = _need(config, "name", str, f"{where}: config")
            if not v or len(v) > MAX_NAME:
                raise ModelFileError(f"{where}: config: 'name' must be 1..{MAX_NAME} characters")
    meta = check_program_meta(man.get("meta"), where)
    gdram = _need(man, "gdram_bytes", int, where, 0, MAX_GDRAM_BYTES)
    prog = Program(kernels, tensors, gdram, config, meta)
    try:
        prog.validate()
        from mlusim.isa.asm import check_targets

        for k in kernels:
            for s in k.streams:
                check_targets(s, f"kernel '{k.name}'")
    except MlusimError as e:
        raise ModelFileError(f"{origin}: {e}") from None
    return prog
