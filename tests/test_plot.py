"""Figures fit for a paper: PNG/SVG/PDF files, titles naming model, batch and config (as SVG
text), log2 axes where the values double, labels that do not overlap, markers per series, fonts
of 8 pt and up; the roofline's arithmetic and the plot command's errors."""
from __future__ import annotations

import itertools
import json
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
from matplotlib.text import Annotation, Text

from mlusim.cli import main
from mlusim.energy_plot import energy_figure
from mlusim.experiments import resolve_program
from mlusim.plot import (
    key_label,
    plot_speedup,
    plot_sweep,
    roofline_figure,
    roofline_points,
    speedup_figure,
    subject_of_report,
    sweep_figure,
)
from mlusim.plot_style import MIN_FONT_PT, Subject, doubles, formats_of
from mlusim.report import summarize
from mlusim.sim import simulate

ROOT = Path(__file__).resolve().parents[1]
MATMUL = str(ROOT / "examples" / "matmul.s")
BW = "dram.bandwidth_gbps"


@pytest.fixture(scope="module")
def reports(tmp_path_factory):
    """A 1,2,4-core scaling report and a DRAM-bandwidth x cores sweep of the small mnist model."""
    d = tmp_path_factory.mktemp("reports")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLUSIM_CACHE_DIR", str(d / "cache"))
        assert main(["run", "mnist", "--cores", "1,2,4", "--timing-only", "--json", str(d / "s.json")]) == 0
        assert main(["sweep", "mnist", "--config", "mlu270", "--set", f"{BW}=25.6,51.2,102.4", "--cores", "1,4",
                     "--jobs", "1", "--json", str(d / "w.json")]) == 0
    return {k: json.loads((d / f"{k}.json").read_text()) | {"path": str(d / f"{k}.json")} for k in ("s", "w")}


def svg_text(path: Path) -> str:
    """All text of an SVG's <text> elements (svg.fonttype 'none' keeps text as text)."""
    root = ET.parse(path).getroot()
    return "\n".join("".join(e.itertext()) for e in root.iter() if e.tag.endswith("}text"))


def check_files(paths, stem: Path, title: str):
    assert [p.suffix for p in paths] == [".png", ".svg", ".pdf"] and all(p.stem == stem.name for p in paths)
    png, svg, pdf = paths
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000
    data = pdf.read_bytes()
    assert data[:5] == b"%PDF-" and b"/Type3" not in data                    # fonts publishers take:
    assert b"/TrueType" in data or b"/CIDFontType2" in data                  # TrueType, embedded
    assert title in svg_text(svg), (title, svg_text(svg)[:300])


def annotation_boxes(fig):
    """(text box without its leader line, box of its axes) of every annotation, as drawn."""
    fig.canvas.draw()
    r = fig.canvas.get_renderer()
    return [(Text.get_window_extent(a, r), ax.get_window_extent(r)) for ax in fig.axes for a in ax.texts
            if isinstance(a, Annotation) and a.get_text()]


def assert_readable(fig):
    """No two annotations overlap; every annotation inside its axes; every text >= 8 pt."""
    boxes = annotation_boxes(fig)
    for (a, _), (b, _) in itertools.combinations(boxes, 2):
        assert not a.overlaps(b), (a, b)
    for b, frame in boxes:
        assert frame.x0 <= b.x0 and b.x1 <= frame.x1 and frame.y0 <= b.y0 and b.y1 <= frame.y1
    small = [(t.get_text(), t.get_fontsize()) for t in fig.findobj(Text) if t.get_text() and t.get_visible()
             and t.get_fontsize() < MIN_FONT_PT]
    assert not small
    return boxes


def series_lines(ax):
    return [ln for ln in ax.get_lines() if not ln.get_label().startswith(("_", "ideal", "roof", "hollow"))]


@pytest.mark.parametrize("kind", ["speedup", "roofline", "sweep", "energy", "calibration"])
def test_every_kind_writes_png_svg_pdf_titled_with_model_batch_config(reports, tmp_path, capsys, kind):
    src = {"sweep": reports["w"]["path"], "calibration": str(ROOT / "docs" / "figures" / "calibration.json")
           }.get(kind, reports["s"]["path"])
    extra = ["--x", BW] if kind == "sweep" else []
    out = tmp_path / kind
    assert main(["plot", kind, src, "-o", str(out), *extra]) == 0
    capsys.readouterr()
    title = "simulated vs published" if kind == "calibration" else "mnist, batch 1, mlu270"
    check_files([out.with_suffix(f".{e}") for e in ("png", "svg", "pdf")], out, title)


