"""From a spec (a zoo name, an .onnx, .mlu or .s file) to the Program a run times: one place.

`mlusim run NAME`, `mlusim compile --model NAME`, `mlusim sweep`, `experiments.scaling` and the
Python API all compile through `compile_spec` with the defaults of `BuildOptions`, so one model,
config, core count, batch and set of options gives one program and one answer whichever entry
asked. A .mlu or .s file is a finished program: it runs as it was compiled (the report says for
how many cores, when that differs from the cores it runs on).
"""
from __future__ import annotations

import sys
from dataclasses import dataclass, fields, replace
from pathlib import Path

from mlusim.errors import CompileError, ModelFileError

SPREAD = "spread: every layer over every core"


@dataclass(frozen=True)
class BuildOptions:
    """How a zoo or ONNX model is compiled. The defaults are the CLI's (`run` and `compile` share
    them): batch 1 (an ONNX model's own when fixed), the model's resolution, int8 per-channel
    weights, operator fusion on, cluster fusion as the config says, weight seed 0."""

    batch: int | None = None          # None: 1 for a zoo model, an ONNX model's own batch if fixed
    resolution: int | None = None     # zoo models only; None: the model's
    dtype: str = "int8"
    per_channel: bool = True
    fuse: bool = True                 # operator fusion (conv + BN + activation + ...)
    # spans of layers in cluster SRAM where the cost model says it pays; None: the config's choice
    # (the per-cluster schedule's `runtime.kernels`, on for spread programs)
    cluster_fusion: bool | None = None
    seed: int = 0                     # zoo models' weight seed
    calibrate: str | None = None      # ONNX float models: calibration samples (.npy)
    # reuse a program compiled before from the same everything (mlusim/compile_cache.py); False:
    # compile afresh (--no-cache). Never changes the program, so `changed` leaves it out.
    cache: bool = True
    # zoo and ONNX models at int8: compile from shapes alone, for a timing-only run (compiler/driver.py:
    # no weights drawn, no calibration; the same kernels and cycles, and a program that refuses
    # numerics). A mode of the run rather than a build choice, so `changed` leaves it out too.
    shape_only: bool = False

    def changed(self) -> list[str]:
        """The options that differ from the defaults, as `name=value` (for error messages)."""
        base = BuildOptions()
        return [f"{f.name}={getattr(self, f.name)}" for f in fields(self)
                if f.name not in ("cache", "shape_only") and getattr(self, f.name) != getattr(base, f.name)]

    def for_timing(self, spec) -> "BuildOptions":
        """These options for a run that only times `spec`: a zoo or ONNX model at int8 compiled
        from shapes alone (shape_only: no weights drawn, no calibration), anything else as it is
        (a finished program; an int16 layer's accumulator position depends on its weights)."""
        if compiles_on_the_fly(spec) and self.dtype == "int8":
            return replace(self, shape_only=True)
        return self


def zoo_names() -> list[str]:
    from mlusim.compiler.zoo import ZOO

    return list(ZOO)


def is_zoo_name(spec: str) -> bool:
    return isinstance(spec, str) and spec.lower() in zoo_names()


def compiles_on_the_fly(spec) -> bool:
    """Whether `spec` names something compiled per run (a zoo model or an .onnx file) rather than a
    finished program: such a spec is compiled for every hardware point and core count."""
    if not isinstance(spec, str):
        return False
    p = Path(spec)
    if p.suffix.lower() == ".onnx":
        return True
    if p.suffix or "/" in spec or p.exists():
        return False
    return is_zoo_name(spec)


def unknown_model(name: str) -> CompileError:
    """'unknown model' with the closest zoo names (compiler/zoo.py says it the same way)."""
    from mlusim.compiler.zoo import unknown_model as zoo_unknown

    return zoo_unknown(name)


def compile_spec(spec: str, cfg, cores: int | None = None, options: BuildOptions | None = None, progress=None):
    """Compile zoo model or .onnx file `spec` for `cores` parallel tasks (default: every core of
    `cfg`) with `options`; returns the compiler's Compiled (program, graph, notes). `progress`:
    the compiler's `progress(phase, layers_done, layers_total)` (mlusim.progress)."""
    from mlusim.compiler.driver import compile_model, compile_onnx

    o = options or BuildOptions()
    kw = dict(config=cfg, tasks=cores, dtype=o.dtype, per_channel=o.per_channel, fuse=o.fuse,
              cluster_fusion=True if o.cluster_fusion is None else o.cluster_fusion, progress=progress)
    if Path(spec).suffix.lower() == ".onnx":
        if o.resolution is not None:
            raise CompileError("--resolution applies to zoo models; an ONNX model's input shape is in the file")
        if o.seed:
            raise CompileError("--seed applies to zoo models; an ONNX model's weights are in the file")
        return compile_onnx(spec, batch=o.batch, calibrate=o.calibrate, shape_only=o.shape_only, **kw)
    if o.calibrate:
        raise CompileError("--calibrate applies to ONNX float models; zoo models calibrate on seeded data")
    if not is_zoo_name(spec):
        raise unknown_model(spec)
    return compile_model(spec, batch=o.batch or 1, resolution=o.resolution, seed=o.seed, shape_only=o.shape_only, **kw)


