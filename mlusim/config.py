"""Hardware configs: a typed schema, YAML presets, `base:` inheritance and `--set` overrides.

The schema is a tree of dataclasses; every leaf carries its unit and a one-line meaning so that
`mlusim config show` and docs/config.md are generated from the same place that validates files.
Strictness is the point: an unknown key, a wrong type or a non-positive size is a ConfigError naming
the file and the dotted key, because a typo that silently falls back to a default would make every
"what if" experiment quietly wrong.
"""
from __future__ import annotations

import copy
import dataclasses
import math
import re
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Iterator

from mlusim.errors import ConfigError

PRESET_DIR = Path(__file__).resolve().parent.parent / "configs"
DEFAULT_PRESET = "mlu270"


def _preset_dir() -> Path:
    # Installed: configs/ is the package `mlusim.configs`; from a source tree it sits beside mlusim/.
    from importlib.util import find_spec

    spec = find_spec("mlusim.configs")
    if spec is None or not spec.submodule_search_locations:  # pragma: no cover - broken layout
        return PRESET_DIR
    return Path(list(spec.submodule_search_locations)[0]).resolve()


def spec(unit: str, doc: str, *, minimum: float | None = 0, positive: bool = True,
         maximum: float | None = None, **kw) -> Any:
    """A schema leaf: its unit and meaning, and the range check the loader enforces.

    `maximum` bounds what the simulator can model honestly: past it a value is a typo (MiB for
    KiB) or would make the engine allocate, loop or round its way into nonsense."""
    return field(metadata={"unit": unit, "doc": doc, "minimum": minimum, "positive": positive,
                           "maximum": maximum}, **kw)


# Bounds shared by many leaves (see docs/robustness.md). Rates have a floor so that a transfer
# time (bytes / rate) stays finite; cycle costs have a ceiling so that sums stay exact floats.
MAX_CYCLES = 10**9
MIN_RATE, MAX_RATE = 1e-3, 1e6


@dataclass
class ChipConfig:
    cores: int = spec("cores", "IPU cores on the chip (clusters x cores per cluster)", maximum=4096)
    clusters: int = spec("clusters", "clusters; each has its own SRAM and shares the cluster barrier",
                         maximum=4096)
    clock_mhz: float = spec("MHz", "IPU clock; converts cycles to seconds", minimum=1, maximum=100_000)
    chip_sync_cycles: int = spec("cycles", "cost of a chip-wide barrier (sync.all) once all arrive",
                                 positive=False, maximum=MAX_CYCLES)
    kernel_launch_cycles: int = spec("cycles", "fixed cost to dispatch a kernel onto the cores",
                                     positive=False, maximum=MAX_CYCLES)

    @property
    def cores_per_cluster(self) -> int:
        return self.cores // self.clusters


@dataclass
class StartupConfig:
    conv: int = spec("cycles", "start-up of one conv instruction on the MAC array", positive=False,
                      maximum=MAX_CYCLES)
    matmul: int = spec("cycles", "start-up of one matmul instruction on the MAC array", positive=False,
                        maximum=MAX_CYCLES)
    vector: int = spec("cycles", "start-up of one vector (NFU) instruction", positive=False,
                        maximum=MAX_CYCLES)
    # At least 1: the issue stage cannot retire instructions in zero time (and the engine only
    # checks its instruction budget when simulated time advances).
    scalar: int = spec("cycles", "one scalar/control instruction at the issue stage", maximum=10**6)


