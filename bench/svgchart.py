"""A small SVG chart: axes with ticks and a grid, points, bars, lines, text and a legend.

The report's plots are drawn with it, as text: matplotlib took seconds to import and lay
out three small figures, on every run, including a rerun that took a few seconds otherwise.
Everything the page needs is here: linear and log axes (ticks at 1-2-5 steps or decades),
categorical rows, and a legend under the plot; the SVG has no script, no URL and no font file.
"""

from __future__ import annotations

import html
import math
from dataclasses import dataclass, field

FONT = "system-ui,-apple-system,'Segoe UI',Roboto,sans-serif"


def _e(x: object) -> str:
    return html.escape(str(x), quote=True)


def _num(v: float) -> str:
    return f"{v:.1f}".rstrip("0").rstrip(".")


def nice_ticks(lo: float, hi: float, most: int = 7) -> list[float]:
    """Ticks at 1, 2 or 5 times a power of ten, covering ``[lo, hi]`` with at most ``most``."""
    if not hi > lo:
        return [lo]
    raw = (hi - lo) / max(1, most - 1)
    power = 10 ** math.floor(math.log10(raw))
    step = next(m * power for m in (1, 2, 5, 10) if m * power >= raw)
    first = math.ceil(lo / step - 1e-9)
    return [round(k * step, 12) for k in range(first, int(math.floor(hi / step + 1e-9)) + 1)]


def tick_label(v: float) -> str:
    """A tick's text: as short as it can be without losing the value."""
    if v == 0:
        return "0"
    if abs(v) >= 1e4 or abs(v) < 1e-3:
        return f"{v:.0e}".replace("e+0", "e").replace("e-0", "e-")
    return f"{v:.6g}"


@dataclass
class Axis:
    """One axis: its data range, scale, and the pixels it spans."""

    lo: float
    hi: float
    log: bool = False
    start: float = 0.0
    end: float = 1.0

    def __post_init__(self) -> None:
        if self.log:
            self.lo, self.hi = max(self.lo, 1e-12), max(self.hi, 1e-12)
        if self.hi <= self.lo:
            pad = abs(self.lo) * 0.1 or 1.0
            self.lo, self.hi = self.lo - pad, self.hi + pad

    def __call__(self, v: float) -> float:
        if self.log:
            f = (math.log10(max(v, 1e-12)) - math.log10(self.lo)) / (math.log10(self.hi) - math.log10(self.lo))
        else:
            f = (v - self.lo) / (self.hi - self.lo)
        return self.start + f * (self.end - self.start)

    def ticks(self) -> list[float]:
        if not self.log:
            return nice_ticks(self.lo, self.hi)
        a, b = math.floor(math.log10(self.lo)), math.ceil(math.log10(self.hi))
        ticks = [10.0 ** k * m for k in range(a, b + 1) for m in ((1,) if b - a > 3 else (1, 2, 5))]
        return [t for t in ticks if self.lo <= t <= self.hi] or [self.lo, self.hi]


