"""Per-layer results of a run, keyed by layer name, including the layers inside fused kernels.

A plain kernel is one layer (its metadata names it). A fused segment (compiler/fusion.py) runs many
layers in each of its jobs; its SegmentMeta says at which barrier release each step of a job ends,
and the engine snapshots the job's cores' counters at every such release (cores/stats.py:snapshot),
so a step's counters are the difference of two snapshots, and a layer's are the sum over its steps
(a sliced layer has several per image group, a job several image groups) and over the jobs.

A fused layer's cycles are its share of the segment's job time times the segment kernel's cycles,
so the layers of a run add up to its cycles whatever the core count; its start and end are the
first and last moment any job was in it (jobs run side by side and image groups interleave layers,
so inside a segment these spans overlap). Layer names are the compiler's graph node names, which do
not depend on the core count: rows of runs on different core counts match by name.
"""
from __future__ import annotations

from typing import Any

from mlusim.cores.stats import DMA_QUEUES, OPERANDS, SHARED_LEVELS, TRAFFIC_KEYS, snapshot
from mlusim.energy import layer_fields, split
from mlusim.segment_meta import DEQUANTIZE_OUTPUT, SegmentMeta

LEVEL_LABEL = {"gdram": "dram", "sram": "sram"}
LATENCY_BELOW = 0.5   # as report.LATENCY_BELOW: busiest resource under half the time -> "latency"
# the per-operand figures every layer row carries, in bytes (reads and writes) and GB/s
TRAFFIC_FIELDS = [f"{LEVEL_LABEL[lv]}_{op}_{rw}" for lv in SHARED_LEVELS for op in OPERANDS for rw in ("read", "write")]
BANDWIDTH_FIELDS = [f"{LEVEL_LABEL[lv]}_{op}_gbps" for lv in SHARED_LEVELS for op in OPERANDS]


def _add(acc: dict, d: dict) -> None:
    for k, v in d.items():
        acc[k] = acc.get(k, 0.0) + v


def _diff(b: dict, a: dict) -> dict:
    return {k: b[k] - a[k] for k in b}


def _marks(job: dict, seg: SegmentMeta) -> list[tuple[float, dict]] | None:
    """(time, counters) at the job's start and at the end of each of its steps; None if the job
    did not run to completion (an interrupted run) or was recorded without counters."""
    if "start_counts" not in job or job.get("end") is None or "end_counts" not in job:
        return None
    out = [(job["start"], job["start_counts"])]
    for e in seg.ends:
        if e.barrier == "end":
            out.append((job["end"], job["end_counts"]))
            continue
        times, counts = (job["syncs"], job["sync_counts"]) if e.barrier == "cluster" else \
            (job["all_syncs"], job["all_sync_counts"])
        if e.index >= len(times) or e.index >= len(counts):
            return None
        out.append((times[e.index], counts[e.index]))
    return out


def step_names(seg: SegmentMeta, kernel: str) -> list[str]:
    """The layer each step of a job belongs to. The output's dequantization is the layer the
    layer-at-a-time program runs as its own kernel, `<output>.dequantize` (compiler/lower.py), so it
    keeps that name; staging inputs and keeping the output have no such twin and are named after
    the segment kernel."""
    out, last = [], kernel
    for e in seg.ends:
        if e.name == DEQUANTIZE_OUTPUT:
            out.append(f"{last}.dequantize")
        elif e.name.startswith("("):
            out.append(f"{kernel} {e.name}")
        else:
            out.append(e.name)
            last = e.name
    return out


def segment_steps(rec) -> dict[str, dict] | None:
    """A fused kernel's layers: per name, time summed over its steps in every job, first start,
    last end, and the counters of those steps. None for other kernels, or if no job completed."""
    seg = SegmentMeta.from_dict(rec.meta.get("segment")) if isinstance(rec.meta, dict) else None
    if seg is None or not seg.ends or not rec.jobs:
        return None
    names = step_names(seg, rec.name)
    steps: dict[str, dict] = {}
    for job in rec.jobs:
        marks = _marks(job, seg)
        if marks is None:
            continue
        for name, (t0, c0), (t1, c1) in zip(names, marks, marks[1:]):
            s = steps.setdefault(name, {"time": 0.0, "start": t0, "end": t1, "counts": {}})
            s["time"] += t1 - t0
            s["start"], s["end"] = min(s["start"], t0), max(s["end"], t1)
            _add(s["counts"], _diff(c1, c0))
    return steps or None