@dataclass
class CoreConfig:
    nram_kib: int = spec("KiB", "NRAM (neuron RAM) per core: activations, vector operands", maximum=1 << 20)
    nram_reserved_kib: int = spec("KiB", "NRAM kept back for the stack; programs may not use it",
                                  positive=False, maximum=1 << 20)
    wram_kib: int = spec("KiB", "WRAM (weight RAM) per core: conv/matmul weights", maximum=1 << 20)
    mac_ci_lanes_int8: int = spec("channels", "int8 input channels the MAC array reduces per cycle",
                                  maximum=1 << 16)
    mac_co_lanes: int = spec("channels", "output channels the MAC array produces per cycle", maximum=1 << 16)
    mac_int8_per_cycle: int = spec("MAC/cycle", "int8 multiply-accumulates per cycle", maximum=1 << 24)
    mac_int16_per_cycle: int = spec("MAC/cycle", "int16 multiply-accumulates per cycle", maximum=1 << 24)
    vector_bytes_per_cycle: int = spec("B/cycle", "vector (NFU) unit throughput", maximum=1 << 20)
    queue_depth: int = spec("instructions", "entries in each unit's instruction queue", maximum=1 << 16)
    startup_cycles: StartupConfig = field(default_factory=StartupConfig)

    @property
    def mac_ci_lanes_int16(self) -> int:
        return max(1, self.mac_int16_per_cycle // self.mac_co_lanes)


@dataclass
class ClusterConfig:
    sram_kib: int = spec("KiB", "SRAM shared by the cores of one cluster", positive=False, maximum=1 << 22)
    sram_bandwidth_bytes_per_cycle: float = spec("B/cycle", "SRAM port bandwidth shared by a cluster",
                                                  minimum=MIN_RATE, maximum=MAX_RATE)
    sync_cycles: int = spec("cycles", "cost of a cluster barrier (sync.cluster) once all arrive",
                            positive=False, maximum=MAX_CYCLES)


@dataclass
class DramConfig:
    capacity_gib: float = spec("GiB", "GDRAM capacity", maximum=1 << 20)
    bandwidth_gbps: float = spec("GB/s", "GDRAM bandwidth shared by every transfer in flight",
                                  minimum=MIN_RATE, maximum=MAX_RATE)
    latency_cycles: int = spec("cycles", "first-byte latency of a GDRAM access by DMA", positive=False,
                                maximum=MAX_CYCLES)
    # At most 1 KiB: the DMA cost model tabulates offsets modulo the granule, granule^2 entries.
    access_bytes: int = spec("bytes", "access granularity; segments are rounded out to it", maximum=1024)
    # 0 (the default, for configs that predate it): every segment of a strided DMA is a new page.
    page_bytes: int = spec("bytes", "DRAM page (open row) span: a strided DMA's next segment starting less "
                           "than this past the previous one's end needs no new row", positive=False,
                           maximum=1 << 20, default=0)


@dataclass
class DmaConfig:
    core_bandwidth_bytes_per_cycle: float = spec("B/cycle", "IO-DMA peak of one core to/from GDRAM",
                                                  minimum=MIN_RATE, maximum=MAX_RATE)
    sram_bandwidth_bytes_per_cycle: float = spec("B/cycle", "one core's DMA to/from its cluster's SRAM",
                                                  minimum=MIN_RATE, maximum=MAX_RATE)
    move_bandwidth_bytes_per_cycle: float = spec("B/cycle", "on-core moves NRAM<->WRAM, NRAM->NRAM",
                                                  minimum=MIN_RATE, maximum=MAX_RATE)
    startup_cycles: int = spec("cycles", "fixed cost of every DMA instruction", positive=False,
                                maximum=MAX_CYCLES)
    segment_cycles: int = spec("cycles", "extra cost of each segment after the first of a strided DMA "
                               "to or from GDRAM (IO-DMA)", positive=False, maximum=MAX_CYCLES)
    move_segment_cycles: int = spec("cycles", "the same for a strided DMA between on-chip memories "
                                    "(SRAM, NRAM, WRAM: Move-DMA)", positive=False, maximum=MAX_CYCLES)


SCHEDULES = ("per-cluster", "spread")
KERNELS = ("per-layer", "fused")
LINEAR_DTYPES = ("int8", "int16")


@dataclass
class RuntimeConfig:
    """What the vendor's runtime does with a compiled network. Optional in a file (defaults below)."""
    schedule: str = field(default="spread", metadata={
        "unit": "name", "maxlen": 16, "doc": "how `mlusim run` spreads a zoo/ONNX batch by default: 'per-cluster' "
        "(the MLU370 MagicMind runtime: images split over clusters, each image on one cluster's cores, the "
        "fully connected head over the whole chip) or 'spread' (every layer over every core given)"})
    kernels: str = field(default="fused", metadata={
        "unit": "name", "maxlen": 16, "doc": "what one kernel of the per-cluster schedule's trunk is: 'per-layer' "
        "(the vendor runtime: each layer, with its bias, activation and shortcut fused in, a kernel of its own "
        "whose input and output cross DRAM) or 'fused' (mlusim's cluster fusion: spans of layers kept in "
        "cluster SRAM, compiler/fusion.py)"})
    linear_dtype: str = field(default="int8", metadata={
        "unit": "name", "maxlen": 8, "doc": "the per-cluster schedule's fully connected (linear) layers: 'int8' "
        "like the convs, or 'int16': 16-bit weights and MACs, mlusim's stand-in for the vendor runtime's fp16 "
        "fully connected layers (the same 2-byte weights and half-rate MAC; mlusim has no fp16 MAC path)"})


MAX_PJ = 1e6        # one event costing a microjoule is a unit slip (nJ or J for pJ)
MAX_WATTS = 10_000.0


@dataclass
class EnergyConfig:
    """What each event of a run costs in energy, and what the board draws regardless (docs/energy.md).
    Optional in a file: a config without it gets these defaults, the MLU270's figures."""
    mac_int8_pj: float = spec("pJ", "one useful int8 multiply-accumulate on the MAC array (operand delivery "
                              "from NRAM/WRAM inside the array included)", positive=False, maximum=MAX_PJ,
                              default=0.1)
    mac_int16_pj: float = spec("pJ", "one useful int16 multiply-accumulate on the MAC array", positive=False,
                               maximum=MAX_PJ, default=0.29)
    vector_pj_per_byte: float = spec("pJ/B", "one byte-lane of one vector (NFU) cycle, its NRAM operand reads "
                                     "and writes included", positive=False, maximum=MAX_PJ, default=1.6)
    dram_pj_per_byte: float = spec("pJ/B", "one byte on the DRAM bus (device, I/O and controller)",
                                   positive=False, maximum=MAX_PJ, default=120.0)
    sram_pj_per_byte: float = spec("pJ/B", "one byte a DMA reads from or writes to cluster SRAM",
                                   positive=False, maximum=MAX_PJ, default=3.75)
    nram_pj_per_byte: float = spec("pJ/B", "one byte a DMA reads from or writes to NRAM", positive=False,
                                   maximum=MAX_PJ, default=0.75)
    wram_pj_per_byte: float = spec("pJ/B", "one byte a DMA reads from or writes to WRAM", positive=False,
                                   maximum=MAX_PJ, default=0.75)
    dma_pj: float = spec("pJ", "one DMA instruction's descriptor processing, apart from its bytes",
                         positive=False, maximum=MAX_PJ, default=20.0)
    onchip_scale: float = spec("x", "multiplier on every on-chip per-event energy above (not DRAM): the clock "
                               "tree, control and wires that per-operation figures leave out", positive=False,
                               maximum=1000, default=5.32)
    board_static_w: float = spec("W", "the board's power whatever runs: DRAM background and refresh, voltage "
                                 "regulators, host link", positive=False, maximum=MAX_WATTS, default=16.1)
    chip_static_w: float = spec("W", "the chip's leakage and always-on logic while powered", positive=False,
                                maximum=MAX_WATTS, default=7.0)
    cluster_static_w: float = spec("W", "extra power of each cluster a kernel runs on (clocked and not gated), "
                                   "for as long as the kernel runs", positive=False, maximum=MAX_WATTS, default=0.0)
    tdp_w: float = spec("W", "the board's rated power (TDP); reports compare the average power with it",
                        maximum=MAX_WATTS, default=70.0)


@dataclass
class HardwareConfig:
    # Names are printed in every report and error message: one printable line, bounded.
    name: str = field(default="custom", metadata={"unit": "", "doc": "config name", "maxlen": 64})
    description: str = field(default="", metadata={"unit": "", "doc": "free text", "maxlen": 500})
    chip: ChipConfig = field(default_factory=ChipConfig)
    core: CoreConfig = field(default_factory=CoreConfig)
    cluster: ClusterConfig = field(default_factory=ClusterConfig)
    dram: DramConfig = field(default_factory=DramConfig)
    dma: DmaConfig = field(default_factory=DmaConfig)
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)
    energy: EnergyConfig = field(default_factory=EnergyConfig)
    source: str = field(default="", compare=False, metadata={"unit": "", "doc": "where it was loaded from"})

    # -- derived quantities, in the simulator's units (cycles, bytes) --------------------------
    @property
    def clock_hz(self) -> float:
        return self.chip.clock_mhz * 1e6

    def segment_cycles(self, gap: int | None) -> int:
        """Descriptor cost of one extra segment of a strided DMA whose GDRAM side jumps `gap` bytes
        from one segment's end to the next one's start (None: unknown, priced as a new page). A
        jump inside the open DRAM page costs what an on-chip segment does; a jump past it opens a
        row (`dma.segment_cycles`)."""
        if gap is not None and abs(gap) < self.dram.page_bytes:
            return self.dma.move_segment_cycles
        return self.dma.segment_cycles

    @property
    def dram_bytes_per_cycle(self) -> float:
        return self.dram.bandwidth_gbps * 1e9 / self.clock_hz

    @property
    def nram_bytes(self) -> int:
        return (self.core.nram_kib - self.core.nram_reserved_kib) * 1024

    @property
    def wram_bytes(self) -> int:
        return self.core.wram_kib * 1024

    @property
    def sram_bytes(self) -> int:
        return self.cluster.sram_kib * 1024

    @property
    def dram_bytes(self) -> int:
        return int(self.dram.capacity_gib * 1024**3)

    def cycles_to_seconds(self, cycles: float) -> float:
        return cycles / self.clock_hz

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d.pop("source")
        return d


