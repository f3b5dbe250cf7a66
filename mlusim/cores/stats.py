"""Raw counters the engine keeps. Reports derive every figure from these; nothing is estimated."""
from __future__ import annotations

from dataclasses import dataclass, field

UNITS = ("ld", "mac", "vec", "st", "mv")
QUEUES = ("ld", "cp", "st", "mv")
LEVELS = ("gdram", "sram", "nram", "wram")
# DMA payload bytes by operand (SCALE-Sim's IFMAP / FILTER / OFMAP) at the shared levels, read and
# written: keys "gdram.weights.read", ... (see cores/dma.py:operand for which transfer is which)
OPERANDS = ("input", "weights", "output")
SHARED_LEVELS = ("gdram", "sram")
TRAFFIC_KEYS = tuple(f"{lv}.{op}.{rw}" for lv in SHARED_LEVELS for op in OPERANDS for rw in ("read", "write"))


def _zero(keys) -> dict:
    return {k: 0.0 for k in keys}


@dataclass
class CoreCounters:
    """What one core did during one kernel. Cycles are simulated clock cycles."""

    core: int
    busy: dict = field(default_factory=lambda: _zero(UNITS))          # unit executing
    token_stall: dict = field(default_factory=lambda: _zero(QUEUES))  # queue head waiting on a token
    # the compute queue's token waits while neither the MAC array nor the vector unit runs anything:
    # the compute queue issues ahead of its units, so most of token_stall["cp"] overlaps their work
    cp_starved: float = 0.0
    issue_stall: float = 0.0       # issue stage blocked on a full instruction queue
    sync_wait: float = 0.0         # issue stage waiting at barriers for other cores
    active: float = 0.0            # cycles between this core's first task start and last task end
    tasks: int = 0
    instructions: dict = field(default_factory=lambda: {"scalar": 0, "sync": 0, "dma": 0, "mac": 0, "vec": 0})
    macs: int = 0                  # useful multiply-accumulates (no padding)
    macs_int16: int = 0            # of which on 16-bit operands (the rest are int8; energy differs)
    mac_slots: int = 0             # array cycles x array size actually occupied
    # cycles each DMA queue's transfers would take with the chip to themselves (fixed costs plus bus
    # bytes at the channel's own cap): busy minus this is time lost to DRAM/SRAM contention
    dma_demand: dict = field(default_factory=lambda: {"ld": 0.0, "st": 0.0, "mv": 0.0})
    traffic: dict = field(default_factory=lambda: _zero(TRAFFIC_KEYS))   # payload bytes, see TRAFFIC_KEYS
    dram_bus_bytes: float = 0.0    # this core's transfers' bytes on the DRAM bus

    def add(self, other: "CoreCounters") -> None:
        for k in self.busy:
            self.busy[k] += other.busy[k]
        for k in self.token_stall:
            self.token_stall[k] += other.token_stall[k]
        for k in self.instructions:
            self.instructions[k] += other.instructions[k]
        self.issue_stall += other.issue_stall
        self.cp_starved += other.cp_starved
        self.sync_wait += other.sync_wait
        self.active += other.active
        self.tasks += other.tasks
        self.macs += other.macs
        self.macs_int16 += other.macs_int16
        self.mac_slots += other.mac_slots
        for k in self.dma_demand:
            self.dma_demand[k] += other.dma_demand[k]
        for k in self.traffic:
            self.traffic[k] += other.traffic[k]
        self.dram_bus_bytes += other.dram_bus_bytes


def snapshot(counters) -> dict[str, float]:
    """The counters a fused kernel's steps are told apart by, summed over `counters` (CoreCounters),
    as one flat dict. Taken at a job's barrier releases, the difference of two is what the job's
    cores did in between; a plain kernel's layer is its cores' sum."""
    out = dict.fromkeys(SNAPSHOT_KEYS, 0.0)
    for ctr in counters:
        out["macs"] += ctr.macs
        out["mac_slots"] += ctr.mac_slots
        out["cp_starved"] += ctr.cp_starved
        out["sync_wait"] += ctr.sync_wait
        out["dram_bus_bytes"] += ctr.dram_bus_bytes
        for key, u in _BUSY_KEYS:       # the keys made once, not per core and snapshot
            out[key] += ctr.busy[u]
        for key, q in _DEMAND_KEYS:
            out[key] += ctr.dma_demand[q]
        traffic = ctr.traffic
        for k in TRAFFIC_KEYS:
            out[k] += traffic[k]
    return out


DMA_QUEUES = ("ld", "st", "mv")
_BUSY_KEYS = tuple((f"busy.{u}", u) for u in UNITS)
_DEMAND_KEYS = tuple((f"dma_demand.{q}", q) for q in DMA_QUEUES)
SNAPSHOT_KEYS = (("macs", "mac_slots", "cp_starved", "sync_wait", "dram_bus_bytes")
                 + tuple(f"busy.{u}" for u in UNITS) + tuple(f"dma_demand.{q}" for q in DMA_QUEUES)
                 + TRAFFIC_KEYS)


@dataclass
class KernelRecord:
    name: str
    task_type: str
    task_dim: int
    start: float
    end: float = 0.0
    cores: dict[int, CoreCounters] = field(default_factory=dict)
    bytes_read: dict = field(default_factory=lambda: _zero(LEVELS))     # payload bytes by level
    bytes_written: dict = field(default_factory=lambda: _zero(LEVELS))
    dram_bus_bytes: float = 0.0    # bytes on the DRAM bus (granularity and read-modify-write included)
    meta: dict = field(default_factory=dict)
    # UNIONn kernels: per job, its start, end and the times its first cluster's barrier and its
    # sync.all barrier released (a fused segment's layer boundaries), with the job's cores' counters
    # (`snapshot`) at each of those times: "start_counts", "sync_counts", "all_sync_counts", "end_counts"
    jobs: list = field(default_factory=list)

    @property
    def cycles(self) -> float:
        return self.end - self.start
