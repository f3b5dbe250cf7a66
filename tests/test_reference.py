"""The float reference's convolution (compiler/reference.py): calibration's scales are maxima of
its float32 sums, so a faster formula must give every sum bit for bit."""
from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
from threadpoolctl import threadpool_limits

from mlusim.compiler import passes, reference, zoo


def per_matrix_conv(x, w, stride, pads, groups, dtype=np.float32, dil=(1, 1)):
    """The formula `_conv_acc` keeps: per tap (in order) and group, numpy's batched
    `tap @ w[:, :, i, j].T` (one BLAS product per image row), added to the sum; a depthwise conv's
    products are elementwise."""
    pt, pb, pl, pr = pads
    xp = np.pad(x.astype(dtype), ((0, 0), (0, 0), (pt, pb), (pl, pr)))
    co, cig, kh, kw = w.shape
    cog = co // groups
    ho = (xp.shape[2] - dil[0] * (kh - 1) - 1) // stride[0] + 1
    wo = (xp.shape[3] - dil[1] * (kw - 1) - 1) // stride[1] + 1
    out = None
    for i in range(kh):
        for j in range(kw):
            y0, x0 = i * dil[0], j * dil[1]
            t = xp[:, :, y0:y0 + stride[0] * (ho - 1) + 1:stride[0], x0:x0 + stride[1] * (wo - 1) + 1:stride[1]]
            t = t.transpose(0, 2, 3, 1)
            wij = w[:, :, i, j].astype(dtype)
            if cig == cog == 1:
                p = t * wij[:, 0]
            else:
                p = np.concatenate([t[..., g * cig:(g + 1) * cig] @ wij[g * cog:(g + 1) * cog].T
                                    for g in range(groups)], axis=-1)
            if out is None:
                out = p if groups == 1 else np.zeros_like(p) + p
            else:
                out += p
    return out.transpose(0, 3, 1, 2)


# (n, ci, h, w, co, k, stride, pad, groups)
SHAPES = [
    (2, 64, 14, 14, 64, 1, 1, 0, 1),        # 1x1
    (1, 64, 14, 14, 128, 1, 2, 0, 1),       # 1x1 stride 2, batch 1
    (2, 32, 15, 13, 48, 3, 1, 1, 1),        # 3x3, odd sides
    (2, 16, 17, 17, 24, 3, 2, 1, 1),        # 3x3 stride 2
    (2, 3, 32, 32, 16, 7, 2, 3, 1),         # 7x7 stem
    (1, 512, 7, 7, 512, 3, 1, 1, 1),        # a long reduction past the small-matrix bound: one GEMM
    (2, 512, 4, 4, 64, 3, 1, 1, 1),         # a long reduction under it: numpy's per-matrix calls
    (2, 1024, 14, 14, 256, 1, 1, 0, 1),
    (2, 32, 9, 9, 32, 3, 1, 1, 32),         # depthwise
    (2, 32, 9, 9, 64, 3, 2, 1, 4),          # grouped
    (2, 8, 6, 1, 16, 1, 1, 0, 1),           # a width of 1: numpy's matrix-vector path
    (2, 16, 3, 3, 16, 5, 1, 2, 1),          # taps reading mostly padding
    (2, 16, 6, 6, 16, 3, 3, 2, 1),          # a stride past the padding
    (2, 200, 11, 9, 64, 3, 1, 1, 1),        # channels-last copies in uneven blocks
    (3, 200, 13, 7, 40, 1, 1, 0, 1),
]


def channels_last(x: np.ndarray) -> np.ndarray:
    """x [n, c, h, w] laid out [n, h, w, c] in memory, as a conv's output is."""
    return np.ascontiguousarray(x.transpose(0, 2, 3, 1)).transpose(0, 3, 1, 2)


