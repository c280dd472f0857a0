"""A tiny inline SVG sparkline: one canary's metric over the soak beside its control's.

``sparkline_svg`` draws two series of ``(t, value)`` points (``value`` ``None`` = not measured)
on one shared scale, and optionally a dotted horizontal line (the level beyond which the canary
is worse than the control by more than the tolerance) and a dotted vertical line (where an
extended soak began). It is a pure function of its arguments.

Contract (tested):

- Deterministic: the same points give the same bytes (coordinates to one decimal, fixed
  attribute order), so a report rebuilt from the same log is identical.
- Self-contained and safe to inline: no scripts, no external references, no styles beyond
  presentation attributes; its one piece of text (``<title>``, which names it for screen
  readers) is XML-escaped, so a metric key such as ``inference_latency_seconds{quantile="0.95"}``
  cannot break out of the element. One line, no blank lines: one HTML block inside markdown.
- A missing value breaks its line (a gap, never an invented point); NaN and infinities count as
  missing. With no measured point at all there is nothing to draw: ``None``.
- Small: ``WIDTH`` x ``HEIGHT`` pixels, a few hundred bytes plus about 12 per point.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from html import escape

WIDTH = 160
HEIGHT = 32
PAD = 2.0
CANARY_COLOUR = "#1f6feb"  # solid
CONTROL_COLOUR = "#8b949e"  # dashed
LIMIT_COLOUR = "#d1242f"  # dotted

Point = tuple[float, float | None]


def _measured(points: Sequence[Point]) -> list[float]:
    return [v for _, v in points if v is not None and math.isfinite(v)]


def _path(points: Sequence[Point], x: Callable[[float], float], y: Callable[[float], float]) -> str:
    """``M``/``L`` commands; a missing value starts a new segment."""
    out: list[str] = []
    pen_down = False
    for t, v in points:
        if v is None or not math.isfinite(v):
            pen_down = False
            continue
        out.append(f"{'L' if pen_down else 'M'}{x(t):.1f} {y(v):.1f}")
        pen_down = True
    return " ".join(out)


def sparkline_svg(
    canary: Sequence[Point],
    control: Sequence[Point],
    *,
    title: str,
    limit: float | None = None,
    split_at: float | None = None,
) -> str | None:
    """The sparkline as one line of SVG, or ``None`` when neither series has a value."""
    values = _measured(canary) + _measured(control)
    if not values:
        return None
    if limit is not None and math.isfinite(limit):
        values.append(limit)
    else:
        limit = None
    lo, hi = min(values), max(values)
    if hi - lo < 1e-12:
        # A flat line: centre it instead of dividing by nothing.
        span = abs(hi) * 0.1 or 1.0
        lo, hi = lo - span, hi + span
    times = [t for t, _ in (*canary, *control) if math.isfinite(t)]
    t0, t1 = (min(times), max(times)) if times else (0.0, 1.0)
    if t1 - t0 < 1e-12:
        t1 = t0 + 1.0

    def x(t: float) -> float:
        return PAD + (t - t0) / (t1 - t0) * (WIDTH - 2 * PAD)

    def y(v: float) -> float:
        return HEIGHT - PAD - (v - lo) / (hi - lo) * (HEIGHT - 2 * PAD)

    label = escape(title, quote=True)
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" '
        f'viewBox="0 0 {WIDTH} {HEIGHT}" role="img">',
        f"<title>{label}</title>",
    ]
    if split_at is not None and math.isfinite(split_at) and t0 < split_at < t1:
        sx = x(split_at)
        parts.append(
            f'<line x1="{sx:.1f}" y1="0" x2="{sx:.1f}" y2="{HEIGHT}" '
            f'stroke="{CONTROL_COLOUR}" stroke-width="0.5" stroke-dasharray="1 2"/>'
        )
    if limit is not None:
        ly = y(limit)
        parts.append(
            f'<line x1="0" y1="{ly:.1f}" x2="{WIDTH}" y2="{ly:.1f}" '
            f'stroke="{LIMIT_COLOUR}" stroke-width="0.75" stroke-dasharray="1 2"/>'
        )
    for points, colour, dash in (
        (control, CONTROL_COLOUR, ' stroke-dasharray="3 2"'),
        (canary, CANARY_COLOUR, ""),
    ):
        d = _path(points, x, y)
        if d:
            parts.append(f'<path d="{d}" fill="none" stroke="{colour}" stroke-width="1.25"{dash}/>')
    parts.append("</svg>")
    return "".join(parts)
