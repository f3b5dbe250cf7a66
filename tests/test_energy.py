"""Energy model: each figure is events x the config's energy per event, static power x time;
the reports and plots carry it. Expectations are derived from config values, not constants."""
from __future__ import annotations

import json

import pytest

from conftest import I, program, run, tensors
from mlusim.cli import main
from mlusim.config import config_from_dict, load_config
from mlusim.cores.stats import CoreCounters, KernelRecord
from mlusim.energy import COMPONENTS, kernel_events, run_energy
from mlusim.errors import ConfigError
from mlusim.program import TensorDecl
from mlusim.report import summarize

PJ = 1e-12


def cfg_with(**energy) -> object:
    """MLU270 with these energy values (a non-unit onchip_scale by default, to see where it applies)."""
    energy = {"onchip_scale": 2.0, **energy}
    return load_config("mlu270", [f"energy.{k}={v}" for k, v in energy.items()])


def conv_args(ci, co, hw, k=3, dt="i8"):
    return dict(dt=dt, odt="f32" if dt == "i16" else "f16", n=1, hi=hw, wi=hw, ci=ci, co=co, kh=k, kw=k,
                pt=k // 2, pb=k // 2, pl=k // 2, pr=k // 2, **({"pos": -20} if dt == "i16" else {}))


def test_dma_energy_is_bytes_times_each_level_crossed_plus_per_dma():
    """A DMA of B bytes GDRAM -> NRAM: B x DRAM pJ/B (unscaled) + B x NRAM pJ/B + one DMA, both x scale."""
    cfg = cfg_with()
    e = cfg.energy
    nbytes = 64 * 1024
    g = tensors(TensorDecl("g", "scratch", "i8", (nbytes,), -1))
    res = run(program([I("dma", dir="g2n", dst=0, src=g[0].addr, size=nbytes)], g), config=cfg, timing_only=True)
    got = run_energy(res).total
    assert got.dram == pytest.approx(nbytes * e.dram_pj_per_byte * PJ)
    assert got.nram == pytest.approx(nbytes * e.nram_pj_per_byte * e.onchip_scale * PJ)
    assert got.dma == pytest.approx(e.dma_pj * e.onchip_scale * PJ)
    assert got.sram == got.wram == got.mac == got.vector == 0
    # an on-chip move NRAM -> WRAM pays at both ends, nothing on DRAM
    mv = run(program([I("dma", dir="n2w", dst=0, src=0, size=nbytes)], []), config=cfg, timing_only=True)
    m = run_energy(mv).total
    assert m.dram == 0
    assert m.nram + m.wram == pytest.approx(nbytes * (e.nram_pj_per_byte + e.wram_pj_per_byte) * e.onchip_scale * PJ)


def test_doubling_macs_doubles_mac_energy_and_int16_is_priced_apart():
    cfg = cfg_with(mac_int8_pj=0.1, mac_int16_pj=0.4)
    e = cfg.energy

    def mac_j(co, dt="i8"):
        res = run(program([I("conv", dst=0, src=0x40000, wgt=0, **conv_args(64, co, 8, dt=dt))], []), config=cfg,
                  timing_only=True)
        return run_energy(res).total.mac, res.kernels[0].cores[0].macs

    one, macs = mac_j(64)
    two, macs2 = mac_j(128)
    assert macs2 == 2 * macs and two == pytest.approx(2 * one)
    assert one == pytest.approx(macs * e.mac_int8_pj * e.onchip_scale * PJ)
    sixteen, m16 = mac_j(64, "i16")
    assert m16 == macs and sixteen == pytest.approx(one * e.mac_int16_pj / e.mac_int8_pj)


@pytest.mark.parametrize("cores", [1, 4, 16])
def test_static_energy_is_power_times_time(cores):
    """With every per-event energy zero, energy = (board + chip + busy clusters x cluster) x time."""
    zero = {k: 0 for k in ("mac_int8_pj", "mac_int16_pj", "vector_pj_per_byte", "dram_pj_per_byte",
                           "sram_pj_per_byte", "nram_pj_per_byte", "wram_pj_per_byte", "dma_pj")}
    cfg = cfg_with(**zero, board_static_w=10, chip_static_w=5, cluster_static_w=3)
    prog = program([I("vadd", dt="i8", dst=0x30000, a=0, b=0, n=4096)], [], task_dim=cores)
    res = run(prog, config=cfg, cores=cores, timing_only=True)
    clusters = -(-cores // cfg.chip.cores_per_cluster)
    s = summarize(res)
    assert s["energy_j"] == pytest.approx((10 + 5 + 3 * clusters) * res.seconds)
    assert s["power_w"] == pytest.approx(10 + 5 + 3 * clusters)
    assert s["energy_breakdown_j"]["static"] == pytest.approx(s["energy_j"])


def test_a_conv_kernel_splits_into_its_parts():
    """Load activations and weights, convolve, requantize on the vector unit, store: each part is
    its own events x price, and the parts add up to the kernel and the kernel to the run."""
    cfg = cfg_with()
    e, c = cfg.energy, cfg.core
    hw, ci, co = 8, 64, 64
    g = tensors(TensorDecl("x", "scratch", "i8", (hw * hw * ci,), -1),
                TensorDecl("w", "scratch", "i8", (co * 9 * ci,), -1),
                TensorDecl("y", "scratch", "i8", (hw * hw * co * 2,), -1))
    x, w, y = (t.addr for t in g)
    out = hw * hw * co * 2           # f16 conv output
    s = [I("dma", dir="g2n", dst=0x40000, src=x, size=hw * hw * ci),
         I("dma", dir="g2w", dst=0, src=w, size=co * 9 * ci, sig="cp"),
         I("conv", dst=0, src=0x40000, wgt=0, wait="ld", **conv_args(ci, co, hw)),
         I("vadd", dt="f16", dst=0x20000, a=0, b=0, n=out // 2, sig="st"),
         I("dma", dir="n2g", dst=y, src=0x20000, size=out, wait="cp")]
    res = run(program(s, g), config=cfg, timing_only=True)
    r = run_energy(res)
    k = r.kernels[0]
    core = res.kernels[0].cores[0]
    assert k.mac == pytest.approx(core.macs * e.mac_int8_pj * e.onchip_scale * PJ)
    vec_bytes = (core.busy["vec"] - c.startup_cycles.vector) * c.vector_bytes_per_cycle
    assert vec_bytes == pytest.approx(out)
    assert k.vector == pytest.approx(out * e.vector_pj_per_byte * e.onchip_scale * PJ)
    assert k.dram == pytest.approx(res.kernels[0].dram_bus_bytes * e.dram_pj_per_byte * PJ)
    assert k.nram == pytest.approx((hw * hw * ci + out) * e.nram_pj_per_byte * e.onchip_scale * PJ)
    assert k.wram == pytest.approx(co * 9 * ci * e.wram_pj_per_byte * e.onchip_scale * PJ)
    assert k.dma == pytest.approx(3 * e.dma_pj * e.onchip_scale * PJ)
    assert k.total == pytest.approx(sum(getattr(k, p) for p in COMPONENTS)) == pytest.approx(r.total.total)


def test_side_by_side_kernels_count_every_cluster_and_their_contention_time():
    """A per-cluster kernel simulated once stands for `clusters` copies: events x copies, busy
    clusters x copies, and the run's time beyond its kernels is theirs."""
    cfg = load_config("mlu370-s4")
    ctr = CoreCounters(0, macs=1000, macs_int16=100)
    ctr.instructions["dma"] = 2
    rec = KernelRecord("trunk", "union1", 4, 0.0, 500.0, {0: ctr}, meta={"clusters": 3})
    rec.bytes_read["sram"], rec.dram_bus_bytes = 64, 128
    ev = kernel_events(rec, cfg, 1e-6)
    assert (ev.macs_int8, ev.macs_int16, ev.dma_instructions) == (2700, 300, 6)
    assert (ev.sram_bytes, ev.dram_bytes, ev.cluster_seconds) == (192, 384, pytest.approx(3e-6))
    from mlusim.energy import kernel_seconds

    class Res:
        config, kernels, cycles = cfg, [rec, KernelRecord("head", "block", 1, 500.0, 600.0)], 1000.0
    assert kernel_seconds(Res) == pytest.approx([cfg.cycles_to_seconds(900.0), cfg.cycles_to_seconds(100.0)])


def test_json_report_fields(tmp_path, capsys):
    out = tmp_path / "r.json"
    assert main(["run", "examples/matmul.s", "--timing-only", "--json", str(out)]) == 0
    text = capsys.readouterr().out
    assert "energy " in text and "average power" in text and "energy by part" in text
    s = json.loads(out.read_text())
    assert s["energy_j"] > 0 and s["power_w"] == pytest.approx(s["energy_j"] / s["seconds"])
    assert s["edp_js"] == pytest.approx(s["energy_j"] * s["seconds"])
    assert s["energy_per_image_j"] == pytest.approx(s["energy_j"])
    assert sum(s["energy_breakdown_j"].values()) == pytest.approx(s["energy_j"])
    assert sum(k["energy_j"] for k in s["kernels"]) == pytest.approx(s["energy_j"])
    assert s["tdp_w"] == load_config("mlu270").energy.tdp_w


def test_scaling_csv_and_sweep_rows_carry_energy(tmp_path, capsys):
    csv = tmp_path / "s.csv"
    assert main(["run", "examples/matmul.s", "--timing-only", "--cores", "1,4", "--csv", str(csv)]) == 0
    assert "energy mJ" in capsys.readouterr().out
    head, one, four = csv.read_text().splitlines()
    cols = head.split(",")
    for name in ("Energy (J)", "Average Power (W)", "Energy per Image (J)", "Energy-Delay Product (J*s)"):
        assert name in cols
    e1, e4 = (float(r.split(",")[cols.index("Energy (J)")]) for r in (one, four))
    assert e1 > e4 > 0      # four cores finish sooner: less static energy, the same events
    from mlusim.sweep import sweep

    rows = sweep("examples/matmul.s", "mlu270", {"energy.dram_pj_per_byte": [0, 100]}, cores=[4], jobs=1)
    assert rows[1]["energy_j"] - rows[0]["energy_j"] == pytest.approx(100 * PJ * rows[0]["dram_bytes"])


def test_energy_plot_writes_files_and_refuses_old_reports(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    rep = tmp_path / "r.json"
    assert main(["run", "examples/matmul.s", "--timing-only", "--cores", "1,4", "--json", str(rep)]) == 0
    assert main(["plot", "energy", str(rep), "-o", str(tmp_path / "e")]) == 0
    assert (tmp_path / "e.png").stat().st_size > 0 and (tmp_path / "e.svg").stat().st_size > 0
    old = json.loads(rep.read_text())
    del old["runs"][0]["energy_breakdown_j"]
    rep.write_text(json.dumps(old))
    capsys.readouterr()
    assert main(["plot", "energy", str(rep), "-o", str(tmp_path / "f")]) == 2
    assert "no energy breakdown" in capsys.readouterr().err


def test_energy_section_is_optional_with_documented_defaults_and_checked():
    raw = load_config("mlu270").to_dict()
    raw.pop("energy")
    cfg = config_from_dict(raw)
    assert cfg.energy == type(cfg.energy)() == load_config("mlu270").energy    # the schema's defaults: the MLU270's
    with pytest.raises(ConfigError, match="energy.dram_pj_per_byte"):
        load_config("mlu270", ["energy.dram_pj_per_byte=-1"])
    for name in ("mlu220", "mlu270", "mlu290", "mlu370-s4", "mlu370-x4"):
        from mlusim.config import _preset_dir

        assert "\nenergy:" in (_preset_dir() / f"{name}.yaml").read_text(), name


def test_fused_layers_split_their_kernels_energy():
    """Inside a fused segment each part follows its own events: a layer without MACs gets no MAC
    energy, static energy follows each layer's time, and the layers add up to the kernel."""
    from mlusim.compiler.driver import compile_model

    prog = compile_model("resnet18", batch=1, resolution=32, config="mlu270", tasks=4, cluster_fusion=True).program
    s = summarize(run(prog, cores=4, timing_only=True))
    fused = [lr for lr in s["layers"] if lr["fused"]]
    assert len(fused) > 5
    for k in s["kernels"]:
        mine = [lr for lr in s["layers"] if lr["kernel"] == k["name"]]
        assert sum(lr["energy_j"] for lr in mine) == pytest.approx(k["energy_j"])
    assert sum(lr["energy_j"] for lr in s["layers"]) == pytest.approx(s["energy_j"])
    pool = next(lr for lr in fused if lr["macs"] == 0)
    assert pool["energy_breakdown_j"]["mac"] == 0 and pool["energy_breakdown_j"]["static"] > 0
    per_cycle = {lr["energy_breakdown_j"]["static"] / lr["cycles"] for lr in fused if lr["kernel"] == fused[0]["kernel"]}
    assert max(per_cycle) == pytest.approx(min(per_cycle))
    conv = max(fused, key=lambda lr: lr["macs"])
    k = next(k for k in s["kernels"] if k["name"] == conv["kernel"])
    assert conv["energy_breakdown_j"]["mac"] == pytest.approx(
        k["energy_breakdown_j"]["mac"] * conv["macs"] / k["macs"], rel=1e-6)
