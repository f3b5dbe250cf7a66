"""Turn a RunResult's raw counters into figures with units, as plain data and as text tables.

Every figure is computed here from counters the engine kept, in one place, and the legend printed
with the report says what each one means; tests check this arithmetic against the counters.
"""
from __future__ import annotations

from typing import Any

from mlusim.cores.stats import LEVELS, UNITS
from mlusim.layers import LATENCY_BELOW, run_layers
from mlusim.segment_meta import SegmentMeta
from mlusim.sim import RunResult
from mlusim.tables import bound_text as _bound_text
from mlusim.tables import format_bytes as _bytes
from mlusim.tables import pct as _pct
from mlusim.tables import render_layers, render_scaling, render_sweep  # noqa: F401  (re-exported)

LEGEND = """\
cycles        simulated clock cycles of the config; time = cycles / clock
MAC util      useful int8/int16 multiply-accumulates / (cycles x int8 MACs per cycle x cores used)
DRAM GB/s     bytes on the DRAM bus (granule rounding and read-modify-write included) / time
bound         the resource with the most work in the kernel (share = that work / kernel cycles):
              mac (MAC array busy), vector (vector unit busy), dma (a core's DMA queue at its own
              channel rate, start-up and latency included, no contention), dram (bus bytes / DRAM
              bandwidth), sram (SRAM bytes / cluster SRAM bandwidth x clusters used), sync (barriers);
              latency when even the busiest is under half the cycles: dependency chains, start-up
              and launch costs dominate (the busiest resource is shown in brackets)
ld/mac/vec/st/mv  share of the core's cycles its load DMA, MAC array, vector unit, store DMA, move
              DMA (SRAM -> NRAM/WRAM) were busy
cp wait       share of cycles the compute queue's head waited for a dependency token while the MAC
              array and the vector unit were both idle (starved; waits behind running work excluded)
issue stall   share of cycles the issue stage waited for a full queue; sync: waiting at barriers
bytes moved   DMA payload bytes read from / written to each memory level"""


