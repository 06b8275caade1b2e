"""Hand-written inline SVG charts: line charts (learning curves, log axes, guide lines), bar
charts (histograms) and scatter plots (gate saturation).

Plain strings, no dependency: the report and the viewer stay one self-contained HTML file
that any browser opens offline. Each chart is an <svg> element with a viewBox, so it scales
with the page; every series carries a `data-series` attribute that tests can find.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from html import escape

# Okabe-Ito: distinguishable for colour-blind readers, readable on white
PALETTE = ("#0072b2", "#d55e00", "#009e73", "#cc79a7", "#e69f00", "#56b4e9", "#000000", "#999999")


@dataclass
class Series:
    name: str
    xs: list[float]
    ys: list[float | None]         # None leaves a gap (a validation that had no split)
    color: str = ""
    markers: bool = False


def nice_ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    """About n round tick values (1, 2, 5 x 10^k steps) covering [lo, hi]."""
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return []
    if hi <= lo:
        hi = lo + (abs(lo) or 1.0)
    raw = (hi - lo) / max(n, 1)
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    start = math.ceil(lo / step - 1e-9) * step
    ticks, t = [], start
    while t <= hi + step * 1e-9:
        ticks.append(round(t, 12))
        t += step
    return ticks


def fmt(v: float) -> str:
    """A short tick label: 12k, 3.4M, 0.002, 1e-05."""
    a = abs(v)
    if a == 0:
        return "0"
    if a >= 1e9:
        return f"{v / 1e9:g}G"
    if a >= 1e6:
        return f"{v / 1e6:g}M"
    if a >= 1e4:
        return f"{v / 1e3:g}k"
    if a < 1e-3:
        return f"{v:.0e}"
    return f"{v:.4g}"


class _Frame:
    """Maps data coordinates to the plot area and draws axes, grid and labels."""

    def __init__(self, xs: list[float], ys: list[float], width: int, height: int, logy: bool,
                 xlim: tuple[float, float] | None = None, ylim: tuple[float, float] | None = None,
                 logx: bool = False):
        self.w, self.h, self.logy, self.logx = width, height, logy, logx
        self.left, self.right, self.top, self.bottom = 58, 16, 40, 40
        ys = [y for y in ys if y is not None and math.isfinite(y) and (y > 0 or not logy)]
        xs = [math.log10(x) if logx else x for x in xs if math.isfinite(x) and (x > 0 or not logx)]
        self.x0, self.x1 = xlim or ((min(xs), max(xs)) if xs else (0.0, 1.0))
        if self.x1 <= self.x0:
            self.x1 = self.x0 + 1.0
        if ylim:
            y0, y1 = ylim
        elif ys:
            y0, y1 = min(ys), max(ys)
        else:
            y0, y1 = (1.0, 10.0) if logy else (0.0, 1.0)
        if logy:
            y0, y1 = math.log10(y0), math.log10(y1)
        if y1 <= y0:
            pad = abs(y0) * 0.1 or 1.0
            y0, y1 = y0 - pad, y1 + pad
        self.y0, self.y1 = y0, y1

    def px(self, x: float) -> float:
        v = math.log10(x) if self.logx else x
        return self.left + (v - self.x0) / (self.x1 - self.x0) * (self.w - self.left - self.right)

    def py(self, y: float) -> float:
        v = math.log10(y) if self.logy else y
        return self.h - self.bottom - (v - self.y0) / (self.y1 - self.y0) * (self.h - self.top - self.bottom)

    def axes(self, title: str, xlabel: str, ylabel: str) -> list[str]:
        out = [f'<text x="{self.left}" y="16" class="title">{escape(title)}</text>']
        pw_l, pw_r = self.left, self.w - self.right
        ph_t, ph_b = self.top, self.h - self.bottom
        xt = _decades(self.x0, self.x1) if self.logx else nice_ticks(self.x0, self.x1)
        for t in xt:
            x = self.px(t)
            out.append(f'<line x1="{x:.1f}" y1="{ph_t}" x2="{x:.1f}" y2="{ph_b}" class="grid"/>'
                       f'<text x="{x:.1f}" y="{ph_b + 14}" class="tick" text-anchor="middle">{fmt(t)}</text>')
        if self.logy:
            yt = _decades(self.y0, self.y1)
        else:
            yt = nice_ticks(self.y0, self.y1)
        for t in yt:
            y = self.py(t)
            out.append(f'<line x1="{pw_l}" y1="{y:.1f}" x2="{pw_r}" y2="{y:.1f}" class="grid"/>'
                       f'<text x="{pw_l - 5}" y="{y + 4:.1f}" class="tick" text-anchor="end">{fmt(t)}</text>')
        out.append(f'<rect x="{pw_l}" y="{ph_t}" width="{pw_r - pw_l}" height="{ph_b - ph_t}" class="frame"/>')
        out.append(f'<text x="{(pw_l + pw_r) / 2:.1f}" y="{self.h - 6}" class="label" '
                   f'text-anchor="middle">{escape(xlabel)}</text>')
        out.append(f'<text transform="translate(13 {(ph_t + ph_b) / 2:.1f}) rotate(-90)" class="label" '
                   f'text-anchor="middle">{escape(ylabel)}</text>')
        return out

    def legend(self, items: list[tuple[str, str]]) -> list[str]:
        out, x = [], self.w - self.right - 6
        for name, color in reversed(items):
            width = 14 + 7 * len(name)
            x -= width
            out.append(f'<rect x="{x:.0f}" y="22" width="10" height="10" fill="{color}"/>'
                       f'<text x="{x + 13:.0f}" y="31" class="tick">{escape(name)}</text>')
            x -= 10
        return out


def _decades(lo: float, hi: float) -> list[float]:
    """Ticks at the powers of ten between 10^lo and 10^hi (lo, hi: log10 of the axis ends)."""
    return [10.0 ** k for k in range(math.floor(lo), math.ceil(hi) + 1) if lo - 1e-9 <= k <= hi + 1e-9]


@dataclass
class Mark:
    """A labelled guide line across the plot: vertical at x (axis 'x') or horizontal at y ('y')."""
    label: str
    at: float
    axis: str = "x"
    color: str = "#888"


def _marks(f: _Frame, marks: list[Mark]) -> list[str]:
    out = []
    for k, m in enumerate(marks):
        if not math.isfinite(m.at) or (m.axis == "x" and f.logx or m.axis == "y" and f.logy) and m.at <= 0:
            continue
        if m.axis == "x":
            x = f.px(m.at)
            ends, inside = (x, f.top, x, f.h - f.bottom), f.left <= x <= f.w - f.right
            label = (x + 3, f.top + 12 + 13 * k)      # stepped down one line each: close marks stay legible
        else:
            y = f.py(m.at)
            ends, inside = (f.left, y, f.w - f.right, y), f.top <= y <= f.h - f.bottom
            label = (f.left + 4, y - 3)
        if inside:
            out.append(f'<g data-mark="{escape(m.label)}" data-at="{m.at:.6g}"><line x1="{ends[0]:.1f}" '
                       f'y1="{ends[1]:.1f}" x2="{ends[2]:.1f}" y2="{ends[3]:.1f}" stroke="{m.color}" '
                       f'stroke-dasharray="4 3"/><text x="{label[0]:.1f}" y="{label[1]:.1f}" class="tick">'
                       f'{escape(m.label)}</text></g>')
    return out


def _svg(width: int, height: int, kind: str, body: list[str]) -> str:
    return (f'<svg class="chart" data-chart="{kind}" viewBox="0 0 {width} {height}" '
            f'width="{width}" height="{height}" role="img">' + "".join(body) + "</svg>")


def line_chart(series: list[Series], title: str, xlabel: str, ylabel: str, width: int = 560,
               height: int = 300, logy: bool = False, logx: bool = False, marks: list[Mark] | None = None,
               ylim: tuple[float, float] | None = None) -> str:
    """Lines (with optional point markers) sharing one x axis; gaps where y is None; `marks`:
    labelled guide lines (a suggested rate, a rule-of-thumb level)."""
    xs = [x for s in series for x in s.xs]
    ys = [y for s in series for y in s.ys] + [m.at for m in marks or [] if m.axis == "y"]   # guides stay in view
    f = _Frame(xs, ys, width, height, logy, ylim=ylim, logx=logx)
    body = f.axes(title, xlabel, ylabel)
    items = []
    for k, s in enumerate(series):
        color = s.color or PALETTE[k % len(PALETTE)]
        items.append((s.name, color))
        runs, run = [], []
        for x, y in zip(s.xs, s.ys):
            if y is None or not math.isfinite(y) or (logy and y <= 0) or (logx and not x > 0):
                if run:
                    runs.append(run)
                run = []
                continue
            run.append((f.px(x), f.py(y)))
        if run:
            runs.append(run)
        parts = [f'<g data-series="{escape(s.name)}" data-points="{sum(len(r) for r in runs)}">']
        for r in runs:
            pts = " ".join(f"{x:.1f},{y:.1f}" for x, y in r)
            parts.append(f'<polyline points="{pts}" fill="none" stroke="{color}" stroke-width="1.6"/>')
            if s.markers or len(r) == 1:
                parts += [f'<circle cx="{x:.1f}" cy="{y:.1f}" r="2.5" fill="{color}"/>' for x, y in r]
        parts.append("</g>")
        body += parts
    body += _marks(f, marks or [])
    body += f.legend(items)
    return _svg(width, height, "line", body)


def histogram(lo: float, hi: float, counts: list[int], title: str, xlabel: str, width: int = 270,
              height: int = 190) -> str:
    """Bars of equal width over [lo, hi], one per count."""
    n = max(len(counts), 1)
    f = _Frame([lo, hi], [0.0, float(max(counts or [1]))], width, height, False)
    f.left, f.bottom = 46, 34
    body = f.axes(title, xlabel, "count")
    step = (hi - lo) / n
    base = f.py(0.0)
    bars = []
    for k, c in enumerate(counts):
        x0, x1 = f.px(lo + k * step), f.px(lo + (k + 1) * step)
        y = f.py(float(c))
        bars.append(f'<rect x="{x0:.1f}" y="{y:.1f}" width="{max(x1 - x0 - 0.5, 0.5):.1f}" '
                    f'height="{max(base - y, 0):.1f}"/>')
    body.append(f'<g data-series="{escape(title)}" data-points="{len(counts)}" fill="{PALETTE[0]}">'
                + "".join(bars) + "</g>")
    return _svg(width, height, "histogram", body)


def scatter(groups: list[tuple[str, list[float], list[float]]], title: str, xlabel: str, ylabel: str,
            width: int = 340, height: int = 320, lim: tuple[float, float] = (0.0, 1.0)) -> str:
    """Points in groups (name, xs, ys), each group its own colour, on equal [lim] axes."""
    f = _Frame([], [], width, height, False, xlim=lim, ylim=lim)
    body = f.axes(title, xlabel, ylabel)
    items = []
    for k, (name, xs, ys) in enumerate(groups):
        color = PALETTE[k % len(PALETTE)]
        items.append((name, color))
        body.append(f'<g data-series="{escape(name)}" data-points="{len(xs)}" fill="{color}" fill-opacity="0.55">')
        body += [f'<circle cx="{f.px(x):.1f}" cy="{f.py(y):.1f}" r="2.6"/>' for x, y in zip(xs, ys)]
        body.append("</g>")
    body += f.legend(items)
    return _svg(width, height, "scatter", body)


CSS = """
svg.chart { background: #fff; font: 11px system-ui, sans-serif; margin: 4px 8px 8px 0; max-width: 100%; height: auto; }
svg.chart .title { font-weight: 600; font-size: 13px; }
svg.chart .grid { stroke: #e5e5e5; stroke-width: 1; }
svg.chart .frame { fill: none; stroke: #999; }
svg.chart .tick { fill: #444; }
svg.chart .label { fill: #222; }
"""
