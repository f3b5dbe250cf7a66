"""Typed segment metadata (mlusim/segment_meta.py): written by the emitter, kept by the .mlu file,
read by the report to time each layer of a fused kernel."""
from __future__ import annotations

import pytest

from mlusim import mlufile
from mlusim.compiler.driver import compile_model
from mlusim.report import segment_layers
from mlusim.segment_meta import SegmentMeta, StepEnd
from mlusim.sim import simulate


@pytest.fixture(scope="module")
def shared():
    """ResNet-18 at 32x32, batch 16 on 16 cores: one segment whose four clusters share weights and
    split the last fc by outputs (its steps end at sync.cluster releases, the fc at the job's end)."""
    return compile_model("resnet18", batch=16, resolution=32, tasks=16, cluster_fusion=True).program


def _segments(prog):
    return [k for k in prog.kernels if k.meta.get("op") == "segment"]


def test_metadata_survives_the_model_file(shared, tmp_path):
    path = tmp_path / "r18.mlu"
    mlufile.save(shared, path)
    for a, b in zip(_segments(shared), _segments(mlufile.load(path)), strict=True):
        meta = SegmentMeta.from_dict(b.meta["segment"])
        assert meta is not None and meta == SegmentMeta.from_dict(a.meta["segment"])
        assert all(isinstance(e, StepEnd) for e in meta.ends)


def test_every_step_of_every_group_ends_somewhere_the_engine_records(shared):
    for k in _segments(shared):
        meta = SegmentMeta.from_dict(k.meta["segment"])
        staged = 1 if meta.staged else 0
        assert len(meta.ends) == meta.groups_per_job * (len(meta.layer_names) + staged)
        assert meta.ends[-1].barrier == "end"
        inner = [e for e in meta.ends if e.barrier != "end"]
        kinds = {e.barrier for e in inner}
        assert kinds <= {"all" if meta.wide else "cluster"}
        idx = [e.index for e in inner]
        assert idx == sorted(idx) and len(set(idx)) == len(idx)      # each a later release than the one before
        syncs = sum(i.op.mnemonic == ("sync.all" if meta.wide else "sync.cluster") for i in k.streams[0])
        assert max(idx, default=-1) < syncs


def test_report_times_each_layer_from_the_metadata(shared):
    res = simulate(shared, None, cores=16, timing_only=True)
    for rec in (r for r in res.kernels if r.meta.get("op") == "segment"):
        layers = segment_layers(rec)
        meta = SegmentMeta.from_dict(rec.meta["segment"])
        assert [x["name"] for x in layers] == list(dict.fromkeys(e.name for e in meta.ends))
        job = sum(j["end"] - j["start"] for j in rec.jobs) / len(rec.jobs)
        assert sum(x["cycles"] for x in layers) == pytest.approx(job)
        assert all(x["cycles"] > 0 for x in layers)


@pytest.mark.parametrize("bad", [None, {}, {"layers": []},
                                 "ends-barrier", "ends-index"])
def test_malformed_metadata_is_ignored_not_a_crash(shared, bad):
    rec = simulate(shared, None, cores=16, timing_only=True).kernels
    rec = next(r for r in rec if r.meta.get("op") == "segment")
    good = dict(rec.meta["segment"])
    if bad == "ends-barrier":
        bad = dict(good, ends=[{"name": "x", "barrier": "sometimes", "index": 0}])
    elif bad == "ends-index":
        bad = dict(good, ends=[{"name": "x", "barrier": "cluster", "index": "first"}])
    assert SegmentMeta.from_dict(bad) is None
    rec.meta = dict(rec.meta, segment=bad)
    assert segment_layers(rec) == []
