"""Names that come from files (tensors, kernels, models) and are later printed or made into paths.

A tensor name becomes a file name under `run --output DIR`, a kernel name a row of every report, a
model name the first line of `disasm`. So a name is checked once, where it enters (assembler, model
loader, `Program.validate`), against identifier rules: letters, digits, `_ . - :` and slice brackets
(`[` then a digit), starting with a letter, digit or `_` (so never `..`, `-x` or a hidden file), at
most MAX_NAME characters. No path separator, control character, bidi override or terminal markup
(`[bold]`) can pass. Text that is printed
but free-form (descriptions, meta strings) goes through `shown()`, which escapes what a terminal
would act on.
"""
from __future__ import annotations

from mlusim.errors import MlusimError, ProgramError, one_line

MAX_NAME = 128
PUNCT = "_.-:[]"      # brackets for the compiler's slices, e.g. 'layer1.0.1.conv[0:32]'



def bad_name(name: object) -> str | None:
    """Why `name` is not a valid name, or None if it is."""
    if not isinstance(name, str):
        return f"must be a string, got {type(name).__name__}"
    if not name:
        return "is empty"
    if len(name) > MAX_NAME:
        return f"is {len(name):,} characters long (at most {MAX_NAME})"
    if not (name[0].isalnum() or name[0] == "_"):
        return "must start with a letter, digit or '_'"
    for i, c in enumerate(name):
        if not ((c.isalnum() and c.isprintable()) or c in PUNCT):
            return f"contains {c!r} (only letters, digits and {' '.join(PUNCT)} are allowed)"
        if c == "[" and not name[i + 1:i + 2].isdigit():    # a slice, never a [markup] tag
            return "has a '[' not followed by a digit"
    return None


def check_name(name: object, what: str, error: type[MlusimError] = ProgramError) -> str:
    """`name` itself if valid; else `error` naming `what` (e.g. "tensor 3") and the rule broken."""
    why = bad_name(name)
    if why is not None:
        raise error(f"{what}: name {shown(name, 40)} {why}")
    return name   # type: ignore[return-value]


def shown(text: object, limit: int = 200) -> str:
    """`text` quoted for a message or a terminal: control and format characters escaped, and
    anything past `limit` characters elided."""
    s = str(text)
    return repr(s[:limit]) + ("..." if len(s) > limit else "")     # repr escapes every non-printable


def printable(text: object, limit: int = 500) -> str:
    """`text` as one printable line (escaped, bounded) without quotes: for free text in listings."""
    return one_line(text, limit)
