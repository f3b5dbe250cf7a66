"""The offline model file `.mlu`: a zip with a JSON manifest, encoded instruction streams and .npy
constants. Never a pickle.

Layout:
    mimetype                  "application/x-mlusim-model" (first, stored: identifies the file)
    manifest.json             format, version, target config, tensors, kernels, member sizes
    kernels/<k>/<s>.bin       instruction stream s of kernel k (mlusim binary encoding)
    tensors/<i>.npy           data of const tensor i (read with allow_pickle=False)

Reading trusts nothing: member names must be exactly those the manifest lists, sizes are checked
against the manifest and against caps before a byte is decompressed, and every decode error
becomes a ModelFileError naming the file and the member.
"""
from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path

import numpy as np

from mlusim import __version__
from mlusim.errors import MlusimError, ModelFileError
from mlusim.program import Kernel, Program, TensorDecl

MIMETYPE = b"application/x-mlusim-model"
FORMAT = "mlusim-model"
VERSION = 1
MAX_MEMBER_BYTES = 2 * 1024**3        # one constant tensor or stream
MAX_TOTAL_BYTES = 8 * 1024**3         # everything uncompressed
MAX_MANIFEST_BYTES = 64 * 1024**2
MAX_RATIO = 1000                      # uncompressed / compressed, beyond which it is a bomb
ZIP_DATE = (2020, 1, 1, 0, 0, 0)      # fixed, so the same program gives the same bytes


def _member(zf: zipfile.ZipFile, name: str, data: bytes, compress: bool = True) -> None:
    info = zipfile.ZipInfo(name, date_time=ZIP_DATE)
    info.compress_type = zipfile.ZIP_DEFLATED if compress else zipfile.ZIP_STORED
    info.external_attr = 0o644 << 16
    zf.writestr(info, data)


def _npy_bytes(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(arr), allow_pickle=False)
    return buf.getvalue()


def save(program: Program, path: str | Path) -> None:
    """Write `program` to `path` (the target config, if any, is recorded alongside)."""
    from mlusim.isa.encoding import encode_stream

    members: dict[str, bytes] = {}
    tensors = []
    for i, t in enumerate(program.tensors):
        entry = {"name": t.name, "role": t.role, "dtype": t.dtype, "shape": list(t.shape), "addr": t.addr,
                 "meta": t.meta, "data": None}
        if t.data is not None:
            entry["data"] = f"tensors/{i}.npy"
            members[entry["data"]] = _npy_bytes(t.data)
        tensors.append(entry)
    kernels = []
    for ki, k in enumerate(program.kernels):
        names = []
        for si, stream in enumerate(k.streams):
            name = f"kernels/{ki}/{si}.bin"
            members[name] = encode_stream(stream)
            names.append(name)
        kernels.append({"name": k.name, "task_type": k.task_type, "task_dim": k.task_dim, "streams": names,
                        "task_stream": k.task_stream, "meta": k.meta})
    manifest = {"format": FORMAT, "version": VERSION, "created_by": f"mlusim {__version__}",
                "gdram_bytes": program.gdram_bytes, "config": program.config, "meta": program.meta,
                "tensors": tensors, "kernels": kernels, "members": {n: len(b) for n, b in members.items()}}
    try:
        text = json.dumps(manifest, indent=1, sort_keys=True).encode()
    except (TypeError, ValueError) as e:
        raise ModelFileError(f"{path}: cannot record program metadata: {e}") from None
    with zipfile.ZipFile(path, "w") as zf:
        _member(zf, "mimetype", MIMETYPE, compress=False)
        _member(zf, "manifest.json", text)
        for name, data in members.items():
            _member(zf, name, data)


def _read(zf: zipfile.ZipFile, info: zipfile.ZipInfo, origin: str, expect: int | None) -> bytes:
    if info.file_size > MAX_MEMBER_BYTES:
        raise ModelFileError(f"{origin}: member '{info.filename}' is {info.file_size:,} bytes, over the "
                             f"{MAX_MEMBER_BYTES:,}-byte limit")
    if expect is not None and info.file_size != expect:
        raise ModelFileError(f"{origin}: member '{info.filename}' is {info.file_size:,} bytes but the "
                             f"manifest says {expect:,}")
    if info.compress_size and info.file_size / info.compress_size > MAX_RATIO:
        raise ModelFileError(f"{origin}: member '{info.filename}' expands {info.file_size / info.compress_size:.0f}x "
                             f"(a zip bomb?)")
    with zf.open(info) as fh:
        data = fh.read(info.file_size + 1)
    if len(data) != info.file_size:
        raise ModelFileError(f"{origin}: member '{info.filename}' holds {len(data):,} bytes, its header says "
                             f"{info.file_size:,}")
    return data


def _need(d: dict, key: str, kind, where: str):
    if not isinstance(d, dict) or key not in d:
        raise ModelFileError(f"{where}: missing '{key}'")
    v = d[key]
    if kind is int and (isinstance(v, bool) or not isinstance(v, int)):
        raise ModelFileError(f"{where}: '{key}' must be an integer")
    if kind is not int and not isinstance(v, kind):
        raise ModelFileError(f"{where}: '{key}' has the wrong type")
    return v


def load(path: str | Path) -> Program:
    origin = str(path)
    p = Path(path)
    if not p.is_file():
        raise ModelFileError(f"{origin}: no such model file")
    with open(p, "rb") as fh:
        head = fh.read(4)
    if head != b"PK\x03\x04":
        raise ModelFileError(f"{origin}: not an mlusim model (no zip signature; is it an assembly file? "
                             f"use `mlusim asm`)")
    try:
        with zipfile.ZipFile(p) as zf:
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


