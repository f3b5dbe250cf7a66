"""Turn a RunResult's raw counters into figures with units, as plain data and as text tables.

Every figure is computed here from counters the engine kept, in one place, and the legend printed
with the report says what each one means; tests check this arithmetic against the counters.
"""
from __future__ import annotations

from typing import Any

from mlusim.cores.stats import LEVELS, UNITS
from mlusim.sim import RunResult

LEGEND = """\
cycles        simulated clock cycles of the config; time = cycles / clock
MAC util      useful int8/int16 multiply-accumulates / (cycles x int8 MACs per cycle x cores used)
DRAM GB/s     bytes on the DRAM bus (granule rounding and read-modify-write included) / time
bound         the resource busiest during the kernel: mac (MAC array), vector, dma (a core's DMA
              queue incl. start-up and latency), dram (bus bytes / DRAM bandwidth), sync (barriers)
ld/mac/vec/st share of the core's cycles its load DMA, MAC array, vector unit, store DMA were busy
cp wait       share of cycles the compute queue's head waited for a dependency token (starved)
issue stall   share of cycles the issue stage waited for a full queue; sync: waiting at barriers
bytes moved   DMA payload bytes read from / written to each memory level"""


def _pct(x: float, total: float) -> float:
    return 100.0 * x / total if total > 0 else 0.0


def kernel_bound(rec, cfg) -> tuple[str, dict[str, float]]:
    """The resource with the most busy cycles in the kernel, and all candidates' busy cycles."""
    cores = rec.cores.values()
    cand = {
        "mac": max((c.busy["mac"] for c in cores), default=0.0),
        "vector": max((c.busy["vec"] for c in cores), default=0.0),
        "dma": max((max(c.busy["ld"], c.busy["st"]) for c in cores), default=0.0),
        "dram": rec.dram_bus_bytes / cfg.dram_bytes_per_cycle,
        "sync": max((c.sync_wait for c in cores), default=0.0),
    }
    return max(cand, key=lambda k: cand[k]), cand


def summarize(res: RunResult) -> dict[str, Any]:
    """The whole report as plain data (what --json writes)."""
    cfg = res.config
    peak = cfg.core.mac_int8_per_cycle
    kernels = []
    for k in res.kernels:
        ncores = len(k.cores)
        macs = sum(c.macs for c in k.cores.values())
        secs = cfg.cycles_to_seconds(k.cycles)
        bound, cand = kernel_bound(k, cfg)
        kernels.append({
            "name": k.name, "task_type": k.task_type, "tasks": k.task_dim, "cycles": k.cycles,
            "start": k.start, "macs": macs,
            "mac_utilization": macs / (k.cycles * peak * ncores) if k.cycles else 0.0,
            "dram_bus_bytes": k.dram_bus_bytes,
            "dram_gbps": k.dram_bus_bytes / secs / 1e9 if secs else 0.0,
            "bytes_read": dict(k.bytes_read), "bytes_written": dict(k.bytes_written),
            "bound": bound, "busy_candidates": cand, "meta": k.meta,
        })
    totals = res.totals()
    cycles = res.cycles
    cores = []
    for cid, c in sorted(totals.items()):
        cores.append({
            "core": cid, "tasks": c.tasks, "active": c.active,
            "busy": dict(c.busy), "token_stall": dict(c.token_stall), "issue_stall": c.issue_stall,
            "sync_wait": c.sync_wait, "instructions": dict(c.instructions), "macs": c.macs,
            "share": {**{u: _pct(c.busy[u], cycles) for u in UNITS},
                      "cp_wait": _pct(c.token_stall["cp"], cycles),
                      "issue_stall": _pct(c.issue_stall, cycles), "sync": _pct(c.sync_wait, cycles)},
        })
    total_macs = sum(c.macs for c in totals.values())
    secs = res.seconds
    read = {lv: sum(k.bytes_read[lv] for k in res.kernels) for lv in LEVELS}
    written = {lv: sum(k.bytes_written[lv] for k in res.kernels) for lv in LEVELS}
    return {
        "config": cfg.name, "clock_mhz": cfg.chip.clock_mhz, "cores": res.cores, "cycles": cycles,
        "seconds": secs, "latency_ms": secs * 1e3, "wall_seconds": res.wall_seconds,
        "instructions": res.instructions, "timing_only": res.timing_only, "interrupted": res.interrupted,
        "macs": total_macs,
        "mac_utilization": total_macs / (cycles * peak * res.cores) if cycles else 0.0,
        "dram_bus_bytes": res.dram_bytes, "dram_gbps": res.dram_bytes / secs / 1e9 if secs else 0.0,
        "dram_busy_share": _pct(res.dram_busy, cycles),
        "bytes_read": read, "bytes_written": written,
        "inputs_generated": res.inputs_generated, "kernels": kernels, "per_core": cores,
        "program": res.program_meta,
    }


def _bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def render(res: RunResult, summary: dict | None = None, max_kernels: int = 60) -> str:
    """The human report: headline, kernels, cores, memory, legend."""
    import io

    from rich import box
    from rich.console import Console
    from rich.table import Table

    s = summary or summarize(res)
    con = Console(file=io.StringIO(), record=True, width=120, force_terminal=False, color_system=None)
    head = (f"{s['config']} @ {s['clock_mhz']:g} MHz, {s['cores']} core(s): {s['cycles']:,.0f} cycles = "
            f"{s['latency_ms']:.4f} ms simulated; {s['instructions']:,} instructions in "
            f"{s['wall_seconds']:.2f} s wall" + (" (timing only)" if s["timing_only"] else ""))
    con.print(head)
    if s["interrupted"]:
        con.print("INTERRUPTED: partial report up to the cycle shown")
    if s["inputs_generated"]:
        con.print(f"inputs not given, generated (seed 0): {', '.join(s['inputs_generated'])}")
    con.print(f"MAC utilization {100 * s['mac_utilization']:.1f}% | DRAM {_bytes(s['dram_bus_bytes'])} on the bus, "
              f"{s['dram_gbps']:.2f} GB/s, busy {s['dram_busy_share']:.1f}% of the time")

    kt = Table(box=box.SIMPLE_HEAD, title="kernels", title_justify="left")
    for col in ("kernel", "type x tasks", "cycles", "share", "MAC util", "DRAM", "DRAM GB/s", "bound"):
        kt.add_column(col, justify="left" if col in ("kernel", "bound", "type x tasks") else "right")
    ks = s["kernels"]
    shown = ks if len(ks) <= max_kernels else sorted(ks, key=lambda k: -k["cycles"])[:max_kernels]
    for k in shown:
        kt.add_row(k["name"], f"{k['task_type']} x {k['tasks']}", f"{k['cycles']:,.0f}",
                   f"{_pct(k['cycles'], s['cycles']):.1f}%", f"{100 * k['mac_utilization']:.1f}%",
                   _bytes(k["dram_bus_bytes"]), f"{k['dram_gbps']:.2f}", k["bound"])
    if len(ks) > max_kernels:
        kt.caption = f"the {max_kernels} longest of {len(ks)} kernels"
    con.print(kt)

    ct = Table(box=box.SIMPLE_HEAD, title="cores (share of total cycles)", title_justify="left")
    for col in ("core", "tasks", "ld", "mac", "vec", "st", "cp wait", "issue stall", "sync"):
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
