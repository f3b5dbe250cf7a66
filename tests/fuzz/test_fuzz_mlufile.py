"""Model files from strangers: truncated, bit-flipped, lying, bombed, traversing, pickled, or with
any manifest field of the wrong JSON type. Loading either gives a Program that then simulates
without a crash, or one ModelFileError line; it never executes code and never allocates or
decompresses what the caps forbid."""
from __future__ import annotations

import copy
import io
import json
import pickle  # noqa: S403 - only to build hostile payloads the loader must refuse
import struct
import tracemalloc
import zipfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from numpy.lib import format as npf

from mlusim import mlufile
from mlusim.errors import ModelFileError
from mlusim.mlufile import VERSION
from mlusim.program import Kernel, Program
from mlusim.sim import simulate

from .harness import count, fuzz, check_outcome
from .programs import I, smoke_program


def _small_program() -> Program:
    p = smoke_program(tasks=2)
    # a second kernel with two streams and a task map, so the manifest has every kind of field
    a = [I("li", rd=1, imm=3), I("blt", rs1=0, rs2=1, target=2), I("nop"), I("sync")]
    b = [I("vset", dt="i8", dst=0, n=64, value=1)]
    p.kernels.append(Kernel("second", "block", 3, [a, b], [0, 1, 0], {"note": "x"}))
    p.tensors[0].meta = {"layout": "N", "host_layout": "N"}
    p.config = {"name": "mlu270"}
    p.meta = {"model": "fuzz"}
    return p


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> tuple[Path, bytes]:
    path = tmp_path_factory.mktemp("model") / "small.mlu"
    mlufile.save(_small_program(), path)
    return path, path.read_bytes()


def _members(data: bytes) -> dict[str, bytes]:
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        return {i.filename: zf.read(i) for i in zf.infolist()}


def _zip(members: dict[str, bytes], method=zipfile.ZIP_DEFLATED) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", method) as zf:
        for name, data in members.items():
            zf.writestr(zipfile.ZipInfo(name, date_time=(2020, 1, 1, 0, 0, 0)), data,
                        compress_type=zipfile.ZIP_STORED if name == "mimetype" else method)
    return buf.getvalue()


def _with_manifest(members: dict[str, bytes], man) -> dict[str, bytes]:
    out = dict(members)
    out["manifest.json"] = json.dumps(man).encode()
    return out


def check_load_and_run(path: Path, kind: str):
    """The property: load cleanly or refuse cleanly; a loaded program simulates cleanly."""
    prog, err = check_outcome(mlufile.load, path, kind=kind, timeout=30)
    if prog is not None:
        count(kind + " (loaded)")
        check_outcome(simulate, prog, "mlu270", cores=2, max_instructions=2000, max_cycles=1e7, timeout=60)
    return prog, err


def test_truncation_at_every_offset(model, tmp_path):
    path, data = model
    bad = tmp_path / "t.mlu"
    for cut in range(len(data)):
        bad.write_bytes(data[:cut])
        prog, err = check_load_and_run(bad, "mlu: truncated")
        assert err is not None, f"truncated at {cut} of {len(data)} bytes and still loaded"


@fuzz(ci=1500)
@given(st.lists(st.tuples(st.integers(0, 10**6), st.integers(1, 255)), min_size=1, max_size=8))
def test_random_byte_flips(model, tmp_path_factory, flips):
    path, data = model
    buf = bytearray(data)
    for off, x in flips:
        buf[off % len(buf)] ^= x
    bad = tmp_path_factory.mktemp("f") / "flip.mlu"
    bad.write_bytes(bytes(buf))
    check_load_and_run(bad, "mlu: byte flips")


# ---- the manifest, field by field ---------------------------------------------------------------
json_values = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.sampled_from([0, -1, 1, 2**31, 2**40, 2**63]),
              st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=12),
              st.sampled_from(["", "i8", "f32", "block", "union1", "input", "const", "kernels/0/0.bin",
                               "tensors/2.npy", "../../x", "\x1b[2J", "a\nb", "NHWC"])),
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)),
    max_leaves=12)


def _paths(node, prefix=()):
    yield prefix
    if isinstance(node, dict):
        for k, v in node.items():
            yield from _paths(v, prefix + (k,))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _paths(v, prefix + (i,))


def _edit(man, path, op, value):
    if not path:
        return value if op == "set" else man
    node = man
    for p in path[:-1]:
        node = node[p]
    key = path[-1]
    if op == "set":
        node[key] = value
    elif op == "del":
        del node[key]
    elif op == "dup" and isinstance(node, list):
        node.append(copy.deepcopy(node[key]))
    elif op == "add" and isinstance(node, dict):
        node[f"extra_{key}"] = value
    return man