def _load(zf: zipfile.ZipFile, origin: str) -> Program:
    from mlusim.config import host_mem_cap_bytes
    from mlusim.isa.encoding import decode_stream
    from mlusim.program import NP_OF

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
    try:
        man = json.loads(_read(zf, infos["manifest.json"], origin, None))
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
    _check_strings(man, where)
    sizes = _need(man, "members", dict, where)
    for name, size in sizes.items():
        if isinstance(size, bool) or not isinstance(size, int) or not 0 <= size <= MAX_MEMBER_BYTES:
            raise ModelFileError(f"{where}: members: size of {name!r} must be an integer in "
                                 f"0..{MAX_MEMBER_BYTES:,}, got {str(size)[:40]}")
    listed = set(sizes) | {"mimetype", "manifest.json"}
    extra = sorted(set(infos) - listed)
    if extra:
        raise ModelFileError(f"{origin}: member {extra[0]!r} is not in the manifest")
    used: set[str] = set()

    def member(name, what, limit: int = MAX_MEMBER_BYTES) -> bytes:
        if not isinstance(name, str) or name not in sizes:
            raise ModelFileError(f"{where}: {what} refers to unlisted member {str(name)[:60]!r}")
        if name not in infos:
            raise ModelFileError(f"{origin}: member {name!r} ({what}) is missing")
        if name in used:
            raise ModelFileError(f"{where}: member {name!r} is used twice ({what})")
        used.add(name)
        if sizes[name] > limit:
            raise ModelFileError(f"{origin}: member {name!r} ({what}) is {sizes[name]:,} bytes, over the "
                                 f"{limit:,}-byte limit")
        return _read(zf, infos[name], origin, sizes[name])

    # Host memory: constants as stored, instruction streams as decoded; refused before reading.
    tensors_raw = _need(man, "tensors", list, where)
    kernels_raw = _need(man, "kernels", list, where)
    stream_bytes = sum(sizes.get(s, 0) for k in kernels_raw if isinstance(k, dict)
                       for s in (k.get("streams") if isinstance(k.get("streams"), list) else [])
                       if isinstance(s, str))
    if stream_bytes > MAX_TOTAL_STREAM_BYTES:
        raise ModelFileError(f"{origin}: {stream_bytes:,} bytes of instruction streams, over the "
                             f"{MAX_TOTAL_STREAM_BYTES:,}-byte limit")
    data_bytes = sum(sizes.get(t.get("data"), 0) for t in tensors_raw
                     if isinstance(t, dict) and isinstance(t.get("data"), str))
    need = data_bytes + INSTR_HOST_FACTOR * stream_bytes
    try:
        cap = host_mem_cap_bytes()
    except MlusimError as e:
        raise ModelFileError(str(e)) from None
    if need > cap:
        raise ModelFileError(f"{origin}: loading this model needs about {need / 1024**3:.1f} GiB of host "
                             f"memory, over the cap of {cap / 1024**3:.1f} GiB (set MLUSIM_HOST_MEM_GIB)")

    tensors = []
    for i, t in enumerate(tensors_raw):
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
        meta = _tensor_meta(t.get("meta"), shape, tw)
        decl = TensorDecl(name, role, dtype, shape, addr, None, meta)
        if t.get("data") is not None:
            decl.data = _npy(member(t["data"], f"tensor '{name}'"), npdt, shape,
                             f"{origin}: member {t['data']!r} (tensor '{name}')")
        tensors.append(decl)
    kernels = []
    for i, k in enumerate(kernels_raw):
        kw = f"{where}: kernel {i}"
        kname = _name(k, "name", kw)
        kw = f"{where}: kernel {i} ('{kname}')"
        task_dim = _need(k, "task_dim", int, kw, 1, MAX_TASKS)
        streams = []
        for s in _need(k, "streams", list, kw):
            raw = member(s, f"kernel '{kname}'", MAX_STREAM_BYTES)
            try:
                streams.append(decode_stream(raw))
            except MlusimError as e:
                raise ModelFileError(f"{origin}: member {s!r} (kernel '{kname}'): {e}") from None
        ts = k.get("task_stream")
        if ts is not None and (not isinstance(ts, list) or len(ts) != task_dim or not all(
                isinstance(x, int) and not isinstance(x, bool) and 0 <= x < len(streams) for x in ts)):
            raise ModelFileError(f"{kw}: task_stream must list, for each of the {task_dim} tasks, a stream "
                                 f"index in 0..{len(streams) - 1}")
        meta = k.get("meta")
        if meta is not None and not isinstance(meta, dict):
            raise ModelFileError(f"{kw}: meta must be a mapping, got {type(meta).__name__}")
        kernels.append(Kernel(kname, _need(k, "task_type", str, kw), task_dim, streams, ts, meta or {}))
    config = man.get("config")
    if config is not None:
        if not isinstance(config, dict):
            raise ModelFileError(f"{where}: config must be a mapping, got {type(config).__name__}")
        if "name" in config:
            _name(config, "name", f"{where}: config")
    meta = man.get("meta")
    if meta is not None and not isinstance(meta, dict):
        raise ModelFileError(f"{where}: meta must be a mapping, got {type(meta).__name__}")
    gdram = _need(man, "gdram_bytes", int, where, 0, MAX_GDRAM_BYTES)
    prog = Program(kernels, tensors, gdram, config, meta or {})
    try:
        prog.validate()
        from mlusim.isa.asm import check_targets

        for k in kernels:
            for s in k.streams:
                check_targets(s, f"kernel '{k.name}'")
    except MlusimError as e:
        raise ModelFileError(f"{origin}: {e}") from None
    return prog