@pytest.mark.parametrize("threads,layout", [(1, "first"), (1, "last"), (2, "last")])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_conv_sums_are_the_per_matrix_products_bit_for_bit(shape, threads, layout, rng):
    n, ci, h, w_, co, k, s, p, groups = shape
    x = rng.standard_normal((n, ci, h, w_)).astype(np.float32)
    x = channels_last(x) if layout == "last" else x
    w = rng.standard_normal((co, ci // groups, k, k)).astype(np.float32)
    with threadpool_limits(limits=threads, user_api="blas"):
        got = reference._conv_acc(x, w, (s, s), (p,) * 4, (1, 1), groups, np.float32)
        want = per_matrix_conv(x, w, (s, s), (p,) * 4, groups)
    assert got.shape == want.shape and got.dtype == np.float32
    assert np.array_equal(got, want)


@pytest.mark.parametrize("pads,dil", [((0, 1, 1, 0), (1, 1)), ((2, 2, 2, 2), (2, 2)), ((1, 0, 3, 2), (2, 1))])
def test_asymmetric_padding_and_dilation(pads, dil, rng):
    x = channels_last(rng.standard_normal((2, 24, 9, 10)).astype(np.float32))
    w = rng.standard_normal((40, 24, 3, 3)).astype(np.float32)
    with threadpool_limits(limits=1, user_api="blas"):
        got = reference._conv_acc(x, w, (2, 1), pads, dil, 1, np.float32)
        want = per_matrix_conv(x, w, (2, 1), pads, 1, dil=dil)
    assert got.shape == want.shape and np.array_equal(got, want)


def test_one_gemm_per_tap_where_numpy_would_make_transposed_gemms(rng, monkeypatch):
    calls = []
    rows = reference._conv_rows
    monkeypatch.setattr(reference, "_conv_rows", lambda x, *a: calls.append(x.shape) or rows(x, *a))
    monkeypatch.setattr(reference, "_rows_independent_blas", lambda: True)      # whatever the host's
    x = rng.standard_normal((2, 64, 8, 8)).astype(np.float32)
    w = rng.standard_normal((32, 64, 3, 3)).astype(np.float32)
    reference._conv_acc(x, w, (1, 1), (1,) * 4, (1, 1), 1, np.float32)
    assert calls == [(2, 64, 8, 8)]
    calls.clear()
    reference._conv_acc(np.asfortranarray(x), w[:, :, :1, :1], (1, 1), (0,) * 4, (1, 1), 1, np.float32)
    assert calls == []           # its taps are row-major matrices: numpy's calls kept
    reference._conv_acc(x, w[:, :32], (1, 1), (1,) * 4, (1, 1), 2, np.float32)
    assert calls == []           # grouped


def test_exact_integer_convolution_through_the_same_path(rng):
    x = rng.integers(-128, 128, (2, 40, 9, 9))
    w = rng.integers(-128, 128, (24, 40, 3, 3))
    got = reference._conv_i(x, w, (2, 2), (1,) * 4, (1, 1), 1)
    want = per_matrix_conv(x.astype(np.int64), w.astype(np.int64), (2, 2), (1,) * 4, 1, np.int64)
    assert got.dtype == np.int64 and np.array_equal(got, want)


def test_other_blas_cores_keep_numpys_per_matrix_calls():
    """OpenBLAS's Haswell kernels give the rows of a tile's tail other sums than a full tile's, so
    one GEMM per tap would change the scales there: the reference sees the core and keeps numpy's
    calls (a fresh process: the core is chosen when the library loads)."""
    code = (
        "import numpy as np\n"
        "from mlusim.compiler import reference as r\n"
        "x = np.random.default_rng(0).standard_normal((2, 64, 14, 14)).astype(np.float32)\n"
        "w = np.random.default_rng(1).standard_normal((64, 64, 1, 1)).astype(np.float32)\n"
        "want = np.matmul(x.transpose(0, 2, 3, 1), w[:, :, 0, 0].T).transpose(0, 3, 1, 2)\n"
        "got = r._conv_acc(x, w, (1, 1), (0,) * 4, (1, 1), 1, np.float32)\n"
        "print(r._rows_independent_blas(), np.array_equal(got, want))\n")
    env = dict(os.environ, OPENBLAS_CORETYPE="Haswell", OPENBLAS_NUM_THREADS="1")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "True"]


def window_max(x, kernel, stride, pads):
    """The max pool `_pool_f` keeps: numpy's max over a sliding window view's last two axes."""
    pt, pb, pl, pr = pads
    xp = np.pad(x, ((0, 0), (0, 0), (pt, pb), (pl, pr)), constant_values=-np.inf)
    win = np.lib.stride_tricks.sliding_window_view(xp, kernel, axis=(2, 3))[:, :, ::stride[0], ::stride[1]]
    return win.max(axis=(-2, -1)).astype(np.float32)


@pytest.mark.parametrize("values", ["signed zeros", "relu", "nan"])
@pytest.mark.parametrize("kernel, stride, pads", [((3, 3), (2, 2), (1, 1, 1, 1)), ((2, 2), (2, 2), (0, 0, 0, 0)),
                                                  ((3, 2), (1, 2), (0, 2, 1, 0)), ((1, 1), (3, 1), (0, 0, 0, 0))])
def test_max_pool_is_the_window_max_bit_for_bit(values, kernel, stride, pads, rng):
    """Down to the sign of a zero and a NaN, on NCHW and channels-last inputs."""
    x = rng.standard_normal((2, 5, 9, 11)).astype(np.float32)
    if values == "signed zeros":
        x = rng.choice(np.array([-0.0, 0.0, 0.5], np.float32), x.shape)
    elif values == "relu":
        x = np.maximum(x, 0)
    else:
        x[rng.random(x.shape) < 0.1] = np.nan
    for xin in (x, np.ascontiguousarray(x.transpose(0, 2, 3, 1)).transpose(0, 3, 1, 2)):
        got = reference._pool_f(xin, kernel, stride, pads, "max")
        want = window_max(xin, kernel, stride, pads)
        assert got.shape == want.shape and np.array_equal(got.view(np.uint32), want.view(np.uint32))


def test_the_per_image_prefix_ends_at_the_first_linear():
    g = passes.optimize(zoo.build("resnet18", 2, 32))
    k = reference.per_image_prefix(g)
    assert g.nodes[k].op == "linear" and all(n.op in reference.PER_IMAGE for n in g.nodes[:k])


def test_halves_joined_keep_the_channels_last_layout():
    rng = np.random.default_rng(1)
    whole = rng.standard_normal((3, 5, 4, 6), dtype=np.float32).transpose(0, 3, 1, 2).copy(order="K")
    got = reference.joined(whole[:1], whole[1:])
    assert got.strides == whole.strides and np.array_equal(got, whole)
