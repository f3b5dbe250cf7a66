"""What the simulator runs: GDRAM tensors plus an ordered list of kernels of tasks.

This mirrors how Cambricon code is organised: a kernel (one `<<<dim, ktype>>>` launch) is a set of
tasks; each task runs an instruction stream that may read its task id; a BLOCK kernel's tasks go to
whichever core is free, a UNIONn kernel's tasks are gang-scheduled n clusters at a time; kernels
run in order with an implicit chip-wide barrier between them.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from mlusim.errors import ProgramError
from mlusim.names import check_name

TENSOR_ROLES = ("input", "output", "const", "scratch")
NP_OF = {"i8": "int8", "u8": "uint8", "i16": "int16", "i32": "int32", "f16": "float16", "f32": "float32"}
GDRAM_ALIGN = 64


def task_type_clusters(task_type: str) -> int:
    """0 for BLOCK, n for UNIONn."""
    t = str(task_type).lower()
    if t == "block":
        return 0
    m = re.fullmatch(r"union([0-9]{1,4})", t)
    if m and int(m.group(1)) >= 1:
        return int(m.group(1))
    raise ProgramError(f"unknown task type {task_type!r} (block, union1, union2, union4, ...)")


@dataclass
class TensorDecl:
    name: str
    role: str
    dtype: str                    # ISA dtype name: i8, u8, i16, i32, f16, f32
    shape: tuple[int, ...]
    addr: int                     # byte offset in GDRAM
    data: np.ndarray | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def np_dtype(self) -> np.dtype:
        return np.dtype(NP_OF[self.dtype])

    @property
    def nbytes(self) -> int:
        return math.prod(int(d) for d in self.shape) * self.np_dtype.itemsize     # Python ints: no wrap

    @property
    def end(self) -> int:
        return self.addr + self.nbytes


@dataclass
class Kernel:
    name: str
    task_type: str
    task_dim: int
    streams: list[list]           # list of instruction lists (mlusim.isa.encoding.Instr)
    task_stream: list[int] | None = None   # stream index per task; None: every task runs stream 0
    meta: dict[str, Any] = field(default_factory=dict)

    def stream_of(self, task_id: int) -> list:
        return self.streams[0 if self.task_stream is None else self.task_stream[task_id]]

    @property
    def clusters_per_job(self) -> int:
        return task_type_clusters(self.task_type)

    def validate(self) -> None:
        check_name(self.name, "kernel")
        where = f"kernel '{self.name}'"
        n = task_type_clusters(self.task_type)
        if self.task_dim < 1:
            raise ProgramError(f"{where}: task_dim must be >= 1")
        if n and self.task_dim % (4 * n):
            raise ProgramError(f"{where}: a {self.task_type.upper()} kernel needs task_dim a multiple of "
                               f"{4 * n}, got {self.task_dim}")
        if not self.streams:
            raise ProgramError(f"{where}: has no instruction stream")
        if self.task_stream is not None:
            if len(self.task_stream) != self.task_dim:
                raise ProgramError(f"{where}: task map has {len(self.task_stream)} entries for "
                                   f"{self.task_dim} tasks")
            bad = [s for s in self.task_stream if not 0 <= s < len(self.streams)]
            if bad:
                raise ProgramError(f"{where}: task map names stream {bad[0]} of {len(self.streams)}")
        for si, stream in enumerate(self.streams):
            for pc, ins in enumerate(stream):
                for name in ins.op.target_fields:
                    if not 0 <= pc + ins.args[name] <= len(stream):
                        raise ProgramError(f"{where}: stream {si} instruction {pc} ('{ins.op.mnemonic}') branches "
                                           f"to {pc + ins.args[name]}, outside the stream of {len(stream)}")


@dataclass
class Program:
    kernels: list[Kernel]
    tensors: list[TensorDecl]
    gdram_bytes: int = 0
    config: dict | None = None     # the target config the program was built for (informational)
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self):
        end = max((t.end for t in self.tensors), default=0)
        self.gdram_bytes = max(self.gdram_bytes, end)

    def tensor(self, name: str) -> TensorDecl:
        for t in self.tensors:
            if t.name == name:
                return t
        raise ProgramError(f"no tensor named {name!r} (have: {', '.join(t.name for t in self.tensors)})")

    def by_role(self, role: str) -> list[TensorDecl]:
        return [t for t in self.tensors if t.role == role]

    @property
    def instruction_count(self) -> int:
        return sum(len(s) for k in self.kernels for s in k.streams)

    def validate(self) -> None:
        names = set()
        spans = []
        for i, t in enumerate(self.tensors):
            check_name(t.name, f"tensor {i}")
            if t.name in names:
                raise ProgramError(f"tensor '{t.name}' declared twice")
            names.add(t.name)
            if t.role not in TENSOR_ROLES:
                raise ProgramError(f"tensor '{t.name}': role must be one of {', '.join(TENSOR_ROLES)}")
            if t.dtype not in NP_OF:
                raise ProgramError(f"tensor '{t.name}': unknown dtype {t.dtype!r}")
            if any(d < 0 for d in t.shape):
                raise ProgramError(f"tensor '{t.name}': negative dimension in {t.shape}")
            if t.addr < 0:
                raise ProgramError(f"tensor '{t.name}': negative address")
            if t.data is not None and (t.data.shape != tuple(t.shape) or t.data.dtype != t.np_dtype):
                raise ProgramError(f"tensor '{t.name}': data is {t.data.dtype}{list(t.data.shape)}, "
                                   f"declared {t.dtype}{list(t.shape)}")
            if t.role == "const" and t.data is None:
                raise ProgramError(f"const tensor '{t.name}' has no data")
            spans.append((t.addr, t.end, t.name))
        spans.sort()
        for (a0, e0, n0), (a1, e1, n1) in zip(spans, spans[1:]):
            if a1 < e0 and e0 > a0 and e1 > a1:
                raise ProgramError(f"tensors '{n0}' and '{n1}' overlap in GDRAM")
        for k in self.kernels:
            k.validate()


def allocate(tensors: list[TensorDecl], start: int = 0) -> int:
    """Give every tensor with addr < 0 the next 64-byte aligned GDRAM offset; returns the end."""
    cur = max([start] + [t.end for t in tensors if t.addr >= 0])
    for t in tensors:
        if t.addr < 0:
            cur = -(-cur // GDRAM_ALIGN) * GDRAM_ALIGN
            t.addr = cur
            cur += t.nbytes
    return cur