def test_format_by_extension_or_option_and_reproducible(reports, tmp_path, capsys):
    src, x = reports["w"]["path"], ["--x", BW]
    assert main(["plot", "sweep", src, *x, "-o", str(tmp_path / "a.pdf")]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.pdf"]
    assert main(["plot", "sweep", src, *x, "-o", str(tmp_path / "b"), "--format", "svg,pdf"]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.pdf", "b.pdf", "b.svg"]
    assert (tmp_path / "a.pdf").read_bytes() == (tmp_path / "b.pdf").read_bytes()    # no dates in the files
    assert main(["plot", "sweep", src, *x, "-o", str(tmp_path / "c"), "--format", "gif"]) == 2
    assert "expected a list of png, svg, pdf" in capsys.readouterr().err
    assert formats_of("x.v2", None) == (Path("x.v2"), ["png", "svg", "pdf"])


def test_doubling_values_get_log2_axes(reports):
    rows = reports["w"]["rows"]
    fig = sweep_figure(rows, BW, "latency_ms", subject=subject_of_report(reports["w"]))
    ax = fig.axes[0]
    assert ax.get_xscale() == "log" and ax.xaxis.get_transform().base == 2
    assert [float(t.get_text()) for t in ax.get_xticklabels()] == [25.6, 51.2, 102.4]
    assert ax.get_xlabel() == "DRAM bandwidth (GB/s)" and ax.get_ylabel() == "latency (ms)"
    assert "mnist, batch 1, mlu270" in ax.get_title()
    assert_readable(fig)
    uneven = [dict(r, **{BW: v}) for r, v in zip(rows, [10.0, 10.0, 30.0, 30.0, 40.0, 40.0])]
    assert sweep_figure(uneven, BW, "latency_ms").axes[0].get_xscale() == "linear"
    sp = speedup_figure(reports["s"]["rows"]).axes[0]
    assert sp.get_xscale() == "log" and sp.xaxis.get_transform().base == 2 and sp.get_yscale() == "log"
    assert doubles([1, 4, 16]) and doubles([51.2, 102.4, 409.6]) and not doubles([1, 2, 3])
    assert not doubles([0, 1, 2]) and not doubles([1, 2]) and not doubles(["a", "b", "c"])


def test_series_have_distinct_markers_and_line_styles(reports):
    ax = sweep_figure(reports["w"]["rows"], BW, "mac_utilization").axes[0]
    lines = series_lines(ax)
    assert len(lines) == 2 and all(ln.get_marker() not in ("None", "", None) for ln in lines)
    assert len({(ln.get_marker(), ln.get_linestyle()) for ln in lines}) == 2
    assert ax.get_ylabel() == "MAC utilization (%)"
    row = next(r for r in reports["w"]["rows"] if r["cores"] == 1 and r[BW] == 25.6)
    assert lines[0].get_ydata()[0] == pytest.approx(100 * row["mac_utilization"])     # fractions drawn as %


def crowded_summary(n: int = 30) -> dict:
    """A run report whose kernels sit in a tight cluster, as a 1-core ResNet's do."""
    rng = np.random.default_rng(7)
    kernels = [{"name": f"layer{i // 4}.{i % 4}.conv", "macs": float(m), "cycles": float(c),
                "dram_bus_bytes": float(m / rng.uniform(40, 60)), "bound": "dma" if i % 3 else "mac"}
               for i, (m, c) in enumerate(zip(rng.uniform(1e8, 2e8, n), rng.uniform(2e4, 4e4, n)))]
    kernels[4]["cycles"] = 5e4                             # the most cycles: labelled first
    kernels[5] = dict(kernels[4], name="twin.conv")        # two kernels on one spot share a label
    return {"kind": "run", "clock_mhz": 1000.0, "peak_gops": 8192.0, "dram_bandwidth_gbps": 102.4, "cores": 1,
            "config": "mlu270", "program": {"model": "crowd", "batch": 2}, "kernels": kernels}


def test_roofline_labels_never_overlap_even_when_crowded(reports):
    s = crowded_summary()
    fig = roofline_figure(s, top=30)
    boxes = assert_readable(fig)
    labelled = sum(a.get_text().count("\n") + 1 for a in fig.axes[0].texts)
    assert len(boxes) >= 6 and f"labelled: {labelled} of 30 kernels" in fig.axes[0].get_title()
    assert "crowd, batch 2, mlu270, 1 core" in fig.axes[0].get_title()
    assert any("twin.conv" in a.get_text() and "\n" in a.get_text() for a in fig.axes[0].texts)
    points = [ln for ln in fig.axes[0].get_lines() if ln.get_linestyle() == "None"]
    assert len({ln.get_marker() for ln in points}) == 2          # bound by dma / mac: two marker shapes
    real = [r for r in reports["s"]["runs"] if r["cores"] == 1][0]
    assert_readable(roofline_figure(real))


def test_speedup_labels_of_identical_series_do_not_overlap(reports):
    rows = reports["s"]["rows"]
    fig = speedup_figure({f"{BW}={v}": rows for v in (25.6, 51.2, 102.4, 204.8)},
                         subject=Subject("mnist", 1, "mlu270"))
    boxes = assert_readable(fig)
    assert len(boxes) >= 1 and len({ln.get_marker() for ln in series_lines(fig.axes[0])}) == 4
    assert "mnist, batch 1, mlu270" in fig.axes[0].get_title()


def test_energy_figure_hatched_and_readable(reports):
    fig = energy_figure(reports["s"]["runs"][0])
    assert_readable(fig)
    hatches = {p.get_hatch() for p in fig.axes[0].patches}
    assert len(hatches) >= 5                  # parts told apart without colour
    assert "mnist, batch 1, mlu270" in fig._suptitle.get_text()


def test_human_axis_labels_for_config_keys():
    assert key_label(BW) == "DRAM bandwidth (GB/s)"
    assert key_label("core.nram_kib") == "NRAM per core (KiB)"
    assert key_label("dram.latency_cycles") == "DRAM latency (cycles)"
    assert key_label("energy.dram_pj_per_byte") == "energy dram (pJ/B)"


def test_speedup_plot_and_reproducible_svg(reports, tmp_path):
    rows = reports["s"]["rows"]
    paths = plot_speedup(rows, tmp_path / "a", formats=["svg"])
    plot_speedup(rows, tmp_path / "b.svg")
    assert [p.name for p in paths] == ["a.svg"] and not (tmp_path / "b.png").exists()
    assert (tmp_path / "a.svg").read_bytes() == (tmp_path / "b.svg").read_bytes()
    assert "ideal (linear)" in svg_text(tmp_path / "a.svg")


def test_roofline_points_and_roofs(tmp_path, mlu270):
    s = summarize(simulate(resolve_program(MATMUL), mlu270, cores=4, timing_only=True))
    pts, roofs = roofline_points(s)
    k = s["kernels"][0]
    assert pts[0]["intensity"] == pytest.approx(2 * k["macs"] / k["dram_bus_bytes"])
    assert pts[0]["gops"] == pytest.approx(2 * k["macs"] / (k["cycles"] / 1e9) / 1e9)
    assert roofs["peak_gops"] == pytest.approx(4 * mlu270.core.mac_int8_per_cycle * 2 * mlu270.clock_hz / 1e9)
    assert roofs["dram_gbps"] == mlu270.dram.bandwidth_gbps
    assert pts[0]["gops"] <= min(roofs["peak_gops"], roofs["dram_gbps"] * pts[0]["intensity"])  # under the roof
    ax = roofline_figure(s).axes[0]
    assert "mlu270, 4 cores" in ax.get_title() and ax.get_lines()[1].get_xdata()[0] == pts[0]["intensity"]


def test_sweep_plot_rejects_unknown_columns(tmp_path):
    rows = [{BW: b, "cores": 4, "latency_ms": 1 / b, "error": None} for b in (1.0, 2.0, 4.0)]
    assert plot_sweep(rows, BW, "latency_ms", tmp_path / "s.png")[0].stat().st_size > 0
    from mlusim.errors import MlusimError

    with pytest.raises(MlusimError, match="no column 'nope'"):
        plot_sweep(rows, "nope", "latency_ms", tmp_path / "t")


@pytest.mark.parametrize("args,needle", [
    (["speedup", "R"], "needs a report of several core counts"),
    (["sweep", "R", "--x", "cores"], "needs a sweep report"),
    (["roofline", "missing.json"], "no such file"),
])
def test_plot_errors_are_one_line(capsys, tmp_path, args, needle):
    r = tmp_path / "r.json"
    assert main(["run", MATMUL, "--cores", "4", "--timing-only", "--json", str(r)]) == 0
    capsys.readouterr()
    code = main(["plot", *[str(r) if a == "R" else a for a in args], "-o", str(tmp_path / "x")])
    err = capsys.readouterr().err
    assert code == 2 and needle in err and err.count("\n") == 1
