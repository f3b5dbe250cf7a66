"""Point labels that never overlap: each label tries positions around its point, nearest first,
and takes the first whose box stays inside the axes and clear of every label placed before and of
every marker; a label set away from its point gets a thin leader line; one with no room is left
out (the caller says how many). Done in display space once the axes' limits are final, so it
holds in every file written (they scale the whole figure alike).

The labels go in priority order (the caller's: e.g. the kernels with the most cycles first).
"""
from __future__ import annotations

from dataclasses import dataclass

# offsets from the point to the nearest corner or edge of the label, in points: ring by ring
RADII_PT = (3.0, 9.0, 16.0, 26.0, 38.0, 52.0, 70.0, 90.0)
# directions, preferred first: right, upper right, above, upper left, left, lower left/right, below
DIRECTIONS = ((1, 0), (1, 1), (0, 1), (-1, 1), (-1, 0), (-1, -1), (1, -1), (0, -1))
SAME_PX = 6.0          # points whose markers overlap share one label, their names one per line
LINE_STEP_PX = 3.0     # lines to keep clear are sampled this finely
MARKER_PT = 4.0        # half the side of the box kept clear around each point
LEADER_FROM_PT = 8.0   # labels this far from their point get a leader line


@dataclass
class Label:
    """One label: data coordinates, text, and the colour to draw it in."""

    x: float
    y: float
    text: str
    color: str = "black"


def _overlaps(a: tuple, b: tuple) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def _box(px: float, py: float, w: float, h: float, dx: int, dy: int, r: float) -> tuple:
    """The label box (x0, y0, x1, y1) in pixels at direction (dx, dy), distance r from (px, py)."""
    x0 = px + r if dx > 0 else px - r - w if dx < 0 else px - w / 2
    y0 = py + r if dy > 0 else py - r - h if dy < 0 else py - h / 2
    if dx == 0 and dy == 0:
        x0, y0 = px - w / 2, py - h / 2
    return (x0, y0, x0 + w, y0 + h)


def _line_boxes(ax, pts: list, half: float) -> list[tuple]:
    """Small boxes along a polyline (display coordinates), so no label is drawn across it."""
    out = []
    for (x0, y0), (x1, y1) in zip(pts, pts[1:]):
        n = max(1, int(((x1 - x0) ** 2 + (y1 - y0) ** 2) ** 0.5 / LINE_STEP_PX))
        for i in range(n + 1):
            x, y = x0 + (x1 - x0) * i / n, y0 + (y1 - y0) * i / n
            out.append((x - half, y - half, x + half, y + half))
    return out


def place(ax, labels: list[Label], fontsize: float = 8, avoid: list | None = None,
          lines: list[list[tuple[float, float]]] | None = None) -> int:
    """Annotate `ax` with `labels` where they fit without overlapping; returns how many fit
    (points drawn on one spot share a label, a name per line).
    `avoid`: extra data points (x, y) whose markers labels must not cover; `lines`: polylines
    (data coordinates) labels must not cross. Leader lines cross no label or other marker."""
    fig = ax.figure
    renderer = fig.canvas.get_renderer()
    px_per_pt = fig.dpi / 72.0
    frame = ax.get_window_extent(renderer)
    inside = (frame.x0 + 1, frame.y0 + 1, frame.x1 - 1, frame.y1 - 1)
    m = MARKER_PT * px_per_pt
    labels = merge_coincident(ax, labels)
    points = [tuple(ax.transData.transform((lb.x, lb.y))) for lb in labels]
    points += [tuple(ax.transData.transform(p)) for p in (avoid or [])]
    taken = [(x - m, y - m, x + m, y + m) for x, y in points]
    markers = list(taken)
    for line in lines or []:
        taken += _line_boxes(ax, [ax.transData.transform(p) for p in line], 1.0)
    boxes: list[tuple] = []          # labels placed so far
    placed = 0
    for lb, (px, py) in zip(labels, points):
        count = lb.text.count("\n") + 1
        probe = ax.text(0, 0, lb.text, fontsize=fontsize)
        bb = probe.get_window_extent(renderer)
        probe.remove()
        others = [b for b in markers if not (b[0] <= px <= b[2] and b[1] <= py <= b[3])]
        spot = _spot((px, py), (bb.width + 2, bb.height + 2), px_per_pt, inside, taken, boxes + others)
        if spot is None:
            continue
        box, r_pt = spot
        taken.append(box)
        boxes.append(box)
        arrow = None
        if r_pt >= LEADER_FROM_PT:
            arrow = {"arrowstyle": "-", "lw": 0.5, "color": "0.45", "shrinkA": 0, "shrinkB": 2}
            taken += _line_boxes(ax, [(px, py), _nearest(box, px, py)], 1.0)
        off = ((box[0] + 1 - px) / px_per_pt, (box[1] + 1 - py) / px_per_pt)
        ax.annotate(lb.text, (lb.x, lb.y), xytext=off, textcoords="offset points", ha="left", va="bottom",
                    fontsize=fontsize, color=lb.color, arrowprops=arrow, annotation_clip=False)
        placed += count
    return placed


def merge_coincident(ax, labels: list[Label]) -> list[Label]:
    """Labels of points drawn on top of each other (twin layers of a network) as one label."""
    out: list[Label] = []
    where: list[tuple[float, float]] = []
    for lb in labels:
        x, y = ax.transData.transform((lb.x, lb.y))
        hit = next((i for i, (a, b) in enumerate(where) if abs(a - x) < SAME_PX and abs(b - y) < SAME_PX), None)
        if hit is None:
            out.append(Label(lb.x, lb.y, lb.text, lb.color))
            where.append((x, y))
        else:
            out[hit].text += "\n" + lb.text
            if out[hit].color != lb.color:
                out[hit].color = "black"
    return out


def _nearest(box: tuple, px: float, py: float) -> tuple[float, float]:
    """The point of `box` nearest (px, py): where a leader line meets the label."""
    return min(max(px, box[0]), box[2]), min(max(py, box[1]), box[3])


def _crosses(a: tuple[float, float], b: tuple[float, float], boxes: list[tuple]) -> bool:
    n = max(1, int(((b[0] - a[0]) ** 2 + (b[1] - a[1]) ** 2) ** 0.5 / LINE_STEP_PX))
    for i in range(n + 1):
        x, y = a[0] + (b[0] - a[0]) * i / n, a[1] + (b[1] - a[1]) * i / n
        if any(t[0] <= x <= t[2] and t[1] <= y <= t[3] for t in boxes):
            return True
    return False


def _spot(p, size, px_per_pt, inside, taken, blockers) -> tuple[tuple, float] | None:
    """The first free box around point `p`, ring by ring, with its distance in points; past the
    first rings its leader line must cross no `blockers` (placed labels, other markers)."""
    (px, py), (w, h) = p, size
    for r_pt in RADII_PT:
        for dx, dy in DIRECTIONS:
            box = _box(px, py, w, h, dx, dy, r_pt * px_per_pt)
            if box[0] < inside[0] or box[1] < inside[1] or box[2] > inside[2] or box[3] > inside[3]:
                continue
            if any(_overlaps(box, t) for t in taken):
                continue
            if r_pt >= LEADER_FROM_PT and _crosses((px, py), _nearest(box, px, py), blockers):
                continue
            return box, r_pt
    return None
