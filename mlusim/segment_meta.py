"""What a fused segment kernel records for the report: its layers, and the barrier each step ends at.

A fused segment (compiler/fusion.py) is one kernel whose jobs run many layers back to back; the
engine only sees instructions. So the compiler writes down, as it emits a job, where each step
(a layer, a slice of one, the input staging, the output store) ends: at the k-th release of the
job's first cluster's `sync.cluster` barrier, or of the job's `sync.all` barrier, or at the job's
end. The report then times each step from the releases the engine recorded (KernelRecord.jobs),
with no guessing from barrier counts. It is kernel metadata, so it travels in the .mlu manifest.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields

BARRIERS = ("cluster", "all", "end")
STAGE_INPUTS, STORE_OUTPUT, DEQUANTIZE_OUTPUT = "(stage inputs)", "(store output)", "(dequantize output)"


@dataclass(frozen=True)
class StepEnd:
    name: str            # the layer (a sliced layer: once per slice), or one of the names above
    barrier: str         # "cluster": sync.cluster of the job's first cluster; "all": sync.all; "end": the job's end
    index: int = -1      # which release of that barrier (0-based); -1 for "end"


@dataclass
class SegmentMeta:
    """The `segment` entry of a fused kernel's metadata."""
    layers: list[str]                 # "layer: tiling" as job 0's last image group emitted them
    layer_names: list[str]            # the steps of one image group (a sliced layer once per slice)
    group: int                        # images per group
    jobs: int
    groups_per_job: int
    sram_peak: int
    staged: bool                      # inputs copied into SRAM first
    wide: int                         # clusters per job splitting channels (0: one)
    shared_by: int                    # jobs sharing weights through SRAM (1: none)
    input_prefetch: bool              # the next group's input streams in during the last layers
    wram_resident: list[str] = field(default_factory=list)
    wram_resident_bytes: int = 0
    prefetched: list[str] = field(default_factory=list)
    staged_weights: list[str] = field(default_factory=list)
    stored: list[str] = field(default_factory=list)     # a wide segment's values stored to GDRAM
    ends: list[StepEnd] = field(default_factory=list)   # every step of every image group of a job, in order

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d) -> "SegmentMeta | None":
        """The metadata read back (from a .mlu manifest, say), or None if it is not well formed."""
        if not isinstance(d, dict) or any(f.name not in d for f in fields(cls) if f.name != "ends"):
            return None
        try:
            ends = [StepEnd(str(e["name"]), e["barrier"], int(e["index"])) for e in d.get("ends", [])]
        except (TypeError, KeyError, ValueError):
            return None
        if any(e.barrier not in BARRIERS or (e.barrier != "end" and e.index < 0) for e in ends):
            return None
        return cls(**{f.name: d[f.name] for f in fields(cls) if f.name != "ends"}, ends=ends)
