"""Operand kinds of the ISA: how each is written in assembly, parsed, checked and packed into bits.

Every instruction field is one of these kinds with a width; the encoder, decoder, assembler,
disassembler and docs all ask the kind, so adding a field never means editing four places.
Values inside the simulator are plain ints (enums by index, addresses as (base register, offset)).
"""
from __future__ import annotations

import operator
import re
import struct
from dataclasses import dataclass
from functools import cached_property

from mlusim.errors import AssemblyError, EncodingError

NUM_REGS = 32
QUEUES = ("ld", "cp", "st", "mv")
DTYPES = ("i8", "u8", "i16", "i32", "f16", "f32")
DTYPE_BYTES = {"i8": 1, "u8": 1, "i16": 2, "i32": 4, "f16": 2, "f32": 4}
SPACES = ("gdram", "sram", "nram", "wram")

# DMA directions in the order of BANG's mluMemcpyDirection_t, minus the LDRAM ones (no LDRAM model).
DIRECTIONS = {
    "g2n": ("gdram", "nram"), "n2g": ("nram", "gdram"), "g2w": ("gdram", "wram"),
    "w2g": ("wram", "gdram"), "n2n": ("nram", "nram"), "n2w": ("nram", "wram"),
    "w2n": ("wram", "nram"), "g2s": ("gdram", "sram"), "s2g": ("sram", "gdram"),
    "s2n": ("sram", "nram"), "n2s": ("nram", "sram"), "s2w": ("sram", "wram"),
    "w2s": ("wram", "sram"), "g2g": ("gdram", "gdram"), "s2s": ("sram", "sram"),
}


@dataclass
class Scope:
    """Names an operand may use: branch labels of the stream, and symbols (GDRAM tensor addresses)."""

    labels: dict
    symbols: dict


INT_RE = re.compile(r"[+-]?(?:0x[0-9a-f]+|0o[0-7]+|0b[01]+|[0-9]+k?)")
REG_RE = re.compile(r"r([0-9]{1,2})")


def parse_int(text: str, what: str) -> int:
    """Decimal, 0x/0o/0b, `_` separators, a `k` suffix for x1024; ASCII digits only and at most 40
    of them, so that neither int() nor a huge literal can surprise us."""
    t = text.strip().lower().replace("_", "")
    if len(t) > 40 or not INT_RE.fullmatch(t):
        raise AssemblyError(f"{what}: expected an integer, got {text[:60]!r}")
    mult = 1
    if t.endswith("k"):
        t, mult = t[:-1], 1024
    try:
        return int(t, 0) * mult
    except ValueError:      # e.g. a leading zero: 012
        raise AssemblyError(f"{what}: expected an integer, got {text[:60]!r}") from None


def as_int(value):
    """A field value as a Python int if it is any integer type (numpy's too), else unchanged."""
    if isinstance(value, int) or isinstance(value, bool):
        return value
    try:
        return operator.index(value)
    except TypeError:
        return value


@dataclass(frozen=True)
class Field:
    """One operand: `name` as written in assembly, `bits` in the encoding, `default` if optional."""

    name: str
    bits: int
    default: int | None = None
    doc: str = ""

    kind = "field"

    @cached_property
    def _bounds(self) -> tuple[int, int]:
        return self.range()

    def check(self, value: int, where: str) -> int:
        if type(value) is int:          # the common case, kept cheap: the compiler makes ~10^5 of these
            lo, hi = self._bounds
            if lo <= value <= hi:
                return value
        lo, hi = self.range()
        value = as_int(value)
        if not isinstance(value, int) or isinstance(value, bool):
            raise EncodingError(f"{where}: field '{self.name}' must be an integer, got "
                                f"{type(value).__name__} {str(value)[:40]!r}")
        if not lo <= value <= hi:
            raise EncodingError(f"{where}: field '{self.name}'={value} outside [{lo}, {hi}]")
        return value

    def range(self) -> tuple[int, int]:
        return 0, (1 << self.bits) - 1

    def pack(self, value: int) -> int:
        return value

    def unpack(self, raw: int) -> int:
        return raw

    def parse(self, text: str, labels: dict[str, int] | None, pc: int) -> int:
        return parse_int(text, self.name)

    def format(self, value: int, pc: int = 0) -> str:
        return str(value)

    def describe(self) -> str:
        return f"unsigned, {self.bits} bits"


