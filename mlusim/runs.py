"""One run of a spec or Program at one core count: the step every entry shares.

`experiments.scaling` (and so `mlusim run`) and each sweep point go through `prepare` and
`execute`, so a zoo model is compiled, scheduled and simulated the same way whichever asked:
compiled for the cores it runs on with the same BuildOptions, and laid over the chip by the same
schedule (the config's runtime.schedule unless one is asked for).
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np

from mlusim.errors import SimulationError
from mlusim.programs import SPREAD, BuildOptions, compiles_on_the_fly, resolve_program, schedule_for


@dataclass
class Prepared:
    """What runs at one point: a Program (spread), or a zoo model's per-cluster plan."""

    program: object | None = None      # mlusim.program.Program
    plan: object | None = None         # mlusim.schedule.ClusterPlan

    def programs(self) -> list:
        if self.program is not None:
            return [self.program]
        return [self.plan.trunk] + ([self.plan.head] if self.plan.head is not None else [])


def bind_inputs(given: dict | None, program) -> dict | None:
    """Inputs keyed by tensor name; an unnamed one (key "", from `--input FILE`) goes to the
    program's only input."""
    if not given or "" not in given:
        return given
    names = [t.name for t in program.by_role("input")]
    if len(names) != 1:
        raise SimulationError(f"an unnamed input was given but the program has inputs {', '.join(names) or 'none'}; "
                              f"name it (--input NAME=FILE.npy)")
    out = {k: v for k, v in given.items() if k}
    out[names[0]] = given[""]
    return out


def prepare(program, cfg, cores: int, options: BuildOptions | None = None, schedule: str | None = None,
            compile_progress=None) -> Prepared:
    """`program` (a Program, or a spec for mlusim.programs) made ready to run on `cores` cores of
    `cfg`: a zoo or ONNX spec compiled for `cores` with `options`; a zoo model under the
    per-cluster schedule (`schedule`, else the config's) split into a trunk per cluster and a head
    over the chip (mlusim.schedule). `compile_progress`: the compiler's progress callback
    (mlusim.programs.compile_spec)."""
    if isinstance(program, str) and schedule_for(program, cfg, schedule) == "per-cluster":
        from mlusim.schedule import plan_per_cluster

        o = options or BuildOptions()
        other = [c for c in o.changed() if c.split("=")[0] not in ("batch", "resolution", "cluster_fusion")]
        if other:
            raise SimulationError(f"the per-cluster schedule compiles with the default options; "
                                  f"{', '.join(other)} needs --schedule spread")
        return Prepared(plan=plan_per_cluster(program.lower(), o.batch or 1, cfg, cores, o.resolution,
                                              fuse=o.cluster_fusion, cache=o.cache, progress=compile_progress,
                                              shape_only=o.shape_only))
    if isinstance(program, str):
        program = resolve_program(program, cfg, cores if compiles_on_the_fly(program) else None, options,
                                  compile_progress)
    return Prepared(program=program)


def execute(prep: Prepared, cfg, cores: int, *, inputs: dict[str, np.ndarray] | None = None,
            timing_only: bool = True, **sim_kw):
    """Simulate what `prepare` made; the RunResult's program_meta says which schedule ran. Extra
    keywords go to mlusim.sim.simulate."""
    from mlusim.sim import simulate

    if prep.plan is not None:
        from mlusim.schedule import run_per_cluster

        sim_kw.pop("trace", None)      # one trunk stands for every cluster: no timeline to draw
        return run_per_cluster(prep.plan, cfg, inputs=bind_inputs(inputs, prep.plan.trunk), timing_only=timing_only,
                               **sim_kw)
    res = simulate(prep.program, cfg, cores=cores, inputs=bind_inputs(inputs, prep.program), timing_only=timing_only,
                   **sim_kw)
    res.program_meta.setdefault("schedule", SPREAD)
    return res


def run_at(program, cfg, cores: int, *, options: BuildOptions | None = None, schedule: str | None = None,
           inputs: dict[str, np.ndarray] | None = None, timing_only: bool = True, compile_progress=None, **sim_kw):
    """Prepare and simulate `program` on `cores` cores of `cfg` (see `prepare` and `execute`). A
    spec's program is made for this run alone, so the simulator may drop its constants as it
    loads them (`simulate`'s hand_over)."""
    prep = prepare(program, cfg, cores, options, schedule, compile_progress)
    if isinstance(program, str) and prep.program is not None:
        sim_kw["hand_over"] = True
    return execute(prep, cfg, cores, inputs=inputs, timing_only=timing_only, **sim_kw)


def plan_digest(prep: Prepared) -> str:
    """A short hash of what the compiler planned: tensors (names, shapes, addresses, constants)
    and kernels (task shapes, encoded instruction streams); metadata left out. Two points with the
    same digest run the same program, so their differences come from the hardware alone."""
    h = hashlib.sha256()
    for prog in prep.programs():
        hash_program(h, prog)
    return h.hexdigest()[:12]


def hash_program(h, prog) -> None:
    """Feed a program's tensors (names, shapes, addresses, constants) and kernels (task shapes,
    encoded instruction streams) to hashlib object `h`; metadata left out."""
    from mlusim.isa.encoding import encode_stream

    for t in prog.tensors:
        h.update(repr((t.name, t.role, t.dtype, tuple(int(d) for d in t.shape), t.addr)).encode())
        if t.data is not None:
            h.update(np.ascontiguousarray(t.data).tobytes())
    for k in prog.kernels:
        h.update(repr((k.name, k.task_type, k.task_dim, k.task_stream)).encode())
        for s in k.streams:
            h.update(encode_stream(s))