def compile_cached(spec: str, cfg, cores: int | None = None, options: BuildOptions | None = None, progress=None):
    """`compile_spec` through the compile cache (unless options.cache is False): the program, and
    what the compile reported ({"notes": warnings, "fused": [[layer, [ops]], ...]}). `progress`
    hears of a compile that runs (a cache hit has none)."""
    from mlusim.compile_cache import cache_for, cached
    from mlusim.config import HardwareConfig, load_config

    o = options or BuildOptions()
    cfg = cfg if isinstance(cfg, HardwareConfig) else load_config(cfg)      # what the compiler does too

    def build():
        c = compile_spec(spec, cfg, cores, o, progress)
        return [c.program], {"notes": list(c.notes),
                             "fused": [[n.name, [n.op] + list(n.fused)] for n in c.graph.nodes if n.fused]}

    parts = _cache_parts(spec, cfg, cores, o)
    (prog,), extra = cached(cache_for(o.cache and parts is not None), parts, build)
    return prog, extra


def _cache_parts(spec: str, cfg, cores: int | None, o: BuildOptions) -> dict | None:
    """What a compile of `spec` depends on, as the cache key's parts: a zoo model by name (its
    weights by seed, in the options), an ONNX file and calibration samples by their bytes; None
    when a file cannot be read (no key: the compiler then says what is wrong with it)."""
    from dataclasses import asdict

    from mlusim.compile_cache import file_digest

    try:
        what = {"onnx": file_digest(spec)} if Path(spec).suffix.lower() == ".onnx" else {"zoo": spec.lower()}
        samples = file_digest(o.calibrate) if o.calibrate else None
    except OSError:
        return None
    options = {k: v for k, v in asdict(o).items() if k not in ("cache", "calibrate")}
    return {"spec": what, "cores": cores, "options": options, "calibrate": samples, "config": cfg.to_dict()}


def load_program(spec: str):
    """A finished program: a .mlu model file or .s assembly. A bare word that is neither a file nor
    a zoo name is most likely a mistyped model name, and is reported as one."""
    from mlusim import mlufile

    p = Path(spec)
    if p.suffix in (".s", ".asm"):
        from mlusim.files import read_text
        from mlusim.isa.asm import MAX_SOURCE_CHARS, assemble_program

        return assemble_program(read_text(p, "assembly file", ModelFileError, 4 * MAX_SOURCE_CHARS), str(p))
    if not p.exists() and not p.suffix and "/" not in spec:
        raise unknown_model(spec)
    return mlufile.load(p)


def program_from_bytes(data: bytes, name: str):
    """A finished program from its file's bytes, as `load_program` reads the file `name`: what a
    sweep worker that does not share the caller's disk runs, with no temporary file to leave behind."""
    from mlusim import mlufile

    if Path(name).suffix in (".s", ".asm"):
        from mlusim.isa.asm import assemble_program

        try:
            text = data.decode("utf-8-sig")
        except UnicodeDecodeError as e:
            raise ModelFileError(f"{name}: assembly file is not UTF-8 text (bad byte at offset {e.start})") from None
        return assemble_program(text, name)
    return mlufile.loads(data, name)


def resolve_program(spec: str, cfg=None, cores: int | None = None, options: BuildOptions | None = None,
                    compile_progress=None):
    """The Program to simulate for `spec` on hardware `cfg` with `cores` cores.

    A .mlu model or .s assembly file is what it is, whatever `cfg`. A zoo model name or .onnx file
    is compiled for `cfg` and `cores` parallel tasks (default: every core of `cfg`) with `options`,
    so a scaling run or sweep point never times a program tiled for some other machine.
    `compile_progress`: as compile_spec's `progress`."""
    if not compiles_on_the_fly(spec):
        if options is not None and options.changed():
            raise CompileError(f"{', '.join(options.changed())}: build options apply to zoo and ONNX models; "
                               f"{spec} is already compiled")
        return load_program(spec)
    prog, extra = compile_cached(spec, cfg, cores, options, compile_progress)
    for note in extra.get("notes", []):
        print(f"warning: {note}", file=sys.stderr)
    return prog


def schedule_for(spec, cfg, asked: str | None = None) -> str:
    """The schedule a run uses: `asked` (--schedule), else the config's runtime.schedule. The
    per-cluster schedule splits a zoo model's graph into trunk and head, so other programs run
    spread; asking for per-cluster on one of them is an error."""
    sched = asked or cfg.runtime.schedule
    if sched == "per-cluster" and not (isinstance(spec, str) and compiles_on_the_fly(spec) and is_zoo_name(spec)):
        if asked:
            name = spec if isinstance(spec, str) else "this program"
            raise CompileError(f"--schedule per-cluster: only zoo models are split per cluster; "
                               f"{name} runs with --schedule spread")
        return "spread"
    return sched