@fuzz(ci=1500)
@given(st.data())
def test_manifest_fields_of_any_json_type(model, tmp_path_factory, data):
    _, raw = model
    members = _members(raw)
    man = json.loads(members["manifest.json"])
    paths = sorted(_paths(man), key=repr)
    for _ in range(data.draw(st.integers(1, 3))):
        paths = sorted(_paths(man), key=repr)
        path = data.draw(st.sampled_from(paths))
        op = data.draw(st.sampled_from(["set", "set", "set", "del", "dup", "add"]))
        man = _edit(man, path, op, data.draw(json_values))
    bad = tmp_path_factory.mktemp("m") / "manifest.mlu"
    bad.write_bytes(_zip(_with_manifest(members, man)))
    check_load_and_run(bad, "mlu: manifest fields")


# ---- targeted attacks ---------------------------------------------------------------------------
def _edit_manifest(fn):
    def edit(members):
        man = json.loads(members["manifest.json"])
        fn(man, members)
        return _with_manifest(members, man)
    return edit


def _set_member(name_of, payload):
    def fn(man, members):
        name = name_of(man)
        members[name] = payload
        man["members"][name] = len(payload)
    return fn


def _npy_header(shape, descr="|i1", body=b""):
    buf = io.BytesIO()
    npf.write_array_header_1_0(buf, {"descr": descr, "fortran_order": False, "shape": shape})
    return buf.getvalue() + body


CONST = lambda man: next(t["data"] for t in man["tensors"] if t.get("data"))  # noqa: E731
STREAM = lambda man: man["kernels"][0]["streams"][0]  # noqa: E731

ATTACKS = {
    "wrong magic (mimetype)": (lambda m: {**m, "mimetype": b"application/zip"}, "not an mlusim model"),
    "no mimetype": (lambda m: {k: v for k, v in m.items() if k != "mimetype"}, "not an mlusim model"),
    "newer version": (_edit_manifest(lambda man, m: man.update(version=VERSION + 1)), "newer than this mlusim"),
    "older version": (_edit_manifest(lambda man, m: man.update(version=VERSION - 1)), "recompile the model"),
    "version zero": (_edit_manifest(lambda man, m: man.update(version=0)), "is invalid"),
    "version as string": (_edit_manifest(lambda man, m: man.update(version="1")), "must be an integer"),
    "other format": (_edit_manifest(lambda man, m: man.update(format="onnx")), "format is 'onnx'"),
    "manifest is a list": (lambda m: {**m, "manifest.json": b"[1, 2]"}, "expected a JSON object"),
    "manifest deep nesting": (lambda m: {**m, "manifest.json": b"[" * 100000 + b"]" * 100000}, "not valid JSON"),
    "manifest huge int": (lambda m: {**m, "manifest.json": b"{\"version\": " + b"9" * 5000 + b"}"}, "not valid JSON"),
    "manifest not UTF-8": (lambda m: {**m, "manifest.json": b"{\"format\": \"\xff\"}"}, "not valid JSON"),
    "size lie (smaller)": (_edit_manifest(lambda man, m: man["members"].update({STREAM(man): 4})), "manifest says 4"),
    "size lie (larger)": (_edit_manifest(lambda man, m: man["members"].update({STREAM(man): 10**12})), "0..2,147,483,648"),
    "member listed twice": (_edit_manifest(lambda man, m: man["kernels"][1]["streams"].append(STREAM(man))), "used twice"),
    "unlisted member": (lambda m: {**m, "evil.py": b"import os"}, "not in the manifest"),
    "missing member": (lambda m: {k: v for k, v in m.items() if not k.startswith("kernels/0/")}, "is missing"),
    "garbage stream": (_edit_manifest(_set_member(STREAM, b"\xff" * 8)), "unknown opcode"),
    "odd stream length": (_edit_manifest(_set_member(STREAM, b"\x00" * 7)), "whole number of words"),
    "branch out of stream": (_edit_manifest(lambda man, m: m.update({man["kernels"][1]["streams"][0]: __import__(
        "mlusim.isa.encoding", fromlist=["x"]).encode_stream([I("jmp", target=-5)])})), "manifest says"),
    "huge declared shape": (_edit_manifest(lambda man, m: man["tensors"][0].update(shape=[2**39, 2**39, 2**39])),
                            "over the 1,099,511,627,776-byte limit"),
    "int64-wrapping shape": (_edit_manifest(lambda man, m: man["tensors"][0].update(shape=[2**32, 2**32])),
                             "over the"),
    "too many dims": (_edit_manifest(lambda man, m: man["tensors"][0].update(shape=[1] * 40)), "bad shape"),
    "npy header claims 10 TB": (_edit_manifest(_set_member(CONST, _npy_header((10**13,)))), "holds shape"),
    "npy header shape ok, data short": (_edit_manifest(lambda man, m: _set_member(CONST, _npy_header(
        tuple(next(t["shape"] for t in man["tensors"] if t.get("data"))), body=b"\0" * 3))(man, m)), "data bytes"),
    "npy wrong dtype": (_edit_manifest(lambda man, m: _set_member(CONST, _npy_header(
        tuple(next(t["shape"] for t in man["tensors"] if t.get("data"))), descr="<f8"))(man, m)), "holds dtype"),
    "npy bad header": (_edit_manifest(_set_member(CONST, b"\x93NUMPY\x01\x00\x10\x00{'descr': __import__('os')}\n")),
                       "not a valid .npy"),
    "npy garbage": (_edit_manifest(_set_member(CONST, b"not an npy at all")), "not a valid .npy"),
    "task_dim huge": (_edit_manifest(lambda man, m: man["kernels"][1].update(task_dim=10**12)), "outside"),
    "task_stream out of range": (_edit_manifest(lambda man, m: man["kernels"][1].update(task_stream=[0, 5, 0])),
                                 "task_stream"),
    "task_stream bools": (_edit_manifest(lambda man, m: man["kernels"][1].update(task_stream=[True, False, True])),
                          "task_stream"),
    "escape sequence in a name": (_edit_manifest(lambda man, m: man["kernels"][0].update(name="\x1b[2Jpwn")),
                                  "control characters"),
    "newline in a name": (_edit_manifest(lambda man, m: man["tensors"][0].update(name="a\nb")), "printable"),
    "layout not a permutation": (_edit_manifest(lambda man, m: man["tensors"][0].update(
        meta={"layout": "N", "host_layout": "C"})), "permutation"),
    "layout wrong type": (_edit_manifest(lambda man, m: man["tensors"][0].update(meta={"layout": 5})), "letters"),
    "range wrong": (_edit_manifest(lambda man, m: man["tensors"][0].update(meta={"range": 5})), "range"),
    "negative address": (_edit_manifest(lambda man, m: man["tensors"][0].update(addr=-64)), "outside"),
    "huge gdram": (_edit_manifest(lambda man, m: man.update(gdram_bytes=2**60)), "outside"),
    "union with odd task_dim": (_edit_manifest(lambda man, m: man["kernels"][0].update(task_type="union1")),
                                "multiple of 4"),
    "unicode digit task type": (_edit_manifest(lambda man, m: man["kernels"][0].update(task_type="union\u00b2")),
                                None),
    "config not a mapping": (_edit_manifest(lambda man, m: man.update(config=[1])), "config must be a mapping"),
}


