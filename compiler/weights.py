"""Seeded float32 weights: drawn when they are used instead of held.

The zoo draws every weight from one seeded generator, in model order. A compile only ever needs
one layer's floats at a time (its calibration reads them once, its quantization once more, both a
block of rows at a time), and a few models have fully connected layers far bigger than all the
rest (VGG-16's fc6 is 411 MB of its 553 MB of float32 weights). So every drawn weight remembers
its recipe (the generator's state before its draw, its shape and scale): one above LAZY_BYTES is
kept as only that, and drawn again for each use while the model's generator skips past it in
small chunks; the others hold their values until the compile has quantized them and lets them go
(`released`). A normal draw of n rows followed by m rows is the draw of n + m rows (numpy's
generators consume their bits sample by sample), so every block holds exactly the values one
whole draw would.

A timing-only compile needs no values at all (timing never depends on them): a model built from
a `Seed` with values=False has a `Placeholder` of each weight's shape instead, and nothing is drawn.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import ClassVar, Iterator

import numpy as np

LAZY_BYTES = 32 << 20        # a float32 weight bigger than this is drawn on use
SKIP_CHUNK = 1 << 20         # samples per draw while skipping a generator past a weight


class Float32Shape:
    """What a float32 weight that is not (yet) an array tells about itself: its dimensions, sizes
    and type, from its `shape` (SeededWeight and Placeholder both stand where an array would)."""

    shape: tuple[int, ...]
    dtype: ClassVar[np.dtype] = np.dtype(np.float32)

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def size(self) -> int:
        return math.prod(self.shape)

    @property
    def nbytes(self) -> int:
        return 4 * self.size


@dataclass(frozen=True, eq=False)
class SeededWeight(Float32Shape):
    """standard_normal(shape) * factor in float32, from a PCG64 generator in state `state`, and
    the drawn `values` while they are held. Stands where an array of the weight would (shape,
    size, dtype, np.asarray); code that can work on row blocks reads it with `row_blocks`."""

    shape: tuple[int, ...]
    state: dict
    factor: np.float32
    values: np.ndarray | None = None

    def released(self) -> "SeededWeight":
        """The recipe alone: its values are drawn again when next used."""
        return replace(self, values=None)

    def blocks(self, cuts: list[int]) -> Iterator[np.ndarray]:
        """Rows cuts[i]:cuts[i + 1] for each i, in order (cuts rising from 0)."""
        if self.values is not None:
            for r0, r1 in zip(cuts, cuts[1:]):
                yield self.values[r0:r1]
            return
        if cuts and cuts[0] != 0:
            raise ValueError("a seeded weight is drawn from its first row")
        rng = np.random.default_rng(0)
        rng.bit_generator.state = self.state
        for r0, r1 in zip(cuts, cuts[1:]):
            w = rng.standard_normal((r1 - r0,) + self.shape[1:], dtype=np.float32)
            w *= self.factor
            yield w

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        if self.values is not None:
            return np.array(self.values, dtype, copy=copy)
        if copy is False:
            raise ValueError("a released seeded weight is drawn anew on each use: there is no array to view")
        w = next(self.blocks([0, self.shape[0]]))
        return w if dtype is None else w.astype(dtype, copy=False)


@dataclass(frozen=True)
class Seed:
    """Where a zoo model's weights come from: the generator seeded with `value` (SeededWeight), or,
    with values=False, nowhere: each weight a Placeholder of its shape, for a compile that only
    times its program (compiler/driver.py, shape_only). Small parameters (biases, batch-norm
    statistics) are drawn either way (microseconds), their values meaningless without the weights'
    draws before them, and a shape-only compile's quantization puts zeros in their place."""

    value: int = 0
    values: bool = True


@dataclass(frozen=True)
class Placeholder(Float32Shape):
    """A float32 weight known by its shape alone. Stands where an array would for what reads only
    shapes (shape inference, MAC and parameter counts, the shape-only quantization); read as an
    array it is zeros (np.zeros: pages the kernel maps on first touch, so no memory until used)."""

    shape: tuple[int, ...]

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        return np.zeros(self.shape, dtype or self.dtype)


Weight = np.ndarray | SeededWeight | Placeholder


def weight(rng: np.random.Generator, shape: tuple[int, ...], factor: np.float32,
           seed: Seed) -> SeededWeight | Placeholder:
    """The zoo's weight of `shape`: drawn from `rng` (draw), or a Placeholder when `seed` has no values."""
    if not seed.values:
        return Placeholder(tuple(int(d) for d in shape))
    return draw(rng, shape, factor)


def draw(rng: np.random.Generator, shape: tuple[int, ...], factor: np.float32,
         lazy_bytes: int = LAZY_BYTES) -> SeededWeight:
    """standard_normal(shape) * factor in float32 from `rng`, with its values unless it is bigger
    than `lazy_bytes` (rng then stands where it would after the draw either way)."""
    shape = tuple(int(d) for d in shape)
    state = rng.bit_generator.state
    if 4 * math.prod(shape) <= lazy_bytes:
        w = rng.standard_normal(shape, dtype=np.float32)
        w *= factor
        return SeededWeight(shape, state, np.float32(factor), w)
    buf = np.empty(SKIP_CHUNK, np.float32)
    left = math.prod(shape)
    while left:
        k = min(left, SKIP_CHUNK)
        rng.standard_normal(dtype=np.float32, out=buf[:k])
        left -= k
    return SeededWeight(shape, state, np.float32(factor))


def row_blocks(w: Weight, cuts: list[int]) -> Iterator[np.ndarray]:
    """w[cuts[i]:cuts[i + 1]] for each i, in order, as float32 arrays (views of an array; a
    seeded weight drawn block by block)."""
    if isinstance(w, SeededWeight):
        yield from w.blocks(cuts)
        return
    w = np.asarray(w)
    for r0, r1 in zip(cuts, cuts[1:]):
        yield w[r0:r1]


def even_cuts(rows: int, most: int) -> list[int]:
    """Cut points splitting `rows` into consecutive blocks of at most `most` rows."""
    step = max(1, most)
    return list(range(0, rows, step)) + [rows]
