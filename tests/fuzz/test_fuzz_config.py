"""Configs: whatever a YAML file, a stored config or a --set string says, loading either gives a
checked HardwareConfig or one ConfigError line naming the file and key; and every config that
loads can be simulated without crashing the engine (impossible machines are refused up front)."""
from __future__ import annotations

import copy
import math

import pytest
import yaml
from hypothesis import assume, given
from hypothesis import strategies as st

from mlusim.config import (MAX_CYCLES, HardwareConfig, _resolve_raw, config_from_dict, iter_leaves,
                           load_config)
from mlusim.errors import ConfigError
from mlusim.yamlsafe import MAX_YAML_BYTES, load_yaml_text

from .harness import assert_clean_error, count, fuzz, check_outcome
from .programs import smoke_program

BASE, _ = _resolve_raw("mlu270")
LEAVES = [p for p, _, _ in iter_leaves()]
SECTIONS = sorted({p.rsplit(".", 1)[0] for p in LEAVES if "." in p})

numbers = st.one_of(
    st.integers(-3, 3), st.integers(-(2**70), 2**70), st.sampled_from([0, 1, 2**31, 2**63, 10**16, 4096, 4097]),
    st.floats(allow_nan=True, allow_infinity=True), st.sampled_from([0.0, -0.0, 1e-300, 1e300, 0.5, 1e-3]))
junk = st.one_of(st.none(), st.booleans(), st.text(max_size=20), st.lists(st.integers(), max_size=3),
                 st.dictionaries(st.text(max_size=5), st.integers(), max_size=2))
values = st.one_of(numbers, numbers, junk)


def _set(raw: dict, path: str, value) -> None:
    node = raw
    *parents, leaf = path.split(".")
    for p in parents:
        node = node.setdefault(p, {}) if isinstance(node, dict) else node
    if isinstance(node, dict):
        node[leaf] = value


def _delete(raw: dict, path: str) -> None:
    node = raw
    *parents, leaf = path.split(".")
    for p in parents:
        node = node.get(p, {}) if isinstance(node, dict) else {}
    if isinstance(node, dict):
        node.pop(leaf, None)


mutation = st.one_of(
    st.tuples(st.just("set"), st.sampled_from(LEAVES), values),
    st.tuples(st.just("set"), st.sampled_from(SECTIONS + ["chip", "core"]), values),        # wrong nesting
    st.tuples(st.just("del"), st.sampled_from(LEAVES + SECTIONS), st.none()),
    st.tuples(st.just("unknown"), st.sampled_from(SECTIONS + [""]), st.text(min_size=1, max_size=12)),
    st.tuples(st.just("move"), st.sampled_from(LEAVES), st.sampled_from(SECTIONS)),         # leaf in wrong section
)


def mutate(raw: dict, muts) -> dict:
    raw = copy.deepcopy(raw)
    for kind, path, arg in muts:
        if kind == "set":
            _set(raw, path, arg)
        elif kind == "del":
            _delete(raw, path)
        elif kind == "unknown":
            _set(raw, f"{path}.{arg}" if path else arg, 1)
        elif kind == "move":
            leaf = path.rsplit(".", 1)[-1]
            _delete(raw, path)
            _set(raw, f"{arg}.{leaf}", 3)
    return raw


def check_invariants(cfg: HardwareConfig) -> None:
    """What the engine assumes of every config that loads."""
    assert cfg.chip.cores % cfg.chip.clusters == 0 and 1 <= cfg.chip.cores <= 4096
    assert cfg.nram_bytes > 0 and cfg.wram_bytes > 0 and cfg.sram_bytes >= 0
    assert cfg.core.startup_cycles.scalar >= 1 and cfg.core.queue_depth >= 1
    assert 0 < cfg.dram_bytes_per_cycle < math.inf and cfg.dram.access_bytes <= 1024
    for path, _tp, meta in iter_leaves():
        node = cfg
        for part in path.split("."):
            node = getattr(node, part)
        if isinstance(node, (int, float)):
            assert math.isfinite(node) and (meta.get("maximum") is None or node <= meta["maximum"]), path
    assert cfg.dma.startup_cycles <= MAX_CYCLES


@fuzz(ci=1000)
@given(st.lists(mutation, min_size=1, max_size=4))
def test_mutated_configs_load_or_name_the_key(muts):
    raw = mutate(BASE, muts)
    cfg, err = check_outcome(config_from_dict, raw, "fuzz.yaml", kind="config: mutated mapping")
    if err is not None:
        assert str(err).startswith("fuzz.yaml"), str(err)
    else:
        check_invariants(cfg)


# Every accepted config must be simulatable. Values are drawn from the boundary of each leaf's
# range, which is where a config slips past validation but breaks the engine.
def _edge(meta):
    lo = meta.get("minimum") or 0
    hi = meta.get("maximum") or 10**6
    return st.sampled_from([lo, hi, 1, 2, max(lo, 1e-3), 64, 4096])


