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

import math
import re

import numpy as np

from mlusim import budget
from mlusim.errors import AssemblyError, EncodingError, MlusimError
from mlusim.isa.encoding import Instr, format_instr  # noqa: F401  (the assembler's inverse)
from mlusim.isa.fields import Scope, Target
from mlusim.isa.table import BY_MNEMONIC
from mlusim.names import check_name, printable
from mlusim.program import NP_OF, TENSOR_ROLES, Kernel, Program, TensorDecl, allocate

TOKEN = re.compile(r"(?:[A-Za-z_]\w*=)?(?:\[[^\]]*\]?|[^\s,\[]+)")
LABEL = re.compile(r"^\s*([A-Za-z_.$][\w.$]*):")


def _strip_comment(line: str) -> str:
    for mark in (";", "#"):
        i = line.find(mark)
        if i >= 0:
            line = line[:i]
    return line


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
        ins = parse_instr(line, scope, pc, f"{origin}:{lineno}")
        for f in ins.op.fields:
            if isinstance(f, Target) and not 0 <= pc + ins.args[f.name] <= len(body):
                raise AssemblyError(f"{origin}:{lineno}:{_col(line, ins.op.mnemonic)}: '{ins.op.mnemonic}' "
                                    f"branches to instruction {pc + ins.args[f.name]}, outside the stream "
                                    f"of {len(body)}")
        out.append(ins)
    return out


def check_targets(stream: list[Instr], where: str) -> None:
    for pc, ins in enumerate(stream):
        for name in ins.op.target_fields:
            t = pc + ins.args[name]
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
# Caps that keep a short text from asking for a huge host allocation or a near-endless loop; each
# error names the cap, and docs/robustness.md says how to lift it.
MAX_SOURCE_CHARS = 64 * 1024 * 1024
MAX_TASKS = 1 << 20                 # tasks= of one kernel (the engine runs them one by one)
MAX_DIM = 1 << 40                   # one tensor dimension
MAX_NDIM = 16
MAX_ELEMENTS = 1 << 34              # one tensor
MAX_FILL_BYTES = 256 * 1024 * 1024  # a const tensor the assembler fills (it lives in host memory)
MAX_ADDR = 1 << 40                  # an explicit GDRAM address
MAX_KERNELS = 1 << 14               # as many as a model file may hold


def _col(raw: str, token: str, default: int = 1) -> int:
    """1-based column of `token` in the source line, or `default` if it does not occur."""
    i = raw.find(token) if token else -1
    return i + 1 if i >= 0 else default


def _parse_tasks(spec: str, where: str, ntasks: int) -> list[int]:
    out: list[int] = []
    for part in spec.split(","):
        part = part.strip()
        m = re.fullmatch(r"([0-9]{1,9})(?:\s*-\s*([0-9]{1,9}))?", part, re.ASCII)
        if not m:
            raise AssemblyError(f"{where}: bad task list {spec.strip()!r} (write e.g. .task 0,2-5)")
        a = int(m.group(1))
        b = int(m.group(2)) if m.group(2) else a
        if b < a:
            raise AssemblyError(f"{where}: task range {part!r} is empty (write low-high)")
        if b >= ntasks:
            raise AssemblyError(f"{where}: task {b} is outside the kernel's tasks={ntasks} (task ids "
                                f"are 0..{ntasks - 1})")
        out.extend(range(a, b + 1))
    return out


FILL_CHUNK = 1 << 20                # elements drawn at a time: int64/float64 temporaries stay 8 MiB


