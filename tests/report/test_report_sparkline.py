"""The canary sparkline (``report.sparkline``): tiny, deterministic, safe to inline."""

from __future__ import annotations

import re

from fleetgate.report.sparkline import HEIGHT, WIDTH, sparkline_svg

CANARY = [(0.0, 1.0), (30.0, None), (60.0, 1.2), (90.0, float("nan")), (120.0, 1.3)]
CONTROL = [(0.0, 1.0), (30.0, 1.0), (60.0, 1.0), (90.0, 1.0), (120.0, 1.0)]


def test_a_sparkline_escapes_its_text_breaks_at_gaps_and_draws_nothing_from_nothing() -> None:
    title = 'inference_latency_seconds{quantile="0.95"} <on> c1 & k1'
    svg = sparkline_svg(CANARY, CONTROL, title=title, limit=1.25, split_at=60.0)
    assert svg is not None
    assert "<title>inference_latency_seconds{quantile=&quot;0.95&quot;} &lt;on&gt; c1 &amp; k1" in (
        svg
    )
    assert title not in svg
    canary_path = re.findall(r'<path d="([^"]*)"', svg)[-1]
    assert canary_path.count("M") == 3  # two gaps: three pieces, nothing invented
    assert svg == sparkline_svg(CANARY, CONTROL, title=title, limit=1.25, split_at=60.0)
    assert sparkline_svg([(0.0, None)], [], title="x") is None
    flat = sparkline_svg([(0.0, 0.0), (30.0, 0.0)], [(0.0, 0.0)], title="x")
    assert flat is not None and 'y2="' not in flat  # no limit, no split: paths only


def test_every_point_lies_inside_the_box() -> None:
    svg = sparkline_svg(CANARY, CONTROL, title="x", limit=5.0, split_at=60.0)
    assert svg is not None
    xs = [float(v) for v in re.findall(r"[ML]([\d.-]+) ", svg)]
    ys = [float(v) for v in re.findall(r"[ML][\d.-]+ ([\d.-]+)", svg)]
    assert xs and all(0 <= x <= WIDTH for x in xs) and all(0 <= y <= HEIGHT for y in ys)
    # The limit is part of the scale: a canary far below it is drawn low, the line at the top.
    assert 'y1="2.0"' in svg
