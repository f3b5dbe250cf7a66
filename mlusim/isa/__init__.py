"""The mlusim ISA: one table (table.py) from which encoding, assembly and docs are derived."""
from mlusim.isa.encoding import Instr, decode_stream, encode, encode_stream  # noqa: F401
from mlusim.isa.table import BY_MNEMONIC, BY_OPCODE, OPS, OpSpec  # noqa: F401
