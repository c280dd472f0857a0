"""The agent's Prometheus text parser (``agent/promtext.py``): the format's corners, and inputs a
hostile or broken app could serve. Pure: no process, no socket."""

from __future__ import annotations

import math
import time

import pytest

from fleetgate.agent.probes import reportable
from fleetgate.agent.promtext import (
    MAX_BODY_BYTES,
    MAX_KEY_CHARS,
    MAX_LINE_CHARS,
    MAX_SERIES,
    complete_lines,
    parse_exposition,
    parse_sample,
    parse_value,
)
from fleetgate.core.model import metric_key

SUMMARY = """\
# HELP inference_latency_seconds Inference latency.
# TYPE inference_latency_seconds summary
inference_latency_seconds{quantile="0.5"} 0.012
inference_latency_seconds{quantile="0.95"} 0.031
inference_latency_seconds{quantile="0.99"} NaN
inference_latency_seconds_sum 1234.5
inference_latency_seconds_count 100000
# TYPE http_request_duration_seconds histogram
http_request_duration_seconds_bucket{le="0.1"} 90
http_request_duration_seconds_bucket{le="+Inf"} 100
some_gauge +Inf
other_gauge -Inf 1700000000000
"""


def test_summary_quantiles_histogram_buckets_and_special_values():
    series = parse_exposition(SUMMARY).series
    assert series['inference_latency_seconds{quantile="0.95"}'] == 0.031
    assert series[metric_key("inference_latency_seconds", {"quantile": "0.5"})] == 0.012
    assert math.isnan(series['inference_latency_seconds{quantile="0.99"}'])
    assert series["inference_latency_seconds_count"] == 100000
    assert series['http_request_duration_seconds_bucket{le="+Inf"}'] == 100
    assert series["some_gauge"] == math.inf and series["other_gauge"] == -math.inf
    assert len(series) == 9
    # What a health answer carries: JSON has no NaN or Inf.
    sent = reportable(series)
    assert len(sent) == 6 and all(math.isfinite(v) for v in sent.values())


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("a 1", ("a", {}, 1.0)),
        ("a_b:c 1.5e3", ("a_b:c", {}, 1500.0)),
        ("a\t2\t123", ("a", {}, 2.0)),  # tabs, a timestamp
        ("a 2 -17", ("a", {}, 2.0)),
        ("a{} 3", ("a", {}, 3.0)),
        ('a{x="1",} 4', ("a", {"x": "1"}, 4.0)),  # a trailing comma
        ('a{ x = "1" , y="2" } 5', ("a", {"x": "1", "y": "2"}, 5.0)),
        ('a{x="q\\"uote"} 6', ("a", {"x": 'q"uote'}, 6.0)),
        ('a{x="back\\\\slash"} 7', ("a", {"x": "back\\slash"}, 7.0)),
        ('a{x="new\\nline"} 8', ("a", {"x": "new\nline"}, 8.0)),
        ('a{x="},{ 1 2"} 9', ("a", {"x": "},{ 1 2"}, 9.0)),
        ('a{x="ünï"} 10', ("a", {"x": "ünï"}, 10.0)),
        ('a{x="1"}11', ("a", {"x": "1"}, 11.0)),
        ("a NaN", None),  # checked below: NaN != NaN
    ],
)
def test_sample_lines(line, expected):
    got = parse_sample(line)
    if expected is None:
        assert got is not None and got[:2] == ("a", {}) and math.isnan(got[2])
    else:
        assert got == expected


@pytest.mark.parametrize(
    "line",
    [
        "",
        "1a 1",  # a name cannot start with a digit
        "a-b 1",
        "a",  # no value
        "a 1 2 3",  # too many fields
        "a one",
        "a 1_000",  # Python's float() would take these; Prometheus would not
        "a ١٢",
        "a nan(1)",
        "a 0x10",
        "a 1 notatime",
        "a 1 NaN",  # a timestamp must be a number
        'a{x="1" 1',  # unclosed labels
        'a{x="1} 1',  # unclosed quote
        "a{x=1} 1",  # unquoted value
        'a{1x="1"} 1',
        'a{x="1",x="2"} 1',  # a label twice
        'a{x="1"y="2"} 1',  # no comma
        "a{,} 1",
        'a {x="1"} 1',
    ],
)
def test_malformed_lines_are_not_samples(line):
    assert parse_sample(line) is None


def test_values():
    assert parse_value("+Inf") == math.inf and parse_value("-inf") == -math.inf
    assert math.isnan(parse_value("NaN") or 0.0)
    assert parse_value("1e-3") == 0.001 and parse_value("-0.5") == -0.5
    assert parse_value("") is None and parse_value("Infx") is None


def test_keys_are_canonical_and_duplicates_keep_the_first():
    text = 'a{y="1",x="2"} 1\na{x="2",y="1"} 2\nb 3\nb 4\n'
    out = parse_exposition(text, sum_of=("a", "b"))
    assert out.series == {'a{x="2",y="1"}': 1.0, "b": 3.0}
    assert out.totals == {"a": 1.0, "b": 3.0}  # a repeated series is not counted twice