@pytest.mark.parametrize("name", sorted(ATTACKS))
def test_targeted_attacks(model, tmp_path, name):
    edit, needle = ATTACKS[name]
    bad = tmp_path / "attack.mlu"
    bad.write_bytes(_zip(edit(_members(model[1]))))
    tracemalloc.start()
    try:
        prog, err = check_load_and_run(bad, "mlu: targeted attacks")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert err is not None, f"{name}: loaded"
    if needle:
        assert needle in str(err) and str(bad) in str(err), str(err)
    assert peak < 64 * 1024**2, f"{name}: {peak:,} bytes allocated while refusing"


@pytest.mark.parametrize("member", ["../../etc/passwd", "/abs/path", "a/../../b", "C:evil", "dir\\evil", "a/../b",
                                    "kernels/0/0.bin/../../../x", "ok\x1bname"])
def test_path_traversal_names(model, tmp_path, member):
    members = _members(model[1])
    members[member] = b"x"
    bad = tmp_path / "traversal.mlu"
    bad.write_bytes(_zip(members))
    count("mlu: traversal names")
    with pytest.raises(ModelFileError, match="unsafe member name"):
        mlufile.load(bad)
    assert not (tmp_path / "x").exists() and not (tmp_path / "evil").exists()


def test_duplicate_member_names(model, tmp_path):
    bad = tmp_path / "dup.mlu"
    with zipfile.ZipFile(bad, "w") as zf:
        for name, data in _members(model[1]).items():
            zf.writestr(name, data)
        zf.writestr("manifest.json", b"{}")        # a second entry of the same name
    with pytest.raises(ModelFileError, match="appears twice"):
        mlufile.load(bad)