def _fill(kind: str, shape: tuple[int, ...], dt: str, where: str, ledger: budget.Ledger) -> np.ndarray:
    """A const tensor's data. Drawn in chunks (the same values as one draw: numpy's generators
    stream), so a fill costs its own size in host memory and no 8-byte temporaries; the sizes of
    all fills of a program are added up against the memory budget before each is allocated."""
    npdt = np.dtype(NP_OF[dt])
    m = re.fullmatch(r"(zeros|ones|arange|random)(?:\(([0-9]{0,18})\))?", kind, re.ASCII)
    if not m:
        raise AssemblyError(f"{where}: unknown fill {kind!r} (zeros, ones, arange, random(SEED))")
    size = math.prod(shape)
    if size * npdt.itemsize > MAX_FILL_BYTES:
        raise AssemblyError(f"{where}: a filled const tensor of {size * npdt.itemsize:,} bytes is over the "
                            f"assembler's {MAX_FILL_BYTES:,}-byte limit (make it an input instead)")
    ledger.take(size * npdt.itemsize, f"{where}: the const tensors filled so far")
    if m.group(1) in ("zeros", "ones"):
        return (np.zeros if m.group(1) == "zeros" else np.ones)(shape, npdt)
    out = np.empty(size, npdt)
    rng = np.random.default_rng(int(m.group(2) or 0))
    info = np.iinfo(npdt) if npdt.kind != "f" else None
    for lo in range(0, size, FILL_CHUNK):
        n = min(FILL_CHUNK, size - lo)
        if m.group(1) == "arange":
            out[lo:lo + n] = np.arange(lo, lo + n).astype(npdt)
        elif info is None:
            out[lo:lo + n] = rng.standard_normal(n).astype(npdt)
        else:
            out[lo:lo + n] = rng.integers(max(int(info.min), -128), min(int(info.max), 127) + 1, size=n).astype(npdt)
    return out.reshape(shape)


TENSOR_RE = re.compile(r"\.tensor\s+(\w+)\s+(\w+)\s+(\w+)\s*\[([^\]]*)\]\s*(?:@\s*(\S+))?\s*(\S+)?\s*$")


def _parse_tensor(raw: str, where: str, ledger: budget.Ledger) -> TensorDecl:
    line = _strip_comment(raw)
    indent = len(line) - len(line.lstrip())
    m = TENSOR_RE.match(line.strip())
    if not m:
        raise AssemblyError(f"{where}:{indent + 1}: expected .tensor NAME ROLE DTYPE [dims] [@ADDR] [FILL]")

    def at(group: int, within: int = 0) -> str:
        return f"{where}:{indent + m.start(group) + within + 1}"

    name, role, dt, dims, addr, fill = m.groups()
    check_name(name, f"{at(1)}: tensor", AssemblyError)
    if role not in TENSOR_ROLES:
        raise AssemblyError(f"{at(2)}: role must be one of {', '.join(TENSOR_ROLES)}, got {role!r}")
    if dt not in NP_OF:
        raise AssemblyError(f"{at(3)}: dtype must be one of {', '.join(NP_OF)}, got {dt!r}")
    shape = []
    for dm in re.finditer(r"[^,]+", dims):
        d = dm.group(0).strip()
        if not d:
            continue
        if not re.fullmatch(r"(?:0x[0-9a-fA-F]{1,12}|[0-9]{1,14})", d, re.ASCII) or int(d, 0) > MAX_DIM:
            raise AssemblyError(f"{at(4, dm.start() + len(dm.group(0)) - len(dm.group(0).lstrip()))}: dimension "
                                f"{d[:40]!r} is not an integer in 0..{MAX_DIM}")
        shape.append(int(d, 0))
    if len(shape) > MAX_NDIM:
        raise AssemblyError(f"{at(4)}: {len(shape)} dimensions; at most {MAX_NDIM}")
    elements = 1
    for d in shape:
        elements *= d
    if elements > MAX_ELEMENTS:
        raise AssemblyError(f"{at(4)}: shape {shape} has {elements:,} elements, over the limit of {MAX_ELEMENTS:,}")
    a = -1
    if addr is not None:
        if not re.fullmatch(r"(?:0x[0-9a-fA-F]{1,12}|[0-9]{1,14})", addr, re.ASCII) or int(addr, 0) > MAX_ADDR:
            raise AssemblyError(f"{at(5)}: address {addr[:40]!r} is not an integer in 0..{MAX_ADDR:#x} (leave out "
                                f"@ADDR to allocate)")
        a = int(addr, 0)
    data = None
    if role == "const":
        data = _fill(fill or "zeros", tuple(shape), dt, at(6) if fill else at(1), ledger)
    elif fill:
        raise AssemblyError(f"{at(6)}: only const tensors take a fill")
    return TensorDecl(name, role, dt, tuple(shape), a, data)