@dataclass(frozen=True)
class Imm(Field):
    signed: bool = False
    kind = "imm"

    def range(self):
        if self.signed:
            return -(1 << (self.bits - 1)), (1 << (self.bits - 1)) - 1
        return 0, (1 << self.bits) - 1

    def pack(self, value):
        return value & ((1 << self.bits) - 1)

    def unpack(self, raw):
        if self.signed and raw >> (self.bits - 1):
            return raw - (1 << self.bits)
        return raw

    def format(self, value, pc=0):
        return hex(value) if value >= 4096 else str(value)

    def describe(self):
        return f"{'signed' if self.signed else 'unsigned'} integer, {self.bits} bits"


@dataclass(frozen=True)
class Reg(Field):
    kind = "reg"

    def __init__(self, name: str, doc: str = ""):
        object.__setattr__(self, "name", name)
        object.__setattr__(self, "bits", 5)
        object.__setattr__(self, "default", None)
        object.__setattr__(self, "doc", doc)

    def parse(self, text, labels, pc):
        m = REG_RE.fullmatch(text.strip().lower())
        if not m or int(m.group(1)) >= NUM_REGS:
            raise AssemblyError(f"{self.name}: expected a register r0..r{NUM_REGS - 1}, got {text[:40]!r}")
        return int(m.group(1))

    def format(self, value, pc=0):
        return f"r{value}"

    def describe(self):
        return "scalar register r0..r31 (r0 reads as 0)"


@dataclass(frozen=True)
class Addr(Field):
    """A memory address: base register plus unsigned offset, `[r3+0x40]`; value is reg<<bits | off."""

    space: str = ""
    kind = "addr"

    def range(self):
        return 0, (NUM_REGS << self.bits) - 1

    def pack(self, value):
        return value

    def encoded_bits(self) -> int:
        return self.bits + 5

    def parse(self, text, labels, pc):
        t = text.strip().lower().replace(" ", "")
        if t.startswith("[") and t.endswith("]"):
            t = t[1:-1]
        reg, terms = 0, t.split("+")
        if REG_RE.match(terms[0]) and terms[0][1:].isdigit():
            reg = Reg("base").parse(terms.pop(0), labels, pc)
        symbols = labels.symbols if isinstance(labels, Scope) else {}
        o = 0
        for term in terms or ["0"]:
            if term in symbols:
                o += symbols[term]
            elif term[:1].isalpha() and not term.startswith("0x"):
                raise AssemblyError(f"{self.name}: unknown symbol {term[:40]!r} (declare it with .tensor, or write "
                                    f"a number)")
            else:
                o += parse_int(term, self.name)
        if not 0 <= o < (1 << self.bits):
            raise AssemblyError(f"{self.name}: offset {o} does not fit in {self.bits} bits (put the high part in "
                                f"a base register: [rN+offset])")
        return (reg << self.bits) | o

    def split(self, value: int) -> tuple[int, int]:
        return value >> self.bits, value & ((1 << self.bits) - 1)

    def format(self, value, pc=0):
        reg, off = self.split(value)
        return f"[r{reg}+{hex(off)}]" if reg else hex(off)

    def describe(self):
        where = f"{self.space.upper()} " if self.space else ""
        return f"{where}address: base register + {self.bits}-bit byte offset, `[r2+0x40]` or `0x40`"


@dataclass(frozen=True)
class Enum(Field):
    choices: tuple[str, ...] = ()
    kind = "enum"

    def parse(self, text, labels, pc):
        t = text.strip().lower()
        if t not in self.choices:
            raise AssemblyError(f"{self.name}: expected one of {'|'.join(self.choices)}, got {text!r}")
        return self.choices.index(t)

    def format(self, value, pc=0):
        return self.choices[value]

    def range(self):
        return 0, len(self.choices) - 1

    def describe(self):
        return "one of " + ", ".join(f"`{c}`" for c in self.choices)


