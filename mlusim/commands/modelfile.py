"""`mlusim asm|disasm|inspect`: build, print and list .mlu model files."""
from __future__ import annotations

import sys
from pathlib import Path

from mlusim.commands.common import add_config_args
from mlusim.experiments import resolve_program
from mlusim.names import printable


def register(sub) -> None:
    p = sub.add_parser("asm", help="assemble a .s program into a .mlu model file")
    p.add_argument("source")
    p.add_argument("-o", "--output", metavar="FILE.mlu")
    add_config_args(p)
    p.set_defaults(func=cmd_asm)

    p = sub.add_parser("disasm", help="print a model's program as assembly")
    p.add_argument("model")
    p.set_defaults(func=cmd_disasm)

    p = sub.add_parser("inspect", help="list what a .mlu model file contains")
    p.add_argument("model")
    p.set_defaults(func=cmd_inspect)


def cmd_asm(args) -> int:
    from mlusim import mlufile
    from mlusim.config import load_config

    program = resolve_program(args.source)
    if args.config or args.overrides:
        program.config = load_config(args.config, args.overrides).to_dict()
    out = args.output or str(Path(args.source).with_suffix(".mlu"))
    mlufile.save(program, out)
    print(f"wrote {out}: {len(program.kernels)} kernel(s), {program.instruction_count} instruction(s)")
    return 0


def cmd_disasm(args) -> int:
    from mlusim.isa.asm import disassemble_program

    sys.stdout.write(disassemble_program(resolve_program(args.model)))
    return 0


def cmd_inspect(args) -> int:
    from mlusim import mlufile

    prog = mlufile.load(args.model)
    print(f"{args.model}: {len(prog.kernels)} kernel(s), {prog.instruction_count} instruction(s), "
          f"{prog.gdram_bytes:,} bytes of GDRAM")
    if prog.config:
        print(f"target config: {printable(prog.config.get('name', '?'), 80)}")
    for k, v in sorted(prog.meta.items()):
        print(f"{printable(k, 80)}: {printable(v, 500)}")
    print("tensors:")
    for t in prog.tensors:
        print(f"  {t.name:24} {t.role:7} {t.dtype:4} {str(list(t.shape)):20} @{t.addr:#x} ({t.nbytes:,} B)")
    print("kernels:")
    for k in prog.kernels:
        n = sum(len(s) for s in k.streams)
        print(f"  {k.name:24} {k.task_type:7} tasks={k.task_dim:<5} streams={len(k.streams):<4} instructions={n}")
    return 0