def _check_tensors(tensors: list[TensorDecl], lines: list[int], origin: str) -> None:
    """Duplicate names and GDRAM overlaps, reported at the line of the later declaration."""
    seen: dict[str, int] = {}
    for t, ln in zip(tensors, lines):
        if t.name in seen:
            raise AssemblyError(f"{origin}:{ln}: tensor '{t.name}' declared twice (first at line {seen[t.name]})")
        seen[t.name] = ln
    spans = sorted((t.addr, t.end, t.name, ln) for t, ln in zip(tensors, lines) if t.end > t.addr)
    for (a0, e0, n0, l0), (a1, e1, n1, l1) in zip(spans, spans[1:]):
        if a1 < e0:
            raise AssemblyError(f"{origin}:{max(l0, l1)}: tensor '{n1 if l1 > l0 else n0}' overlaps tensor "
                                f"'{n0 if l1 > l0 else n1}' in GDRAM ([{a1:#x}, {min(e0, e1):#x}) is shared)")


def _kernel_directive(s: str, raw: str, where: str, lineno: int) -> dict:
    """A `.kernel NAME TYPE tasks=N` line as the kernel being assembled (its streams follow)."""
    m = KERNEL_RE.fullmatch(s)
    if not m:
        raise AssemblyError(f"{where}:{_col(raw, '.kernel')}: expected .kernel NAME block|unionN tasks=N")
    name, ktype, tasks = m.groups()
    check_name(name, f"{where}:{_col(raw, name)}: kernel", AssemblyError)
    ktype = ktype.lower()
    if not re.fullmatch(r"block|union[1-9][0-9]{0,3}", ktype, re.ASCII):
        raise AssemblyError(f"{where}:{_col(raw, m.group(2))}: unknown task type {m.group(2)!r} "
                            f"(block, union1, union2, union4, ...)")
    if not re.fullmatch(r"[0-9]{1,9}", tasks, re.ASCII) or not 1 <= int(tasks) <= MAX_TASKS:
        raise AssemblyError(f"{where}:{_col(raw, 'tasks')}: tasks={tasks} must be an integer in "
                            f"1..{MAX_TASKS:,}")
    ntasks = int(tasks)
    return {"name": name, "type": ktype, "tasks": ntasks, "streams": [(range(ntasks), [], lineno)],
            "explicit": False, "line": lineno, "owners": {}}


def _task_directive(cur: dict | None, s: str, raw: str, where: str, lineno: int) -> None:
    """A `.task 0,2-5` line: the instructions that follow are the stream of those tasks."""
    if cur is None:
        raise AssemblyError(f"{where}:{_col(raw, '.task')}: .task outside a .kernel")
    tasks = _parse_tasks(s[5:], f"{where}:{_col(raw, s[5:].strip(), _col(raw, '.task'))}", cur["tasks"])
    if not cur["explicit"]:
        if any(t.strip() for _, t in cur["streams"][0][1]):
            raise AssemblyError(f"{where}:{_col(raw, '.task')}: instructions before the first .task "
                                f"of kernel '{cur['name']}' (move them under a .task)")
        cur["streams"], cur["explicit"] = [], True
    for t in tasks:      # checked as they come, so repeated .task lines cannot pile up
        if t in cur["owners"]:
            raise AssemblyError(f"{where}:{_col(raw, '.task')}: task {t} already has the stream of the "
                                f".task at line {cur['streams'][cur['owners'][t]][2]}")
        cur["owners"][t] = len(cur["streams"])
    cur["streams"].append((tasks, [], lineno))


