"""Zoo models and ONNX files compiled through the compile cache (mlusim/compile_cache.py).

Each function names everything its compile depends on (the cache key's parts) and how to build the
program if the cache does not have it; `cache=False` (the CLI's --no-cache) always compiles.
"""
from __future__ import annotations

import sys

from mlusim.compile_cache import cache_for, cached, file_digest
from mlusim.program import Program


def zoo_program(name: str, cfg, tasks: int | None, batch: int = 1, resolution: int | None = None,
                seed: int = 0, cache: bool = True, **options) -> tuple[Program, dict]:
    """A zoo model compiled for `cfg` and `tasks` parallel tasks; `options` go to compile_graph.
    Returns the program and what `mlusim compile` reports about the compile (fused layers)."""
    from mlusim.compiler.driver import compile_model

    def build():
        c = compile_model(name, batch=batch, resolution=resolution, config=cfg, seed=seed, tasks=tasks, **options)
        return [c.program], {"fused": _fused(c.graph), "notes": list(c.notes)}

    parts = {"kind": "zoo", "model": name.lower(), "batch": batch, "resolution": resolution, "seed": seed,
             "tasks": tasks, "options": options, "config": cfg.to_dict()}
    (prog,), extra = cached(cache_for(cache), parts, build)
    return prog, extra


def onnx_program(path: str, cfg, tasks: int | None, batch: int | None = None, calibrate: str | None = None,
                 cache: bool = True, **options) -> tuple[Program, dict]:
    """An ONNX file compiled for `cfg`; the key holds the file's bytes (and the calibration
    samples' when given). Returns the program and the compile's notes and fused layers."""
    from mlusim.compiler.driver import compile_onnx

    def build():
        c = compile_onnx(path, batch=batch, config=cfg, calibrate=calibrate, tasks=tasks, **options)
        return [c.program], {"fused": _fused(c.graph), "notes": list(c.notes)}

    try:
        parts = {"kind": "onnx", "sha256": file_digest(path), "batch": batch, "tasks": tasks, "options": options,
                 "calibrate": file_digest(calibrate) if calibrate else None, "config": cfg.to_dict()}
    except OSError:      # unreadable: no key, and the compiler says what is wrong with the file
        parts, cache = None, False
    (prog,), extra = cached(cache_for(cache), parts, build)
    return prog, extra


def print_notes(extra: dict) -> None:
    for note in extra.get("notes", []):
        print(f"warning: {note}", file=sys.stderr)


def _fused(graph) -> list[list]:
    """[node, [op, fused ops...]] of every node that absorbed others (what `mlusim compile` lists)."""
    return [[n.name, [n.op] + list(n.fused)] for n in graph.nodes if n.fused]
