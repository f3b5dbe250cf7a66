"""Metadata a model file records and the report reads after the run (meta.batch, meta.macs, a fused
segment's layer names, groups and sync counts): any JSON value in any of those fields is refused at
load with one line naming the field, or the whole run and its report work. Before, NaN, "eight",
[1], 10^400 or a segment given as a list gave tracebacks after the run, and groups_per_job 1e8 in
a 538-byte file asked for 2.3 GB."""
from __future__ import annotations

import io
import json
import tracemalloc
import zipfile
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mlusim import mlufile
from mlusim.errors import ModelFileError
from mlusim.experiments import row_from_summary, scaling_rows
from mlusim.isa.asm import assemble_program
from mlusim.report import render, roofline_bounds, summarize
from mlusim.segment_meta import SegmentMeta, StepEnd
from mlusim.sim import simulate

from .harness import assert_clean_error, check_outcome, count, fuzz

SRC = """.tensor x input i8 [64]
.kernel seg union1 tasks=4
    nop
    sync.cluster
    nop
.kernel plain block tasks=2
    nop
"""
PROGRAM_KEYS = ["batch", "resolution", "name", "model", "macs", "min_traffic_bytes", "layer_traffic_bytes",
                "weight_bytes", "parameters", "fused", "anything"]
KERNEL_KEYS = ["layer", "op", "macs", "segment", "tiling"]
SEGMENT_KEYS = ["layer_names", "stored", "staged", "wide", "groups_per_job", "ends", "jobs", "group"]
HOSTILE = [None, True, False, 0, -1, 1, 2, 3, 10**8, 10**400, 1.5, -0.0, 1e308, "eight", "", "x" * 5000, [],
           [1], ["x"], [["x"]], ["a", "b"], [0, 1, 2], [-1], [10**12], {}, {"a": 1}, {"layer_names": 5},
           "q[/b]", ["q[/b]", "[bold]x"]]      # rich markup in a printed name was a MarkupError


def _manifest(model: Path) -> tuple[dict, dict]:
    with zipfile.ZipFile(model) as zf:
        members = {i.filename: zf.read(i) for i in zf.infolist()}
    return members, json.loads(members["manifest.json"])


def _write(path: Path, members: dict, man: dict) -> Path:
    members = dict(members, **{"manifest.json": json.dumps(man).encode()})
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for n, d in members.items():
            zf.writestr(n, d, compress_type=zipfile.ZIP_STORED if n == "mimetype" else zipfile.ZIP_DEFLATED)
    path.write_bytes(buf.getvalue())
    return path


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    prog = assemble_program(SRC, "seg.s")
    seg = SegmentMeta(layers=["a", "b"], layer_names=["a", "b"], group=1, jobs=1, groups_per_job=1, sram_peak=0,
                      staged=False, wide=0, shared_by=1, input_prefetch=False,
                      ends=[StepEnd("a", "cluster", 0), StepEnd("b", "end")])
    prog.kernels[0].meta = {"layer": "a..b", "op": "segment", "macs": 10, "segment": seg.to_dict()}
    prog.meta = {"batch": 2, "model": "toy", "macs": 1000, "min_traffic_bytes": 64, "layer_traffic_bytes": 128}
    path = tmp_path_factory.mktemp("meta") / "seg.mlu"
    mlufile.save(prog, path)
    return _manifest(path)


def _report(prog):
    """What `mlusim run` does with a loaded program after simulating it."""
    res = simulate(prog, "mlu270", cores=4, timing_only=True, max_instructions=10_000)
    s = summarize(res)
    render(res, s)
    roofline_bounds(s)
    scaling_rows([s], int(prog.meta.get("batch", 1) or 1))
    row_from_summary(s, None, int(prog.meta.get("batch", 1) or 1))
    return s


def test_the_base_model_reports_its_segment_layers(base, tmp_path):
    prog = mlufile.load(_write(tmp_path / "m.mlu", *base))
    s = _report(prog)
    assert [lay["name"] for lay in s["kernels"][0]["layers"]] == ["a", "b"]


@fuzz(ci=400)
@given(st.data())
def test_any_json_in_the_meta_the_report_reads(base, tmp_path_factory, data):
    members, man = base
    man = json.loads(json.dumps(man))
    value = data.draw(st.one_of(st.sampled_from(HOSTILE), st.integers(), st.floats(allow_nan=False),
                                st.text(max_size=8), st.lists(st.integers(-3, 5), max_size=4)))
    where = data.draw(st.sampled_from(["program", "kernel", "segment"]))
    if where == "program":
        man["meta"][data.draw(st.sampled_from(PROGRAM_KEYS))] = value
    elif where == "kernel":
        man["kernels"][0]["meta"][data.draw(st.sampled_from(KERNEL_KEYS))] = value
    else:
        man["kernels"][0]["meta"]["segment"][data.draw(st.sampled_from(SEGMENT_KEYS))] = value
    path = _write(tmp_path_factory.mktemp("m") / "m.mlu", members, man)
    prog, err = check_outcome(mlufile.load, path, kind="mlu: report meta")
    if prog is not None:
        count("mlu: report meta (loaded)")
        check_outcome(_report, prog, timeout=60)
    else:
        assert isinstance(err, ModelFileError) and "meta" in str(err), str(err)


@pytest.mark.parametrize("text", ["NaN", "Infinity", "-Infinity"])
def test_json_constants_that_are_not_numbers_are_refused(base, tmp_path, text):
    members, man = base
    raw = json.dumps(man).replace('"batch": 2', f'"batch": {text}').encode()
    path = _write(tmp_path / "m.mlu", members, json.loads(raw))       # json reads them, then we rewrite
    members2 = dict(members, **{"manifest.json": raw})
    with zipfile.ZipFile(path, "w") as zf:
        for n, d in members2.items():
            zf.writestr(n, d)
    with pytest.raises(ModelFileError) as e:
        mlufile.load(path)
    assert "not a JSON number" in assert_clean_error(e.value)


def test_groups_per_job_of_a_hundred_million_is_refused_without_allocating(base, tmp_path):
    members, man = base
    man = json.loads(json.dumps(man))
    man["kernels"][0]["meta"]["segment"]["groups_per_job"] = 10**8
    path = _write(tmp_path / "m.mlu", members, man)
    tracemalloc.start()
    try:
        with pytest.raises(ModelFileError) as e:
            mlufile.load(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert "groups_per_job" in assert_clean_error(e.value) and peak < 16 * 2**20, peak
