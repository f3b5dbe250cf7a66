"""The compile cache: hits and misses, what the key holds, corrupt entries, the size cap, --no-cache."""
from __future__ import annotations

import os

import numpy as np
import pytest

from mlusim import compile_cache
from mlusim.cli import main
from mlusim.compile_cache import CompileCache
from mlusim.compiler import driver
from mlusim.config import load_config
from mlusim.isa.encoding import encode_stream
from mlusim.programs import BuildOptions, compile_cached


def zoo_program(name: str, cfg, cores: int, seed: int = 0, cluster_fusion: bool = True, cache: bool = True):
    return compile_cached(name, cfg, cores, BuildOptions(seed=seed, cluster_fusion=cluster_fusion, cache=cache))


def fingerprint(prog) -> tuple:
    """Everything a run depends on: tensors with their data, kernels with their encoded streams."""
    tensors = [(t.name, t.role, t.dtype, tuple(t.shape), t.addr, None if t.data is None else t.data.tobytes())
               for t in prog.tensors]
    kernels = [(k.name, k.task_type, k.task_dim, k.task_stream, [encode_stream(s) for s in k.streams])
               for k in prog.kernels]
    return tensors, kernels, prog.meta, [k.meta for k in prog.kernels], prog.config


@pytest.fixture
def compiles(monkeypatch):
    """Counts real compiles (cache misses)."""
    calls = []
    real = driver.compile_model

    def counting(*a, **kw):
        calls.append(a[0])
        return real(*a, **kw)

    monkeypatch.setattr(driver, "compile_model", counting)
    return calls


def entries(d) -> list[str]:
    return sorted(p.name for p in d.iterdir() if p.suffix == ".mlu")


def test_miss_then_hit_gives_the_same_program(compile_cache_dir, compiles):
    cfg = load_config("mlu270")
    first, extra1 = zoo_program("lenet5", cfg, 4)
    assert compiles == ["lenet5"] and len(entries(compile_cache_dir)) == 1
    second, extra2 = zoo_program("lenet5", cfg, 4)
    assert compiles == ["lenet5"], "the second compile should come from the cache"
    assert fingerprint(second) == fingerprint(first) and extra2 == extra1
    assert "compile_cache_extra" not in first.meta and "compile_cache_extra" not in second.meta


def test_a_miss_returns_the_stored_file_like_a_hit(compile_cache_dir, compiles):
    """A first run maps the program it just stored, so its constants are copied into the DRAM image
    page by page from the file (as on a hit) rather than held twice (VGG-16 b16: 580 -> 440 MB)."""
    cfg = load_config("mlu270")
    fresh = zoo_program("lenet5", cfg, 4, cache=False)[0]
    first, _ = zoo_program("lenet5", cfg, 4)
    assert compiles == ["lenet5", "lenet5"] and len(entries(compile_cache_dir)) == 1
    assert all(not t.data.flags.writeable for t in first.tensors if t.data is not None), "constants mapped"
    assert fingerprint(first) == fingerprint(fresh)


def test_cached_program_simulates_identically(compile_cache_dir):
    from mlusim.sim import simulate

    cfg = load_config("mlu270")
    fresh = zoo_program("mnist", cfg, 4, cache=False)[0]
    zoo_program("mnist", cfg, 4)
    cached, _ = zoo_program("mnist", cfg, 4)
    assert all(not t.data.flags.writeable for t in cached.tensors if t.data is not None), "constants mapped"
    a, b = simulate(fresh, cfg, cores=4), simulate(cached, cfg, cores=4)
    assert a.cycles == b.cycles and np.array_equal(a.outputs["output"], b.outputs["output"])


def test_key_changes_with_config_options_weights_and_code(monkeypatch):
    cache = CompileCache.from_env()
    cfg = load_config("mlu270")
    base = {"spec": {"zoo": "mnist"}, "cores": 4, "options": {"batch": 1, "seed": 0, "cluster_fusion": True},
            "config": cfg.to_dict()}
    k = cache.key(base)
    assert cache.key(dict(base)) == k
    other_cfg = load_config("mlu270", ["dram.bandwidth_gbps=51.2"]).to_dict()
    opts = base["options"]
    variants = [dict(base, config=other_cfg), dict(base, options=dict(opts, cluster_fusion=False)),
                dict(base, options=dict(opts, seed=1)), dict(base, options=dict(opts, batch=2)), dict(base, cores=16),
                dict(base, spec={"zoo": "lenet5"})]
    keys = {cache.key(v) for v in variants}
    assert k not in keys and len(keys) == len(variants)
    monkeypatch.setattr(compile_cache, "__version__", "999")
    assert cache.key(base) != k
    compile_cache.source_digest.cache_clear()
    monkeypatch.setattr(compile_cache, "source_digest", lambda: "edited")
    assert cache.key(base) != k


