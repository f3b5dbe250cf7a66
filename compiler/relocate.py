"""Task streams emitted once and reused wherever only the base addresses of their tensors differ.

A fused segment emits each layer once per job and image group (and again in its dry runs): at
ResNet-50 batch 16 on 16 cores, 689 conv emissions of 27 distinct layer shapes and plans. Those
emissions differ only in where their tensors sit: the group's images in GDRAM, the activations in
SRAM, the layer's weights, parameters and WRAM weight slots (a network's repeated blocks: the
bottlenecks of one ResNet-50 stage share shapes), so the instructions are the same but for the
address fields computed from those base addresses. `StreamMemo` emits a placement once with each
relocatable base address wrapped in a `Reloc`, an int that remembers which tensor it came from
through `+` and `-` with plain ints and refuses every other use (`Untracked`). The emission
records which instruction fields hold such addresses; a later emission with the same key copies
the streams and moves those fields by the bases' differences. A field is either base + a value
the key fixes, or independent of every base, so the copy is the instruction stream a fresh
emission would produce (tests/test_golden.py compares program bytes). An emission that uses a
base any other way (a product, a comparison, a branch) is emitted plainly and never templated.
"""
from __future__ import annotations

from typing import Callable

import numpy as np

from mlusim.compiler.codegen import TaskStream
from mlusim.isa.encoding import Instr


class Untracked(Exception):
    """A relocatable base address was used other than by adding or subtracting a plain int."""


def _untracked(*_a):
    raise Untracked


class Reloc(int):
    """A base address `tag` names; stays a Reloc through `+ int` and `- int`, raises Untracked on
    any other arithmetic, comparison or truth test (those could shape the stream unrecorded)."""

    def __new__(cls, value: int, tag: str):
        obj = int.__new__(cls, value)
        obj.tag = tag
        return obj

    def __add__(self, other):
        if type(other) is int or isinstance(other, np.integer):
            return Reloc(int(self) + int(other), self.tag)
        raise Untracked

    __radd__ = __add__

    def __sub__(self, other):
        if type(other) is int or isinstance(other, np.integer):
            return Reloc(int(self) - int(other), self.tag)
        raise Untracked

    __rsub__ = __mul__ = __rmul__ = __floordiv__ = __rfloordiv__ = __truediv__ = __rtruediv__ = _untracked
    __mod__ = __rmod__ = __divmod__ = __rdivmod__ = __pow__ = __rpow__ = __neg__ = __pos__ = __abs__ = _untracked
    __and__ = __rand__ = __or__ = __ror__ = __xor__ = __rxor__ = __lshift__ = __rlshift__ = _untracked
    __rshift__ = __rrshift__ = __invert__ = __bool__ = _untracked
    __lt__ = __le__ = __gt__ = __ge__ = __eq__ = __ne__ = _untracked
    __hash__ = int.__hash__


class RecordingStream(TaskStream):
    """A TaskStream that turns Reloc fields into plain ints, noting (instruction, field, tag)."""

    def __init__(self):
        super().__init__()
        self.relocs: list[tuple[int, str, str]] = []

    def append(self, mnemonic: str, deps, fields: dict) -> int:
        for name in [name for name, v in fields.items() if type(v) is Reloc]:
            self.relocs.append((len(self.ops), name, fields[name].tag))
            fields[name] = int(fields[name])
        return super().append(mnemonic, deps, fields)


class Template:
    """Streams emitted for some base addresses, and which fields hold addresses off which base:
    per stream, per base, the (instruction index, field, the field's lowest and highest value)."""

    __slots__ = ("streams", "relocs", "bases", "keep")

    def __init__(self, streams, relocs: list[dict[str, list[tuple[int, str, int, int]]]], bases, keep):
        self.streams, self.relocs, self.bases, self.keep = streams, relocs, bases, keep

    def at(self, bases: dict[str, int]) -> list[list[Instr]] | None:
        """The streams for other base addresses; None when a moved field would leave its range.
        Only the fields of bases that moved are rewritten (a layer's other image groups move its
        GDRAM tensors, not its SRAM ones or its constants); the rest share the template's Instrs,
        which nothing changes once a stream is finished."""
        shifts = [(t, bases[t] - b) for t, b in self.bases.items() if bases[t] != b]
        out = []
        for stream, relocs in zip(self.streams, self.relocs):
            new = list(stream)
            args_of: dict[int, dict] = {}
            for tag, delta in shifts:
                for idx, name, lo, hi in relocs.get(tag, ()):
                    args = args_of.get(idx)
                    if args is None:
                        args = args_of[idx] = dict(stream[idx].args)
                    v = args[name] + delta
                    if not lo <= v <= hi:
                        return None
                    args[name] = v
            for idx, args in args_of.items():
                new[idx] = Instr(stream[idx].op, args)
            out.append(new)
        return out

    def moved(self, streams: list[list[Instr]], bases: dict[str, int]) -> "Template":
        """This template's copy for `bases`, whose streams `at(bases)` gave."""
        return Template([list(s) for s in streams], self.relocs, dict(bases), self.keep)


BuildFn = Callable[[dict[str, int], Callable[[], TaskStream]], list[list[Instr]]]


class StreamMemo:
    """Per compile: templates of task streams by a key holding everything that shapes the streams
    except the relocatable base addresses (the caller's duty; see the module docstring).

    A template moved to a layer's own bases (`fixed`: its constants, SRAM tensors, WRAM slots) is
    kept as that layer's copy: its other jobs and image groups, which only move its GDRAM tensors,
    then rewrite just the instructions that touch those, not every DMA of the layer."""

    def __init__(self):
        self.templates: dict = {}
        self.copies: dict = {}      # (key, the fixed bases' values) -> Template at those bases
        self.hits = 0

    def streams(self, key, bases: dict[str, int], build: BuildFn, keep=(), fixed=()) -> list[list[Instr]]:
        """build(bases, new_stream) emits the streams with the given base addresses, each stream
        from new_stream(). `keep`: objects whose ids the key holds (kept alive with the template).
        `fixed`: the tags of bases that stay put across a layer's emissions."""
        tpl = self.templates.get(key, False)
        if tpl:
            at = (key, tuple(bases[t] for t in fixed))
            mine = self.copies.get(at)
            out = (mine or tpl).at(bases)
            if out is not None:
                self.hits += 1
                if mine is None:
                    self.copies[at] = tpl.moved(out, bases)
                return out
        if tpl is False:
            tpl = self._record(bases, build, keep)
            self.templates[key] = tpl
            if tpl is not None:
                self.copies[(key, tuple(bases[t] for t in fixed))] = tpl
                return [list(s) for s in tpl.streams]
        return build(bases, TaskStream)

    @staticmethod
    def _record(bases: dict[str, int], build: BuildFn, keep) -> Template | None:
        made: list[RecordingStream] = []

        def new_stream() -> RecordingStream:
            made.append(RecordingStream())
            return made[-1]

        try:
            streams = build({t: Reloc(b, t) for t, b in bases.items()}, new_stream)
        except Untracked:
            return None
        by_ops = {id(s.ops): s for s in made}
        relocs = []
        for stream in streams:
            rec = by_ops.get(id(stream))
            if rec is None:
                return None
            fields: dict[str, list[tuple[int, str, int, int]]] = {}
            for idx, name, tag in rec.relocs:
                lo, hi = stream[idx].op.make_ranges[name][:2]
                fields.setdefault(tag, []).append((idx, name, lo, hi))
            relocs.append(fields)
        # (a Reloc reaching Instr.make some other way than emit raises Untracked: the field check
        # compares it with the field's range)
        return Template(streams, relocs, dict(bases), keep)
