"""THE instruction table. Every other part of the ISA (encoder, decoder, assembler, disassembler,
docs/isa.md, the engine's dispatch) is derived from the entries below; nothing is restated elsewhere.

An entry says: mnemonic and opcode, the unit that executes it, its operand fields (kind, width,
default), which memory it touches (for bounds checks and traffic reports), its cycle cost as a
function of its fields and the hardware config, and its functional semantics (numpy, bit-exact).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from mlusim.isa import timing as T
from mlusim.isa.semantics import dma as SD
from mlusim.isa.semantics import mac as SM
from mlusim.isa.semantics import scalar as SC
from mlusim.isa.semantics import vector as SV
from mlusim.isa.fields import (DIRECTIONS, DTYPES, F32, OUT_DTYPES, SPECIAL_REGS, Addr, Deps, Enum, Field, Imm, Reg,
                               Target, encoded_width)

UNITS = {
    "scalar": "issue stage: scalar ALU and branches, executed in order as the stream is fetched",
    "sync": "issue stage: waits for this core's queues to drain, then for the other participants",
    "dma": "by direction: move queue (SRAM into NRAM/WRAM, the Move-DMA), load queue (other data toward "
           "the core, and GDRAM into SRAM) or store queue (the rest: data away from the core)",
    "mac": "compute queue, MAC array (WFU): int8/int16 conv and matmul (int8 into int32, int16 exact)",
    "vec": "compute queue, vector unit (NFU): elementwise, pooling, requantize, transcendental",
}


@dataclass(frozen=True)
class OpSpec:
    mnemonic: str
    opcode: int
    unit: str
    fields: tuple[Field, ...]
    doc: str
    execute: Callable | None = None          # (ctx, args) -> None, mutates memory/registers
    cycles: Callable | None = None           # (args, cfg) -> cycles on its unit
    touches: Callable | None = None          # (args) -> [(space, addr, nbytes, 'r'|'w', align)]
    check: Callable | None = None            # (args) -> error text or None
    positional: int = 0                      # leading fields written without `name=`
    by_name: dict[str, Field] = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self):
        self.by_name.update({f.name: f for f in self.fields})
        # (name, offset bits) of every address field: the engine resolves these on each issue
        object.__setattr__(self, "addr_fields", tuple((f.name, f.bits) for f in self.fields
                                                      if isinstance(f, Addr)))
        # names of its branch-target fields: a program's validation checks each lands in the stream
        object.__setattr__(self, "target_fields", tuple(f.name for f in self.fields if isinstance(f, Target)))
        # (field, name, bit shift, width, valid range) in encoding order: encoding, decoding and
        # Instr.make walk this instead of recomputing widths and ranges per instruction
        layout, shift = [], 8
        for f in self.fields:
            w = encoded_width(f)
            layout.append((f, f.name, shift, w, f.range()))
            shift += w
        object.__setattr__(self, "layout", tuple(layout))
        # decoding's view of the layout: (name, shift, mask, sign bit or 0, valid range); Field.unpack
        # is the identity and Imm.unpack sign-extends, so these two cases cover every field kind
        for f in self.fields:
            assert type(f).unpack in (Field.unpack, Imm.unpack), f"{self.mnemonic}: field {f.name} decodes its own way"
        object.__setattr__(self, "decode_layout", tuple(
            (name, sh, (1 << w) - 1, (1 << (w - 1)) if isinstance(f, Imm) and f.signed else 0, lo, hi)
            for f, name, sh, w, (lo, hi) in layout))
        object.__setattr__(self, "used_bits", shift)
        # Instr.make's fast path: every field at its default (required ones filled in by the caller),
        # each field's (lo, hi, id) for range checks and parsed names, and the required names
        object.__setattr__(self, "make_template", {f.name: f.default for f in self.fields})
        object.__setattr__(self, "make_ranges", {f.name: (lo, hi, id(f)) for f, _n, _s, _w, (lo, hi) in layout})
        object.__setattr__(self, "make_required", frozenset(f.name for f in self.fields if f.default is None))
        object.__setattr__(self, "nwords", (shift + 31) // 32)

    @property
    def queued(self) -> bool:
        return self.unit in ("dma", "mac", "vec")

    @property
    def nbits(self) -> int:
        return 8 + sum(encoded_width(f) for f in self.fields)



# --- field constructors, so the table reads as a table -------------------------------------------
def R(name, doc=""):
    return Reg(name, doc)


def U(name, bits, default=None, doc=""):
    return Imm(name, bits, default, doc)


def SI(name, bits, default=None, doc=""):
    return Imm(name, bits, default, doc, signed=True)


def A(name, space, bits=24, doc=""):
    return Addr(name, bits, None, doc, space=space)


def DT(name="dt", default=None, doc="element type"):
    return Enum(name, 3, None if default is None else DTYPES.index(default), doc, choices=DTYPES)


DEPS = (Deps("wait", 4, 0, "queues whose tokens this instruction pops before it starts"),
        Deps("sig", 4, 0, "queues this instruction pushes a token to when it completes"))
GEOM = (U("hi", 16, doc="input height"), U("wi", 16, doc="input width"))
PADS = tuple(U(p, 6, 0, f"{d} padding") for p, d in (("pt", "top"), ("pb", "bottom"), ("pl", "left"),
                                                    ("pr", "right")))
WIN = (U("kh", 6, doc="window height"), U("kw", 6, doc="window width"),
       U("sh", 5, 1, "vertical stride"), U("sw", 5, 1, "horizontal stride"))
DIL = (U("dh", 5, 1, "vertical dilation"), U("dw", 5, 1, "horizontal dilation"))
N24 = U("n", 24, doc="element count")
LOHI = (SI("lo", 32, -(1 << 31), "lower clamp (after zero point)"),
        SI("hi", 32, (1 << 31) - 1, "upper clamp (after zero point)"))


def _binary(mn, opc, fn, what, note=""):
    return OpSpec(mn, opc, "vec",
                  (DT(), A("dst", "nram"), A("a", "nram"), A("b", "nram"), N24) + DEPS,
                  f"dst[i] = {what} over `n` elements; integer results saturate to `dt`{note}.",
                  SV.binary(fn), T.vec_elementwise, SV.touch_binary, positional=5)


OPS: tuple[OpSpec, ...] = (
    # ---- scalar and control (issue stage) -----------------------------------------------------
    OpSpec("nop", 0x00, "scalar", (), "Does nothing for one scalar slot.", SC.nop, T.scalar),
    OpSpec("li", 0x01, "scalar", (R("rd"), SI("imm", 48)), "rd = imm.", SC.li, T.scalar, positional=2),
    OpSpec("add", 0x02, "scalar", (R("rd"), R("rs1"), R("rs2")), "rd = rs1 + rs2.", SC.alu("add"),
           T.scalar, positional=3),
    OpSpec("sub", 0x03, "scalar", (R("rd"), R("rs1"), R("rs2")), "rd = rs1 - rs2.", SC.alu("sub"),
           T.scalar, positional=3),
    OpSpec("mul", 0x04, "scalar", (R("rd"), R("rs1"), R("rs2")), "rd = rs1 * rs2.", SC.alu("mul"),
           T.scalar, positional=3),
    OpSpec("addi", 0x05, "scalar", (R("rd"), R("rs1"), SI("imm", 32)), "rd = rs1 + imm.", SC.addi,
           T.scalar, positional=3),
    OpSpec("muli", 0x06, "scalar", (R("rd"), R("rs1"), SI("imm", 32)), "rd = rs1 * imm.", SC.muli,
           T.scalar, positional=3),
    OpSpec("rdsr", 0x07, "scalar", (R("rd"), Enum("sr", 3, None, "special register", SPECIAL_REGS)),
           "rd = a special register: the task's id and count, its core's and cluster's id and count.",
           SC.rdsr, T.scalar, positional=2),
    OpSpec("blt", 0x08, "scalar", (R("rs1"), R("rs2"), Target("target", 20, signed=True)),
           "Branch to target if rs1 < rs2.", SC.branch("lt"), T.scalar, positional=3),
    OpSpec("bge", 0x09, "scalar", (R("rs1"), R("rs2"), Target("target", 20, signed=True)),
           "Branch to target if rs1 >= rs2.", SC.branch("ge"), T.scalar, positional=3),
    OpSpec("bne", 0x0A, "scalar", (R("rs1"), R("rs2"), Target("target", 20, signed=True)),
           "Branch to target if rs1 != rs2.", SC.branch("ne"), T.scalar, positional=3),
    OpSpec("beq", 0x0B, "scalar", (R("rs1"), R("rs2"), Target("target", 20, signed=True)),
           "Branch to target if rs1 == rs2.", SC.branch("eq"), T.scalar, positional=3),
    OpSpec("jmp", 0x0C, "scalar", (Target("target", 20, signed=True),), "Jump to target.",
           SC.branch("al"), T.scalar, positional=1),
    # ---- synchronization (issue stage) --------------------------------------------------------
    OpSpec("sync", 0x10, "sync", (), "Wait until every instruction this core issued has completed "
           "(BANG `__sync()`)."),
    OpSpec("sync.cluster", 0x11, "sync", (), "Drain this core, then wait for the other cores of its "
           "cluster in the same union task (BANG `__sync_cluster()`). Illegal in BLOCK kernels."),
    OpSpec("sync.all", 0x12, "sync", (), "Drain this core, then wait for every core of the task group "
           "(BANG `__sync_all()`); in a BLOCK kernel, every core running the kernel."),
    # ---- DMA ------------------------------------------------------------------------------------
    OpSpec("dma", 0x20, "dma",
           (Enum("dir", 4, None, "direction, as BANG's mluMemcpyDirection_t", tuple(DIRECTIONS)),
            A("dst", "", 40), A("src", "", 40), U("size", 24, doc="bytes per segment"),
            U("dstride", 32, 0, "destination stride between segments"),
            U("sstride", 32, 0, "source stride between segments (0 repeats the source)"),
            U("count", 16, 1, "segments per block"),
            U("dstride2", 32, 0, "destination stride between blocks"),
            U("sstride2", 32, 0, "source stride between blocks"),
            U("count2", 16, 1, "blocks"),
            U("dcl", 5, 0, "s2s only: destination cluster within the union job, plus one (0: this "
                           "cluster); BANG's SRAM2SRAM with id_dst_cluster")) + DEPS,
           "Copy count2 x count segments of `size` bytes: segment (j, i) goes from "
           "src + j*sstride2 + i*sstride to dst + j*dstride2 + i*dstride. Directions from SRAM into the "
           "core run on the move queue (the Move-DMA); others from GDRAM into the core or into SRAM (`g2s`), or "
           "staying on the core, on the load queue (the IO-DMA's reads); the rest (to GDRAM or SRAM from "
           "the core, SRAM to GDRAM/SRAM, GDRAM to GDRAM) on the store queue.",
           SD.dma, None, SD.touch_dma, SD.check_dma, positional=4),
    # ---- MAC array --------------------------------------------------------------------------------
    OpSpec("conv", 0x30, "mac",
           (DT(), Enum("odt", 2, 0, "output type", OUT_DTYPES), A("dst", "nram"), A("src", "nram"),
            A("wgt", "wram"), U("n", 12, 1, "batch"), *GEOM, U("ci", 16, doc="input channels"),
            U("co", 16, doc="output channels"), *WIN, *PADS, *DIL,
            U("groups", 16, 1, "channel groups (groups == ci == co is depthwise)"),
            SI("pos", 8, 0, "output = acc * 2**pos when odt is a float type")) + DEPS,
           "2-D convolution. src is NHWC [n, hi, wi, ci] of `dt` (i8 or i16) in NRAM, wgt is "
           "[co, kh, kw, ci/groups] in WRAM, dst is NHWC [n, ho, wo, co]. i8 products accumulate exactly "
           "in a 32-bit two's complement accumulator; i16 sums stay exact (BANG's int16 conv writes "
           "float with a fix position). odt f16/f32 store acc*2**pos rounded to nearest even; i32 "
           "stores the i8 accumulator, or the i16 sum at position pos: rne(acc*2**pos) saturated. "
           "Padding reads zeros.",
           SM.conv, T.conv, SM.touch_conv, SM.check_conv),
    OpSpec("matmul", 0x31, "mac",
           (DT(), Enum("odt", 2, 0, "output type", OUT_DTYPES), A("dst", "nram"), A("a", "nram"),
            A("b", "wram"), U("m", 16, doc="rows of a"), U("k", 20, doc="reduction length"),
            U("n", 16, doc="rows of b (columns of dst)"),
            SI("pos", 8, 0, "output = acc * 2**pos when odt is a float type")) + DEPS,
           "dst[m, n] = a[m, k] . b[n, k]^T with a in NRAM and b in WRAM (b stored like conv weights, "
           "one row per output column); accumulation and output as for conv.",
           SM.matmul, T.matmul, SM.touch_matmul, SM.check_matmul),
    # ---- vector unit ---------------------------------------------------------------------------
    _binary("vadd", 0x40, "add", "a[i] + b[i]", ", except i32 sums, which wrap as the MAC array's "
            "int32 accumulator does (so partial sums of a split reduction add up to the whole one)"),
    _binary("vsub", 0x41, "sub", "a[i] - b[i]"),
    _binary("vmul", 0x42, "mul", "a[i] * b[i]"),
    _binary("vmax", 0x43, "max", "max(a[i], b[i])"),
    _binary("vmin", 0x44, "min", "min(a[i], b[i])"),
    OpSpec("vrelu", 0x45, "vec", (DT(), A("dst", "nram"), A("src", "nram"), N24) + DEPS,
           "dst[i] = max(src[i], 0).", SV.vrelu, T.vec_elementwise, SV.touch_unary, positional=4),
    OpSpec("vclamp", 0x46, "vec", (DT(), A("dst", "nram"), A("src", "nram"), N24) + LOHI + DEPS,
           "dst[i] = min(max(src[i], lo), hi) for integer `dt` (relu6 in the quantized domain).",
           SV.vclamp, T.vec_elementwise, SV.touch_unary, SV.check_int_dt, positional=4),
    OpSpec("vset", 0x47, "vec", (DT(), A("dst", "nram"), N24, SI("value", 32, 0)) + DEPS,
           "dst[i] = value (converted to `dt`).", SV.vset, T.vec_elementwise, SV.touch_set,
           positional=4),
    OpSpec("vcast", 0x48, "vec",
           (DT("sdt", doc="source type"), DT("ddt", doc="destination type"), A("dst", "nram"),
            A("src", "nram"), N24) + DEPS,
           "Convert types: integers saturate; float to integer rounds to nearest even and saturates "
           "(NaN becomes 0); float to float rounds to nearest even.",
           SV.vcast, T.vec_cast, SV.touch_cast, positional=5),
    OpSpec("vrequant", 0x49, "vec",
           (DT("odt", doc="output type (integer)"), A("dst", "nram"), A("src", "nram"),
            A("params", "nram", doc="int32 [c, 3]: bias, multiplier, shift per channel"),
            U("c", 16, 1, "channels (innermost dimension); 1 for per-tensor"), N24,
            SI("zp", 32, 0, "output zero point")) + LOHI + DEPS,
           "Requantize int32 accumulators: with ch = i mod c, dst[i] = clamp(rne((src[i] + bias[ch]) * "
           "mult[ch] / 2**shift[ch]) + zp, lo, hi), then saturated to `odt`. Products are exact "
           "(64-bit); rne rounds half to even.",
           SV.vrequant, T.vec_requant, SV.touch_requant, SV.check_requant),
    OpSpec("vdequant", 0x4A, "vec",
           (DT("sdt", doc="source type (integer)"), DT("odt", doc="output type (float)"),
            A("dst", "nram"), A("src", "nram"), N24, F32("scale", doc="float32 scale"),
            SI("zp", 32, 0, "source zero point")) + DEPS,
           "dst[i] = (src[i] - zp) * scale, computed exactly and rounded once to `odt`.",
           SV.vdequant, T.vec_cast, SV.touch_cast, SV.check_dequant),
    OpSpec("vquant", 0x4B, "vec",
           (DT("sdt", doc="source type (float)"), DT("odt", doc="output type (integer)"),
            A("dst", "nram"), A("src", "nram"), N24, F32("scale", doc="float32 scale"),
            SI("zp", 32, 0, "output zero point")) + DEPS,
           "dst[i] = saturate(rne(src[i] * scale) + zp): the product is exact, rounding is to nearest "
           "even.", SV.vquant, T.vec_cast, SV.touch_cast, SV.check_quant),
    OpSpec("vpool", 0x4C, "vec",
           (Enum("mode", 1, None, "max, or sum (average pooling's numerator)", ("max", "sum")), DT(),
            A("dst", "nram"), A("src", "nram"), U("n", 12, 1, "batch"), *GEOM,
            U("c", 16, doc="channels"), *WIN, *PADS) + DEPS,
           "Pooling over NHWC [n, hi, wi, c]. max keeps `dt` (padding never wins); sum writes int32 "
           "for integer `dt` (float32 for float) with padding as zeros, so that average pooling's "
           "divisor folds into a following vrequant.", SV.vpool, T.vec_pool, SV.touch_pool, SV.check_pool),
    OpSpec("vdwconv", 0x4D, "vec",
           (DT(), A("dst", "nram"), A("src", "nram"), A("wgt", "nram"), U("n", 12, 1, "batch"),
            *GEOM, U("c", 16, doc="channels"), *WIN, *PADS, *DIL) + DEPS,
           "Depthwise convolution on the vector unit: src NHWC [n, hi, wi, c], wgt [kh, kw, c] (both "
           "`dt`, in NRAM), dst int32 NHWC; exact accumulation wrapped to 32 bits for i8, saturated "
           "for i16; padding reads zeros.",
           SV.vdwconv, T.vec_dwconv, SV.touch_dwconv, SV.check_dwconv),
    OpSpec("vexp", 0x4E, "vec", (DT(), A("dst", "nram"), A("src", "nram"), N24) + DEPS,
           "dst[i] = exp(src[i]) for float `dt` (numpy's correctly-rounded-or-1ulp exp).",
           SV.unary_float("exp"), T.vec_transcendental, SV.touch_unary, SV.check_float_dt, positional=4),
    OpSpec("vlog", 0x4F, "vec", (DT(), A("dst", "nram"), A("src", "nram"), N24) + DEPS,
           "dst[i] = log(src[i]) for float `dt`.", SV.unary_float("log"), T.vec_transcendental,
           SV.touch_unary, SV.check_float_dt, positional=4),
    OpSpec("vreduce", 0x50, "vec",
           (Enum("mode", 2, None, "reduction", ("max", "min", "sum")), DT(), A("dst", "nram"),
            A("src", "nram"), U("rows", 20), U("cols", 20)) + DEPS,
           "dst[r] = reduce(src[r, 0..cols)). Integer sum writes int32 (saturating); float sum adds "
           "left to right in `dt`.", SV.vreduce, T.vec_reduce, SV.touch_reduce),
    OpSpec("vrow", 0x51, "vec",
           (Enum("op", 3, None, "operation", ("add", "sub", "mul", "div", "max")), DT(),
            A("dst", "nram"), A("a", "nram"), A("b", "nram"), U("rows", 20), U("cols", 20),
            Enum("axis", 1, 0, "b indexed by row (0) or by column (1)", ("row", "col"))) + DEPS,
           "dst[r, c] = a[r, c] op b[r] (axis=row) or b[c] (axis=col); integer results saturate (i32 add wraps, as vadd), "
           "integer div rounds toward zero (div by 0 gives 0).", SV.vrow, T.vec_row, SV.touch_row),
    OpSpec("vtrans", 0x52, "vec",
           (DT(), A("dst", "nram"), A("src", "nram"), U("rows", 20), U("cols", 20)) + DEPS,
           "2-D transpose: dst[c, r] = src[r, c] for a row-major [rows, cols] source (BANG "
           "`__bang_transpose`); used to lay out operands of backward matmuls.",
           SV.vtrans, T.vec_trans, SV.touch_trans),
    OpSpec("vcmp", 0x53, "vec",
           (Enum("mode", 3, None, "comparison", ("gt", "ge", "lt", "le", "eq", "ne")), DT(), A("dst", "nram"),
            A("a", "nram"), A("b", "nram"), N24) + DEPS,
           "dst[i] = 1 if a[i] <mode> b[i] else 0, in `dt` (a mask for selects, e.g. ReLU's backward).",
           SV.vcmp, T.vec_elementwise, SV.touch_binary, positional=6),
    OpSpec("vpoolbp", 0x54, "vec",
           (DT(), A("dst", "nram"), A("src", "nram"), A("grad", "nram"), U("n", 12, 1, "batch"), *GEOM,
            U("c", 16, doc="channels"), *WIN, *PADS) + DEPS,
           "Max-pool backward (BANG `__bang_maxpool_bp`): for each output window of src NHWC [n, hi, wi, c], "
           "the window's gradient grad[n, ho, wo, c] goes to the first position (row-major in the window) "
           "holding the window's maximum; dst [n, hi, wi, c] sums what each position receives. Padding "
           "never wins.", SV.vpoolbp, T.vec_poolbp, SV.touch_poolbp, SV.check_pool),
    OpSpec("vaddrq", 0x55, "vec",
           (DT("sdt", doc="shortcut type (integer)"), A("dst", "nram"), A("a", "nram", doc="int32 accumulators"),
            A("src", "nram"), A("params", "nram", doc="int32 [c, 3]: bias, multiplier, shift per channel"),
            U("c", 16, 1, "channels (innermost dimension); 1 for per-tensor"), N24) + DEPS,
           "Add a requantized shortcut to int32 accumulators in one pass: with ch = i mod c, dst[i] = "
           "sat32(a[i] + rne((src[i] + bias[ch]) * mult[ch] / 2**shift[ch])); exactly vcast + vrequant "
           "(odt i32) + vadd, as the residual join of a conv needs it.",
           SV.vaddrq, T.vec_requant, SV.touch_addrq, SV.check_addrq),
    OpSpec("vrqadd", 0x56, "vec",
           (DT("sdt", doc="shortcut type (integer)"), DT("odt", doc="output type (integer)"), A("dst", "nram"),
            A("a", "nram", doc="int32 accumulators"), A("src", "nram"),
            A("rparams", "nram", doc="int32 [c, 3]: the shortcut's bias, multiplier, shift per channel"),
            A("params", "nram", doc="int32 [c, 3]: the output's bias, multiplier, shift per channel"),
            U("c", 16, 1, "channels (innermost dimension); 1 for per-tensor"), N24,
            SI("zp", 32, 0, "output zero point")) + LOHI + DEPS,
           "A residual conv's whole epilogue in one pass over the int32 stream: with ch = i mod c, s = "
           "sat32(a[i] + rne((src[i] + rbias[ch]) * rmult[ch] / 2**rshift[ch])), then dst[i] = "
           "clamp(rne((s + bias[ch]) * mult[ch] / 2**shift[ch]) + zp, lo, hi) saturated to `odt`; exactly "
           "vaddrq then vrequant, like a post-processor that takes a second operand (NVDLA's SDP) [G].",
           SV.vrqadd, T.vec_requant, SV.touch_rqadd, SV.check_rqadd),
    OpSpec("vfma", 0x5F, "vec",
           (DT(), A("dst", "nram"), A("a", "nram"), A("b", "nram"), A("c", "nram"), N24) + DEPS,
           "dst[i] = a[i] * b[i] + c[i] rounded once to `dt` (IEEE fusedMultiplyAdd; float dt only), as "
           "vector FMA units do; the compiler uses it to reproduce ONNX Runtime's quantized add.",
           SV.vfma, T.vec_elementwise, SV.touch_fma, SV.check_float_dt, positional=6),
)

BY_MNEMONIC: dict[str, OpSpec] = {op.mnemonic: op for op in OPS}
BY_OPCODE: dict[int, OpSpec] = {op.opcode: op for op in OPS}
assert len(BY_MNEMONIC) == len(OPS) and len(BY_OPCODE) == len(OPS), "duplicate mnemonic or opcode"