@dataclass
class Chart:
    """A plot area with an x axis (values) and a y axis (values, or rows when ``rows`` is given).

    Args:
        width: Pixels, the whole picture.
        height: Pixels, the whole picture.
        x: The x axis (its pixel span is set here).
        y: The y axis for values; None with ``rows``.
        rows: Labels of categorical rows, top to bottom (each may hold line breaks).
        left: Pixels left of the plot area (room for the y labels).
    """

    width: float
    height: float
    x: Axis
    y: Axis | None = None
    rows: list[str] | None = None
    left: float = 56.0
    top: float = 10.0
    bottom: float = 42.0
    parts: list[str] = field(default_factory=list)
    legend: list[tuple[str, str]] = field(default_factory=list)  # (marker svg at 0,0, label)

    def __post_init__(self) -> None:
        self.plot_bottom = self.height - self.bottom - 16  # the legend goes below (the picture grows for more rows)
        self.x.start, self.x.end = self.left, self.width - 14
        if self.y is not None:
            self.y.start, self.y.end = self.plot_bottom, self.top

    def row_y(self, i: float) -> float:
        n = len(self.rows or [1])
        return self.top + (i + 0.5) * (self.plot_bottom - self.top) / n

    def axes(self, xlabel: str, ylabel: str = "") -> None:
        """Grid, ticks, labels and the left and bottom spines."""
        p = self.parts
        for t in self.x.ticks():
            px = self.x(t)
            p.append(f'<line x1="{px:.1f}" y1="{self.top}" x2="{px:.1f}" y2="{self.plot_bottom:.1f}" stroke="#e5e9ef"/>'
                     f'<text x="{px:.1f}" y="{self.plot_bottom + 13:.1f}" font-size="10" text-anchor="middle">'
                     f"{_e(tick_label(t))}</text>")
        if self.y is not None:
            for t in self.y.ticks():
                py = self.y(t)
                p.append(f'<line x1="{self.left}" y1="{py:.1f}" x2="{self.x.end:.1f}" y2="{py:.1f}" stroke="#e5e9ef"/>'
                         f'<text x="{self.left - 5}" y="{py + 3.5:.1f}" font-size="10" text-anchor="end">'
                         f"{_e(tick_label(t))}</text>")
        for i, label in enumerate(self.rows or []):
            lines = label.split("\n")
            y0 = self.row_y(i) + 3.5 - 5.5 * (len(lines) - 1)
            spans = "".join(f'<tspan x="{self.left - 5}" y="{y0 + 11 * k:.1f}">{_e(s)}</tspan>' for k, s in enumerate(lines))
            p.append(f'<text font-size="9.5" text-anchor="end">{spans}</text>')
        p.append(f'<path d="M{self.left} {self.top}V{self.plot_bottom:.1f}H{self.x.end:.1f}" fill="none" stroke="#444"/>')
        p.append(f'<text x="{(self.left + self.x.end) / 2:.1f}" y="{self.plot_bottom + 30:.1f}" font-size="11" '
                 f'text-anchor="middle">{_e(xlabel)}</text>')
        if ylabel:
            cy = (self.top + self.plot_bottom) / 2
            p.append(f'<text transform="translate(13 {cy:.1f}) rotate(-90)" font-size="11" text-anchor="middle">'
                     f"{_e(ylabel)}</text>")

    def add(self, svg: str, legend: tuple[str, str] | None = None) -> None:
        """Draw ``svg``; ``legend``: (marker drawn around 0,0, label) for the legend."""
        self.parts.append(svg)
        if legend is not None and legend not in self.legend:
            self.legend.append(legend)

    def render(self, name: str, title: str) -> str:
        """The finished ``<svg>`` element (no namespace, no URL: it is inlined in the page)."""
        items, x, y = [], self.left, self.plot_bottom + 48
        for marker, label in self.legend:
            w = 26 + 6.2 * len(label)
            if x + w > self.width and x > self.left:
                x, y = self.left, y + 16
            items.append(f'<g transform="translate({x + 8:.1f} {y:.1f})">{marker}</g>'
                         f'<text x="{x + 20:.1f}" y="{y + 3.5:.1f}" font-size="10">{_e(label)}</text>')
            x += w
        height = max(self.height, y + 12)
        return (f'<svg class="plot-{_e(name)}" role="img" aria-label="{_e(title)}" width="{_num(self.width)}" '
                f'height="{_num(height)}" viewBox="0 0 {_num(self.width)} {_num(height)}" font-family="{_e(FONT)}" '
                f'fill="#1d2430"><title>{_e(title)}</title>{"".join(self.parts)}{"".join(items)}</svg>')


def circle(x: float, y: float, r: float, color: str, hollow: bool = False, opacity: float = 1.0, title: str = "") -> str:
    fill = 'fill="none"' if hollow else f'fill="{color}"'
    tip = f"<title>{_e(title)}</title>" if title else ""
    alpha = f' fill-opacity="{opacity:g}"' if opacity < 1 else ""
    return (f'<circle cx="{x:.1f}" cy="{y:.1f}" r="{r:g}" {fill}{alpha} stroke="{color if hollow else "none"}" '
            f'stroke-width="1.4">{tip}</circle>')


def line(points: list[tuple[float, float]], color: str, width: float = 1.0, dash: str = "") -> str:
    d = " ".join(f"{'M' if i == 0 else 'L'}{x:.1f} {y:.1f}" for i, (x, y) in enumerate(points))
    dashes = f' stroke-dasharray="{dash}"' if dash else ""
    return f'<path d="{d}" fill="none" stroke="{color}" stroke-width="{width:g}"{dashes}/>'


def rect(x: float, y: float, w: float, h: float, color: str, stroke: str = "none") -> str:
    return f'<rect x="{x:.1f}" y="{y:.1f}" width="{max(w, 0):.1f}" height="{max(h, 0):.1f}" fill="{color}" stroke="{stroke}"/>'


def text(x: float, y: float, s: str, size: float = 9.0) -> str:
    return f'<text x="{x:.1f}" y="{y:.1f}" font-size="{size:g}">{_e(s)}</text>'


def cross(x: float, y: float, color: str, r: float = 4.5) -> str:
    return line([(x - r, y - r), (x + r, y + r)], color, 1.6) + line([(x - r, y + r), (x + r, y - r)], color, 1.6)