@fuzz(ci=120)
@given(st.data())
def test_every_accepted_config_simulates_cleanly(data):
    raw = copy.deepcopy(BASE)
    leaves = [(p, m) for p, tp, m in iter_leaves() if tp in (int, float)]
    for path, meta in data.draw(st.lists(st.sampled_from(leaves), min_size=1, max_size=5, unique_by=lambda pm: pm[0])):
        _set(raw, path, data.draw(_edge(meta)))
    cfg, err = check_outcome(config_from_dict, raw, "edge.yaml", kind="config: edge values")
    assume(err is None)
    check_invariants(cfg)
    prog = smoke_program()
    cores = data.draw(st.sampled_from([1, cfg.chip.cores]))
    from mlusim.sim import simulate

    check_outcome(simulate, prog, cfg, cores=cores, timing_only=True, max_instructions=2000, max_cycles=1e9,
            timeout=60, kind="config: simulated")


yaml_atoms = st.sampled_from(["base: mlu270", "chip:", "core:", "  cores: 16", "  nram_kib: 512", "&a", "*a",
                              "[", "]", "{", "}", ":", "-", "- x", "? ", "!!python/object:os.system", "!!binary",
                              "'", '"', "#", "\t", "  ", "\n", "~", "null", "1e999", "0x" + "f" * 50, "2001-13-45",
                              "9" * 5000, "!!set", "!!omap", "%YAML 1.1", "---", "...", "|", ">", "\x00", "\ufeff"])


@fuzz(ci=800)
@given(st.lists(st.one_of(yaml_atoms, st.text(max_size=8)), max_size=30))
def test_yaml_token_soup(parts):
    text = "".join(p if i % 3 else p + "\n" for i, p in enumerate(parts))
    check_outcome(load_yaml_text, text, "soup.yaml", kind="yaml: token soup")


@fuzz(ci=300)
@given(st.binary(max_size=300))
def test_random_bytes_as_config_file(tmp_path_factory, data):
    p = tmp_path_factory.mktemp("b") / "c.yaml"
    p.write_bytes(b"base: mlu270\n" + data)
    _, err = check_outcome(load_config, p, kind="config: random bytes")
    if err is not None:
        assert str(p) in str(err)


overrides = st.one_of(
    st.builds(lambda k, v: f"{k}={v}", st.sampled_from(LEAVES + ["core", "x.y", "", "chip.cores.x", "base"]),
              st.one_of(st.sampled_from(["", "0", "-1", "1e999", ".nan", "[1]", "{a: 1}", "&a 1", "*a", "[" * 200,
                                         "9" * 5000, "2001-13-45", "!!python/name:os.system", "0x10", "true",
                                         "1.5", "'16'", "a: b"]), st.text(max_size=10))),
    st.text(max_size=30))


@fuzz(ci=600)
@given(st.lists(overrides, min_size=1, max_size=3))
def test_set_override_strings(sets):
    _, err = check_outcome(load_config, "mlu270", sets, kind="config: --set strings")
    if err is not None:
        assert str(err).startswith(("mlu270", "--set", "unknown config preset")), str(err)


def _bomb_aliases():
    lines = ["a: &a [x, x, x, x, x, x, x, x, x]"]
    for i in range(1, 12):
        lines.append(f"{chr(97 + i)}: &{chr(97 + i)} [" + ", ".join([f"*{chr(96 + i)}"] * 9) + "]")
    return "\n".join(lines) + "\n"


BOMBS = {
    "billion laughs (aliases)": (_bomb_aliases(), "aliases"),
    "deep flow nesting": ("chip: " + "[" * 100_000 + "]" * 100_000, "nesting"),   # libyaml: "maximum nesting depth"
    "deep block nesting": ("".join("  " * i + f"k{i}:\n" for i in range(200)), "nesting deeper"),
    "deep mapping flow": ("x: " + "{a: " * 5000 + "1" + "}" * 5000, "nesting deeper"),
    "huge file": ("description: " + "x" * (MAX_YAML_BYTES + 10), "limit"),
    "huge integer": ("chip:\n  cores: " + "9" * 10_000, "bad int value"),
    "python object tag": ("chip: !!python/object/apply:os.system ['touch /tmp/pwned']", "invalid YAML"),
    "bad timestamp": ("description: 2001-13-45", "bad timestamp"),
    "many keys": ("".join(f"k{i}: {i}\n" for i in range(40_000)), "more than 10,000 values"),
    "many keys on one line": ("{" + ", ".join(f"k{i}: {i}" for i in range(40_000)) + "}", "more than 10,000 values"),
    "unhashable key": ("? [a, b]\n: 1\n", "invalid YAML"),
    "anchor on a section": ("base: mlu270\ncore: &c {nram_kib: 8}\n", None),
}


@pytest.mark.parametrize("name", sorted(BOMBS))
def test_yaml_bombs_are_refused_quickly(tmp_path, name):
    text, needle = BOMBS[name]
    p = tmp_path / "bomb.yaml"
    p.write_text(text)
    count("config: YAML bombs")
    cfg, err = check_outcome(load_config, p, timeout=10)
    if needle is None:
        return
    assert err is not None, f"{name}: accepted"
    assert needle in str(err) and str(p) in str(err), str(err)


