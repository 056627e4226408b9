"""Small inline SVG charts for the HTML reports: pure functions from numbers to an ``<svg>`` string (no scripts, no URLs)."""

from __future__ import annotations

import html
import math
from collections.abc import Mapping, Sequence

PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#7f7f7f", "#bcbd22")


def colour(i: int) -> str:
    """The i-th series colour."""
    return PALETTE[i % len(PALETTE)]


def _esc(x: object) -> str:
    return html.escape(str(x), quote=True)


def _num(x: float) -> str:
    """A tick label: short, no trailing zeros."""
    if x == 0:
        return "0"
    a = abs(x)
    if a >= 1e4 or a < 1e-3:
        return f"{x:.1e}"
    return f"{x:.4g}"


def nice_ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    """About ``n`` round tick values covering [lo, hi]."""
    if not (math.isfinite(lo) and math.isfinite(hi)) or hi <= lo:
        return [lo] if math.isfinite(lo) else []
    raw = (hi - lo) / max(n - 1, 1)
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    start = math.ceil(lo / step - 1e-9) * step
    ticks, t = [], start
    while t <= hi + step * 1e-9:
        ticks.append(round(t, 12))
        t += step
    return ticks


def _legend(names: Sequence[str], x: float, y: float, width: float) -> tuple[str, float]:
    """Legend entries flowed left to right; returns (svg, height used)."""
    parts, cx, cy, row_h = [], x, y, 16
    for i, name in enumerate(names):
        w = 24 + 7.2 * min(len(name), 40)
        if cx + w > x + width and cx > x:
            cx, cy = x, cy + row_h
        label = name if len(name) <= 40 else name[:39] + "…"
        parts.append(f'<rect x="{cx:.1f}" y="{cy - 9:.1f}" width="12" height="4" fill="{colour(i)}"/>')
        parts.append(f'<text x="{cx + 16:.1f}" y="{cy - 4:.1f}" font-size="11" fill="#333">{_esc(label)}</text>')
        cx += w
    return "".join(parts), (cy - y) + row_h if names else 0


def line_chart(
    series: Mapping[str, Sequence[tuple[float, float]]],
    title: str = "",
    x_label: str = "step",
    width: int = 420,
    height: int = 220,
    markers: Sequence[tuple[float, str]] = (),
) -> str:
    """A line chart of (x, y) series; non-finite points are dropped; an empty chart is an empty string.

    ``markers``: (x, note) pairs drawn as dashed red verticals (an alarm at that step), the note as the tooltip."""
    clean = {k: [(float(x), float(y)) for x, y in pts if math.isfinite(x) and math.isfinite(y)] for k, pts in series.items()}
    clean = {k: v for k, v in clean.items() if v}
    if not clean:
        return ""
    xs = [x for pts in clean.values() for x, _ in pts]
    ys = [y for pts in clean.values() for _, y in pts]
    x0, x1 = min(xs), max(xs)
    y0, y1 = min(ys), max(ys)
    if x1 == x0:
        x0, x1 = x0 - 0.5, x1 + 0.5
    if y1 == y0:
        pad = abs(y0) * 0.1 or 0.5
        y0, y1 = y0 - pad, y1 + pad
    else:
        pad = (y1 - y0) * 0.06
        y0, y1 = y0 - pad, y1 + pad
    left, right, top, plot_h = 52, 12, 26, height - 26 - 34
    plot_w = width - left - right
    legend, legend_h = _legend(list(clean), left, height + 12, plot_w)
    total_h = height + legend_h + 12

    def px(x: float) -> float:
        return left + (x - x0) / (x1 - x0) * plot_w

    def py(y: float) -> float:
        return top + (1 - (y - y0) / (y1 - y0)) * plot_h

    out = [
        f'<svg class="chart" viewBox="0 0 {width} {total_h:.0f}" width="{width}" height="{total_h:.0f}" role="img" aria-label="{_esc(title)}">',
        f"<title>{_esc(title)}</title>",
        f'<rect x="{left}" y="{top}" width="{plot_w}" height="{plot_h}" fill="#fbfbfc" stroke="#d0d7de"/>',
        f'<text x="{left}" y="16" font-size="13" font-weight="600" fill="#1b1f24">{_esc(title)}</text>',
    ]
    for t in nice_ticks(y0, y1):
        y = py(t)
        out.append(f'<line x1="{left}" x2="{left + plot_w}" y1="{y:.1f}" y2="{y:.1f}" stroke="#e6e8eb"/>')
        out.append(f'<text x="{left - 4}" y="{y + 4:.1f}" font-size="10" text-anchor="end" fill="#57606a">{_num(t)}</text>')
    for t in nice_ticks(x0, x1, 6):
        x = px(t)
        out.append(f'<text x="{x:.1f}" y="{top + plot_h + 14}" font-size="10" text-anchor="middle" fill="#57606a">{_num(t)}</text>')
    out.append(
        f'<text x="{left + plot_w / 2:.1f}" y="{top + plot_h + 28}" font-size="10" text-anchor="middle" fill="#57606a">{_esc(x_label)}</text>'
    )
    out += _series_marks(clean, px, py)
    out += _marker_lines([(px(x), note) for x, note in markers if x0 <= x <= x1], top, plot_h, left + plot_w)
    out.append(legend)
    out.append("</svg>")
    return "".join(out)


