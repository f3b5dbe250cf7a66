"""Assembly text <-> instructions and programs, derived from the table.

Instruction syntax: `mnemonic op1, op2, name=value ...`. The first `positional` fields of an entry
may be written bare, in table order; every field may be written `name=value`; fields with a default
may be left out. Comments start with `;` or `#`. Labels are `name:`.

Program syntax adds directives:
    .tensor NAME ROLE DTYPE [d0, d1, ...] [@ADDR] [zeros|ones|arange|random(SEED)]
    .kernel NAME block|unionN tasks=N     (instructions that follow are the stream of every task)
    .task 0,2-5                           (start a separate stream for the listed tasks)
"""
from __future__ import annotations

import re

import numpy as np

from mlusim.errors import AssemblyError, EncodingError, MlusimError
from mlusim.isa.encoding import Instr
from mlusim.isa.fields import Scope, Target
from mlusim.isa.table import BY_MNEMONIC
from mlusim.program import NP_OF, TENSOR_ROLES, Kernel, Program, TensorDecl, allocate, task_type_clusters

TOKEN = re.compile(r"(?:[A-Za-z_]\w*=)?(?:\[[^\]]*\]?|[^\s,\[]+)")
LABEL = re.compile(r"^\s*([A-Za-z_.$][\w.$]*):")


def _strip_comment(line: str) -> str:
    for mark in (";", "#"):
        i = line.find(mark)
        if i >= 0:
            line = line[:i]
    return line


def format_instr(ins: Instr, pc: int = 0) -> str:
    op = ins.op
    parts = []
    for i, f in enumerate(op.fields):
        v = ins.args[f.name]
        if i < op.positional:
            parts.append(f.format(v, pc))
        elif f.default is None or v != f.default:
            parts.append(f"{f.name}={f.format(v, pc)}")
    if not parts:
        return op.mnemonic
    pos = ", ".join(parts[:op.positional])
    kw = " ".join(parts[op.positional:])
    return f"{op.mnemonic:<8} " + (pos + (", " if pos and kw else "") + kw)


def parse_instr(text: str, labels: Scope | dict[str, int] | None = None, pc: int = 0,
                where: str = "<asm>", col0: int = 1) -> Instr:
    """Parse one instruction (no label, no comment). `where` is 'file:line' for messages."""
    m = re.match(r"\s*(\S+)", text)
    if not m:
        raise AssemblyError(f"{where}:{col0}: empty instruction")
    mnem = m.group(1).lower()
    op = BY_MNEMONIC.get(mnem)
    if op is None:
        raise AssemblyError(f"{where}:{col0 + m.start(1)}: unknown instruction '{m.group(1)}'")
    args: dict[str, int] = {}
    npos = 0
    rest_at = m.end(1)
    for tm in TOKEN.finditer(text, rest_at):
        tok = tm.group(0)
        col = col0 + tm.start()
        try:
            if "=" in tok.split("[", 1)[0]:
                name, _, value = tok.partition("=")
                f = op.by_name.get(name.lower())
                if f is None:
                    names = ", ".join(f.name for f in op.fields) or "none"
                    raise AssemblyError(f"'{mnem}' has no field '{name}' (fields: {names})")
            else:
                if npos >= op.positional:
                    raise AssemblyError(f"unexpected operand '{tok}' ('{mnem}' takes {op.positional} "
                                        f"positional operand(s); write the rest as name=value)")
                f, value = op.fields[npos], tok
                npos += 1
            if f.name in args:
                raise AssemblyError(f"field '{f.name}' given twice")
            if isinstance(f, Target) and labels is None:
                raise AssemblyError("branch targets need a stream with labels")
            v = f.parse(value, labels, pc)
            args[f.name] = f.check(v, mnem)
        except (AssemblyError, EncodingError) as e:
            raise AssemblyError(f"{where}:{col}: {e}") from None
    for f in op.fields:
        if f.name not in args:
            if f.default is None:
                raise AssemblyError(f"{where}:{col0}: '{mnem}' needs field '{f.name}'")
            args[f.name] = f.default
    return Instr(op, args)


def _stream_lines(lines: list[tuple[int, str]], origin: str, symbols: dict | None = None) -> list[Instr]:
    """Two passes over (line number, text): collect labels, then parse with them."""
    labels: dict[str, int] = {}
    body: list[tuple[int, str, int]] = []
    for lineno, raw in lines:
        line = _strip_comment(raw)
        while True:
            m = LABEL.match(line)
            if not m:
                break
            name = m.group(1)
            if name in labels:
                raise AssemblyError(f"{origin}:{lineno}:{m.start(1) + 1}: label '{name}' defined twice")
            labels[name] = len(body)
            line = " " * m.end() + line[m.end():]
        if line.strip():
            body.append((lineno, line, len(body)))
    out = []
    scope = Scope(labels, symbols or {})
    for lineno, line, pc in body:
        out.append(parse_instr(line, scope, pc, f"{origin}:{lineno}"))
    check_targets(out, origin)
    return out


