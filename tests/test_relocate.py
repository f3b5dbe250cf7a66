"""compiler/relocate.py: streams emitted once, relocated in their GDRAM base addresses exactly as a
fresh emission would place them, and never templated when a base is used other than by +/- int."""
from __future__ import annotations

import pytest

from mlusim.compiler.codegen import TaskStream
from mlusim.compiler.relocate import Reloc, StreamMemo, Untracked
from mlusim.isa.encoding import encode_stream


def _emit(bases, new_stream, scale_x: bool = False):
    """Two tasks: load a row of x, add, store to y (with a dependency each way)."""
    out = []
    for t in range(2):
        s = new_stream()
        src = bases["x"] * 2 if scale_x else bases["x"] + 256 * t
        ld = s.dma("g2n", 0, src, 256)
        cp = s.emit("vadd", [ld], dt="i8", dst=512, a=0, b=0, n=256)
        s.dma("n2g", bases["y"] + 256 * t, 512, 256, deps=[cp])
        out.append(s.finish())
    return out


def _bytes(streams) -> list[bytes]:
    return [encode_stream(s) for s in streams]


def test_reloc_keeps_its_tag_through_add_and_sub_only():
    r = Reloc(4096, "x")
    assert type(r + 64) is Reloc and (r + 64).tag == "x" and int(64 + r) == 4160
    assert type(r - 64) is Reloc and int(r - 64) == 4032
    for use in (lambda: r * 2, lambda: r // 64, lambda: r < 5, lambda: r == 4096, lambda: bool(r), lambda: -r,
                lambda: r + r):
        with pytest.raises(Untracked):
            use()


def test_memo_relocates_like_a_fresh_emission():
    memo = StreamMemo()
    first = memo.streams("k", {"x": 1 << 20, "y": 2 << 20}, _emit)
    assert _bytes(first) == _bytes(_emit({"x": 1 << 20, "y": 2 << 20}, TaskStream))
    moved = memo.streams("k", {"x": 5 << 20, "y": 3 << 20}, _emit)
    assert memo.hits == 1
    assert _bytes(moved) == _bytes(_emit({"x": 5 << 20, "y": 3 << 20}, TaskStream))
    assert _bytes(first) == _bytes(_emit({"x": 1 << 20, "y": 2 << 20}, TaskStream))     # the template is untouched
    assert moved[0][0].args["src"] == 5 << 20 and moved[1][2].args["dst"] == (3 << 20) + 256


def test_a_base_used_otherwise_is_emitted_plainly_every_time():
    memo = StreamMemo()

    def build(b, ns):
        return _emit(b, ns, scale_x=True)

    for x in (1 << 20, 3 << 20):
        got = memo.streams("k", {"x": x, "y": 2 << 20}, build)
        assert _bytes(got) == _bytes(_emit({"x": x, "y": 2 << 20}, TaskStream, scale_x=True))
    assert memo.hits == 0 and memo.templates["k"] is None


def test_a_layers_copy_moves_only_what_its_other_groups_move():
    """Two layers share a template; each gets its own copy at its fixed bases (here y), from
    which its later emissions relocate only x: the bytes are a fresh emission's either way."""
    memo = StreamMemo()
    for x, y in ((1 << 20, 2 << 20), (3 << 20, 6 << 20), (4 << 20, 2 << 20), (5 << 20, 6 << 20)):
        got = memo.streams("k", {"x": x, "y": y}, _emit, fixed=("y",))
        assert _bytes(got) == _bytes(_emit({"x": x, "y": y}, TaskStream))
    assert memo.hits == 3 and len(memo.copies) == 2
    mine = memo.copies[("k", (6 << 20,))]
    assert mine.bases == {"x": 3 << 20, "y": 6 << 20}
