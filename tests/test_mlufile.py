"""The .mlu container: round trip, and every way a file can be broken gives a ModelFileError."""
from __future__ import annotations

import io
import json
import pickle  # noqa: S403 - used only to build a hostile payload the loader must refuse
import zipfile
from pathlib import Path

import numpy as np
import pytest

from mlusim import mlufile
from mlusim.errors import ModelFileError
from mlusim.isa.asm import assemble_program
from mlusim.sim import simulate

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "matmul.s"


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    prog = assemble_program(EXAMPLE.read_text(), str(EXAMPLE))
    path = tmp_path_factory.mktemp("m") / "matmul.mlu"
    mlufile.save(prog, path)
    return prog, path


def test_roundtrip_is_identical_and_runs_the_same(model):
    prog, path = model
    back = mlufile.load(path)
    assert [k.streams for k in back.kernels] == [k.streams for k in prog.kernels]
    for a, b in zip(prog.tensors, back.tensors):
        assert (a.name, a.role, a.dtype, a.shape, a.addr) == (b.name, b.role, b.dtype, b.shape, b.addr)
        assert (a.data is None and b.data is None) or np.array_equal(a.data, b.data)
    x = np.random.default_rng(0).integers(-128, 128, (256, 256), dtype=np.int8)
    r1, r2 = simulate(prog, cores=4, inputs={"a": x}), simulate(back, cores=4, inputs={"a": x})
    assert r1.cycles == r2.cycles and np.array_equal(r1.outputs["c"], r2.outputs["c"])


def test_repeated_instructions_are_encoded_as_written(model):
    """The writer encodes each distinct instruction once (by object, then content): a stream that
    repeats objects, holds equal copies and differs in one field reads back as it was."""
    from mlusim.isa.encoding import Instr, encode_stream

    prog, _ = model
    stream = prog.kernels[0].streams[0]
    first = stream[0]
    changed = Instr(first.op, dict(first.args))
    field = next(f for f, v in changed.args.items() if isinstance(v, int) and v < 2)
    changed.args[field] += 1
    mixed = [first, first, Instr(first.op, dict(first.args)), changed, *stream, first]
    prog.kernels[0].streams[0] = mixed
    try:
        back = mlufile.loads(mlufile.dumps(prog))
    finally:
        prog.kernels[0].streams[0] = stream
    assert encode_stream(back.kernels[0].streams[0]) == encode_stream(mixed)
    assert back.kernels[0].streams[0][3].args[field] == first.args[field] + 1


def test_saving_twice_gives_the_same_bytes(model, tmp_path):
    prog, path = model
    mlufile.save(prog, tmp_path / "again.mlu")
    assert (tmp_path / "again.mlu").read_bytes() == path.read_bytes()