def check_targets(stream: list[Instr], where: str) -> None:
    for pc, ins in enumerate(stream):
        for f in ins.op.fields:
            if isinstance(f, Target):
                t = pc + ins.args[f.name]
                if not 0 <= t <= len(stream):
                    raise AssemblyError(f"{where}: instruction {pc} ('{ins.op.mnemonic}') branches to {t}, "
                                        f"outside the stream of {len(stream)}")


def assemble_stream(text: str, origin: str = "<asm>") -> list[Instr]:
    return _stream_lines(list(enumerate(text.splitlines(), 1)), origin)


def disassemble_stream(stream: list[Instr], indent: str = "    ") -> str:
    targets = set()
    for pc, ins in enumerate(stream):
        for f in ins.op.fields:
            if isinstance(f, Target):
                targets.add(pc + ins.args[f.name])
    lines = []
    for pc, ins in enumerate(stream):
        if pc in targets:
            lines.append(f"L{pc}:")
        lines.append(indent + format_instr(ins, pc))
    if len(stream) in targets:
        lines.append(f"L{len(stream)}:")
    return "\n".join(lines) + ("\n" if lines else "")


# ---- programs ------------------------------------------------------------------------------------
def _parse_tasks(spec: str, where: str) -> list[int]:
    out = []
    for part in spec.split(","):
        part = part.strip()
        try:
            if "-" in part:
                a, b = part.split("-", 1)
                out.extend(range(int(a), int(b) + 1))
            else:
                out.append(int(part))
        except ValueError:
            raise AssemblyError(f"{where}: bad task list {spec!r}") from None
    return out


def _fill(kind: str, shape: tuple[int, ...], dt: str, where: str) -> np.ndarray:
    npdt = np.dtype(NP_OF[dt])
    m = re.fullmatch(r"(zeros|ones|arange|random)(?:\((\d*)\))?", kind)
    if not m:
        raise AssemblyError(f"{where}: unknown fill {kind!r} (zeros, ones, arange, random(SEED))")
    size = int(np.prod(shape, dtype=np.int64))
    if m.group(1) == "zeros":
        return np.zeros(shape, npdt)
    if m.group(1) == "ones":
        return np.ones(shape, npdt)
    if m.group(1) == "arange":
        return np.arange(size).astype(npdt).reshape(shape)
    rng = np.random.default_rng(int(m.group(2) or 0))
    if npdt.kind == "f":
        return rng.standard_normal(size).astype(npdt).reshape(shape)
    info = np.iinfo(npdt)
    lo, hi = max(int(info.min), -128), min(int(info.max), 127)
    return rng.integers(lo, hi + 1, size=size).astype(npdt).reshape(shape)


TENSOR_RE = re.compile(r"\.tensor\s+(\w+)\s+(\w+)\s+(\w+)\s*\[([^\]]*)\]\s*(?:@\s*(\S+))?\s*(\S+)?\s*$")


def _parse_tensor(line: str, where: str) -> TensorDecl:
    m = TENSOR_RE.match(line.strip())
    if not m:
        raise AssemblyError(f"{where}: expected .tensor NAME ROLE DTYPE [dims] [@ADDR] [FILL]")
    name, role, dt, dims, addr, fill = m.groups()
    if role not in TENSOR_ROLES:
        raise AssemblyError(f"{where}: role must be one of {', '.join(TENSOR_ROLES)}, got {role!r}")
    if dt not in NP_OF:
        raise AssemblyError(f"{where}: dtype must be one of {', '.join(NP_OF)}, got {dt!r}")
    try:
        shape = tuple(int(d, 0) for d in dims.replace(" ", "").split(",") if d)
        a = int(addr, 0) if addr else -1
    except ValueError:
        raise AssemblyError(f"{where}: bad dimension or address in {line.strip()!r}") from None
    if any(d < 0 for d in shape) or np.prod(shape, dtype=np.float64) > 2**34:
        raise AssemblyError(f"{where}: implausible shape {list(shape)}")
    data = None
    if role == "const":
        data = _fill(fill or "zeros", shape, dt, where)
    elif fill:
        raise AssemblyError(f"{where}: only const tensors take a fill")
    return TensorDecl(name, role, dt, shape, a, data)