def job_steps(rec) -> list[tuple[dict, list[tuple[str, float, float]]]]:
    """A fused kernel's completed jobs, each with its steps in order as (layer name, start, end):
    the pieces segment_steps adds up, for a timeline. Empty for other kernels."""
    seg = SegmentMeta.from_dict(rec.meta.get("segment")) if isinstance(rec.meta, dict) else None
    if seg is None or not seg.ends or not rec.jobs:
        return []
    names = step_names(seg, rec.name)
    out = []
    for job in rec.jobs:
        marks = _marks(job, seg)
        if marks is not None:
            out.append((job, [(n, t0, t1) for n, (t0, _), (t1, _) in zip(names, marks, marks[1:])]))
    return out


def _figures(counts: dict, cycles: float, cores: int, ran: int, cfg) -> dict[str, Any]:
    """Utilisation, stall and traffic figures from a layer's counters over `cores` for `cycles`;
    `ran`: how many of those cores ran tasks of the kernel (the stall is a mean over them)."""
    peak = cfg.core.mac_int8_per_cycle
    secs = cfg.cycles_to_seconds(cycles)

    def div(a, b):
        return a / b if b else 0.0
    out: dict[str, Any] = {
        "macs": int(round(counts["macs"])), "mac_slots": counts["mac_slots"], "mac_busy": counts["busy.mac"],
        "mac_utilization": div(counts["macs"], cycles * peak * cores),
        "mapping_efficiency": div(counts["macs"], counts["mac_slots"] * peak),
        "compute_utilization": div(counts["macs"], counts["busy.mac"] * peak),
        "stall_cycles": div(counts["cp_starved"], ran),
        "dram_bytes": counts["dram_bus_bytes"], "dram_gbps": div(counts["dram_bus_bytes"], secs) / 1e9,
    }
    for key, name in zip(TRAFFIC_KEYS, TRAFFIC_FIELDS):
        out[name] = counts[key]
    for lv in SHARED_LEVELS:
        for op in OPERANDS:
            moved = counts[f"{lv}.{op}.read"] + counts[f"{lv}.{op}.write"]
            out[f"{LEVEL_LABEL[lv]}_{op}_gbps"] = div(moved, secs) / 1e9
    sram = sum(counts[f"sram.{op}.{rw}"] for op in OPERANDS for rw in ("read", "write"))
    out["sram_gbps"] = div(sram, secs) / 1e9
    return out


def _mean_bound(counts: dict, cycles: float, cores: int, clusters: int, cfg) -> tuple[str, float]:
    """A fused layer's bound: as report.kernel_bound, with each unit's work the mean over the
    kernel's cores (per-core maxima are not kept per step)."""
    sram = sum(counts[f"sram.{op}.{rw}"] for op in OPERANDS for rw in ("read", "write"))
    cand = {"mac": counts["busy.mac"] / cores, "vector": counts["busy.vec"] / cores,
            "dma": max(counts[f"dma_demand.{q}"] for q in DMA_QUEUES) / cores,
            "dram": counts["dram_bus_bytes"] / cfg.dram_bytes_per_cycle,
            "sram": sram / (cfg.cluster.sram_bandwidth_bytes_per_cycle * max(1, clusters)),
            "sync": counts["sync_wait"] / cores}
    best = max(cand, key=lambda k: cand[k])
    return best, cand[best] / cycles if cycles else 0.0