def test_different_weights_seed_is_a_different_entry(compile_cache_dir, compiles):
    cfg = load_config("mlu270")
    a, _ = zoo_program("mnist", cfg, 1, seed=0)
    b, _ = zoo_program("mnist", cfg, 1, seed=1)
    assert compiles == ["mnist", "mnist"] and len(entries(compile_cache_dir)) == 2
    wa = [t.data for t in a.tensors if t.role == "const"]
    wb = [t.data for t in b.tensors if t.role == "const"]
    assert any(not np.array_equal(x, y) for x, y in zip(wa, wb))


@pytest.mark.parametrize("damage", [b"not a zip at all", b"PK\x03\x04" + bytes(100), None])
def test_corrupt_entry_is_discarded_and_recompiled(compile_cache_dir, compiles, damage):
    cfg = load_config("mlu270")
    good = fingerprint(zoo_program("mnist", cfg, 4)[0])    # taken before the file it maps is damaged
    (entry,) = compile_cache_dir.iterdir()
    raw = entry.read_bytes()
    entry.write_bytes(raw[:len(raw) // 2] if damage is None else damage)     # None: truncated
    again, _ = zoo_program("mnist", cfg, 4)
    assert compiles == ["mnist", "mnist"]
    assert fingerprint(again) == good
    assert entry.read_bytes() == raw, "the recompiled program replaces the bad entry"


def test_size_cap_evicts_least_recently_used(compile_cache_dir, compiles, monkeypatch):
    cfg = load_config("mlu270")
    zoo_program("mnist", cfg, 1, seed=0)
    (size,) = {p.stat().st_size for p in compile_cache_dir.iterdir()}
    monkeypatch.setenv("MLUSIM_CACHE_MAX_MB", str(2.5 * size / 2**20))       # room for two entries
    zoo_program("mnist", cfg, 1, seed=1)
    first, second = (compile_cache_dir / e for e in entries(compile_cache_dir))
    old = {p: p.stat().st_mtime - 100 for p in (first, second)}
    for p, t in old.items():
        os.utime(p, (t, t))
    zoo_program("mnist", cfg, 1, seed=0)          # a hit refreshes its entry
    assert compiles == ["mnist", "mnist"]
    zoo_program("mnist", cfg, 1, seed=2)          # a third entry: the least recently used goes
    assert len(entries(compile_cache_dir)) == 2
    zoo_program("mnist", cfg, 1, seed=0)
    assert compiles == ["mnist", "mnist", "mnist"], "seed 0 was used last and must have stayed"
    zoo_program("mnist", cfg, 1, seed=1)
    assert compiles == ["mnist", "mnist", "mnist", "mnist"], "seed 1 was the least recently used"


def test_unwritable_cache_still_compiles(tmp_path, monkeypatch, compiles):
    blocker = tmp_path / "file"
    blocker.write_text("a file where the cache folder should be")
    monkeypatch.setenv("MLUSIM_CACHE_DIR", str(blocker / "cache"))
    prog, _ = zoo_program("mnist", load_config("mlu270"), 1)
    assert prog.kernels and compiles == ["mnist"]
    assert not list(tmp_path.glob("**/*.tmp"))


def test_cli_no_cache_bypasses_it(compile_cache_dir, compiles, capsys):
    assert main(["run", "mnist", "--cores", "4", "--timing-only", "--no-cache"]) == 0
    assert entries(compile_cache_dir) == [] and compiles == ["mnist"]
    assert main(["run", "mnist", "--cores", "4", "--timing-only"]) == 0
    assert main(["run", "mnist", "--cores", "4", "--timing-only"]) == 0
    assert len(entries(compile_cache_dir)) == 1 and compiles == ["mnist", "mnist"]
    out = capsys.readouterr().out
    assert out.count("cycles") >= 3


def test_compile_command_reports_the_same_from_the_cache(compile_cache_dir, tmp_path, capsys):
    outs = []
    for _ in range(2):
        assert main(["compile", "--model", "lenet5", "--verbose", "-o", str(tmp_path / "m.mlu")]) == 0
        text = capsys.readouterr().out
        outs.append([line for line in text.splitlines() if line.startswith("  fused")])
    assert outs[0] and outs[0] == outs[1]


def test_a_crashed_writers_temporary_file_is_cleaned_up(compile_cache_dir):
    stale = compile_cache_dir / ".abc-0.x1.tmp"
    fresh = compile_cache_dir / ".abc-0.x2.tmp"
    for p in (stale, fresh):
        p.write_bytes(b"half a file")
    old = stale.stat().st_mtime - compile_cache.STALE_SECONDS - 10
    os.utime(stale, (old, old))
    zoo_program("mnist", load_config("mlu270"), 1)        # a store runs the eviction
    assert not stale.exists() and fresh.exists(), "only a writer long gone loses its file"