def kernel_bound(rec, cfg) -> tuple[str, dict[str, float]]:
    """The resource with the most work in the kernel, and every candidate's work in cycles.

    Each candidate is a lower bound on the kernel's time set by one resource alone: the busiest
    core's MAC array, vector unit or DMA queue (DMA at its channel's own rate, so that time lost
    to sharing DRAM shows up under dram, not dma), the DRAM bus at full bandwidth, the clusters'
    SRAM ports at full bandwidth, and the longest barrier wait. The largest is what to speed up."""
    cores = rec.cores.values()
    clusters = {cid // cfg.chip.cores_per_cluster for cid in rec.cores} or {0}
    sram_bytes = rec.bytes_read["sram"] + rec.bytes_written["sram"]
    cand = {
        "mac": max((c.busy["mac"] for c in cores), default=0.0),
        "vector": max((c.busy["vec"] for c in cores), default=0.0),
        "dma": max((max(c.dma_demand.values()) for c in cores), default=0.0),
        "dram": rec.dram_bus_bytes / cfg.dram_bytes_per_cycle,
        "sram": sram_bytes / (cfg.cluster.sram_bandwidth_bytes_per_cycle * len(clusters)),
        "sync": max((c.sync_wait for c in cores), default=0.0),
    }
    return max(cand, key=lambda k: cand[k]), cand


def program_bound(kernels: list[dict], cycles: float) -> tuple[str, float]:
    """kernel_bound for a whole run: the resource whose work summed over kernels is largest, and
    that work as a share of the run's cycles (each kernel's work is a lower bound on its time, so
    the sum is a lower bound on the run's)."""
    work: dict[str, float] = {}
    for k in kernels:
        for name, w in k["busy_candidates"].items():
            work[name] = work.get(name, 0.0) + w
    if not work or not cycles:
        return "", 0.0
    best = max(work, key=lambda b: work[b])
    return best, work[best] / cycles


def segment_layers(rec) -> list[dict]:
    """How long a job of a fused segment spends in each layer: its metadata (mlusim.segment_meta)
    says at which barrier release each step of a job ends; a layer's cycles here are the mean over
    jobs of its steps' time (the run's per-layer rows, mlusim.layers, scale these shares to the
    kernel's cycles). Empty for other kernels, and for jobs an interrupted run left incomplete."""
    seg = SegmentMeta.from_dict(rec.meta.get("segment")) if isinstance(rec.meta, dict) else None
    if seg is None or not seg.ends or not rec.jobs:
        return []
    total = {e.name: 0.0 for e in seg.ends}
    done = 0
    for job in rec.jobs:
        releases = {"cluster": job["syncs"], "all": job["all_syncs"]}
        marks = [job["start"]]
        for e in seg.ends:
            marks.append(job["end"] if e.barrier == "end" else
                         releases[e.barrier][e.index] if e.index < len(releases[e.barrier]) else None)
        if None in marks:
            continue
        done += 1
        for e, a, b in zip(seg.ends, marks, marks[1:]):
            total[e.name] += b - a
    if not done:
        return []
    job_cycles = sum(total.values()) / done
    return [{"name": n, "cycles": c / done, "share_of_job": c / done / job_cycles if job_cycles else 0.0}
            for n, c in total.items()]


def summarize(res: RunResult) -> dict[str, Any]:
    """The whole report as plain data (what --json writes)."""
    cfg = res.config
    peak = cfg.core.mac_int8_per_cycle
    kernels = []
    for k in res.kernels:
        ncores = len(k.cores)
        macs = sum(c.macs for c in k.cores.values())
        secs = cfg.cycles_to_seconds(k.cycles)
        res_bound, cand = kernel_bound(k, cfg)
        share = cand[res_bound] / k.cycles if k.cycles else 0.0
        bound = res_bound if share >= LATENCY_BELOW else "latency"
        kernels.append({
            "name": k.name, "task_type": k.task_type, "tasks": k.task_dim, "cycles": k.cycles,
            "start": k.start, "macs": macs, "cores_used": ncores,
            "mac_utilization": macs / (k.cycles * peak * ncores) if k.cycles else 0.0,
            "mac_slots": sum(c.mac_slots for c in k.cores.values()),
            "mac_busy": sum(c.busy["mac"] for c in k.cores.values()),
            "dram_bus_bytes": k.dram_bus_bytes,
            "dram_gbps": k.dram_bus_bytes / secs / 1e9 if secs else 0.0,
            "bytes_read": dict(k.bytes_read), "bytes_written": dict(k.bytes_written),
            "bound": bound, "bound_resource": res_bound, "bound_share": share,
            "busy_candidates": cand, "meta": k.meta, "layers": segment_layers(k),
        })
    totals = res.totals()
    cycles = res.cycles
    cores = []
    for cid, c in sorted(totals.items()):
        cores.append({
            "core": cid, "tasks": c.tasks, "active": c.active,
            "busy": dict(c.busy), "token_stall": dict(c.token_stall), "cp_starved": c.cp_starved,
            "issue_stall": c.issue_stall,
            "sync_wait": c.sync_wait, "instructions": dict(c.instructions), "macs": c.macs,
            "share": {**{u: _pct(c.busy[u], cycles) for u in UNITS},
                      "cp_wait": _pct(c.cp_starved, cycles),
                      "issue_stall": _pct(c.issue_stall, cycles), "sync": _pct(c.sync_wait, cycles)},
        })
    total_macs = sum(c.macs for c in totals.values())
    secs = res.seconds
    read = {lv: sum(k.bytes_read[lv] for k in res.kernels) for lv in LEVELS}
    written = {lv: sum(k.bytes_written[lv] for k in res.kernels) for lv in LEVELS}
    res_bound, bound_share = program_bound(kernels, res.cycles)
    bound = res_bound if bound_share >= LATENCY_BELOW or not res_bound else "latency"
    return {
        "kind": "run",
        "config": cfg.name, "clock_mhz": cfg.chip.clock_mhz, "cores": res.cores, "cycles": cycles,
        "mac_per_cycle_per_core": peak, "dram_bandwidth_gbps": cfg.dram.bandwidth_gbps,
        "peak_gops": 2 * peak * res.cores * cfg.clock_hz / 1e9,
        "seconds": secs, "latency_ms": secs * 1e3, "wall_seconds": res.wall_seconds,
        "instructions": res.instructions, "timing_only": res.timing_only, "interrupted": res.interrupted,
        "macs": total_macs,
        "mac_utilization": total_macs / (cycles * peak * res.cores) if cycles else 0.0,
        "mac_slots": sum(c.mac_slots for c in totals.values()),
        "mac_busy": sum(c.busy["mac"] for c in totals.values()),
        "bound": bound, "bound_resource": res_bound, "bound_share": bound_share,
        "dram_bus_bytes": res.dram_bytes, "dram_gbps": res.dram_bytes / secs / 1e9 if secs else 0.0,
        "dram_busy_share": _pct(res.dram_busy, cycles),
        "bytes_read": read, "bytes_written": written,
        "inputs_generated": res.inputs_generated, "kernels": kernels, "per_core": cores,
        "layers": run_layers(res, kernels),
        "program": res.program_meta, "schedule": res.program_meta.get("schedule", ""),
    }


def roofline_bounds(s: dict) -> dict | None:
    """Lower bounds in cycles for a compiled model's run, from the figures its compiler recorded:
    all MACs at the peak of the cores used; the model's minimum DRAM bytes (weights, input, output)
    at the DRAM bandwidth; and, as a floor for code that runs one layer at a time, every layer's
    inputs, weights and output moved once. None for programs without those figures."""
    meta = s.get("program") or {}
    macs, mn = meta.get("macs"), meta.get("min_traffic_bytes")
    if not macs or not mn:
        return None
    bytes_per_cycle = s["dram_bandwidth_gbps"] * 1e9 / (s["clock_mhz"] * 1e6)
    out = {"compute": macs / (s["mac_per_cycle_per_core"] * s["cores"]), "min_traffic": mn / bytes_per_cycle}
    out["roofline"] = max(out["compute"], out["min_traffic"])
    if meta.get("layer_traffic_bytes"):
        out["layer_bytes"] = meta["layer_traffic_bytes"]
        out["layer_traffic"] = meta["layer_traffic_bytes"] / bytes_per_cycle
    return out


def program_notes(s: dict) -> list[str]:
    """What the headline needs said about the program: the schedule a compiled model ran with, and
    a program compiled for another core count than it runs on (its tiling is not this run's)."""
    meta = s.get("program") or {}
    out = []
    if meta.get("model") and s.get("schedule"):
        out.append(f"schedule: {s['schedule']}")
    made_for = meta.get("compiled_for_cores")
    if isinstance(made_for, int) and made_for != s["cores"]:
        out.append(f"note: the program was compiled for {made_for} cores and runs on {s['cores']}: its tiling and "
                   f"split over cores are for {made_for} (compile with --cores {s['cores']}, or run the model by "
                   f"name, for the {s['cores']}-core program)")
    return out


def render(res: RunResult, summary: dict | None = None, max_kernels: int = 60) -> str:
    """The human report: headline, kernels, cores, memory, legend."""
    import io

    from rich import box
    from rich.console import Console
    from rich.table import Table

    s = summary or summarize(res)
    con = Console(file=io.StringIO(), record=True, width=120, force_terminal=False, color_system=None,
                  markup=False)     # names from files print as they are, never as [markup]
    head = (f"{s['config']} @ {s['clock_mhz']:g} MHz, {s['cores']} core(s): {s['cycles']:,.0f} cycles = "
            f"{s['latency_ms']:.4f} ms simulated; {s['instructions']:,} instructions in "
            f"{s['wall_seconds']:.2f} s wall" + (" (timing only)" if s["timing_only"] else ""))
    con.print(head)
    for line in program_notes(s):
        con.print(line)
    if s["interrupted"]:
        con.print("INTERRUPTED: partial report up to the cycle shown")
    if s["inputs_generated"]:
        con.print(f"inputs not given, generated (seed 0): {', '.join(s['inputs_generated'])}")
    con.print(f"MAC utilization {100 * s['mac_utilization']:.1f}% | DRAM {_bytes(s['dram_bus_bytes'])} on the bus, "
              f"{s['dram_gbps']:.2f} GB/s, busy {s['dram_busy_share']:.1f}% of the time")
    bounds = roofline_bounds(s)
    if bounds:
        con.print(f"roofline {bounds['roofline']:,.0f} cycles = max(compute {bounds['compute']:,.0f}, minimum DRAM "
                  f"traffic {bounds['min_traffic']:,.0f}); this run takes {s['cycles'] / bounds['roofline']:.2f}x it")
        if bounds.get("layer_bytes"):
            con.print(f"layer-at-a-time floor (every layer's inputs, weights, output moved once) "
                      f"{_bytes(bounds['layer_bytes'])} = {bounds['layer_traffic']:,.0f} cycles; "
                      f"moved {s['dram_bus_bytes'] / bounds['layer_bytes']:.2f}x")

    kt = Table(box=box.SIMPLE_HEAD, title="kernels", title_justify="left")
    for col in ("kernel", "type x tasks", "cycles", "share", "MAC util", "DRAM", "DRAM GB/s", "bound"):
        kt.add_column(col, justify="left" if col in ("kernel", "bound", "type x tasks") else "right")
    ks = s["kernels"]
    fused: dict[str, list[dict]] = {}
    for layer in s.get("layers", []):
        if layer["fused"]:
            fused.setdefault(layer["kernel"], []).append(layer)
    shown = ks if len(ks) <= max_kernels else sorted(ks, key=lambda k: -k["cycles"])[:max_kernels]
    for k in shown:
        kt.add_row(k["name"], f"{k['task_type']} x {k['tasks']}", f"{k['cycles']:,.0f}",
                   f"{_pct(k['cycles'], s['cycles']):.1f}%", f"{100 * k['mac_utilization']:.1f}%",
                   _bytes(k["dram_bus_bytes"]), f"{k['dram_gbps']:.2f}",
                   _bound_text(k))
        for layer in fused.get(k["name"], []):     # a fused segment: its layers (mlusim.layers)
            kt.add_row(f"  {layer['layer']}", "", f"{layer['cycles']:,.0f}", f"{_pct(layer['cycles'], s['cycles']):.1f}%",
                       f"{100 * layer['mac_utilization']:.1f}%", _bytes(layer["dram_bytes"]),
                       f"{layer['dram_gbps']:.2f}", _bound_text(layer))
    if any(k["name"] in fused for k in shown):
        kt.caption = ("indented rows: the layers of a fused segment, each its share of the segment's job time "
                      "times the segment's cycles (--per-layer: every layer's figures)")
    if len(ks) > max_kernels:
        kt.caption = f"the {max_kernels} longest of {len(ks)} kernels" + (f"; {kt.caption}" if kt.caption else "")
    con.print(kt)

    ct = Table(box=box.SIMPLE_HEAD, title="cores (share of total cycles)", title_justify="left")
    for col in ("core", "tasks", "ld", "mac", "vec", "st", "mv", "cp wait", "issue stall", "sync"):
        ct.add_column(col, justify="right")
    for c in s["per_core"]:
        sh = c["share"]
        ct.add_row(str(c["core"]), str(c["tasks"]), *(f"{sh[u]:.1f}%" for u in UNITS),
                   f"{sh['cp_wait']:.1f}%", f"{sh['issue_stall']:.1f}%", f"{sh['sync']:.1f}%")
    con.print(ct)

    mt = Table(box=box.SIMPLE_HEAD, title="bytes moved by DMA", title_justify="left")
    for col in ("level", "read", "written"):
        mt.add_column(col, justify="right")
    for lv in LEVELS:
        mt.add_row(lv, _bytes(s["bytes_read"][lv]), _bytes(s["bytes_written"][lv]))
    con.print(mt)
    con.print(LEGEND)
    return con.export_text()