# ------------------------------------------------------------------------------------------------
# Schema walking


OPTIONAL_SECTIONS = (RuntimeConfig, EnergyConfig)


def _is_section(tp: Any) -> bool:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


def _field_types(cls: type) -> dict[str, Any]:
    import typing

    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in fields(cls)}


def iter_leaves(cls: type = HardwareConfig, prefix: str = "") -> Iterator[tuple[str, Any, dict]]:
    """Every leaf key of the schema as (dotted path, python type, metadata)."""
    types = _field_types(cls)
    for f in fields(cls):
        if f.name == "source":
            continue
        tp = types[f.name]
        path = f"{prefix}{f.name}"
        if _is_section(tp):
            yield from iter_leaves(tp, path + ".")
        else:
            yield path, tp, dict(f.metadata)


def _check_leaf(value: Any, tp: Any, meta: dict, where: str) -> Any:
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {type(value).__name__} {value!r}")
        limit = meta.get("maxlen", 500)
        if len(value) > limit or not value.isprintable():
            raise ConfigError(f"{where}: must be one line of printable text of at most {limit} characters")
        return value
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"{where}: expected a number, got {type(value).__name__} {value!r}")
    if tp is int:
        if isinstance(value, float):
            if not value.is_integer():
                raise ConfigError(f"{where}: expected an integer, got {value!r}")
            value = int(value)
    else:
        value = float(value)
        if not math.isfinite(value):
            raise ConfigError(f"{where}: must be finite, got {value!r}")
    if meta.get("positive") and value <= 0:
        raise ConfigError(f"{where}: must be > 0, got {value!r}")
    if meta.get("minimum") is not None and value < meta["minimum"]:
        raise ConfigError(f"{where}: must be >= {meta['minimum']}, got {value!r}")
    if meta.get("maximum") is not None and value > meta["maximum"]:
        raise ConfigError(f"{where}: must be <= {meta['maximum']:,}, got {value!r} (check the unit: "
                          f"{meta.get('unit')})")
    if abs(value) > 1e15:
        raise ConfigError(f"{where}: {value!r} is implausibly large")
    return value