def assemble_program(text: str, origin: str = "<asm>") -> Program:
    tensors: list[TensorDecl] = []
    kernels: list[Kernel] = []
    cur: dict | None = None
    meta: dict = {}

    def close():
        if cur is None:
            return
        streams, owners = [], {}
        for idx, (tasks, lines) in enumerate(cur["streams"]):
            streams.append(_stream_lines(lines, origin, symbols))
            for t in tasks:
                if t in owners:
                    raise AssemblyError(f"{origin}:{cur['line']}: task {t} given two streams")
                owners[t] = idx
        task_map = None
        if cur["explicit"]:
            missing = [t for t in range(cur["tasks"]) if t not in owners]
            extra = [t for t in owners if not 0 <= t < cur["tasks"]]
            if missing or extra:
                bad = missing or extra
                raise AssemblyError(f"{origin}:{cur['line']}: kernel '{cur['name']}': task {bad[0]} "
                                    f"{'has no .task stream' if missing else 'is outside tasks='}")
            task_map = [owners[t] for t in range(cur["tasks"])]
        kernels.append(Kernel(cur["name"], cur["type"], cur["tasks"], streams, task_map))

    lines = text.splitlines()
    for lineno, raw in enumerate(lines, 1):   # tensors first, so instructions can name them
        s = _strip_comment(raw).strip()
        if s.startswith(".tensor"):
            tensors.append(_parse_tensor(s, f"{origin}:{lineno}"))
    allocate(tensors)
    symbols = {t.name: t.addr for t in tensors}
    for lineno, raw in enumerate(lines, 1):
        line = _strip_comment(raw)
        s = line.strip()
        where = f"{origin}:{lineno}"
        if not s or s.startswith(".tensor"):
            continue
        if s.startswith(".config"):
            meta["config"] = s.split(None, 1)[1] if len(s.split()) > 1 else ""
        elif s.startswith(".kernel"):
            close()
            m = re.fullmatch(r"\.kernel\s+(\S+)\s+(\w+)\s+tasks\s*=\s*(\d+)", s)
            if not m:
                raise AssemblyError(f"{where}: expected .kernel NAME block|unionN tasks=N")
            try:
                task_type_clusters(m.group(2))
            except MlusimError as e:
                raise AssemblyError(f"{where}: {e}") from None
            cur = {"name": m.group(1), "type": m.group(2).lower(), "tasks": int(m.group(3)),
                   "streams": [(list(range(int(m.group(3)))), [])], "explicit": False, "line": lineno}
        elif s.startswith(".task"):
            if cur is None:
                raise AssemblyError(f"{where}: .task outside a .kernel")
            tasks = _parse_tasks(s[5:], where)
            if not cur["explicit"]:
                if any(t.strip() for _, t in cur["streams"][0][1]):
                    raise AssemblyError(f"{where}: instructions before the first .task of kernel "
                                        f"'{cur['name']}'")
                cur["streams"], cur["explicit"] = [], True
            cur["streams"].append((tasks, []))
        elif s.startswith("."):
            raise AssemblyError(f"{where}:{raw.find('.') + 1}: unknown directive '{s.split()[0]}'")
        else:
            if cur is None:
                raise AssemblyError(f"{where}: instruction outside a .kernel")
            cur["streams"][-1][1].append((lineno, raw))
    close()
    if not kernels:
        raise AssemblyError(f"{origin}: no .kernel in the program")
    prog = Program(kernels, tensors, meta=meta)
    try:
        prog.validate()
    except MlusimError as e:
        raise AssemblyError(f"{origin}: {e}") from None
    return prog


def disassemble_program(prog: Program) -> str:
    out = []
    if prog.meta.get("model"):
        out.append(f"; model: {prog.meta['model']}")
    for t in prog.tensors:
        dims = ", ".join(str(d) for d in t.shape)
        tail = "  ; data stored in the model file" if t.data is not None else ""
        out.append(f".tensor {t.name} {t.role} {t.dtype} [{dims}] @{hex(t.addr)}{tail}")
    for k in prog.kernels:
        out.append("")
        out.append(f".kernel {k.name} {k.task_type} tasks={k.task_dim}")
        if k.task_stream is None:
            out.append(disassemble_stream(k.streams[0]).rstrip("\n"))
        else:
            for idx, stream in enumerate(k.streams):
                tasks = [t for t, s in enumerate(k.task_stream) if s == idx]
                out.append(f".task {_ranges(tasks)}")
                out.append(disassemble_stream(stream).rstrip("\n"))
    return "\n".join(out) + "\n"


def _ranges(ids: list[int]) -> str:
    parts, i = [], 0
    while i < len(ids):
        j = i
        while j + 1 < len(ids) and ids[j + 1] == ids[j] + 1:
            j += 1
        parts.append(str(ids[i]) if i == j else f"{ids[i]}-{ids[j]}")
        i = j + 1
    return ",".join(parts)
