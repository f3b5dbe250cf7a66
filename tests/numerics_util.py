"""The harness of the bit-exact instruction tests (test_numerics*.py): run one instruction
through the simulator, compare bits, and draw data that reaches the edge cases."""
from __future__ import annotations

import os
import sys
import warnings

import numpy as np
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

from mlusim.isa.encoding import Instr
from mlusim.program import Kernel, Program, TensorDecl, allocate
from mlusim.sim import simulate

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import isa_reference as R

NP = R.NP
DT_OF = {np.dtype(v): k for k, v in NP.items()}
INT_DT = R.INT_DT
FLOAT_DT = R.FLOAT_DT
ALL_DT = INT_DT + FLOAT_DT
NRAM_BYTES = 384 * 1024
WRAM_BYTES = 1024 * 1024
ALIGN = 64

PROP = settings(max_examples=int(os.environ.get("NUMERICS_EXAMPLES", "200")), deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                       HealthCheck.filter_too_much])


# --------------------------------------------------------------------------------------------------
# harness
# --------------------------------------------------------------------------------------------------
def _align(a: int) -> int:
    return -(-a // ALIGN) * ALIGN


def run(mn: str, inputs: dict, out_dt: str, out_shape, **fields) -> np.ndarray:
    """Run one compute instruction `mn`. `inputs` maps an address field name to (space, array): each
    array becomes a GDRAM const tensor loaded by DMA into NRAM/WRAM at a fresh 64-byte aligned
    address; `dst` is a fresh NRAM buffer of `out_shape` x `out_dt` that is stored back and returned."""
    tensors, loads = [], []
    nxt = {"nram": 0, "wram": 0}
    for name, (space, arr) in inputs.items():
        arr = np.ascontiguousarray(arr)
        assert arr.size > 0
        a = _align(nxt[space])
        nxt[space] = a + arr.nbytes
        fields[name] = a
        t = TensorDecl(f"in_{name}", "const", DT_OF[arr.dtype], (arr.size,), -1, data=arr.reshape(-1))
        tensors.append(t)
        loads.append((space, a, t))
    nout = int(np.prod(out_shape))
    dst = _align(nxt["nram"])
    nxt["nram"] = dst + nout * np.dtype(NP[out_dt]).itemsize
    assert nxt["nram"] <= NRAM_BYTES and nxt["wram"] <= WRAM_BYTES
    y = TensorDecl("y", "output", out_dt, (nout,), -1)
    tensors.append(y)
    allocate(tensors)
    stream = []
    for i, (space, a, t) in enumerate(loads):
        deps = {"sig": "cp"} if i == len(loads) - 1 else {}
        stream.append(Instr.make("dma", dir="g2n" if space == "nram" else "g2w", dst=a, src=t.addr,
                                 size=t.nbytes, **deps))
    deps = {"wait": "ld"} if loads else {}
    stream.append(Instr.make(mn, dst=dst, sig="st", **deps, **fields))
    stream.append(Instr.make("dma", dir="n2g", dst=y.addr, src=dst, size=y.nbytes, wait="cp"))
    prog = Program([Kernel("k", "block", 1, [stream])], tensors)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        res = simulate(prog, "mlu270", cores=1)
    return res.outputs["y"].reshape(out_shape)


def assert_bits(got: np.ndarray, exp: np.ndarray, ctx=None):
    """Bit-for-bit equality; floats compared through their bit patterns (NaN payloads included)."""
    got, exp = np.asarray(got), np.asarray(exp)
    assert got.dtype == exp.dtype, (got.dtype, exp.dtype)
    assert got.shape == exp.shape, (got.shape, exp.shape)
    if exp.dtype.kind == "f":
        u = {2: np.uint16, 4: np.uint32}[exp.dtype.itemsize]
        g, e = got.view(u), exp.view(u)
    else:
        g, e = got, exp
    if not np.array_equal(g, e):
        bad = np.argwhere(g != e)
        lines = []
        for idx in bad[:8]:
            idx = tuple(idx)
            lines.append(f"  at {idx}: got {got[idx]!r} (0x{int(g[idx]) & 0xFFFFFFFF:x}) "
                         f"expected {exp[idx]!r} (0x{int(e[idx]) & 0xFFFFFFFF:x})")
        raise AssertionError(f"{len(bad)} of {exp.size} elements differ {ctx or ''}\n" + "\n".join(lines))


# --------------------------------------------------------------------------------------------------
# data generators (numpy RNG seeded by hypothesis, so runs are deterministic)
# --------------------------------------------------------------------------------------------------
def rand_int(rng, dt, shape, extreme=0.2, lim=None):
    lo, hi = R.int_range(dt)
    if lim is not None:
        lo, hi = max(lo, lim[0]), min(hi, lim[1])
    x = rng.integers(lo, hi, size=shape, endpoint=True, dtype=np.int64)
    ext = np.array(sorted({lo, lo + 1, -1 if lo < 0 else lo, 0 if lo <= 0 else lo, 1, hi - 1, hi}),
                   dtype=np.int64)
    ext = ext[(ext >= lo) & (ext <= hi)]
    mask = rng.random(shape) < extreme
    x = np.where(mask, rng.choice(ext, size=shape), x)
    return x.astype(NP[dt])


def rand_float(rng, dt, shape, specials=False, nan=False, neg_zero=False):
    n = int(np.prod(shape))
    p, emin, emax = {"f16": (11, -14, 15), "f32": (24, -126, 127)}[dt]
    fmax = float(np.finfo(NP[dt]).max)
    kind = rng.integers(0, 4, n)
    sign = rng.choice([-1.0, 1.0], n)
    wide = sign * np.ldexp(1.0 + rng.random(n), rng.integers(emin - p + 1, emax + 1, n))
    halves = rng.integers(-80, 81, n) / 2.0                 # exact x.5 ties and small integers
    modest = rng.standard_normal(n) * 8.0
    ints = rng.integers(-300, 301, n).astype(np.float64)
    vals = np.select([kind == 0, kind == 1, kind == 2], [wide, halves, modest], ints)
    vals = np.clip(vals, -fmax, fmax)
    x = vals.astype(NP[dt])
    if specials:
        sp = [np.inf, -np.inf, fmax, -fmax, float(np.finfo(NP[dt]).smallest_subnormal), 0.0]
        if nan:
            sp.append(np.nan)
        if neg_zero:
            sp.append(-0.0)
        mask = rng.random(n) < 0.15
        x = np.where(mask, np.array(sp, dtype=NP[dt])[rng.integers(0, len(sp), n)], x)
    if not neg_zero:
        x = np.where(x == 0, NP[dt](0.0), x)
    return x.astype(NP[dt]).reshape(shape)


def rand_data(rng, dt, shape, **kw):
    if dt in INT_DT:
        return rand_int(rng, dt, shape)
    return rand_float(rng, dt, shape, **kw)


seeds = st.integers(0, 2**32 - 1)


def f32_field(x) -> int:
    return int(np.array([x], dtype=np.float32).view(np.uint32)[0])
