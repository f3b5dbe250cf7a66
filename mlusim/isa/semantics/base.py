"""What every unit's semantics share: enum fields back to names, typed views of a core's memories.

`ctx` is the executing core: `ctx.regs` (list of ints, r0 == 0), `ctx.special(name)`, and
`ctx.mem(space)` returning that space's bytes as a uint8 array. `a` maps field names to ints with
addresses already resolved to absolute byte offsets. Enum fields arrive as indices; `E` turns them
back into names. Touch functions return (space, addr, nbytes, 'r' or 'w', alignment).
"""
from __future__ import annotations

import numpy as np

from mlusim.isa import numerics as nx
from mlusim.isa.fields import DTYPE_BYTES, DTYPES

NP = nx.NP_DTYPES


def E(a: dict, name: str) -> str:
    return DTYPES[a[name]]


def view(ctx, space: str, addr: int, dt: str, count: int) -> np.ndarray:
    nbytes = count * DTYPE_BYTES[dt]
    return ctx.mem(space)[addr:addr + nbytes].view(NP[dt])


def span(a, field, dt_field="dt", count="n"):
    """(address, bytes, alignment) of a vector operand of `count` elements of type `dt_field`."""
    esz = DTYPE_BYTES[E(a, dt_field)]
    return a[field], a[count] * esz, esz
