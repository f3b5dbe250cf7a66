"""Bit-exact checks of the instructions added for training (vtrans, vcmp, vpoolbp) and of vaddrq, vrqadd against plain
loop references written from docs/isa.md, not from the simulator's numpy code."""
from __future__ import annotations

import numpy as np
import pytest

from conftest import I, program, run, tensors
from mlusim.program import TensorDecl

NP = {"i8": np.int8, "i16": np.int16, "i32": np.int32, "f32": np.float32, "f16": np.float16}


def one(ins_fn, inputs: dict, out_dt: str, out_count: int):
    """Load each input to NRAM, run one instruction, store its result."""
    decls = [TensorDecl(k, "const", dt, (len(v),), -1, data=v.astype(NP[dt])) for k, (dt, v) in inputs.items()]
    decls.append(TensorDecl("y", "output", out_dt, (out_count,), -1))
    t = tensors(*decls)
    addrs, off, s = {}, 0, []
    for d in t[:-1]:
        addrs[d.name] = off
        s.append(I("dma", dir="g2n", dst=off, src=d.addr, size=d.nbytes))
        off += -(-d.nbytes // 64) * 64
    s[-1].args["sig"] = 2   # cp
    dst = off
    ins = ins_fn(addrs, dst)
    ins.args["wait"], ins.args["sig"] = 1, 4
    s.append(ins)
    s.append(I("dma", dir="n2g", dst=t[-1].addr, src=dst, size=t[-1].nbytes, wait="cp"))
    return run(program(s, t)).outputs["y"]


@pytest.mark.parametrize("dt", ["i8", "i16", "f32"])
@pytest.mark.parametrize("rows,cols", [(1, 7), (5, 3), (64, 33)])
def test_vtrans(dt, rows, cols, rng):
    src = rng.integers(-100, 100, rows * cols)
    out = one(lambda a, d: I("vtrans", dt=dt, dst=d, src=a["x"], rows=rows, cols=cols), {"x": (dt, src)}, dt, rows * cols)
    ref = [src[r * cols + c] for c in range(cols) for r in range(rows)]
    assert np.array_equal(out, np.array(ref, dtype=NP[dt]))


@pytest.mark.parametrize("mode", ["gt", "ge", "lt", "le", "eq", "ne"])
@pytest.mark.parametrize("dt", ["i8", "f32"])
def test_vcmp(mode, dt, rng):
    a = rng.integers(-3, 3, 200)
    b = rng.integers(-3, 3, 200)
    out = one(lambda ad, d: I("vcmp", mode=mode, dt=dt, dst=d, a=ad["a"], b=ad["b"], n=200),
              {"a": (dt, a), "b": (dt, b)}, dt, 200)
    op = {"gt": lambda x, y: x > y, "ge": lambda x, y: x >= y, "lt": lambda x, y: x < y, "le": lambda x, y: x <= y,
          "eq": lambda x, y: x == y, "ne": lambda x, y: x != y}[mode]
    assert np.array_equal(out, np.array([1 if op(x, y) else 0 for x, y in zip(a, b)], dtype=NP[dt]))


def ref_poolbp(x, g, k, s, pad):
    n, h, w, c = x.shape
    ho, wo = g.shape[1:3]
    out = np.zeros(x.shape, dtype=np.float64)
    for b in range(n):
        for oy in range(ho):
            for ox in range(wo):
                for ch in range(c):
                    best, where = None, None
                    for i in range(k):                       # row-major scan, first maximum wins
                        for j in range(k):
                            y, xx = oy * s + i - pad, ox * s + j - pad
                            if 0 <= y < h and 0 <= xx < w and (best is None or x[b, y, xx, ch] > best):
                                best, where = x[b, y, xx, ch], (y, xx)
                    out[b, where[0], where[1], ch] += g[b, oy, ox, ch]
    return out


@pytest.mark.parametrize("k,s,pad", [(2, 2, 0), (3, 2, 1), (3, 1, 1)])
def test_vpoolbp_first_maximum_gets_the_gradient(k, s, pad, rng):
    n, h, w, c = 2, 6, 5, 3
    x = rng.integers(-2, 3, (n, h, w, c)).astype(np.float32)   # many ties
    ho, wo = (h + 2 * pad - k) // s + 1, (w + 2 * pad - k) // s + 1
    g = rng.standard_normal((n, ho, wo, c)).astype(np.float32)
    out = one(lambda a, d: I("vpoolbp", dt="f32", dst=d, src=a["x"], grad=a["g"], n=n, hi=h, wi=w, c=c, kh=k, kw=k,
                             sh=s, sw=s, pt=pad, pb=pad, pl=pad, pr=pad),
              {"x": ("f32", x.reshape(-1)), "g": ("f32", g.reshape(-1))}, "f32", x.size)
    assert np.array_equal(out, ref_poolbp(x, g, k, s, pad).astype(np.float32).reshape(-1))


@pytest.mark.parametrize("sdt", ["i8", "i16"])
@pytest.mark.parametrize("c", [1, 3, 64])
def test_vaddrq_equals_cast_requant_add(sdt, c, rng):
    """vaddrq (the fused residual join) against a loop written from its docs/isa.md line."""
    n = c * 5
    acc = rng.integers(-(1 << 31), (1 << 31) - 1, n, dtype=np.int64)
    acc[:3] = [(1 << 31) - 1, -(1 << 31), (1 << 31) - 2]       # saturation at both ends
    lim = 127 if sdt == "i8" else 32767
    src = rng.integers(-lim - 1, lim + 1, n)
    params = np.stack([rng.integers(-300, 300, c), rng.integers(1, 1 << 20, c), rng.integers(0, 40, c)], 1).reshape(-1)
    out = one(lambda a, d: I("vaddrq", sdt=sdt, dst=d, a=a["acc"], src=a["x"], params=a["p"], c=c, n=n),
              {"acc": ("i32", acc), "x": (sdt, src), "p": ("i32", params)}, "i32", n)
    ref = []
    for i in range(n):
        ch = i % c
        bias, mult, shift = (int(v) for v in params[ch * 3:ch * 3 + 3])
        prod = (int(src[i]) + bias) * mult
        q, r = divmod(prod, 1 << shift) if shift else (prod, 0)
        half = 1 << (shift - 1) if shift else 0
        if shift and (r > half or (r == half and q % 2)):       # round half to even
            q += 1
        q = max(-(1 << 31), min((1 << 31) - 1, q))
        ref.append(max(-(1 << 31), min((1 << 31) - 1, int(acc[i]) + q)))
    assert out.astype(np.int64).tolist() == ref


def _rne_requant(v: int, bias: int, mult: int, shift: int) -> int:
    prod = (v + bias) * mult
    q, r = divmod(prod, 1 << shift) if shift else (prod, 0)
    half = 1 << (shift - 1) if shift else 0
    if shift and (r > half or (r == half and q % 2)):       # round half to even
        q += 1
    return q


@pytest.mark.parametrize("sdt", ["i8", "i16"])
@pytest.mark.parametrize("c", [1, 3, 64])
@pytest.mark.parametrize("big", [False, True])
def test_vrqadd_is_the_join_then_the_requantization(sdt, c, big, rng):
    """vrqadd (a residual conv's epilogue in one pass) against a loop written from its docs/isa.md line,
    and against the two instructions it fuses. `big` multipliers and biases push both
    requantizations past float64's exact range (the int64 paths)."""
    n = c * 6
    acc = rng.integers(-(1 << 31), (1 << 31) - 1, n, dtype=np.int64)
    acc[:3] = [(1 << 31) - 1, -(1 << 31), (1 << 31) - 2]       # the join saturates at both ends
    lim = 127 if sdt == "i8" else 32767
    src = rng.integers(-lim - 1, lim + 1, n)
    rb, rm, om = (1 << 30, 1 << 31, 1 << 31) if big else (300, 1 << 20, 1 << 16)
    rpar = np.stack([rng.integers(-rb, rb, c), rng.integers(1, rm, c), rng.integers(0, 40, c)], 1).reshape(-1)
    opar = np.stack([rng.integers(-300, 300, c), rng.integers(1, om, c), rng.integers(16, 40, c)], 1).reshape(-1)
    lo, hi, zp = 0, lim, 3                                    # a relu clamp and a zero point
    data = {"acc": ("i32", acc), "x": (sdt, src), "rp": ("i32", rpar), "op": ("i32", opar)}
    out = one(lambda a, d: I("vrqadd", sdt=sdt, odt=sdt, dst=d, a=a["acc"], src=a["x"], rparams=a["rp"],
                             params=a["op"], c=c, n=n, zp=zp, lo=lo, hi=hi), data, sdt, n)
    ref = []
    for i in range(n):
        ch = i % c
        s = int(acc[i]) + max(-(1 << 31), min((1 << 31) - 1, _rne_requant(int(src[i]), *map(int, rpar[ch * 3:ch * 3 + 3]))))
        s = max(-(1 << 31), min((1 << 31) - 1, s))
        ref.append(max(lo, min(hi, _rne_requant(s, *map(int, opar[ch * 3:ch * 3 + 3])) + zp)))
    assert out.astype(np.int64).tolist() == ref
    joined = one(lambda a, d: I("vaddrq", sdt=sdt, dst=d, a=a["acc"], src=a["x"], params=a["rp"], c=c, n=n),
                 data, "i32", n)
    two = one(lambda a, d: I("vrequant", odt=sdt, dst=d, src=a["j"], params=a["op"], c=c, n=n, zp=zp, lo=lo, hi=hi),
              {"j": ("i32", joined), "op": ("i32", opar)}, sdt, n)
    assert np.array_equal(out, two)


def test_one_vrqadd_issued_again_reads_its_operands_anew(rng):
    """vrqadd keeps its NRAM views per instruction and core (vector.JoinViews): the same
    instruction issued twice, every operand (sums, shortcut, both parameter blocks) reloaded in
    place between the issues, gives each issue's own result."""
    c, n = 4, 24
    sets = []
    for k in range(2):
        acc = rng.integers(-(1 << 20), 1 << 20, n)
        src = rng.integers(-128, 128, n)
        rpar = np.stack([rng.integers(-300, 300, c), rng.integers(1, 1 << 20, c), rng.integers(0, 30, c)], 1).reshape(-1)
        opar = np.stack([rng.integers(-300, 300, c), rng.integers(1, 1 << 16, c), rng.integers(16, 30, c)], 1).reshape(-1)
        sets.append({f"acc{k}": ("i32", acc), f"x{k}": ("i8", src), f"rp{k}": ("i32", rpar), f"op{k}": ("i32", opar)})
    decls = [TensorDecl(name, "const", dt, (len(v),), -1, data=v.astype(NP[dt]))
             for d in sets for name, (dt, v) in d.items()]
    decls += [TensorDecl(f"y{k}", "output", "i8", (n,), -1) for k in range(2)]
    t = {d.name: d for d in tensors(*decls)}
    at = {"acc": 0, "x": 256, "rp": 512, "op": 768}
    dst = 1024
    ins = I("vrqadd", sdt="i8", odt="i8", dst=dst, a=at["acc"], src=at["x"], rparams=at["rp"], params=at["op"],
            c=c, n=n, zp=0, lo=-128, hi=127, wait="ld", sig="st")
    s = []
    for k in range(2):
        sync = {"acc": {"wait": "st"} if k else {}, "op": {"sig": "cp"}}
        loads = [I("dma", dir="g2n", dst=at[f], src=t[f"{f}{k}"].addr, size=t[f"{f}{k}"].nbytes, **sync.get(f, {}))
                 for f in at]
        s += loads + [ins, I("dma", dir="n2g", dst=t[f"y{k}"].addr, src=dst, size=n, wait="cp",
                                **({} if k else {"sig": "ld"}))]
    out = run(program(s, list(t.values()))).outputs
    for k, d in enumerate(sets):
        acc, src, rpar, opar = (d[f"{f}{k}"][1] for f in ("acc", "x", "rp", "op"))
        ref = []
        for i in range(n):
            ch = i % c
            j = int(acc[i]) + _rne_requant(int(src[i]), *map(int, rpar[ch * 3:ch * 3 + 3]))
            ref.append(max(-128, min(127, _rne_requant(j, *map(int, opar[ch * 3:ch * 3 + 3])))))
        assert out[f"y{k}"].astype(np.int64).tolist() == ref, k
