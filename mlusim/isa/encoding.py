"""Instructions as Python objects and as bits, both derived from the table.

Binary layout: little-endian 32-bit words; bits 0-7 hold the opcode, then each field in table order
packed from the least significant bit up (addresses as offset then base register); unused high bits
are zero and are checked on decode so that a corrupted stream is caught, not misread.
"""
from __future__ import annotations

from typing import Any, Iterable

from mlusim.errors import AssemblyError, EncodingError
from mlusim.isa.fields import NUM_REGS, Addr, as_int
from mlusim.isa.table import BY_MNEMONIC, BY_OPCODE, OpSpec


# (id of a table field, text) -> value: Instr.make's enum and dependency names ('g2n', 'ld+st'),
# parsed once (fields live as long as the table; parsing without labels depends on nothing else)
_PARSED: dict[tuple[int, str], int] = {}


class Instr:
    """One instruction: its table entry and a complete mapping of field name to int value."""

    __slots__ = ("op", "args")

    def __init__(self, op: OpSpec, args: dict[str, int]):
        self.op = op
        self.args = args

    @classmethod
    def make(cls, mnemonic: str, **kwargs: Any) -> "Instr":
        """Build from Python: addresses as an int offset or a (register, offset) pair; enums by name.

        Every field is range-checked here, so an Instr that exists can always be encoded; in
        particular an offset too wide for its field is refused rather than spilling into the
        base-register bits."""
        return cls.from_fields(mnemonic, kwargs)

    @classmethod
    def from_fields(cls, mnemonic: str, kwargs: dict[str, Any]) -> "Instr":
        """`make` with the fields in a dict (left as it is): the compiler's emitters build tens of
        thousands of instructions, and passing the dict on spares re-packing it as keywords."""
        op = BY_MNEMONIC.get(mnemonic) if isinstance(mnemonic, str) else None
        if op is not None:   # the compiler's common case: in-range ints and names parsed before
            ranges, args = op.make_ranges, dict(op.make_template)
            for k, v in kwargs.items():
                r = ranges.get(k)
                if r is None:
                    break
                if type(v) is int:
                    if not r[0] <= v <= r[1]:
                        break
                elif type(v) is str:
                    v = _PARSED.get((r[2], v))
                    if v is None:
                        break
                else:
                    break
                args[k] = v
            else:
                if op.make_required <= kwargs.keys():
                    return cls(op, args)
        return cls._make_checked(op, mnemonic, dict(kwargs))

    @classmethod
    def _make_checked(cls, op: OpSpec | None, mnemonic, kwargs: dict) -> "Instr":
        """`make` field by field, with every conversion and a precise error for the first problem."""
        if op is None:
            raise EncodingError(f"unknown instruction {str(mnemonic)[:40]!r}")
        args: dict[str, int] = {}
        for f, name, _shift, _width, (lo, hi) in op.layout:
            if name in kwargs:
                v = kwargs.pop(name)
                if type(v) is int and lo <= v <= hi:      # a plain in-range int
                    args[name] = v
                    continue
                text = v if isinstance(v, str) else None
                if isinstance(f, Addr) and isinstance(v, tuple):
                    v = _addr_pair(f, v, mnemonic)
                elif text is not None:
                    try:
                        v = f.parse(v, None, 0)
                    except AssemblyError as e:
                        raise EncodingError(f"{mnemonic}: {e}") from None
                args[name] = f.check(v, mnemonic)
                if text is not None and len(_PARSED) < 4096:
                    _PARSED[(id(f), text)] = args[name]
            elif f.default is not None:
                args[name] = f.default
            else:
                raise EncodingError(f"{mnemonic}: missing field '{name}'")
        if kwargs:
            raise EncodingError(f"{mnemonic}: unknown field(s) {', '.join(sorted(kwargs))}")
        return cls(op, args)

    def __eq__(self, other):
        return isinstance(other, Instr) and self.op is other.op and self.args == other.args

    def __hash__(self):
        return hash((self.op.opcode, tuple(sorted(self.args.items()))))

    def __repr__(self):
        return f"Instr({format_instr(self)!r})"


def _addr_pair(f: Addr, pair: tuple, mnemonic: str) -> int:
    if len(pair) != 2:
        raise EncodingError(f"{mnemonic}: field '{f.name}' takes (register, offset), got {pair!r}")
    reg, off = (as_int(x) for x in pair)
    if not isinstance(reg, int) or isinstance(reg, bool) or not 0 <= reg < NUM_REGS:
        raise EncodingError(f"{mnemonic}: field '{f.name}': base register {reg!r} is not r0..r{NUM_REGS - 1}")
    if not isinstance(off, int) or isinstance(off, bool) or not 0 <= off < 1 << f.bits:
        raise EncodingError(f"{mnemonic}: field '{f.name}': offset {off!r} does not fit in {f.bits} bits")
    return (reg << f.bits) | off


def encode(ins: Instr) -> bytes:
    op = ins.op
    word = op.opcode
    args = ins.args
    for f, name, shift, _width, _range in op.layout:
        word |= f.pack(f.check(args[name], op.mnemonic)) << shift
    return word.to_bytes(op.nwords * 4, "little")


def encode_stream(instrs: Iterable[Instr]) -> bytes:
    return b"".join(encode(i) for i in instrs)


def decode_one(data: bytes | memoryview, offset: int = 0) -> tuple[Instr, int]:
    if offset + 4 > len(data):
        raise EncodingError(f"truncated instruction at byte {offset}")
    opcode = data[offset]
    op = BY_OPCODE.get(opcode)
    if op is None:
        raise EncodingError(f"unknown opcode 0x{opcode:02x} at byte {offset}")
    end = offset + op.nwords * 4
    if end > len(data):
        raise EncodingError(f"truncated '{op.mnemonic}' at byte {offset}: needs {op.nwords * 4} bytes")
    word = int.from_bytes(data[offset:end], "little")
    args = {}
    for name, shift, mask, sign, lo, hi in op.decode_layout:
        v = (word >> shift) & mask
        if v & sign:                  # a signed field's sign bit: sign-extend (Imm.unpack)
            v -= sign << 1
        if not lo <= v <= hi:
            raise EncodingError(f"'{op.mnemonic}' at byte {offset}: field '{name}' = {v} is invalid")
        args[name] = v
    if word >> op.used_bits:
        raise EncodingError(f"'{op.mnemonic}' at byte {offset}: nonzero padding bits")
    return Instr(op, args), end


def decode_stream(data: bytes | memoryview, seen: dict | None = None) -> list[Instr]:
    """`seen` maps an instruction's bytes to its decoded Instr, shared across the streams of one
    file: a ResNet-50 at batch 16 holds 141k instructions but only about 7k distinct ones, and an
    Instr is never changed once made, so equal bytes can share one."""
    out = []
    off = 0
    n = len(data)
    if n % 4:
        raise EncodingError(f"instruction stream of {n} bytes is not a whole number of words")
    if seen is None:
        seen = {}
    data = bytes(data)
    while off < n:
        op = BY_OPCODE.get(data[off])
        end = off + op.nwords * 4 if op is not None else off + 4
        ins = seen.get(data[off:end]) if end <= n else None
        if ins is None:
            ins, end = decode_one(data, off)
            seen[data[off:end]] = ins
        out.append(ins)
        off = end
    return out


def format_instr(ins: Instr, pc: int = 0) -> str:
    """One instruction as assembly text; `parse_instr` in asm.py reads it back."""
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