def kernel_layers(rec, kdict: dict, cfg) -> list[dict]:
    """The layer rows of one kernel record (`kdict`: its report.summarize entry, for the bound).
    Every figure is `_figures` of the layer's counters over its cycles and the kernel's cores, so
    a fused layer's figures, summed or weighted by cycles, give its kernel's."""
    cores = len(rec.cores) or 1
    ran = sum(1 for c in rec.cores.values() if c.tasks) or 1
    op = str(rec.meta.get("op", "")) if isinstance(rec.meta, dict) else ""
    steps = segment_steps(rec)
    if steps is None:
        name = str(rec.meta.get("layer", rec.name)) if isinstance(rec.meta, dict) else rec.name
        return [{"layer": name, "op": op, "kernel": rec.name, "fused": False, "start": rec.start, "end": rec.end,
                 "cycles": rec.cycles, "cores_used": cores, "cores_ran": ran,
                 **_figures(snapshot(rec.cores.values()), rec.cycles, cores, ran, cfg),
                 "bound": kdict["bound"], "bound_resource": kdict["bound_resource"],
                 "bound_share": kdict["bound_share"],
                 **layer_fields(kdict["energy_breakdown_j"], cfg.cycles_to_seconds(rec.cycles))}]
    job_time = sum(s["time"] for s in steps.values())
    clusters = len({cid // cfg.chip.cores_per_cluster for cid in rec.cores}) or 1
    out = []
    parts = split(kdict["energy_breakdown_j"], [s["counts"] for s in steps.values()],
                  [s["time"] for s in steps.values()])
    for (name, s), energy in zip(steps.items(), parts):
        cycles = rec.cycles * s["time"] / job_time if job_time else 0.0
        res_bound, share = _mean_bound(s["counts"], cycles, cores, clusters, cfg)
        out.append({"layer": name, "op": "", "kernel": rec.name, "fused": True, "start": s["start"], "end": s["end"],
                    "cycles": cycles, "cores_used": cores, "cores_ran": ran, **_figures(s["counts"], cycles, cores, ran, cfg),
                    "bound": res_bound if share >= LATENCY_BELOW else "latency", "bound_resource": res_bound,
                    "bound_share": share, **layer_fields(energy, cfg.cycles_to_seconds(cycles))})
    return out


def run_layers(res, kernels: list[dict]) -> list[dict]:
    """Every layer of run `res` in execution order (`kernels`: report.summarize's kernel entries).
    A name met in several kernels (a layer split over kernels) is one row: cycles, counters and
    bytes summed, start the first, end the last."""
    rows: dict[str, dict] = {}
    for rec, kd in zip(res.kernels, kernels):
        for r in kernel_layers(rec, kd, res.config):
            prev = rows.get(r["layer"])
            rows[r["layer"]] = r if prev is None else _merge(prev, r, res.config)
    out = list(rows.values())
    for i, r in enumerate(out):
        r["layer_id"] = i
    return out


SUMMED = ("cycles", "macs", "mac_slots", "mac_busy", "stall_cycles", "dram_bytes", *TRAFFIC_FIELDS)
WIDEST = ("cores_used", "cores_ran")


def _merge(a: dict, b: dict, cfg) -> dict:
    out = dict(a)
    for k in SUMMED:
        out[k] = a[k] + b[k]
    out["start"], out["end"] = min(a["start"], b["start"]), max(a["end"], b["end"])
    out["kernel"] = f"{a['kernel']}+{b['kernel']}"
    for k in WIDEST:
        out[k] = max(a[k], b[k])
    peak = cfg.core.mac_int8_per_cycle
    secs = cfg.cycles_to_seconds(out["cycles"])

    def div(x, y):
        return x / y if y else 0.0
    out["mac_utilization"] = div(out["macs"], out["cycles"] * peak * out["cores_used"])
    out["mapping_efficiency"] = div(out["macs"], out["mac_slots"] * peak)
    out["compute_utilization"] = div(out["macs"], out["mac_busy"] * peak)
    out["dram_gbps"] = div(out["dram_bytes"], secs) / 1e9
    for lv in ("dram", "sram"):
        for op in OPERANDS:
            out[f"{lv}_{op}_gbps"] = div(out[f"{lv}_{op}_read"] + out[f"{lv}_{op}_write"], secs) / 1e9
    out["sram_gbps"] = div(sum(out[f"sram_{op}_{rw}"] for op in OPERANDS for rw in ("read", "write")), secs) / 1e9
    if b["cycles"] > a["cycles"]:
        out.update(bound=b["bound"], bound_resource=b["bound_resource"], bound_share=b["bound_share"])
    out.update(layer_fields({k: v + b["energy_breakdown_j"][k] for k, v in a["energy_breakdown_j"].items()}, secs))
    return out
