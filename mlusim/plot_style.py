"""The look every mlusim figure shares, so each reads in a paper: fonts of 8 pt and up, markers
and line styles besides colours (they survive greyscale printing), titles that name the model,
batch and config, human axis labels with units, log2 axes where the values double, and files
written as PNG, SVG (text kept as text) and PDF, reproducibly byte for byte.

matplotlib is an optional extra (`pip install 'mlusim[plot]'`), loaded on the first figure.
"""
from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from mlusim.errors import MlusimError

FORMATS = ("png", "svg", "pdf")
MIN_FONT_PT = 8
STYLE = {
    "font.size": 9, "axes.titlesize": 9, "axes.labelsize": 9, "xtick.labelsize": 8, "ytick.labelsize": 8,
    "legend.fontsize": 8, "figure.titlesize": 10,
    "svg.fonttype": "none",        # SVG text stays <text>: searchable, editable, scales
    "svg.hashsalt": "mlusim",      # stable SVG element ids
    "pdf.fonttype": 42,            # TrueType in the PDF: text stays text there too
    "figure.dpi": 100, "savefig.dpi": 150,
}
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*", "<", ">")
LINESTYLES = ("-", "--", "-.", ":")
HATCHES = ("", "//", "..", "xx", "\\\\", "++", "--", "oo")
_META = {"png": {"Software": None}, "svg": {"Date": None, "Creator": None},
         "pdf": {"CreationDate": None, "ModDate": None, "Creator": None, "Producer": None}}


@dataclass(frozen=True)
class Subject:
    """What a figure is of, for its title: the model (or program), its batch and the config."""

    model: str = ""
    batch: int | None = None
    config: str = ""

    def text(self, cores: int | None = None) -> str:
        """'resnet18, batch 1, mlu270, 4 cores' with whatever is known."""
        parts = [self.model[:60]] if self.model else []
        if self.batch is not None:
            parts.append(f"batch {self.batch}")
        if self.config:
            parts.append(self.config[:60])
        if cores is not None:
            parts.append(f"{cores} core{'' if cores == 1 else 's'}")
        return ", ".join(parts)


def title(what: str, subject: Subject | None, cores: int | None = None) -> str:
    """'WHAT: model, batch B, config[, N cores]'."""
    who = subject.text(cores) if subject is not None else ""
    return f"{what}: {who}" if who else what


def pyplot():
    """matplotlib.pyplot on the Agg backend (no display needed), or a one-line error."""
    try:
        import matplotlib
    except ImportError:
        raise MlusimError("plotting needs matplotlib: pip install 'mlusim[plot]'") from None
    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


@contextmanager
def style() -> Iterator:
    """pyplot with the figures' rcParams for the duration (the caller's own settings come back)."""
    plt = pyplot()
    with plt.rc_context(STYLE):
        yield plt


def series_style(i: int) -> dict:
    """Marker, line style and colour of the i-th line or point set: all three differ."""
    from matplotlib import colormaps

    return {"marker": MARKERS[i % len(MARKERS)], "linestyle": LINESTYLES[i % len(LINESTYLES)],
            "color": colormaps["tab10"](i % 10)}


def doubles(values: Sequence) -> bool:
    """Whether numeric values step by factors of two (1, 2, 4 cores; 25.6, 51.2, 102.4 GB/s; 1, 4,
    16 cores): at least three distinct positive values, each a power-of-two multiple of the last."""
    try:
        vs = sorted({float(v) for v in values if not isinstance(v, bool)})
    except (TypeError, ValueError):
        return False
    if len(vs) < 3 or vs[0] <= 0 or not all(math.isfinite(v) for v in vs):
        return False
    steps = [math.log2(b / a) for a, b in zip(vs, vs[1:])]
    return all(abs(s - round(s)) < 1e-6 for s in steps)


def log2_axis(ax, which: str, values: Sequence) -> bool:
    """Put `which` ("x" or "y") of `ax` on a log2 scale ticked at the values when they double."""
    if not doubles(values):
        return False
    from matplotlib.ticker import NullFormatter, NullLocator

    ticks = sorted({float(v) for v in values})
    axis = ax.xaxis if which == "x" else ax.yaxis
    (ax.set_xscale if which == "x" else ax.set_yscale)("log", base=2)
    axis.set_ticks(ticks, [f"{t:g}" for t in ticks])
    axis.set_minor_locator(NullLocator())
    axis.set_minor_formatter(NullFormatter())
    return True


def formats_of(out: str | Path, formats: Sequence[str] | None) -> tuple[Path, list[str]]:
    """The path stem and the formats to write: `formats` if given, else the extension of `out`
    (fig.pdf: PDF only), else all of FORMATS."""
    out = Path(out)
    ext = out.suffix.lower().lstrip(".")
    stem = out.with_suffix("") if ext in FORMATS else out
    if formats:
        bad = [f for f in formats if f not in FORMATS]
        if bad:
            raise MlusimError(f"unknown figure format {bad[0][:20]!r} (known: {', '.join(FORMATS)})")
        return stem, list(dict.fromkeys(formats))
    return stem, [ext] if ext in FORMATS else list(FORMATS)


def _save(fig, out: str | Path, formats: Sequence[str] | None = None) -> list[Path]:
    stem, fmts = formats_of(out, formats)
    plt = pyplot()
    paths = []
    try:
        stem.parent.mkdir(parents=True, exist_ok=True)
        with plt.rc_context(STYLE):
            fig.canvas.draw()             # once: the tight box every format is cropped to
            box = fig.get_tightbbox(fig.canvas.get_renderer()).padded(0.05)
            for fmt in fmts:
                p = stem.with_name(f"{stem.name}.{fmt}")
                fig.savefig(p, format=fmt, bbox_inches=box, metadata=_META[fmt])
                paths.append(p)
    except OSError as e:
        raise MlusimError(f"{stem}: cannot write plot: {e.strerror}") from None
    finally:
        plt.close(fig)
    return paths


def save(fig, out: str | Path, formats: Sequence[str] | None = None) -> list[Path]:
    """Write the figure as `formats` (default: by the extension of `out`, else PNG, SVG and PDF)
    and close it; returns the paths."""
    return _save(fig, out, formats)
