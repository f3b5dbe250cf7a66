"""Programs the engine must refuse or stop cleanly: random valid-ish instruction streams, and
every fault the issue names (bad addresses, overflowing scratchpads, illegal DMA directions,
tokens and barriers that never match, task ids outside the kernel, runaway loops). Faults name
the kernel, task, core, pc and instruction; deadlocks say which cores wait on what."""
from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mlusim.config import load_config
from mlusim.errors import AssemblyError, EncodingError, MlusimError, SimulationError
from mlusim.isa.asm import assemble_program
from mlusim.isa.encoding import decode_stream, encode_stream
from mlusim.program import Kernel, Program, TensorDecl, allocate
from mlusim.sim import simulate

from .harness import assert_clean_error, count, fuzz, check_outcome
from .programs import I, random_program

CFG = load_config("mlu270")
# Budgets small enough that a looping stream stops in well under a second of wall time.
BUDGET = {"max_instructions": 400, "max_cycles": 3e5}


@fuzz(ci=1000)
@given(random_program(), st.sampled_from([1, 2, 4, 8]), st.booleans(), st.sampled_from([None, 3e5]))
def test_random_streams_run_or_fail_cleanly(prog, cores, timing_only, max_cycles):
    """Half the runs have no cycle budget: the instruction budget alone must stop every loop."""
    check_outcome(simulate, prog, CFG, cores=cores, timing_only=timing_only, timeout=60, kind="engine: random streams",
            max_instructions=BUDGET["max_instructions"], max_cycles=max_cycles)


@fuzz(ci=200)
@given(random_program(max_len=6))
def test_random_streams_survive_encoding_and_stay_deterministic(prog):
    """Same program, same inputs: the same cycles and outputs, also after an encode/decode trip."""
    count("engine: determinism of random streams")
    for k in prog.kernels:
        k.streams = [decode_stream(encode_stream(s)) for s in k.streams]
    a, err = check_outcome(simulate, prog, CFG, cores=2, timeout=60, **BUDGET)
    b, err2 = check_outcome(simulate, prog, CFG, cores=2, timeout=60, **BUDGET)
    assert (err is None) == (err2 is None) and str(err) == str(err2)
    if a is not None:
        assert a.cycles == b.cycles and a.outputs.keys() == b.outputs.keys()
        assert all((a.outputs[n] == b.outputs[n]).all() for n in a.outputs)


def one(stream, tensors=(), task_type="block", task_dim=1, task_stream=None, cores=1, **kw):
    t = list(tensors)
    allocate(t)
    streams = stream if stream and isinstance(stream[0], list) else [stream]
    prog = Program([Kernel("k", task_type, task_dim, streams, task_stream)], t)
    return simulate(prog, CFG, cores=cores, **{**BUDGET, **kw})


def check_fault(stream, *needles, **kw):
    with pytest.raises(SimulationError) as e:
        one(stream, **kw)
    msg = assert_clean_error(e.value)
    for n in needles:
        assert n in msg, msg
    count("engine: targeted faults")
    return msg


NRAM = CFG.nram_bytes


@pytest.mark.parametrize("stream,needles", [
    ([I("vset", dt="i8", dst=NRAM - 8, n=16)], ["outside NRAM", "pc 0", "core 0", "vset"]),
    ([I("vset", dt="i32", dst=2, n=4)], ["NRAM address 0x2 is not 4-byte aligned"]),
    ([I("li", rd=3, imm=-64), I("vset", dt="i8", dst=(3, 0), n=1)], ["outside NRAM", "pc 1"]),
    ([I("li", rd=3, imm=1 << 40), I("vset", dt="i8", dst=(3, 0), n=1)], ["outside NRAM"]),
    ([I("matmul", dt="i8", dst=0, a=0, b=32, m=1, k=64, n=64)], ["WRAM address 0x20 is not 64-byte aligned"]),
    ([I("matmul", dt="i8", dst=0, a=0, b=0, m=64, k=65535, n=64)], ["outside"]),
    ([I("conv", dt="i8", dst=0, src=0, wgt=0, hi=512, wi=512, ci=64, co=64, kh=3, kw=3)], ["outside NRAM"]),
    ([I("dma", dir="g2s", dst=CFG.sram_bytes - 4, src=0, size=64)], ["outside SRAM"]),
    ([I("dma", dir="n2w", dst=CFG.wram_bytes, src=0, size=1)], ["outside WRAM"]),
    ([I("dma", dir="g2n", dst=0, src=0, size=65)], ["outside GDRAM"]),
    ([I("dma", dir="n2n", dst=0, src=0, size=64, count=2, dstride=32)], ["destination segments overlap"]),
    ([I("dma", dir="g2n", dst=0, src=0, size=0)], ["size, count and count2 must be >= 1"]),
    ([I("vset", dt="i8", dst=0, n=1, wait="cp")], ["cannot wait for or signal its own queue"]),
    ([I("conv", dt="f32", dst=0, src=0, wgt=0, hi=1, wi=1, ci=1, co=1, kh=1, kw=1)], ["conv takes dt=i8 or i16"]),
    ([I("sync.cluster")], ["sync.cluster is illegal in a BLOCK kernel"]),
])
def test_faults_name_the_instruction(stream, needles):
    check_fault(stream, *needles, tensors=[TensorDecl("x", "input", "i8", (64,), -1)])