KERNEL_RE = re.compile(r"\.kernel\s+(\S+)\s+(\S+)\s+tasks\s*=\s*(\S+)", re.ASCII)


def assemble_program(text: str, origin: str = "<asm>") -> Program:
    """Assemble a whole program; every error is an AssemblyError starting `origin:LINE:` (and the
    column where one token is to blame)."""
    if len(text) > MAX_SOURCE_CHARS:
        raise AssemblyError(f"{origin}: {len(text):,} characters of assembly, over the limit of "
                            f"{MAX_SOURCE_CHARS:,}")
    if text.startswith("\ufeff"):       # a UTF-8 byte order mark, as some editors write
        text = text[1:]
    tensors: list[TensorDecl] = []
    tensor_lines: list[int] = []
    kernels: list[Kernel] = []
    cur: dict | None = None
    meta: dict = {}

    def close():
        if cur is None:
            return
        streams = [_stream_lines(lines, origin, symbols) for _tasks, lines, _line in cur["streams"]]
        task_map = None
        if cur["explicit"]:
            owners = cur["owners"]
            missing = next((t for t in range(cur["tasks"]) if t not in owners), None)
            if missing is not None:
                raise AssemblyError(f"{origin}:{cur['line']}: kernel '{cur['name']}': task {missing} has no "
                                    f".task stream (tasks={cur['tasks']})")
            task_map = [owners[t] for t in range(cur["tasks"])]
        k = Kernel(cur["name"], cur["type"], cur["tasks"], streams, task_map)
        try:
            k.validate()
        except MlusimError as e:
            raise AssemblyError(f"{origin}:{cur['line']}: {e}") from None
        kernels.append(k)

    lines = text.splitlines()
    ledger = budget.Ledger(AssemblyError)
    for lineno, raw in enumerate(lines, 1):   # tensors first, so instructions can name them
        s = _strip_comment(raw).strip()
        if s.startswith(".tensor"):
            tensors.append(_parse_tensor(raw, f"{origin}:{lineno}", ledger))
            tensor_lines.append(lineno)
    allocate(tensors)
    _check_tensors(tensors, tensor_lines, origin)
    symbols = {t.name: t.addr for t in tensors}
    for lineno, raw in enumerate(lines, 1):
        line = _strip_comment(raw)
        s = line.strip()
        where = f"{origin}:{lineno}"
        if not s or s.startswith(".tensor"):
            continue
        if s.startswith(".config"):
            meta["config"] = s.split(None, 1)[1] if len(s.split()) > 1 else ""
            if not meta["config"].isprintable() or len(meta["config"]) > 256:
                raise AssemblyError(f"{where}:{_col(raw, '.config')}: .config takes one name of at most 256 "
                                    f"printable characters")
        elif s.startswith(".kernel"):
            close()
            cur = None
            if len(kernels) >= MAX_KERNELS:
                raise AssemblyError(f"{where}:{_col(raw, '.kernel')}: more than {MAX_KERNELS:,} kernels")
            cur = _kernel_directive(s, raw, where, lineno)
        elif s.startswith(".task"):
            _task_directive(cur, s, raw, where, lineno)
        elif s.startswith("."):
            raise AssemblyError(f"{where}:{raw.find('.') + 1}: unknown directive '{s.split()[0]}'")
        else:
            if cur is None:
                raise AssemblyError(f"{where}:{_col(raw, s.split()[0])}: instruction outside a .kernel "
                                    f"(start one with .kernel NAME block tasks=N)")
            cur["streams"][-1][1].append((lineno, raw))
    close()
    if not kernels:
        raise AssemblyError(f"{origin}:{len(lines) or 1}: no .kernel in the program")
    prog = Program(kernels, tensors, meta=meta)
    try:
        prog.validate()
    except MlusimError as e:     # every check above should have caught it with a line number
        raise AssemblyError(f"{origin}:1: {e}") from None
    return prog


def disassemble_program(prog: Program) -> str:
    out = []
    if prog.meta.get("model"):
        out.append(f"; model: {printable(prog.meta['model'], 256)}")
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
