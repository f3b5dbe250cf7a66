"""Generate docs/isa.md from the table: `python -m mlusim.isa.docs [--check]`."""
from __future__ import annotations

import sys
from pathlib import Path

from mlusim.isa.fields import DIRECTIONS, encoded_width
from mlusim.isa.table import OPS, UNITS



def render() -> str:
    out = ["# mlusim ISA reference", "",
           "Generated from `mlusim/isa/table.py` by `python -m mlusim.isa.docs`; do not edit by hand.",
           "Numerics are specified in [numerics.md](numerics.md); DMA timing in [timing.md](timing.md).", "",
           "## Units", ""]
    out += [f"* **{u}**: {d}" for u, d in UNITS.items()]
    out += ["", "## Encoding", "",
            "Little-endian 32-bit words. Bits 0-7: opcode. Then each field in table order from the least",
            "significant bit up; an address field is its offset (the listed bits) followed by a 5-bit base",
            "register. Unused high bits are zero. Every queued instruction ends with `wait` and `sig`,",
            "4-bit masks over the `ld`, `cp`, `st`, `mv` queues (dependency tokens, as in TVM's VTA).", "",
            "## Assembly", "",
            "`mnemonic p1, p2, name=value ...`: the first *positional* fields may be written bare; any field",
            "as `name=value`; fields with a default may be omitted. Addresses: `0x40`, `[r2+0x40]`, or a",
            "GDRAM tensor name (`[r2+weights]`). Comments start with `;` or `#`; labels are `name:`.", "",
            "## DMA directions", "",
            "| dir | from | to |", "|---|---|---|"]
    out += [f"| `{d}` | {a} | {b} |" for d, (a, b) in DIRECTIONS.items()]
    out += ["", "## Instructions", ""]
    for op in OPS:
        out.append(f"### `{op.mnemonic}`  (opcode 0x{op.opcode:02x}, unit {op.unit}, {op.nwords * 4} bytes)")
        out.append("")
        out.append(op.doc)
        out.append("")
        if op.cycles is not None:
            out.append("Cycles: " + " ".join((op.cycles.__doc__ or "").split()))
            out.append("")
        elif op.unit == "dma":
            out.append("Cycles: see [timing.md](timing.md#dma).")
            out.append("")
        if op.fields:
            out += ["| field | kind | bits | default | meaning |", "|---|---|---|---|---|"]
            for i, f in enumerate(op.fields):
                pos = " (positional)" if i < op.positional else ""
                default = "required" if f.default is None else f"`{f.format(f.default)}`"
                out.append(f"| `{f.name}`{pos} | {f.describe()} | {encoded_width(f)} | {default} | {f.doc} |")
            out.append("")
    return "\n".join(out)


def main() -> int:
    path = Path(__file__).resolve().parents[2] / "docs" / "isa.md"
    text = render()
    if "--check" in sys.argv:
        ok = path.exists() and path.read_text() == text
        print("docs/isa.md is up to date" if ok else "docs/isa.md is stale: run python -m mlusim.isa.docs")
        return 0 if ok else 1
    path.write_text(text)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
