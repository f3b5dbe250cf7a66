"""One run of a spec or Program at one core count: the step every entry shares.

`experiments.scaling` (and so `mlusim run`) and each sweep point call `run_at`, so a zoo model is
compiled, scheduled and simulated the same way whichever asked: compiled for the cores it runs on
with the same BuildOptions, and laid over the chip by the same schedule (the config's
runtime.schedule unless one is asked for).
"""
from __future__ import annotations

import numpy as np

from mlusim.errors import SimulationError
from mlusim.programs import SPREAD, BuildOptions, compiles_on_the_fly, resolve_program, schedule_for


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


def run_at(program, cfg, cores: int, *, options: BuildOptions | None = None, schedule: str | None = None,
           inputs: dict[str, np.ndarray] | None = None, timing_only: bool = True, **sim_kw):
    """Simulate `program` (a Program, or a spec for mlusim.programs) on `cores` cores of `cfg`.

    A zoo or ONNX spec is compiled for `cores` with `options`; a zoo model under the per-cluster
    schedule (`schedule`, else the config's) is split into a trunk per cluster and a head over the
    chip (mlusim.schedule). The RunResult's program_meta says which schedule ran. Extra keywords go
    to mlusim.sim.simulate."""
    from mlusim.sim import simulate

    if isinstance(program, str) and schedule_for(program, cfg, schedule) == "per-cluster":
        from mlusim.schedule import plan_per_cluster, run_per_cluster

        o = options or BuildOptions()
        other = [c for c in o.changed() if c.split("=")[0] not in ("batch", "resolution", "cluster_fusion")]
        if other:
            raise SimulationError(f"the per-cluster schedule compiles with the default options; "
                                  f"{', '.join(other)} needs --schedule spread")
        plan = plan_per_cluster(program.lower(), o.batch or 1, cfg, cores, o.resolution, fuse=o.cluster_fusion)
        sim_kw.pop("trace", None)      # one trunk stands for every cluster: no timeline to draw
        return run_per_cluster(plan, cfg, inputs=bind_inputs(inputs, plan.trunk), timing_only=timing_only, **sim_kw)
    if isinstance(program, str):
        program = resolve_program(program, cfg, cores if compiles_on_the_fly(program) else None, options)
    res = simulate(program, cfg, cores=cores, inputs=bind_inputs(inputs, program), timing_only=timing_only, **sim_kw)
    res.program_meta.setdefault("schedule", SPREAD)
    return res
