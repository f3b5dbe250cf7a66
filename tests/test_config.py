"""Config schema: presets load, strict keys and types, base inheritance, overrides, clear errors."""
from __future__ import annotations

import pytest

from mlusim.config import iter_leaves, list_presets, load_config, parse_override
from mlusim.errors import ConfigError


def test_presets_all_load_and_are_consistent():
    names = list_presets()
    assert {"mlu270", "mlu220", "mlu290", "mlu370"} <= set(names)
    for n in names:
        cfg = load_config(n)
        assert cfg.chip.cores % cfg.chip.clusters == 0
        assert cfg.core.mac_ci_lanes_int8 * cfg.core.mac_co_lanes == cfg.core.mac_int8_per_cycle


def test_mlu270_matches_reference_facts(mlu270):
    c = mlu270
    assert (c.chip.cores, c.chip.clusters, c.chip.clock_mhz) == (16, 4, 1000)
    assert (c.core.nram_kib, c.core.wram_kib, c.cluster.sram_kib) == (512, 1024, 1920)   # 2048 KB, 1920 usable
    assert c.dram.bandwidth_gbps == 102.4
    # 128 TOPS int8 peak: 16 cores x 4096 MAC x 2 ops x 1 GHz = 131 TOPS (ref section 7)
    assert abs(c.chip.cores * c.core.mac_int8_per_cycle * 2 * c.clock_hz / 1e12 - 131.07) < 0.01
    assert c.dram_bytes_per_cycle == pytest.approx(102.4)


def test_every_preset_value_cites_a_source():
    from mlusim.config import _preset_dir

    for path in _preset_dir().glob("*.yaml"):
        for line in path.read_text().splitlines():
            body = line.split("#")[0]
            if ":" in body and body.split(":", 1)[1].strip() and not body.startswith(("name", "description", "base")):
                assert "#" in line and any(t in line for t in ("[O", "[D", "[G", "[3P", "[F")), f"{path.name}: {line}"


def test_mlu370_boards():
    """The two MLU370 boards as their logs print them; `mlu370` still loads, as the X4."""
    s4, x4, old = load_config("mlu370-s4"), load_config("mlu370-x4"), load_config("mlu370")
    assert (s4.chip.clusters, s4.chip.cores, s4.chip.clock_mhz) == (6, 24, 1000)
    assert s4.dram.bandwidth_gbps == pytest.approx(384 / 8 * 6.4) and s4.dram.capacity_gib == 24
    assert (x4.chip.clusters, x4.chip.cores) == (8, 32) and x4.dram.bandwidth_gbps == s4.dram.bandwidth_gbps
    assert old.name == "mlu370" and old.to_dict() | {"name": 0, "description": 0} == \
        x4.to_dict() | {"name": 0, "description": 0}


def write(tmp_path, text, name="c.yaml"):
    p = tmp_path / name
    p.write_text(text)
    return p


def test_base_inheritance_and_override(tmp_path):
    p = write(tmp_path, "base: mlu270\ncore:\n  nram_kib: 256\n")
    cfg = load_config(p)
    assert cfg.core.nram_kib == 256 and cfg.core.wram_kib == 1024
    cfg2 = load_config(p, ["dram.bandwidth_gbps=51.2", "chip.clock_mhz=500"])
    assert cfg2.dram.bandwidth_gbps == 51.2 and cfg2.chip.clock_mhz == 500
    assert cfg2.dram_bytes_per_cycle == pytest.approx(102.4)


@pytest.mark.parametrize("text,needle", [
    ("base: mlu270\ncore:\n  nram_kb: 256\n", "unknown key 'core.nram_kb' (did you mean 'core.nram_kib'?)"),
    ("base: mlu270\ncore:\n  nram_kib: big\n", "core.nram_kib: expected a number"),
    ("base: mlu270\ncore:\n  nram_kib: 0\n", "core.nram_kib: must be > 0"),
    ("base: mlu270\ncore:\n  nram_kib: -4\n", "core.nram_kib: must be > 0"),
    ("base: mlu270\nchip:\n  clusters: 3\n", "chip.cores=16 is not divisible by chip.clusters=3"),
    ("base: mlu270\ncore:\n  nram_kib: 1.5\n", "expected an integer"),
    ("base: mlu270\ncore:\n  nram_kib: true\n", "expected a number"),
    ("base: mlu270\ncore: 5\n", "expected a mapping"),
    ("base: mlu270\ncore:\n  nram_reserved_kib: 512\n", "leaves no usable NRAM"),
    ("base: nosuch\n", "unknown config preset 'nosuch'"),
    ("chip: {cores: 4}\n", "missing"),
    ("base: mlu270\ncore: [1, 2\n", "invalid YAML"),
    ("a: &x [1]\nb: *x\n", "aliases"),
    ("base: mlu270\ndram:\n  bandwidth_gbps: .nan\n", "must be finite"),
])
def test_bad_configs_give_one_line_naming_file_and_key(tmp_path, text, needle):
    p = write(tmp_path, text)
    with pytest.raises(ConfigError) as e:
        load_config(p)
    msg = str(e.value)
    assert needle in msg and str(p) in msg and "\n" not in msg


def test_non_utf8_and_missing_file(tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_bytes(b"chip:\n  cores: \xff\xfe\n")
    with pytest.raises(ConfigError, match="not UTF-8"):
        load_config(p)
    with pytest.raises(ConfigError, match="no such config file"):
        load_config(tmp_path / "missing.yaml")


def test_override_errors():
    with pytest.raises(ConfigError, match="did you mean 'dram.bandwidth_gbps'"):
        load_config("mlu270", ["dram.bandwidth=3"])
    with pytest.raises(ConfigError, match="expected path.to.key=value"):
        load_config("mlu270", ["dram.bandwidth_gbps"])
    assert parse_override("core.nram_kib=256") == ("core.nram_kib", 256)


def test_base_cycle_is_caught(tmp_path):
    write(tmp_path, "base: b.yaml\n", "a.yaml")
    write(tmp_path, "base: a.yaml\n", "b.yaml")
    with pytest.raises(ConfigError, match="base"):
        load_config(tmp_path / "a.yaml")


def test_every_leaf_has_unit_and_doc():
    for path, _tp, meta in iter_leaves():
        if path in ("name", "description"):
            continue
        assert meta["unit"] and meta["doc"], path
