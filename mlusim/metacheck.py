"""Type and range checks for the metadata a model file carries and the reports later read.

A compiled program records figures about itself (`meta.batch`, `meta.macs`, a fused segment's
layer names and sync counts...) that the report turns into rooflines and per-layer tables. They
come from a file we do not trust, so each one the simulator reads is checked here when the file is
loaded, and a bad one is an error naming the field, not a traceback after a long run. Keys no
reader uses may hold any JSON value (the model file's string and depth checks still apply), so
that newer compilers can record more without breaking older readers.
"""
from __future__ import annotations

import math
from typing import Any, Callable

from mlusim.errors import MlusimError, ModelFileError

Check = Callable[[Any], str | None]      # None if fine, else what is wrong

MAX_COUNT = 1e18           # MACs, bytes: far above any real model, far below float trouble
MAX_LIST = 1 << 16         # entries of one recorded list (layers of a segment, sync counts)
MAX_STEPS = 1 << 20        # layer steps of one fused job, all image groups together


def integer(lo: int, hi: int) -> Check:
    def check(v):
        if isinstance(v, bool) or not isinstance(v, int):
            return f"must be an integer, got {type(v).__name__}"
        return None if lo <= v <= hi else f"must be in {lo:,}..{hi:,}, got {str(v)[:24]}"
    return check


def number(lo: float, hi: float) -> Check:
    def check(v):
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            return f"must be a number, got {type(v).__name__}"
        if isinstance(v, float) and not math.isfinite(v):
            return "must be finite"
        return None if lo <= v <= hi else f"must be in {lo:g}..{hi:g}, got {str(v)[:24]}"
    return check


def text(limit: int = 4096) -> Check:
    def check(v):
        if not isinstance(v, str):
            return f"must be a string, got {type(v).__name__}"
        return None if len(v) <= limit else f"is {len(v):,} characters (at most {limit:,})"
    return check


def flag(v) -> str | None:
    return None if isinstance(v, bool) or (isinstance(v, int) and 0 <= v <= MAX_LIST) else \
        f"must be true/false or a small count, got {str(v)[:24]}"


def listof(item: Check, limit: int = MAX_LIST) -> Check:
    def check(v):
        if not isinstance(v, list):
            return f"must be a list, got {type(v).__name__}"
        if len(v) > limit:
            return f"has {len(v):,} entries (at most {limit:,})"
        for i, x in enumerate(v):
            why = item(x)
            if why:
                return f"entry {i} {why}"
        return None
    return check


PROGRAM_META: dict[str, Check] = {
    "batch": integer(1, 1 << 24), "resolution": integer(1, 1 << 16), "name": text(256), "model": text(256),
    "macs": number(0, MAX_COUNT), "min_traffic_bytes": number(0, MAX_COUNT),
    "layer_traffic_bytes": number(0, MAX_COUNT), "weight_bytes": number(0, MAX_COUNT),
    "parameters": number(0, MAX_COUNT), "shape_only": flag,
}
def step_end(v) -> str | None:
    """One entry of a segment's `ends` (mlusim.segment_meta.StepEnd as JSON)."""
    if not isinstance(v, dict):
        return f"must be a mapping, got {type(v).__name__}"
    return (text(256)(v.get("name")) or (None if v.get("barrier") in ("cluster", "all", "end") else
                                         "barrier must be cluster, all or end")
            or integer(-1, 1 << 40)(v.get("index")))


SEGMENT_META: dict[str, Check] = {"ends": listof(step_end, MAX_STEPS),
    "layer_names": listof(text(256)), "stored": listof(text(256)), "staged": flag, "wide": flag,
    "groups_per_job": integer(1, MAX_LIST), "all_syncs_at": listof(integer(0, 1 << 40)),
    "jobs": integer(0, 1 << 30), "group": integer(0, 1 << 30),
}
KERNEL_META: dict[str, Check] = {"layer": text(1024), "op": text(256), "macs": number(0, MAX_COUNT)}


def check_fields(meta: Any, schema: dict[str, Check], where: str, error: type[MlusimError] = ModelFileError,
                 what: str = "meta", required: tuple[str, ...] = ()) -> dict:
    """`meta` (None means empty) checked against `schema` (keys in `required` must be present);
    returns it as a dict."""
    if meta is None and not required:
        return {}
    if not isinstance(meta, dict):
        raise error(f"{where}: {what} must be a mapping, got {type(meta).__name__}")
    for key, check in schema.items():
        if key in meta:
            why = check(meta[key])
            if why:
                raise error(f"{where}: {what} '{key}' {why}")
        elif key in required:
            raise error(f"{where}: {what} has no '{key}'")
    return meta


def check_kernel_meta(meta: Any, where: str) -> dict:
    meta = check_fields(meta, KERNEL_META, where)
    seg = meta.get("segment")
    if seg is not None:
        check_fields(seg, SEGMENT_META, f"{where}: segment")
        steps = len(seg.get("layer_names") or ()) + 1
        if steps * seg.get("groups_per_job", 1) > MAX_STEPS:
            raise ModelFileError(f"{where}: segment meta describes {steps * seg['groups_per_job']:,} layer steps "
                                 f"per job (at most {MAX_STEPS:,})")
    return meta


def check_program_meta(meta: Any, where: str) -> dict:
    return check_fields(meta, PROGRAM_META, where)