@dataclass(frozen=True)
class Deps(Field):
    """Dependency-token mask over the unit queues (ld, cp, st, mv): `ld+st`, or `none`."""

    kind = "deps"

    def parse(self, text, labels, pc):
        t = text.strip().lower()
        if t in ("", "none", "0"):
            return 0
        mask = 0
        for part in t.split("+"):
            if part not in QUEUES:
                raise AssemblyError(f"{self.name}: expected queues from {'+'.join(QUEUES)}, got {text!r}")
            mask |= 1 << QUEUES.index(part)
        return mask

    def format(self, value, pc=0):
        return "+".join(q for i, q in enumerate(QUEUES) if value >> i & 1) or "none"

    def describe(self):
        return "set of queues " + ", ".join(f"`{q}`" for q in QUEUES) + " joined by `+`, or `none`"


@dataclass(frozen=True)
class Target(Imm):
    """A branch target: a label in assembly, a signed instruction offset in binary."""

    kind = "target"

    def parse(self, text, labels, pc):
        t = text.strip()
        table = labels.labels if isinstance(labels, Scope) else (labels or {})
        if t in table:
            return table[t] - pc
        if t.startswith(".") and len(t) > 1:
            return parse_int(t[1:], self.name)
        raise AssemblyError(f"{self.name}: unknown label {text[:40]!r} (labels are NAME: lines of the same "
                            f"stream; .N is a relative offset)")

    def format(self, value, pc=0):
        return f"L{pc + value}"

    def describe(self):
        return f"label (encoded as a signed {self.bits}-bit instruction offset)"


@dataclass(frozen=True)
class F32(Field):
    """A float32 immediate, stored as its IEEE-754 bits so that it round-trips exactly."""

    kind = "f32"

    def __init__(self, name: str, default: float | None = None, doc: str = ""):
        object.__setattr__(self, "name", name)
        object.__setattr__(self, "bits", 32)
        object.__setattr__(self, "default", None if default is None else f32_bits(default))
        object.__setattr__(self, "doc", doc)

    def parse(self, text, labels, pc):
        t = text.strip().lower()
        if t.startswith("0x"):
            return parse_int(t, self.name)
        if len(t) > 60 or not t.isascii():
            raise AssemblyError(f"{self.name}: expected a float, got {text[:60]!r}")
        try:
            return f32_bits(float(t))
        except ValueError:
            raise AssemblyError(f"{self.name}: expected a float, got {text!r}") from None
        except OverflowError:
            raise AssemblyError(f"{self.name}: {text} is outside the float32 range (write inf if "
                                f"that is meant)") from None

    def format(self, value, pc=0):
        f = bits_f32(value)
        r = repr(f)
        if f32_bits(float(r)) == value and "nan" not in r:
            return r
        return hex(value)

    def describe(self):
        return "float32 immediate (decimal, or 0x bits)"


def f32_bits(x: float) -> int:
    return struct.unpack("<I", struct.pack("<f", x))[0]


def bits_f32(b: int) -> float:
    return struct.unpack("<f", struct.pack("<I", b & 0xFFFFFFFF))[0]


def encoded_width(f: Field) -> int:
    return f.encoded_bits() if isinstance(f, Addr) else f.bits


SPECIAL_REGS = ("taskid", "taskdim", "coreid", "clusterid", "coredim", "clusterdim")
OUT_DTYPES = ("i32", "f16", "f32")          # what the MAC array writes (its odt field)
DIR_NAMES = tuple(DIRECTIONS)               # the dma dir field's values, in encoding order
ON_CORE = ("nram", "wram")


def queue_of_direction(d: str) -> str:
    """From cluster SRAM into the core: the move queue (the Move-DMA, a separate engine from the
    IO-DMA that serves GDRAM, so SRAM tiles and GDRAM weights stream side by side). Other transfers
    toward the core or staying on it, and GDRAM reads into SRAM: load queue (so a copy of the next
    images into SRAM does not hold up a layer's stores). The rest, away from the core: store."""
    src, dst = DIRECTIONS[d]
    if src == "sram" and dst in ON_CORE:
        return "mv"
    return "ld" if dst in ON_CORE or (src == "gdram" and dst == "sram") else "st"


QUEUE_OF_DIR = tuple(queue_of_direction(d) for d in DIR_NAMES)     # a dma's queue, by its dir field