def test_a_broken_page_yields_what_it_can():
    text = "ok 1\n\x00\x01garbage\n{}\nok2{ 5\r\nfine 2\r\n" + "#" * 10 + "\n"
    out = parse_exposition(text)
    assert out.series == {"ok": 1.0, "fine": 2.0} and out.skipped == 3


def test_series_are_capped_but_counter_totals_see_the_whole_page():
    lines = [f'app_requests_total{{path="/p{i}"}} 1' for i in range(MAX_SERIES + 50)]
    out = parse_exposition("\n".join(lines), sum_of=("app_requests_total",))
    assert len(out.series) == MAX_SERIES and out.dropped == 50
    assert next(iter(out.series)) == 'app_requests_total{path="/p0"}'  # the first ones, in order
    assert out.totals["app_requests_total"] == MAX_SERIES + 50
    assert len(parse_exposition("\n".join(lines), max_series=3).series) == 3


def test_hostile_lines_are_skipped_not_kept():
    huge_label = 'a{x="' + "v" * MAX_LINE_CHARS + '"} 1'
    long_key = "a{" + ",".join(f'l{i}="{"v" * 20}"' for i in range(30)) + "} 1"
    assert len(long_key) <= MAX_LINE_CHARS and len(long_key) > MAX_KEY_CHARS
    out = parse_exposition(f"{huge_label}\n{long_key}\nok 1\n")
    assert out.series == {"ok": 1.0} and out.skipped == 2


def test_pathological_input_parses_in_linear_time():
    # Unclosed quotes full of escapes: a backtracking regex would take forever on these.
    nasty = ('a{x="' + "\\\\" * 1500 + "\\") + "\n"
    body = (nasty * ((MAX_BODY_BYTES // len(nasty)) + 1))[:MAX_BODY_BYTES]
    started = time.perf_counter()
    out = parse_exposition(body)
    assert out.series == {} and out.skipped > 0
    # Not a speed test: only that it finishes (a blow-up would take minutes).
    assert time.perf_counter() - started < 30


def test_a_body_cut_at_the_limit_loses_its_last_partial_line():
    body = b"a 1\nb 22\nc 333\n"
    assert complete_lines(body, limit=len(body)) == body
    assert complete_lines(body, limit=len(body) - 2) == b"a 1\nb 22\n"  # not "c 3"
    assert complete_lines(b"x" * 100, limit=10) == b""


def test_metric_key_format():
    assert metric_key("up") == "up"
    assert metric_key("q", {"b": "2", "a": 'x"\\\n'}) == 'q{a="x\\"\\\\\\n",b="2"}'
    with pytest.raises(ValueError):
        metric_key("1bad")
    with pytest.raises(ValueError):
        metric_key("ok", {"bad-label": "1"})
    # Round trip: a key the parser builds parses back to the same series.
    key = metric_key("q", {"path": 'a "b"\n\\c'})
    assert parse_exposition(f"{key} 1\n").series == {key: 1.0}


async def test_the_prober_reads_a_hostile_metrics_page_only_up_to_its_limits():
    """Over real HTTP: a 20 MB page of 300,000 series costs the agent one bounded read."""
    import aiohttp
    from aiohttp import web

    from fleetgate.agent.probes import HealthProber, ProbeTarget

    line = b'app_requests_total{path="/p%07d"} 1\n'
    sent = {"bytes": 0}

    async def flood(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse()
        await resp.prepare(request)
        try:
            for block in range(300):
                chunk = b"".join(line % (block * 1000 + i) for i in range(1000))
                await resp.write(chunk)
                sent["bytes"] += len(chunk)
        except (ConnectionResetError, aiohttp.ClientConnectionResetError):
            pass  # the agent hung up: what it wanted, it has
        return resp

    async def tidy(request: web.Request) -> web.Response:
        return web.Response(text=SUMMARY)

    app = web.Application()
    app.router.add_get("/flood", flood)
    app.router.add_get("/tidy", tidy)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        async with aiohttp.ClientSession() as session:
            prober = HealthProber(session)
            prober.set_target(ProbeTarget("r", None, f"http://127.0.0.1:{port}/flood"))
            scraped = await prober.scrape_metrics()
            assert scraped is not None
            assert len(scraped.series) == MAX_SERIES
            read = MAX_BODY_BYTES // len(line % 0)  # whole lines in the first 256 KiB
            assert scraped.totals["app_requests_total"] == read
            assert scraped.dropped == read - MAX_SERIES
            prober.set_target(ProbeTarget("r", None, f"http://127.0.0.1:{port}/tidy"))
            tidy_page = await prober.scrape_metrics()
            assert tidy_page is not None and len(reportable(tidy_page.series)) == 6
            prober.set_target(ProbeTarget("r", None, f"http://127.0.0.1:{port}/missing"))
            assert await prober.scrape_metrics() is None  # a 404 is no page
    finally:
        await runner.cleanup()
    assert sent["bytes"] < 20_000_000  # the server was cut off long before the end