KEY_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}", re.ASCII)


def _build(cls: type, data: Any, origin: str, prefix: str) -> Any:
    where_section = f"{origin}: {prefix.rstrip('.') or 'top level'}"
    if not isinstance(data, dict):
        raise ConfigError(f"{where_section}: expected a mapping, got {type(data).__name__}")
    types = _field_types(cls)
    known = {f.name for f in fields(cls) if f.name != "source"}
    for key in data:
        if not isinstance(key, str) or key not in known:
            if not (isinstance(key, str) and KEY_RE.fullmatch(key)):    # say where, never echo text that
                raise ConfigError(f"{where_section}: a key that is not a config key name (expected one "
                                  f"of {', '.join(sorted(known))})")          # may be a line of some file
            hint = _closest(str(key), known)
            raise ConfigError(f"{origin}: unknown key '{prefix}{key}'" + (f" (did you mean '{prefix}{hint}'?)" if hint else ""))
    kwargs = {}
    for f in fields(cls):
        if f.name == "source":
            continue
        path = f"{prefix}{f.name}"
        tp = types[f.name]
        if f.name not in data:
            if _is_section(tp) and tp in OPTIONAL_SECTIONS:     # optional: every leaf has a default
                kwargs[f.name] = tp()
                continue
            if _is_section(tp):
                raise ConfigError(f"{origin}: missing section '{path}' (add it, or start the file with "
                                  f"'base: {DEFAULT_PRESET}' to inherit every value)")
            if f.default is dataclasses.MISSING:
                raise ConfigError(f"{origin}: missing key '{path}' (add it, or inherit it with 'base: {DEFAULT_PRESET}')")
            continue
        if _is_section(tp):
            kwargs[f.name] = _build(tp, data[f.name], origin, path + ".")
        else:
            kwargs[f.name] = _check_leaf(data[f.name], tp, dict(f.metadata), f"{origin}: {path}")
    return cls(**kwargs)


