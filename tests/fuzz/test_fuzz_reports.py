"""JSON reports handed to `mlusim plot`: written by some other version, edited by hand, truncated or
hostile. Each figure checks the fields it reads (type and range) and either draws or says which
field is wrong, in one line; missing keys, empty files and 10^5-deep nesting were tracebacks."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mlusim.cli import main

from .harness import count, fuzz, no_hang

pytest.importorskip("matplotlib")

ROOT = Path(__file__).resolve().parents[2]
MATMUL = str(ROOT / "examples" / "matmul.s")
FIGURES = {"run": ["roofline", "energy"], "scaling": ["speedup", "roofline", "energy"], "sweep": ["speedup", "sweep"]}


@pytest.fixture(scope="module")
def reports(tmp_path_factory):
    d = tmp_path_factory.mktemp("reports")
    assert main(["run", MATMUL, "--cores", "4", "--timing-only", "--json", str(d / "run.json")]) == 0
    assert main(["run", MATMUL, "--cores", "1,4", "--timing-only", "--json", str(d / "scaling.json")]) == 0
    assert main(["sweep", MATMUL, "--set", "dram.bandwidth_gbps=51.2,102.4", "--cores", "1,4", "--jobs", "1",
                 "--json", str(d / "sweep.json")]) == 0
    return {k: json.loads((d / f"{k}.json").read_text()) for k in FIGURES}


def assert_plot_clean(capsys, path: Path, figure: str, out: Path) -> tuple[int, str]:
    extra = ["--x", "dram.bandwidth_gbps"] if figure == "sweep" else []
    with no_hang(60, f"plot {figure}"):
        code = main(["plot", figure, str(path), "-o", str(out), *extra])
    err = capsys.readouterr().err
    assert code in (0, 2), (code, err)
    if code == 2:
        assert err.startswith("mlusim: error: ") and err.count("\n") == 1 and err[:-1].isprintable(), err
    return code, err


def _paths(node, prefix=()):
    yield prefix
    if isinstance(node, dict):
        for k, v in node.items():
            yield from _paths(v, prefix + (k,))
    elif isinstance(node, list):
        for i, v in enumerate(node[:3]):
            yield from _paths(v, prefix + (i,))


HOSTILE = [None, True, 0, -1, 1e308, "x", "", [], [1], {}, {"a": 1}, [{}], [None], 10**30]


def _draw_only(fig, prefix, formats=None):
    """Render the figure (where bad values would fail) without encoding PNG, SVG and PDF files."""
    import matplotlib.pyplot as plt

    fig.set_dpi(20)
    fig.canvas.draw()
    plt.close(fig)
    return []


@fuzz(ci=30)
@given(st.data())
def test_any_field_of_any_report_any_json(reports, capsys, tmp_path_factory, monkeypatch, data):
    from mlusim import plot_style

    monkeypatch.setattr(plot_style, "_save", _draw_only)
    kind = data.draw(st.sampled_from(sorted(FIGURES)))
    doc = json.loads(json.dumps(reports[kind]))
    path = data.draw(st.sampled_from([p for p in _paths(doc) if p]))
    node = doc
    for k in path[:-1]:
        node = node[k]
    if data.draw(st.booleans()) and isinstance(node, dict):
        del node[path[-1]]
    else:
        node[path[-1]] = data.draw(st.sampled_from(HOSTILE))
    d = tmp_path_factory.mktemp("r")
    (d / "r.json").write_text(json.dumps(doc))
    count("reports: mutated fields")
    assert_plot_clean(capsys, d / "r.json", data.draw(st.sampled_from(FIGURES[kind])), d / "fig")


@pytest.mark.parametrize("text", ["", "{}", "[]", "null", "5", '{"kind": "run"}', '{"kind": "scaling"}',
                                  '{"kind": "sweep"}', '{"kind": "runs", "runs": []}', '{"kind": ["run"]}',
                                  '{"kind": "sweep", "rows": [null]}', '{"kind": "scaling", "rows": [{}]}',
                                  "[" * 100_000 + "]" * 100_000, '{"kind": "run", "kernels": 5}'])
@pytest.mark.parametrize("figure", ["speedup", "roofline", "sweep", "energy"])
def test_malformed_reports(capsys, tmp_path, text, figure):
    count("reports: malformed files")
    (tmp_path / "r.json").write_text(text)
    code, _ = assert_plot_clean(capsys, tmp_path / "r.json", figure, tmp_path / "fig")
    assert code == 2 and not (tmp_path / "fig.png").exists()
