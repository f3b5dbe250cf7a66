"""Golden values of every zoo model: behaviour is preserved exactly across refactors.

For each zoo model at 1, 4 and 16 cores, batch 1 and 16, with and without cluster fusion, the
test compiles the model and checks three things against tests/golden/zoo.json:

- program: sha256 of the encoded program (tensor declarations, constant data, kernels' task
  shapes and encoded instruction streams; metadata is left out, it is descriptive);
- cycles: simulated cycles on MLU270;
- outputs: sha256 of the output bytes, from a run with numerics (seeded random inputs).

Budget (the suite must stay under 10 minutes on 2 cores): full-size models take minutes to compile
at 16 cores with fusion (VGG-16 at 224: ~3 min), so the sweep runs at small input resolutions
(SMALL below: the smallest each model allows, or 32). Some backend features only appear on larger
inputs (wide segments, staged inputs, the next images' input streamed in, a sliced layer kept in
SRAM), so FULL adds a few larger points that exercise them, timing-only (cycles, no outputs:
numerics never change timing). Each golden entry records which fusion features its program uses,
and a test checks that every feature is covered by some entry.

Calibration is the one step whose results depend on the host: its ranges are maxima of float32
sums, and OpenBLAS orders those sums by its CPU kernel and cache blocking (an AMD EPYC host gave
other last bits than the Intel host the file was first recorded on, so 91 of 115 programs differed
while every cycle count agreed). The ranges are therefore recorded too (tests/golden/ranges.json,
exact as float.hex, per model, resolution and calibration image count) and the points compile with
them, so programs, cycles and outputs pin the compiler and the simulator alone, on any host;
test_calibration_matches_recorded_ranges checks this host's calibration against them to a relative
tolerance that covers reordered float32 sums (CALIBRATION_RTOL).

Intentional changes (timing calibration, numerics fixes, new zoo models) regenerate the files
explicitly:  MLUSIM_UPDATE_GOLDEN=1 python -m pytest tests/test_golden.py
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import pytest

from mlusim.compiler import quant, zoo
from mlusim.compiler.driver import calibration_samples, compile_model, prepare_graph
from mlusim.compiler.zoo import ZOO
from mlusim.config import load_config
from mlusim.runs import hash_program
from mlusim.sim import simulate

GOLDEN = Path(__file__).parent / "golden" / "zoo.json"
RANGES = Path(__file__).parent / "golden" / "ranges.json"
UPDATE = os.environ.get("MLUSIM_UPDATE_GOLDEN") == "1"
CORES, BATCHES, FUSION = (1, 4, 16), (1, 16), (False, True)
SMALL = {"mnist": 28, "lenet5": 28, "resnet18": 32, "resnet50": 32, "mobilenetv2": 32, "vgg16": 32}
# (model, resolution, cores, batch): larger points, fused and timing-only, for the features small
# inputs never reach (wide segments, staged inputs, the input prefetch, a sliced layer kept in SRAM)
FULL = [("resnet18", 224, 16, 16), ("resnet18", 224, 16, 1), ("vgg16", 64, 16, 16)]
# models added after the golden sweep was first recorded (the calibration networks) get fewer points:
# 4 and 16 cores, batch 1, with and without fusion, at the small resolutions tests/test_zoo.py uses
LATER = {"alexnet_bn": 67, "squeezenet1_0": 48, "squeezenet1_1": 48, "resnext50_32x4d": 32, "yolov3_tiny": 64,
         "se_resnet50": 32, "mobilenetv3_large": 64, "mobilenetv3_small": 64}
FEATURES = ("staged", "wram_resident", "prefetched", "wide", "input_prefetch", "staged_weights", "stored")


def program_hash(prog) -> str:
    h = hashlib.sha256()
    hash_program(h, prog)
    return h.hexdigest()


def outputs_hash(outputs: dict) -> str:
    h = hashlib.sha256()
    for name in sorted(outputs):
        a = np.ascontiguousarray(outputs[name])
        h.update(repr((name, a.dtype.str, a.shape)).encode())
        h.update(a.tobytes())
    return h.hexdigest()


def features(prog) -> list[str]:
    out = set()
    for k in prog.kernels:
        s = k.meta.get("segment")
        if not s:
            continue
        out.add("segment")
        out.update(f for f in FEATURES if s.get(f))
        if s.get("shared_by", 1) > 1:
            out.add("shared")
        if "split by outputs" in k.meta.get("tiling", ""):
            out.add("gathered_fc")
        if "(store output)" in s.get("layer_names", []):
            out.add("kept_output")
        if "(dequantize output)" in s.get("layer_names", []):
            out.add("gathered_output")
    return sorted(out)


def ranges_key(model: str, res: int, batch: int) -> str:
    """Calibration runs on min(2, batch) images (driver.calibration_samples): its ranges depend on
    the model, the resolution and that count, never on cores or fusion."""
    return f"{model}/r{res}/s{min(2, batch)}"


def calibrate(model: str, res: int, batch: int) -> dict[str, float]:
    """This host's calibration ranges of a golden point's model, as compile_model makes them."""
    g = prepare_graph(zoo.build(model, batch, res))
    return quant.calibrate(g, calibration_samples(g))


_RECALIBRATED: set[str] = set()     # keys this update session has calibrated anew


def recorded_ranges(model: str, res: int, batch: int) -> dict[str, float]:
    """The recorded ranges of a point; when updating, calibrated anew (once per key and session)
    and recorded first, so an intended calibration change reaches ranges.json with zoo.json."""
    data = json.loads(RANGES.read_text()) if RANGES.exists() else {}
    k = ranges_key(model, res, batch)
    if UPDATE and k not in _RECALIBRATED:
        data[k] = {name: float(v).hex() for name, v in calibrate(model, res, batch).items()}
        RANGES.write_text(json.dumps(dict(sorted(data.items())), indent=1) + "\n")
        _RECALIBRATED.add(k)
    assert k in data, f"no recorded calibration ranges for {k}: run MLUSIM_UPDATE_GOLDEN=1 pytest {__file__}"
    return {name: float.fromhex(v) for name, v in data[k].items()}


def measure(model: str, res: int, cores: int, batch: int, fusion: bool, numerics: bool) -> dict:
    cfg = load_config("mlu270")
    prog = compile_model(model, batch=batch, resolution=res, config=cfg, tasks=cores, cluster_fusion=fusion,
                         absmax=recorded_ranges(model, res, batch)).program
    run = simulate(prog, cfg, cores=cores, timing_only=not numerics)
    return {"program": program_hash(prog), "cycles": run.cycles,
            "outputs": outputs_hash(run.outputs) if numerics else None, "features": features(prog)}


def key(model, res, cores, batch, fusion) -> str:
    return f"{model}/r{res}/c{cores}/b{batch}/{'fused' if fusion else 'plain'}"


def points(model: str):
    res = SMALL.get(model) or LATER.get(model, max(32, ZOO[model].min_resolution))
    for cores in CORES if model in SMALL else (4, 16):
        for batch in BATCHES if model in SMALL else (1,):
            for fusion in FUSION:
                yield key(model, res, cores, batch, fusion), (model, res, cores, batch, fusion, True)
    for m, r, cores, batch in FULL:
        if m == model:
            yield key(m, r, cores, batch, True), (m, r, cores, batch, True, False)


def _load() -> dict:
    return json.loads(GOLDEN.read_text()) if GOLDEN.exists() else {}


@pytest.mark.parametrize("model", sorted(ZOO))
def test_zoo_golden(model):
    got = {k: measure(*args) for k, args in points(model)}
    if UPDATE:
        data = _load()
        data.update(got)
        GOLDEN.parent.mkdir(exist_ok=True)
        GOLDEN.write_text(json.dumps(dict(sorted(data.items())), indent=1) + "\n")
        return
    want = _load()
    missing = [k for k in got if k not in want]
    assert not missing, f"no golden values for {missing[:3]}...: run MLUSIM_UPDATE_GOLDEN=1 pytest {__file__}"
    diff = [f"{k}: {f}: {want[k][f]} -> {got[k][f]}" for k in got for f in ("program", "cycles", "outputs")
            if want[k][f] != got[k][f]]
    assert not diff, "behaviour changed (regenerate with MLUSIM_UPDATE_GOLDEN=1 if intended):\n" + "\n".join(diff)


def test_golden_covers_every_fusion_feature():
    """The golden points exercise each feature of the fusion backend at least once."""
    seen = set().union(*(set(v["features"]) for v in _load().values()))
    assert seen >= {"segment", "shared", "gathered_fc", "kept_output", "gathered_output", *FEATURES}, sorted(seen)


# Reordered float32 sums differ in their last bits, and those differences grow through a deep
# network's layers: across OpenBLAS's kernels on one host (OPENBLAS_CORETYPE=Haswell and Zen against
# SkylakeX, which recorded the file) the largest relative difference of any of the 1,187 ranges was
# 1.1e-6 (mobilenetv3_large's features.13.project.conv). 1e-4 leaves room for other blockings; a
# real change to calibration (a layer, a sample, a fused op) moves ranges by percents.
CALIBRATION_RTOL = 1e-4


@pytest.mark.parametrize("key", sorted(json.loads(RANGES.read_text())) if RANGES.exists() else [])
def test_calibration_matches_recorded_ranges(key):
    """This host's calibration agrees with the recorded ranges the golden points compile with."""
    model, res, samples = key.split("/")
    got = calibrate(model, int(res[1:]), int(samples[1:]))
    want = recorded_ranges(model, int(res[1:]), int(samples[1:]))
    assert got.keys() == want.keys()
    far = {k: (got[k], want[k]) for k in got if not np.isclose(got[k], want[k], rtol=CALIBRATION_RTOL, atol=0)}
    assert not far, f"calibration ranges of {key} moved beyond float32 reordering: {far}"