def _series_marks(series: Mapping[str, Sequence[tuple[float, float]]], px, py) -> list[str]:
    """One polyline per series (a dot for a single point), in the series' colour, its name as the tooltip."""
    out = []
    for i, (name, pts) in enumerate(series.items()):
        pts = sorted(pts)
        if len(pts) == 1:
            out.append(
                f'<circle cx="{px(pts[0][0]):.1f}" cy="{py(pts[0][1]):.1f}" r="3" fill="{colour(i)}"><title>{_esc(name)}</title></circle>'
            )
            continue
        path = " ".join(f"{px(x):.1f},{py(y):.1f}" for x, y in pts)
        out.append(f'<polyline fill="none" stroke="{colour(i)}" stroke-width="1.6" points="{path}"><title>{_esc(name)}</title></polyline>')
    return out


def _marker_lines(markers: Sequence[tuple[float, str]], top: float, plot_h: float, right: float) -> list[str]:
    """Dashed red verticals at pixel x (an alarm), the note as the tooltip, and a key in the title row."""
    out = [
        f'<line x1="{x:.1f}" x2="{x:.1f}" y1="{top}" y2="{top + plot_h}" stroke="#d1242f" stroke-width="1.2" '
        f'stroke-dasharray="4 3"><title>{_esc(note)}</title></line>'
        for x, note in markers
    ]
    if out:
        out.append(f'<text x="{right}" y="16" font-size="10" text-anchor="end" fill="#d1242f">alarm: dashed</text>')
    return out


def radar_chart(axes: Sequence[str], series: Mapping[str, Sequence[float | None]], title: str = "", size: int = 380) -> str:
    """A radar of 0-1 values, one polygon per series (series with a missing value are left out); empty string if none."""
    k = len(axes)
    usable = {
        n: [min(max(float(v), 0.0), 1.0) for v in vals] for n, vals in series.items() if len(vals) == k and all(v is not None for v in vals)
    }
    if k < 3 or not usable:
        return ""
    width = size + 120  # room for the axis labels left and right
    cx, cy, r = width / 2, size / 2 + 8, size / 2 - 60

    def point(i: int, v: float) -> tuple[float, float]:
        a = -math.pi / 2 + 2 * math.pi * i / k
        return cx + r * v * math.cos(a), cy + r * v * math.sin(a)

    legend, legend_h = _legend(list(usable), 10, size + 14, width - 20)
    total_h = size + legend_h + 14
    out = [
        f'<svg class="chart radar" viewBox="0 0 {width} {total_h:.0f}" width="{width}" height="{total_h:.0f}" role="img" aria-label="{_esc(title)}">',
        f"<title>{_esc(title)}</title>",
        f'<text x="10" y="16" font-size="13" font-weight="600" fill="#1b1f24">{_esc(title)}</text>',
    ]
    for ring in (0.25, 0.5, 0.75, 1.0):
        pts = " ".join(f"{x:.1f},{y:.1f}" for x, y in (point(i, ring) for i in range(k)))
        out.append(f'<polygon points="{pts}" fill="none" stroke="#d0d7de" stroke-width="{1.2 if ring == 1 else 0.7}"/>')
        x, y = point(0, ring)
        out.append(f'<text x="{x + 3:.1f}" y="{y + 3:.1f}" font-size="9" fill="#8c959f">{ring:g}</text>')
    for i, name in enumerate(axes):
        x, y = point(i, 1.0)
        out.append(f'<line x1="{cx:.1f}" y1="{cy:.1f}" x2="{x:.1f}" y2="{y:.1f}" stroke="#d0d7de"/>')
        lx, ly = point(i, 1.13)
        anchor = "middle" if abs(lx - cx) < 8 else ("start" if lx > cx else "end")
        out.append(f'<text x="{lx:.1f}" y="{ly + 4:.1f}" font-size="11" text-anchor="{anchor}" fill="#1b1f24">{_esc(name)}</text>')
    for j, (name, vals) in enumerate(usable.items()):
        pts = " ".join(f"{x:.1f},{y:.1f}" for x, y in (point(i, v) for i, v in enumerate(vals)))
        c = colour(j)
        out.append(
            f'<polygon points="{pts}" fill="{c}" fill-opacity="0.10" stroke="{c}" stroke-width="1.6"><title>{_esc(name)}</title></polygon>'
        )
    out.append(legend)
    out.append("</svg>")
    return "".join(out)
