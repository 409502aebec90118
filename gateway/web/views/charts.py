"""Small SVG charts drawn by the server: no script, no external resources, readable on a phone.

The SVG scales with its container (viewBox); text stays legible because the box is only
720 units wide. Gaps in the data break the line rather than being bridged, so an offline
meter looks offline.
"""

from __future__ import annotations

import math
from datetime import timedelta
from zoneinfo import ZoneInfo

from markupsafe import Markup, escape

from ...clock import from_us, to_us

W, H = 720, 220
LEFT, RIGHT, TOP, BOTTOM = 52, 10, 10, 24
PLOT_W, PLOT_H = W - LEFT - RIGHT, H - TOP - BOTTOM


def downsample(samples: list[tuple[int, float]], start_us: int, end_us: int,
               bucket_us: int) -> list[tuple[int, float | None]]:
    """Means per bucket of [start_us, end_us): (bucket middle, mean or None when empty)."""
    n = max(1, -(-(end_us - start_us) // bucket_us))
    sums, counts = [0.0] * n, [0] * n
    for ts, v in samples:
        i = (ts - start_us) // bucket_us
        if 0 <= i < n and v == v:                 # v == v: NaN from a bad register is skipped
            sums[i] += v
            counts[i] += 1
    return [(start_us + i * bucket_us + bucket_us // 2, sums[i] / counts[i] if counts[i] else None)
            for i in range(n)]


def _nice_range(lo: float, hi: float) -> tuple[float, float, float]:
    """Axis bounds and step: about 4 gridlines on round numbers."""
    if hi - lo < 1e-9:
        pad = abs(hi) * 0.05 or 1.0
        lo, hi = lo - pad, hi + pad
    raw = (hi - lo) / 4
    mag = 10 ** _floor_log10(raw)
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    return (lo // step) * step, -((-hi) // step) * step, step


def _floor_log10(x: float) -> int:
    return math.floor(math.log10(x))


def _fmt(v: float, step: float) -> str:
    """Enough decimals to tell gridlines apart (2.5-steps need one more)."""
    digits = max(0, -_floor_log10(step) + (1 if round(step / 10 ** _floor_log10(step), 6) == 2.5 else 0))
    return f"{v:.{digits}f}"


def _x_ticks(start_us: int, end_us: int, tz: ZoneInfo) -> list[tuple[int, str]]:
    """Local-time ticks: every 3 hours for about a day, local midnights for longer spans.
    Stepped in wall-clock time so they stay on round local hours."""
    span_h = (end_us - start_us) / 3.6e9
    start = from_us(start_us).astimezone(tz).replace(tzinfo=None)
    if span_h <= 36:
        t = start.replace(hour=start.hour - start.hour % 3, minute=0, second=0, microsecond=0)
        step, fmt = timedelta(hours=3), "%H:%M"
    else:
        t = start.replace(hour=0, minute=0, second=0, microsecond=0)
        step, fmt = timedelta(days=1 if span_h <= 24 * 10 else 5), "%m-%d"
    out = []
    while (us := to_us(t.replace(tzinfo=tz))) <= end_us:
        if us >= start_us:
            out.append((us, t.strftime(fmt)))
        t += step
    return out


def _frame(title: str, kind: str, extra: str = "") -> str:
    return (f'<svg class="chart {kind}" viewBox="0 0 {W} {H}" role="img" aria-label="{escape(title)}" '
            f'xmlns="http://www.w3.org/2000/svg"{extra}><title>{escape(title)}</title>')


def _y_axis(parts: list[str], lo: float, hi: float, step: float):
    """Draw the horizontal grid with its labels; returns the value -> y mapping."""
    def y(v: float) -> float:
        return TOP + PLOT_H * (hi - v) / (hi - lo)
    g = lo
    while g <= hi + step / 2:
        parts.append(f'<line x1="{LEFT}" x2="{W - RIGHT}" y1="{y(g):.1f}" y2="{y(g):.1f}" stroke="#e3e6ea"/>'
                     f'<text x="{LEFT - 4}" y="{y(g) + 4:.1f}" text-anchor="end" font-size="11" fill="#555">'
                     f'{_fmt(g, step)}</text>')
        g += step
    return y


def line_chart(points: list[tuple[int, float | None]], start_us: int, end_us: int, tz: ZoneInfo,
               title: str, unit: str = "", empty_text: str = "") -> Markup:
    """A line over time; None values break the line."""
    values = [v for _, v in points if v is not None]
    shown = sum(1 for _, v in points if v is not None)
    parts = [_frame(title, "line", f' data-points="{shown}"')]
    span = max(1, end_us - start_us)

    def x(us: int) -> float:
        return LEFT + PLOT_W * (us - start_us) / span
    if values:
        lo, hi, step = _nice_range(min(values), max(values))
    else:
        lo, hi, step = 0.0, 1.0, 0.25

    y = _y_axis(parts, lo, hi, step)
    for us, label in _x_ticks(start_us, end_us, tz):
        # a label at either edge is anchored inside the box so it is not cut off
        anchor = "end" if x(us) > W - RIGHT - 20 else "start" if x(us) < LEFT + 20 else "middle"
        parts.append(f'<line x1="{x(us):.1f}" x2="{x(us):.1f}" y1="{TOP}" y2="{H - BOTTOM}" stroke="#f0f1f3"/>'
                     f'<text x="{x(us):.1f}" y="{H - 8}" text-anchor="{anchor}" font-size="11" fill="#555">'
                     f'{escape(label)}</text>')
    if unit:
        parts.append(f'<text x="4" y="{TOP + 10}" font-size="11" fill="#555">{escape(unit)}</text>')
    segment: list[str] = []
    segments: list[list[str]] = []
    for us, v in points:
        if v is None:
            if segment:
                segments.append(segment)
            segment = []
        else:
            segment.append(f"{x(us):.1f},{y(v):.1f}")
    if segment:
        segments.append(segment)
    for s in segments:
        if len(s) == 1:
            cx, cy = s[0].split(",")
            parts.append(f'<circle cx="{cx}" cy="{cy}" r="2" fill="#1565c0"/>')
        else:
            parts.append(f'<polyline fill="none" stroke="#1565c0" stroke-width="1.5" points="{" ".join(s)}"/>')
    if not values and empty_text:
        parts.append(f'<text x="{LEFT + PLOT_W / 2}" y="{TOP + PLOT_H / 2}" text-anchor="middle" font-size="14" '
                     f'fill="#777">{escape(empty_text)}</text>')
    parts.append("</svg>")
    return Markup("".join(parts))


def bar_chart(bars: list[tuple[str, float | None, str]], title: str, unit: str = "",
              unknown_text: str = "?") -> Markup:
    """Bars (label, value or None, hover text); a None bar is drawn as a grey '?' placeholder."""
    values = [v for _, v, _ in bars if v is not None]
    lo, hi, step = _nice_range(min([0.0, *values]), max([0.0, *values]) or 1.0)
    parts = [_frame(title, "bars", f' data-bars="{len(bars)}" data-unknown="{len(bars) - len(values)}"')]

    y = _y_axis(parts, lo, hi, step)
    if unit:
        parts.append(f'<text x="4" y="{TOP + 10}" font-size="11" fill="#555">{escape(unit)}</text>')
    n = max(1, len(bars))
    slot = PLOT_W / n
    every = max(1, round(n / 10))                  # about ten labels, whatever the number of bars
    for i, (label, v, hover) in enumerate(bars):
        x0 = LEFT + i * slot + slot * 0.15
        w = slot * 0.7
        if v is None:
            parts.append(f'<rect class="unknown" x="{x0:.1f}" y="{TOP}" width="{w:.1f}" height="{PLOT_H}" '
                         f'fill="#eceff1"><title>{escape(hover)}</title></rect>'
                         f'<text x="{x0 + w / 2:.1f}" y="{TOP + PLOT_H / 2:.1f}" text-anchor="middle" '
                         f'font-size="11" fill="#777">{escape(unknown_text)}</text>')
        else:
            top, base = y(max(v, 0.0)), y(min(v, 0.0))
            parts.append(f'<rect x="{x0:.1f}" y="{top:.1f}" width="{w:.1f}" height="{max(base - top, 0.5):.1f}" '
                         f'fill="#1565c0"><title>{escape(hover)}</title></rect>')
        if i % every == 0:
            parts.append(f'<text x="{x0 + w / 2:.1f}" y="{H - 8}" text-anchor="middle" font-size="11" '
                         f'fill="#555">{escape(label)}</text>')
    parts.append("</svg>")
    return Markup("".join(parts))