class _Touch:
    """Unpickling this creates a marker file: the pickle's side effect we must never see."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_pickled_payloads_never_run(model, tmp_path):
    marker = tmp_path / "PWNED"
    evil = pickle.dumps(_Touch(marker))
    buf = io.BytesIO()
    np.save(buf, np.array([_Touch(marker), 1], dtype=object), allow_pickle=True)
    npy_obj = buf.getvalue()
    cases = {
        "object .npy as const data": _edit_manifest(_set_member(CONST, npy_obj)),
        "pickle as const data": _edit_manifest(_set_member(CONST, evil)),
        "pickle as stream": _edit_manifest(_set_member(STREAM, evil + b"\0" * (-len(evil) % 4))),
        "pickle as manifest": lambda m: {**m, "manifest.json": evil},
        "pickle as mimetype": lambda m: {**m, "mimetype": evil},
    }
    for name, edit in cases.items():
        bad = tmp_path / "p.mlu"
        bad.write_bytes(_zip(edit(_members(model[1]))))
        count("mlu: pickled payloads")
        with pytest.raises(ModelFileError):
            mlufile.load(bad)
        assert not marker.exists(), f"{name}: the pickle ran"
    raw = tmp_path / "raw.mlu"
    raw.write_bytes(evil)
    with pytest.raises(ModelFileError, match="no zip signature"):
        mlufile.load(raw)
    assert not marker.exists()


def test_zip_bomb_is_refused_before_decompressing(model, tmp_path, monkeypatch):
    bomb = b"\0" * (64 * 1024 * 1024)
    bad = tmp_path / "bomb.mlu"
    bad.write_bytes(_zip(_edit_manifest(_set_member(CONST, bomb))(_members(model[1]))))
    assert bad.stat().st_size < 1024 * 1024
    opened = []
    real_open = zipfile.ZipFile.open
    monkeypatch.setattr(zipfile.ZipFile, "open", lambda self, name, *a, **k: (opened.append(getattr(name, "filename", name)),
                                                                            real_open(self, name, *a, **k))[1])
    with pytest.raises(ModelFileError, match="zip bomb"):
        mlufile.load(bad)
    assert not any(n.startswith("tensors/") for n in opened), opened


def _patch_sizes(data: bytes, name: bytes, new_size: int) -> bytes:
    """Rewrite the uncompressed size of member `name` in both its local and central headers."""
    buf = bytearray(data)
    i = buf.find(b"PK\x03\x04" + bytes(22) [:0])
    while i >= 0:
        if buf[i:i + 4] == b"PK\x03\x04" and buf[i + 30:i + 30 + len(name)] == name:
            struct.pack_into("<I", buf, i + 22, new_size)
        if buf[i:i + 4] == b"PK\x01\x02" and buf[i + 46:i + 46 + len(name)] == name:
            struct.pack_into("<I", buf, i + 24, new_size)
        i = buf.find(b"PK", i + 1)
    return bytes(buf)


def test_oversize_member_is_refused_before_reading(model, tmp_path, monkeypatch):
    path, data = model
    stream = json.loads(_members(data)["manifest.json"])["kernels"][0]["streams"][0]
    bad = tmp_path / "oversize.mlu"
    bad.write_bytes(_patch_sizes(data, stream.encode(), 3 * 1024**3))
    opened = []
    real_open = zipfile.ZipFile.open
    monkeypatch.setattr(zipfile.ZipFile, "open", lambda self, name, *a, **k: (opened.append(getattr(name, "filename", name)),
                                                                            real_open(self, name, *a, **k))[1])
    with pytest.raises(ModelFileError, match="limit"):
        mlufile.load(bad)
    assert stream not in opened


def test_lowered_caps_refuse_a_normal_model(model, monkeypatch):
    """The caps are module constants a deployment can lower; the message names the limit."""
    monkeypatch.setattr(mlufile, "MAX_STREAM_BYTES", 16)
    with pytest.raises(ModelFileError, match="over the 16-byte limit"):
        mlufile.load(model[0])
    monkeypatch.setenv("MLUSIM_HOST_MEM_GIB", "0.000001")
    monkeypatch.setattr(mlufile, "MAX_STREAM_BYTES", 1 << 30)
    with pytest.raises(ModelFileError, match="of host memory, over the cap"):
        mlufile.load(model[0])


def test_unreadable_and_unwritable_paths(model, tmp_path):
    with pytest.raises(ModelFileError, match="no such model file"):
        mlufile.load(tmp_path)
    with pytest.raises(ModelFileError, match="cannot write model file"):
        mlufile.save(_small_program(), tmp_path / "no" / "such" / "dir" / "m.mlu")
    with pytest.raises(ModelFileError, match="no such model file"):
        mlufile.load("a\0b.mlu")


def test_the_fuzz_base_model_loads_and_round_trips(model):
    prog = mlufile.load(model[0])
    assert [k.name for k in prog.kernels] == ["smoke", "second"] and prog.kernels[1].task_stream == [0, 1, 0]
    assert isinstance(prog, Program) and simulate(prog, "mlu270", cores=2).cycles > 0