def _closest(key: str, names: set[str]) -> str | None:
    import difflib

    m = difflib.get_close_matches(key, sorted(names), n=1, cutoff=0.6)
    return m[0] if m else None


def _validate(cfg: HardwareConfig, origin: str) -> None:
    """Cross-field consistency: values each fine alone that cannot describe one machine."""
    c = cfg.chip
    if c.cores % c.clusters:
        raise ConfigError(f"{origin}: chip.cores={c.cores} is not divisible by chip.clusters={c.clusters} (every "
                          f"cluster has the same number of cores)")
    k = cfg.core
    if k.nram_reserved_kib >= k.nram_kib:
        raise ConfigError(f"{origin}: core.nram_reserved_kib={k.nram_reserved_kib} leaves no usable NRAM "
                          f"(core.nram_kib={k.nram_kib})")
    if k.mac_ci_lanes_int8 * k.mac_co_lanes != k.mac_int8_per_cycle:
        raise ConfigError(f"{origin}: core.mac_int8_per_cycle={k.mac_int8_per_cycle} must equal "
                          f"core.mac_ci_lanes_int8 x core.mac_co_lanes = {k.mac_ci_lanes_int8 * k.mac_co_lanes}")
    if k.mac_int16_per_cycle > k.mac_int8_per_cycle or k.mac_int16_per_cycle % k.mac_co_lanes:
        raise ConfigError(f"{origin}: core.mac_int16_per_cycle={k.mac_int16_per_cycle} must be a multiple of "
                          f"core.mac_co_lanes={k.mac_co_lanes} and at most core.mac_int8_per_cycle")
    if cfg.runtime.schedule not in SCHEDULES:
        raise ConfigError(f"{origin}: runtime.schedule={cfg.runtime.schedule!r} must be one of {', '.join(SCHEDULES)}")
    if cfg.runtime.linear_dtype not in LINEAR_DTYPES:
        raise ConfigError(f"{origin}: runtime.linear_dtype={cfg.runtime.linear_dtype!r} must be one of "
                          f"{', '.join(LINEAR_DTYPES)}")
    if cfg.runtime.kernels not in KERNELS:
        raise ConfigError(f"{origin}: runtime.kernels={cfg.runtime.kernels!r} must be one of {', '.join(KERNELS)}")
    if cfg.dram.access_bytes & (cfg.dram.access_bytes - 1):
        raise ConfigError(f"{origin}: dram.access_bytes={cfg.dram.access_bytes} must be a power of two")


