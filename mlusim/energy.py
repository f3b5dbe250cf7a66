"""Energy and power of a finished run, from the counters the engine kept (docs/energy.md).

    dynamic = sum over events of (count x energy per event), from the config's `energy:` section
    static  = (board + chip) x time + cluster x (clusters a kernel runs on x the kernel's time)

Events are what the engine already counts: useful int8 and int16 MACs, vector-unit cycles (each
a full 128 B line of byte-lanes, start-up excluded), bytes on the DRAM bus (granule rounding and
read-modify-write included, since the DRAM does that work), DMA payload bytes read from or written
to SRAM, NRAM and WRAM (a DMA pays at both ends), and DMA instructions. Nothing here changes a
cycle: energy is arithmetic on a finished run.

Kernels of the per-cluster schedule ran on `meta["clusters"]` clusters side by side while the
engine simulated one of them (mlusim.schedule): their events count that many times, and the run's
time beyond the sum of its kernels (the side-by-side trunks' DRAM contention) is theirs.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields

COMPONENTS = ("mac", "vector", "dram", "sram", "nram", "wram", "dma", "static")
PJ = 1e-12


@dataclass
class Events:
    """What a kernel (or a run) did that costs energy, and for how long which clusters were on."""

    macs_int8: float = 0.0
    macs_int16: float = 0.0
    vector_bytes: float = 0.0      # vector-unit cycles (start-up excluded) x its bytes per cycle
    dram_bytes: float = 0.0        # on the DRAM bus
    sram_bytes: float = 0.0        # DMA payload read from + written to each on-chip level
    nram_bytes: float = 0.0
    wram_bytes: float = 0.0
    dma_instructions: float = 0.0
    seconds: float = 0.0
    cluster_seconds: float = 0.0   # clusters the kernel ran on x its seconds

    def add(self, other: "Events") -> None:
        for f in fields(self):
            setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))


@dataclass
class Energy:
    """Joules by component."""

    mac: float = 0.0
    vector: float = 0.0
    dram: float = 0.0
    sram: float = 0.0
    nram: float = 0.0
    wram: float = 0.0
    dma: float = 0.0
    static: float = 0.0

    @property
    def total(self) -> float:
        return sum(getattr(self, c) for c in COMPONENTS)

    @property
    def dynamic(self) -> float:
        return self.total - self.static

    def as_dict(self) -> dict[str, float]:
        return asdict(self)


@dataclass
class RunEnergy:
    """A run's joules, its kernels' (in order; they add up to the total), its summed events."""

    total: Energy
    kernels: list[Energy] = field(default_factory=list)
    events: Events = field(default_factory=Events)
    seconds: float = 0.0


def kernel_events(rec, cfg, seconds: float) -> Events:
    """The events of one kernel record, counted once per cluster group that ran it."""
    reps = replicas(rec)
    cores = rec.cores.values()
    macs = sum(c.macs for c in cores)
    macs16 = sum(c.macs_int16 for c in cores)
    startup = cfg.core.startup_cycles.vector
    vec_cycles = sum(max(0.0, c.busy["vec"] - startup * c.instructions["vec"]) for c in cores)
    moved = {lv: rec.bytes_read[lv] + rec.bytes_written[lv] for lv in ("sram", "nram", "wram")}
    clusters = len({cid // cfg.chip.cores_per_cluster for cid in rec.cores}) or 1
    return Events(
        macs_int8=reps * (macs - macs16), macs_int16=reps * macs16,
        vector_bytes=reps * vec_cycles * cfg.core.vector_bytes_per_cycle,
        dram_bytes=reps * rec.dram_bus_bytes, sram_bytes=reps * moved["sram"], nram_bytes=reps * moved["nram"],
        wram_bytes=reps * moved["wram"], dma_instructions=reps * sum(c.instructions["dma"] for c in cores),
        seconds=seconds, cluster_seconds=reps * clusters * seconds)


def replicas(rec) -> int:
    """How many cluster groups ran this kernel side by side (1 unless the per-cluster schedule)."""
    n = rec.meta.get("clusters", 1) if isinstance(rec.meta, dict) else 1
    return n if isinstance(n, int) and n >= 1 else 1


def energy_of(ev: Events, e) -> Energy:
    """Joules of `ev` under the config's `energy` section `e` (static over ev's own time)."""
    s = e.onchip_scale * PJ
    return Energy(
        mac=s * (ev.macs_int8 * e.mac_int8_pj + ev.macs_int16 * e.mac_int16_pj),
        vector=s * ev.vector_bytes * e.vector_pj_per_byte,
        dram=PJ * ev.dram_bytes * e.dram_pj_per_byte,
        sram=s * ev.sram_bytes * e.sram_pj_per_byte,
        nram=s * ev.nram_bytes * e.nram_pj_per_byte,
        wram=s * ev.wram_bytes * e.wram_pj_per_byte,
        dma=s * ev.dma_instructions * e.dma_pj,
        static=(e.board_static_w + e.chip_static_w) * ev.seconds + e.cluster_static_w * ev.cluster_seconds)


def kernel_seconds(res) -> list[float]:
    """Each kernel's share of the run's time: its own cycles, and for the side-by-side kernels of
    the per-cluster schedule also the time the run took beyond all kernels (their contention)."""
    cfg = res.config
    cycles = [k.cycles for k in res.kernels]
    side = [i for i, k in enumerate(res.kernels) if replicas(k) > 1]
    gap = res.cycles - sum(cycles)
    side_cycles = sum(cycles[i] for i in side)
    if gap > 0 and side_cycles > 0:
        for i in side:
            cycles[i] += gap * cycles[i] / side_cycles
    return [cfg.cycles_to_seconds(c) for c in cycles]


def run_energy(res) -> RunEnergy:
    """Energy of every kernel and of the whole run; time not in any kernel (e.g. an interrupted
    run's tail) is charged board and chip static power only."""
    cfg = res.config
    out = RunEnergy(Energy(), seconds=res.seconds)
    for rec, secs in zip(res.kernels, kernel_seconds(res)):
        ev = kernel_events(rec, cfg, secs)
        out.events.add(ev)
        out.kernels.append(energy_of(ev, cfg.energy))
    rest = res.seconds - out.events.seconds
    if rest > 0:
        out.events.add(Events(seconds=rest))
    out.total = energy_of(out.events, cfg.energy)
    return out


def energy_fields(res, batch: int = 1) -> dict:
    """The top-level figures a run report carries: joules, average watts, per image, EDP, and
    each kernel's joules and average watts over its own time."""
    r = run_energy(res)
    secs = r.seconds
    joules = r.total.total
    kernels = [{"energy_j": e.total, "power_w": e.total / s if s else 0.0, "edp_js": e.total * s,
                "energy_breakdown_j": e.as_dict()} for e, s in zip(r.kernels, kernel_seconds(res))]
    return {
        "energy_j": joules, "power_w": joules / secs if secs else 0.0,
        "energy_per_image_j": joules / max(1, batch), "edp_js": joules * secs,
        "tdp_w": res.config.energy.tdp_w, "energy_breakdown_j": r.total.as_dict(), "kernel_energy": kernels,
    }


def attach(kernels: list[dict], res) -> dict:
    """Add each kernel's energy to its `report.summarize` entry (in place) and return the run's
    top-level energy figures."""
    batch = res.program_meta.get("batch", 1)
    batch = batch if isinstance(batch, int) and not isinstance(batch, bool) and batch >= 1 else 1
    fields_ = energy_fields(res, batch)
    for row, ke in zip(kernels, fields_.pop("kernel_energy")):
        row.update(ke)
    return fields_


def _joules(j: float) -> str:
    for unit, scale in (("J", 1.0), ("mJ", 1e-3), ("uJ", 1e-6)):
        if abs(j) >= scale:
            return f"{j / scale:.3g} {unit}"
    return f"{j / 1e-9:.3g} nJ"


def energy_line(s: dict) -> str:
    """Two lines of a run report: joules, per image, average power against the TDP and EDP; then
    the breakdown's shares, largest first."""
    parts = s["energy_breakdown_j"]
    total = s["energy_j"] or 1.0
    shares = sorted(((v / total, k) for k, v in parts.items() if v > 0), reverse=True)
    split = ", ".join(f"{k} {100 * f:.1f}%" for f, k in shares)
    tdp = f" ({100 * s['power_w'] / s['tdp_w']:.0f}% of the {s['tdp_w']:g} W TDP)" if s.get("tdp_w") else ""
    return (f"energy {_joules(s['energy_j'])} ({_joules(s['energy_per_image_j'])}/image), average power "
            f"{s['power_w']:.1f} W{tdp}, EDP {s['edp_js']:.3g} J*s\nenergy by part: {split}")


# The counters a fused segment's steps are told apart by (mlusim.layers) that each part's events
# follow; parts with no such counter (NRAM/WRAM bytes, DMA instructions) follow all DMA traffic,
# and static energy follows time.
SPLIT_BY = {"mac": ("macs",), "vector": ("busy.vec",), "dram": ("dram_bus_bytes",),
            "sram": ("sram.input.read", "sram.input.write", "sram.weights.read", "sram.weights.write",
                     "sram.output.read", "sram.output.write")}


def split(breakdown: dict[str, float], steps: list[dict[str, float]], times: list[float]) -> list[dict[str, float]]:
    """A fused kernel's energy over its layers: each part in proportion to the layers' counts of
    that part's events (`steps`: per layer, counters as mlusim.cores.stats.snapshot keys them),
    DMA-priced parts by all DMA traffic, static by time. The layers add up to the kernel."""
    traffic = [sum(v for k, v in c.items() if k.startswith(("gdram.", "sram."))) for c in steps]
    out: list[dict[str, float]] = [dict.fromkeys(COMPONENTS, 0.0) for _ in steps]
    for part in COMPONENTS:
        if part == "static":
            w = list(times)
        elif part in SPLIT_BY:
            w = [sum(c.get(k, 0.0) for k in SPLIT_BY[part]) for c in steps]
        else:
            w = traffic
        total = sum(w)
        if total <= 0:
            w, total = list(times), sum(times)
        for row, x in zip(out, w):
            row[part] = breakdown[part] * x / total if total > 0 else breakdown[part] / len(steps)
    return out


def layer_fields(breakdown: dict[str, float], seconds: float) -> dict:
    """The energy columns of a layer row: joules, watts and EDP over the layer's own time."""
    joules = sum(breakdown.values())
    return {"energy_j": joules, "power_w": joules / seconds if seconds else 0.0, "edp_js": joules * seconds,
            "energy_breakdown_j": dict(breakdown)}
