"""Peak host memory (max RSS) of mlusim on the hostile inputs of issue 16, one fresh process each.

    python bench/hostile_memory.py            # prints one line per case: peak MiB, exit code, message

Each case is refused by the memory budget (or a cap) before it allocates what its input asks for;
the peak is what the process had reached by then. Cases whose input fits the budget run, and their
peak is bounded by MLUSIM_HOST_MEM_GIB (set per case below). Takes about 3 minutes on one core,
most of it the traced loop that fills a 1 GiB budget.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WRAP = ("import resource, sys; from mlusim.cli import main\n"
        "code = main(sys.argv[1:])\n"
        "sys.stderr.write('PEAK_KB %d\\n' % resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)\n"
        "sys.exit(code)\n")


def _files(d: Path) -> None:
    from mlusim import mlufile
    from mlusim.isa.asm import assemble_program

    p = assemble_program(".tensor x input i8 [64]\n.kernel seg union1 tasks=4\n nop\n sync.cluster\n nop\n", "a.s")
    p.kernels[0].meta = {"segment": {"layer_names": ["a", "b"], "groups_per_job": 1}}
    mlufile.save(p, d / "a.mlu")
    with zipfile.ZipFile(d / "a.mlu") as zf:
        members = {i.filename: zf.read(i) for i in zf.infolist()}
    man = json.loads(members["manifest.json"])
    for name, edit in (("gpj.mlu", lambda m: m["kernels"][0]["meta"]["segment"].update(groups_per_job=10**8)),
                       ("kernels.mlu", lambda m: m.update(kernels=[dict(m["kernels"][0], streams=[], meta={})
                                                                  for _ in range(100_000)]))):
        m = json.loads(json.dumps(man))
        edit(m)
        with zipfile.ZipFile(d / name, "w") as zf:
            for n, data in {**members, "manifest.json": json.dumps(m).encode()}.items():
                zf.writestr(n, data)
    (d / "fill.s").write_text(".tensor w const i8 [268435456] random(1)\n.kernel k block tasks=1\n nop\n")
    (d / "ones.s").write_text("".join(f".tensor w{i} const i8 [268435456] ones\n" for i in range(12))
                              + ".kernel k block tasks=1\n nop\n")
    (d / "spin.s").write_text(".tensor x input i8 [64]\n.kernel spin block tasks=1\ntop:\n"
                              "    vset dt=i8 dst=0 n=64\n    jmp top\n")
    (d / "sweep.yaml").write_text("set:\n  dram.bandwidth_gbps: [" + ", ".join(str(i + 1) for i in range(9000))
                                  + "]\n  dram.latency_cycles: [" + ", ".join(str(i) for i in range(900)) + "]\n")


def cases(d: Path) -> list[tuple[str, dict, list[str]]]:
    m = str(ROOT / "examples" / "matmul.s")
    return [
        ("kernel meta groups_per_job 1e8", {}, ["run", str(d / "gpj.mlu"), "--timing-only"]),
        ("100,000 empty kernels", {}, ["run", str(d / "kernels.mlu"), "--timing-only"]),
        ("256 MiB random fill (fits; runs)", {}, ["disasm", str(d / "fill.s")]),
        ("12 x 256 MiB ones fills, 1 GiB budget", {"MLUSIM_HOST_MEM_GIB": "1"}, ["disasm", str(d / "ones.s")]),
        ("--batch 1000000", {}, ["compile", "--model", "resnet18", "--batch", "1000000", "-o", str(d / "x.mlu")]),
        ("--resolution 65536", {}, ["compile", "--model", "resnet18", "--resolution", "65536", "-o", str(d / "x.mlu")]),
        ("sweep of 8,100,000 points", {}, ["sweep", m, "--file", str(d / "sweep.yaml")]),
        ("MLUSIM_HOST_MEM_GIB=1e300", {"MLUSIM_HOST_MEM_GIB": "1e300"}, ["run", m]),
        ("--trace of a loop, 1 GiB budget", {"MLUSIM_HOST_MEM_GIB": "1"},
         ["run", str(d / "spin.s"), "--cores", "1", "--timing-only", "--trace", str(d / "t.json"),
          "--max-instructions", "100000000"]),
    ]


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        _files(d)
        worst = 0
        for label, env, args in cases(d):
            r = subprocess.run([sys.executable, "-c", WRAP, *args], capture_output=True, text=True,
                               env={**os.environ, **env})
            lines = r.stderr.strip().splitlines()
            peak = int(lines[-1].split()[1]) / 1024 if lines and lines[-1].startswith("PEAK_KB") else float("nan")
            worst = max(worst, peak)
            msg = next((ln for ln in lines if ln.startswith("mlusim: error:")), "ok")
            print(f"{peak:8.0f} MiB  exit {r.returncode}  {label}: {msg[:110]}")
        print(f"worst peak {worst:.0f} MiB")


if __name__ == "__main__":
    main()