def test_bytes_in_memory_are_the_files_bytes_and_checked_alike(model):
    """dumps/loads (the torch shim keeps a traced program this way) are save/load without a file:
    the same bytes, the same program back, and damage is a ModelFileError naming the origin."""
    prog, path = model
    raw = mlufile.dumps(prog)
    assert raw == path.read_bytes()
    back = mlufile.loads(raw, "traced")
    assert [k.streams for k in back.kernels] == [k.streams for k in prog.kernels]
    with pytest.raises(ModelFileError, match="^traced: not an mlusim model"):
        mlufile.loads(b"not a zip", "traced")
    with pytest.raises(ModelFileError, match="^traced: "):
        mlufile.loads(raw[: len(raw) // 2], "traced")


def test_truncation_at_every_offset_is_a_clean_error(model, tmp_path):
    _, path = model
    data = path.read_bytes()
    bad = tmp_path / "t.mlu"
    step = max(1, len(data) // 400)
    for cut in list(range(0, len(data), step)) + [len(data) - 1]:
        bad.write_bytes(data[:cut])
        with pytest.raises(ModelFileError):
            mlufile.load(bad)


def rewrite(path: Path, out: Path, edit) -> Path:
    """Copy a model, letting `edit(members)` change the dict of member name -> bytes."""
    with zipfile.ZipFile(path) as zf:
        members = {i.filename: zf.read(i) for i in zf.infolist()}
    edit(members)
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return out


def edit_manifest(fn):
    def edit(m):
        man = json.loads(m["manifest.json"])
        fn(man, m)
        m["manifest.json"] = json.dumps(man).encode()
    return edit


@pytest.mark.parametrize("name,edit,needle", [
    ("version", edit_manifest(lambda man, m: man.update(version=99)), "newer than this mlusim reads"),
    ("format", edit_manifest(lambda man, m: man.update(format="onnx")), "format is 'onnx'"),
    ("mimetype", lambda m: m.update(mimetype=b"text/plain"), "not an mlusim model"),
    ("manifest-json", lambda m: m.update({"manifest.json": b"{not json"}), "not valid JSON"),
    ("size-lie", edit_manifest(lambda man, m: man["members"].update({"kernels/0/0.bin": 4})), "manifest says 4"),
    ("extra-member", lambda m: m.update({"evil.py": b"print(1)"}), "not in the manifest"),
    ("traversal", lambda m: m.update({"../../etc/passwd": b"x"}), "unsafe member name"),
    ("missing-stream", lambda m: m.pop("kernels/0/0.bin"), "is missing"),
    ("bad-stream", lambda m: m.update({"kernels/0/0.bin": b"\xff" * len(m["kernels/0/0.bin"])}), "unknown opcode"),
    ("bad-shape", edit_manifest(lambda man, m: man["tensors"][0].update(shape=[-1, 2])), "bad shape"),
    ("task-dim", edit_manifest(lambda man, m: man["kernels"][0].update(task_dim="4")), "must be an integer"),
    ("overlap", edit_manifest(lambda man, m: man["tensors"][1].update(addr=0)), "overlap"),
])
def test_corrupt_models_are_refused(model, tmp_path, name, edit, needle):
    _, path = model
    bad = rewrite(path, tmp_path / f"{name}.mlu", edit)
    with pytest.raises(ModelFileError, match=needle):
        mlufile.load(bad)


def test_pickled_npy_is_refused_without_running_it(model, tmp_path):
    _, path = model
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (Path.touch, (marker,))

    buf = io.BytesIO()
    np.save(buf, np.array([Evil()], dtype=object), allow_pickle=True)
    payload = buf.getvalue()

    def edit(m):
        man = json.loads(m["manifest.json"])
        name = man["tensors"][1]["data"]
        m[name] = payload
        man["members"][name] = len(payload)
        m["manifest.json"] = json.dumps(man).encode()

    bad = rewrite(path, tmp_path / "pickle.mlu", edit)
    with pytest.raises(ModelFileError, match="not a valid .npy"):
        mlufile.load(bad)
    assert not marker.exists()
    raw_pickle = tmp_path / "raw.mlu"
    raw_pickle.write_bytes(pickle.dumps({"kernels": []}))
    with pytest.raises(ModelFileError, match="no zip signature"):
        mlufile.load(raw_pickle)


def test_zip_bomb_is_refused_before_decompressing(model, tmp_path):
    _, path = model
    bomb = b"\0" * (64 * 1024 * 1024)

    def edit(m):
        man = json.loads(m["manifest.json"])
        name = man["tensors"][1]["data"]
        m[name] = bomb
        man["members"][name] = len(bomb)
        m["manifest.json"] = json.dumps(man).encode()

    bad = rewrite(path, tmp_path / "bomb.mlu", edit)
    with pytest.raises(ModelFileError, match="zip bomb"):
        mlufile.load(bad)


def test_not_a_file(tmp_path):
    with pytest.raises(ModelFileError, match="no such model file"):
        mlufile.load(tmp_path / "nope.mlu")


def test_mapped_load_of_an_uncompressed_file(model, tmp_path):
    """compress=False writes stored members; mapped=True reads their constants as read-only views
    of the file (mlusim/mapped.py) with the same values, and the program runs the same."""
    from mlusim.mapped import mapping_of

    prog, _ = model
    path = tmp_path / "stored.mlu"
    mlufile.save(prog, path, compress=False)
    with zipfile.ZipFile(path) as zf:
        assert all(i.compress_type == zipfile.ZIP_STORED for i in zf.infolist() if i.filename != "manifest.json")
    back = mlufile.load(path, mapped=True)
    consts = [(a, b) for a, b in zip(prog.tensors, back.tensors) if a.data is not None]
    assert consts and all(np.array_equal(a.data, b.data) for a, b in consts)
    assert all(mapping_of(b.data) is not None and not b.data.flags.writeable for _, b in consts)
    x = np.random.default_rng(1).integers(-128, 128, (256, 256), dtype=np.int8)
    r1, r2 = simulate(prog, cores=4, inputs={"a": x}), simulate(back, cores=4, inputs={"a": x})
    assert r1.cycles == r2.cycles and np.array_equal(r1.outputs["c"], r2.outputs["c"])
    assert all(np.array_equal(a.data, b.data) for a, b in consts), "released pages read back the same"


def test_mapped_load_checks_the_crc(model, tmp_path):
    prog, _ = model
    path = tmp_path / "stored.mlu"
    mlufile.save(prog, path, compress=False)
    with zipfile.ZipFile(path) as zf:
        info = next(i for i in zf.infolist() if i.filename.startswith("tensors/") and i.file_size > 1024)
    raw = bytearray(path.read_bytes())
    raw[info.header_offset + 30 + len(info.filename) + info.file_size - 1] ^= 0xFF     # its last data byte
    path.write_bytes(bytes(raw))
    with pytest.raises(ModelFileError, match="CRC"):
        mlufile.load(path, mapped=True)