def test_illegal_dma_directions_never_reach_the_engine():
    """Directions are an enum of the legal (source, destination) pairs: anything else is refused by
    the assembler, Instr.make and the decoder alike."""
    for bad in ("w2w", "l2n", "n2l", "g2x", "s2l"):
        with pytest.raises(AssemblyError, match="expected one of"):
            assemble_program(f".kernel k block tasks=1\n    dma {bad}, 0, 0, 4\n", "d.s")
        with pytest.raises(EncodingError):
            I("dma", dir=bad, dst=0, src=0, size=4)
    with pytest.raises(EncodingError, match="outside"):
        I("dma", dir=15, dst=0, src=0, size=4)
    word = bytearray(encode_stream([I("dma", dir="g2n", dst=0, src=0, size=4)]))
    word[1] |= 0x0F                                   # dir field: bits 8..11
    with pytest.raises(EncodingError, match="field 'dir' = 15 is invalid"):
        decode_stream(bytes(word))


def test_missing_token_deadlock_names_cores_and_waits():
    msg = check_fault([I("vset", dt="i8", dst=0, n=4, wait="ld")], "deadlock at cycle", "core 0",
                "waits for a token from ld", "pc 0", task_dim=2, cores=2, max_cycles=None)
    assert "core 1" in msg


def test_mismatched_barriers_deadlock_names_the_barrier():
    extra = [I("sync.cluster"), I("sync.cluster")]
    once = [I("sync.cluster")]
    msg = check_fault([extra, once], "deadlock", "sync.cluster of cluster 0 (1/4 arrived)", "core 0",
                task_type="union1", task_dim=4, task_stream=[0, 1, 1, 1], cores=4, max_cycles=None)
    assert "waits at" in msg
    check_fault([I("sync.all")], "sync.all of kernel 'k' (2/3 arrived)", task_dim=3, cores=2, max_cycles=None)


def test_union_kernel_without_whole_clusters():
    check_fault([I("nop")], "needs 1 whole cluster", task_type="union1", task_dim=4, cores=3)


def test_task_ids_outside_the_kernel():
    with pytest.raises(AssemblyError, match=r"d.s:2:7: task 4 is outside the kernel's tasks=4"):
        assemble_program(".kernel k block tasks=4\n.task 0-4\n nop\n", "d.s")
    with pytest.raises(MlusimError, match="task map names stream 3 of 1"):
        one([I("nop")], task_dim=2, task_stream=[0, 3])
    with pytest.raises(MlusimError, match="task map has 1 entries for 2 tasks"):
        one([I("nop")], task_dim=2, task_stream=[0])


@pytest.mark.parametrize("budget,needle", [
    ({"max_instructions": 1000, "max_cycles": None}, "instruction budget of 1,000"),
    ({"max_instructions": 10**9, "max_cycles": 5000}, "cycle budget of 5,000 exhausted"),
])
def test_runaway_loops_stop_with_a_clear_message(budget, needle):
    loops = {
        "scalar loop": [I("addi", rd=1, rs1=1, imm=1), I("jmp", target=-1)],
        "queued loop": [I("vset", dt="i8", dst=0, n=64), I("jmp", target=-1)],
        "dma loop": [I("dma", dir="n2n", dst=64, src=0, size=64), I("jmp", target=-1)],
    }
    for name, stream in loops.items():
        msg = check_fault(stream, needle, **budget)
        assert "raise --max" in msg, f"{name}: {msg}"


def test_host_memory_cap_fails_up_front_with_the_estimate():
    big = [TensorDecl("big", "scratch", "i8", (3 << 30,), -1)]
    msg = check_fault([I("nop")], "needs about 3.", "over the cap of 1.0 GiB", tensors=big, host_cap_gib=1.0)
    assert "--timing-only" in msg
    assert one([I("nop")], tensors=big, timing_only=True, host_cap_gib=1.0).cycles > 0