@pytest.mark.parametrize("data,needle", [
    (b"chip:\n  cores: \xff\xfe\n", "not UTF-8"),
    (b"\xef\xbb\xbfbase: mlu270\n", None),                       # a UTF-8 BOM is fine
    (b"\xff\xfeb\x00a\x00s\x00e\x00", "not UTF-8"),               # UTF-16
    (b"base: mlu270\n\x00\n", "invalid YAML"),
    (b"base: mlu270\n\x1b[31m: 1\n", "invalid YAML"),
])
def test_non_utf8_and_control_bytes(tmp_path, data, needle):
    p = tmp_path / "c.yaml"
    p.write_bytes(data)
    cfg, err = check_outcome(load_config, p)
    if needle is None:
        assert err is None, err
    else:
        assert err is not None and needle in assert_clean_error(err)


@pytest.mark.parametrize("sets,needle", [
    (["chip.cores=1000000", "chip.clusters=1"], "chip.cores: must be <= 4,096"),
    (["core.nram_kib=1048577"], "check the unit"),
    (["dram.bandwidth_gbps=1e-300"], "must be >= 0.001"),
    (["dma.core_bandwidth_bytes_per_cycle=0"], "must be > 0"),
    (["core.startup_cycles.scalar=0"], "must be > 0"),
    (["core.queue_depth=0"], "must be > 0"),
    (["dram.access_bytes=65536"], "must be <= 1,024"),
    (["dram.access_bytes=48"], "power of two"),
    (["chip.clock_mhz=0.0001"], "must be >= 1"),
    (["name=a\x1bb"], "printable"),
    (["dram.latency_cycles=1e12"], "must be <="),
])
def test_impossible_machines_are_refused(sets, needle):
    with pytest.raises(ConfigError) as e:
        load_config("mlu270", sets)
    assert needle in assert_clean_error(e.value)


def test_tiny_scratchpads_fault_cleanly_in_the_engine():
    """A legal but tiny machine: a program that does not fit faults with a SimulationError."""
    from mlusim.errors import SimulationError
    from mlusim.sim import simulate

    cfg = load_config("mlu270", ["core.nram_kib=2", "core.nram_reserved_kib=1", "core.wram_kib=1",
                                 "cluster.sram_kib=0"])
    with pytest.raises(SimulationError, match="outside (NRAM|WRAM)"):
        simulate(smoke_program(), cfg, cores=1)


def test_preset_yaml_is_what_the_schema_says():
    """Sanity for the mutation base: the unmodified preset must load."""
    assert yaml.safe_load(yaml.safe_dump(BASE)) == BASE
    check_invariants(config_from_dict(BASE, "mlu270"))


# ------------------------------------------------------------------------------------------------
# base: may name a preset or a file beside the config, nothing else; and an error never quotes
# text from a file the user did not name.

SECRET = "root:x:0:0:SECRET-LINE:/root:/bin/bash"


@pytest.fixture()
def outside(tmp_path):
    """tmp/outside/secret.yaml (a file the user never named) and tmp/cfg/ (the user's folder)."""
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "secret.yaml").write_text(f"{SECRET}: 1\nbase: mlu270\nsecret_key_name: 2\n")
    (tmp_path / "cfg").mkdir()
    (tmp_path / "cfg" / "link.yaml").symlink_to(tmp_path / "outside" / "secret.yaml")
    return tmp_path


@pytest.mark.parametrize("base", ["/etc/passwd", "/etc/hostname", "../outside/secret.yaml",
                                  "../../outside/secret.yaml", "sub/../../outside/secret.yaml", "link.yaml",
                                  "{outside}/outside/secret.yaml", "..", "/", "~/.ssh/id_rsa.yaml",
                                  "mlu270/../../outside/secret.yaml", "\x1b[31m.yaml"])
def test_base_never_reads_outside_the_config_folder(outside, base):
    count("config: base: traversal")
    cfg = outside / "cfg" / "c.yaml"
    cfg.write_text(f"base: {json_str(base.format(outside=outside))}\n")
    _, err = check_outcome(load_config, cfg)
    assert err is not None
    msg = assert_clean_error(err)
    assert "SECRET" not in msg and "secret_key_name" not in msg and "root:" not in msg, msg
    assert str(cfg) in msg


def json_str(s: str) -> str:
    import json

    return json.dumps(s)


def test_base_beside_the_config_and_presets_still_work(tmp_path):
    (tmp_path / "a.yaml").write_text("base: mlu270\ncore:\n  nram_kib: 256\n")
    (tmp_path / "b.yaml").write_text("base: a.yaml\ndram:\n  bandwidth_gbps: 51.2\n")
    cfg = load_config(tmp_path / "b.yaml")
    assert cfg.core.nram_kib == 256 and cfg.dram.bandwidth_gbps == 51.2


def test_unknown_keys_that_are_not_key_names_are_not_echoed(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text(f"base: mlu270\n'{SECRET}': 1\n")
    _, err = check_outcome(load_config, p)
    assert err is not None and "SECRET" not in str(err) and "not a config key name" in str(err)