# ------------------------------------------------------------------------------------------------
# Loading


def list_presets() -> list[str]:
    return sorted(p.stem for p in _preset_dir().glob("*.yaml"))


def _read_yaml(path: Path) -> dict:
    from mlusim.yamlsafe import load_yaml_file

    return load_yaml_file(path, what="config")


def _deep_merge(base: dict, over: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _deep_merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def _locate(text: str) -> tuple[Path, str]:
    """The file a preset name or path refers to, and how messages should call it."""
    path = Path(text)
    looks_like_file = path.suffix in (".yaml", ".yml") or "/" in text or "\\" in text
    if looks_like_file or _is(path, "exists"):
        if not _is(path, "is_file"):
            raise ConfigError(f"{text}: no such config file")
        return path, str(path)
    if text not in list_presets():
        raise ConfigError(f"unknown config preset {text!r} (presets: {', '.join(list_presets())}); "
                          f"a config file needs a .yaml suffix")
    return _preset_dir() / f"{text}.yaml", text


def _is(path: Path, test: str) -> bool:
    """path.exists() / is_file(), False (not an exception) for a name the OS cannot even look up:
    too long, or with a NUL byte in it."""
    try:
        return getattr(path, test)()
    except (OSError, ValueError):
        return False


def _resolve_raw(name_or_path: str | Path, depth: int = 0) -> tuple[dict, str]:
    """The raw mapping of a preset or file with its `base:` chain merged in."""
    if depth > 8:
        raise ConfigError(f"{name_or_path}: 'base:' chain deeper than 8 (a cycle?)")
    path, origin = _locate(str(name_or_path))
    raw = _read_yaml(path)
    if not isinstance(raw, dict):
        raise ConfigError(f"{origin}: top level must be a mapping of sections, got {type(raw).__name__}")
    base = raw.pop("base", None)
    if base is not None:
        target = _base_target(base, path, origin)
        try:
            base_raw, _ = _resolve_raw(target, depth + 1)
        except ConfigError as e:
            if depth:
                raise
            raise ConfigError(f"{origin}: base: {e}") from None
        raw = _deep_merge(base_raw, raw)
        raw.setdefault("name", f"{Path(origin).stem}")
    return raw, origin


def _base_target(base: object, path: Path, origin: str) -> str:
    """What `base:` may name: a preset, or a file inside the folder of the config that names it
    (so a config from elsewhere cannot make mlusim read, and quote, /etc/passwd or ../../secret)."""
    if not isinstance(base, str) or not base or len(base) > 256 or not base.isprintable():
        raise ConfigError(f"{origin}: base: must be a preset name or a file name in this config's folder")
    if Path(base).suffix not in (".yaml", ".yml") and "/" not in base and "\\" not in base:
        if base not in list_presets():
            raise ConfigError(f"{origin}: base: unknown config preset {base!r} (presets: {', '.join(list_presets())})")
        return base
    folder = path.parent.resolve()
    target = (folder / base).resolve() if not Path(base).is_absolute() else None
    if target is None or not target.is_relative_to(folder):
        raise ConfigError(f"{origin}: base: {base!r} is outside this config's folder; base: names a preset or "
                          f"a file beside the config (copy it there)")
    return str(target)


NUMBER_RE = re.compile(r"[+-]?(?:[0-9]{1,30}(?:\.[0-9]{0,30})?|\.[0-9]{1,30})(?:[eE][+-]?[0-9]{1,3})?")


def parse_override(text: str) -> tuple[str, Any]:
    """`core.nram_kib=256` -> ('core.nram_kib', 256); values are typed by YAML scalar rules (read
    with the same strict loader as files), and a value YAML cannot parse stays a string."""
    from mlusim.yamlsafe import load_yaml_text

    if not isinstance(text, str) or "=" not in text:
        raise ConfigError(f"--set {text!r}: expected path.to.key=value")
    key, _, value = text.partition("=")
    key = key.strip()
    try:
        parsed = load_yaml_text(value, f"--set {key}") if value.strip() else None
    except ConfigError:
        parsed = value
    if isinstance(parsed, str) and NUMBER_RE.fullmatch(parsed.strip()):
        # YAML 1.1 reads 1e12 (no dot) as a string; on a command line it is clearly a number.
        parsed = float(parsed) if any(c in parsed for c in ".eE") else int(parsed)
    if parsed is None:
        raise ConfigError(f"--set {key}: missing value (write {key}=VALUE)")
    return key, parsed


def apply_overrides(raw: dict, overrides: list[str] | dict[str, Any], origin: str = "--set") -> dict:
    """`raw` with each dotted key set; only leaves of the schema may be set."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{origin}: the config to override is a {type(raw).__name__}, not a mapping")
    raw = copy.deepcopy(raw)
    items = overrides.items() if isinstance(overrides, dict) else (parse_override(o) for o in overrides)
    leaves = {p for p, _, _ in iter_leaves()}
    for key, value in items:
        if not isinstance(key, str) or key not in leaves:
            hint = _closest(str(key), leaves)
            raise ConfigError(f"{origin}: unknown key {str(key)!r}" + (f" (did you mean '{hint}'?)" if hint else ""))
        node = raw
        *parents, leaf = key.split(".")
        for i, p in enumerate(parents):
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                section = ".".join(parents[:i + 1])
                raise ConfigError(f"{origin}: cannot set '{key}': '{section}' is a {type(node).__name__}, "
                                  f"not a section (fix '{section}' in the config file)")
        node[leaf] = value
    return raw


def host_mem_cap_bytes(env: dict | None = None) -> int:
    """The host memory budget (mlusim.budget.cap_bytes; kept here for callers of the old name)."""
    from mlusim.budget import cap_bytes

    return cap_bytes(env)


def load_config(name_or_path: str | Path | None = None,
                overrides: list[str] | dict[str, Any] | None = None) -> HardwareConfig:
    """Resolve a preset name or YAML file (with its base chain) plus overrides into a checked config."""
    raw, origin = _resolve_raw(name_or_path or DEFAULT_PRESET)
    if overrides:
        raw = apply_overrides(raw, overrides, f"{origin}: --set")
        origin = f"{origin} (with --set)"
    cfg = _build(HardwareConfig, raw, origin, "")
    _validate(cfg, origin)
    cfg.source = origin
    return cfg


def config_from_dict(data: dict, origin: str = "<dict>") -> HardwareConfig:
    """Rebuild a config stored inside a .mlu file; same checks as a file on disk."""
    cfg = _build(HardwareConfig, data, origin, "")
    _validate(cfg, origin)
    cfg.source = origin
    return cfg
