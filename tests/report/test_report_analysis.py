"""Issue 11 in the report: the VERIFY section shows each canary against its control, per metric
(medians, effect and interval, tolerance, verdict), a sparkline of the metric that decided, the
INCONCLUSIVE verdict and the person who accepted it, and the judge's notes. The invariant tests
of the other modules (JSON and markdown agree, tables end at a blank line, every prefix reports,
stored events give the same report, no box reads FAILED with PASS) run on these logs too
(``report_scenarios.SCENARIOS``)."""

from __future__ import annotations

import re
from typing import Any

from analysis_scenarios import (
    APP_METRIC,
    THRESHOLD_NOTE,
    analysis_error_fail,
    analysis_inconclusive,
    analysis_pass,
    threshold_note,
)
from report_scenarios import DEP
from test_report_canary_rounds import boxes_of, until

from fleetgate.core.events import Event
from fleetgate.report.canary_evidence import round_evidence, verdict_text
from fleetgate.report.metric_format import format_row
from fleetgate.report.session import build_report, render_report_md

HEADER = "| Metric | Canary median | Control median | Effect [98 % CI] | Tolerated | Verdict |"


def report_of(events: list[Event]) -> tuple[dict[str, Any], str]:
    r = build_report(DEP, events)
    return r, render_report_md(r)


def verify_md(md: str) -> str:
    return md[md.index("### VERIFY Phase") : md.index("### ROLLOUT Phase")]


def table_after(md: str, heading: str) -> list[str]:
    """The rows of the first table after ``heading``."""
    rest = md[md.index(heading) :].split("\n")
    start = rest.index(HEADER)
    rows = []
    for line in rest[start + 2 :]:
        if not line.startswith("|"):
            assert line == "", "a table ends at a blank line"
            break
        rows.append(line)
    return rows


def test_a_pass_against_controls_shows_a_table_per_canary_naming_its_control() -> None:
    r, md = report_of(analysis_pass())
    rnd = r["verify"]["rounds"][0]
    assert rnd["judge"] == "analysis" and rnd["ticks"] == 21
    assert rnd["controls"] == {"orin-a-01": ["orin-a-02", "orin-a-03"], "rpi-b-01": ["rpi-b-02"]}
    assert [(a["canary"], a["control"], a["verdict"]) for a in rnd["analysis"]] == [
        ("orin-a-01", "orin-a-02", "PASS"),
        ("rpi-b-01", "rpi-b-02", "PASS"),
    ]
    rows = {m["name"]: m for m in rnd["analysis"][0]["metrics"]}
    # Error rate and restarts are compared as they are; the rest as ratios to the device's
    # own value before the soak (both devices have one).
    assert {n: m["relative"] for n, m in rows.items()} == {
        "error_rate": False,
        "latency_ms": True,
        "cpu_percent": True,
        "mem_used_mb": True,
        "restarts": False,
        APP_METRIC: False,  # no value before the soak: compared as measured
    }
    v = verify_md(md)
    assert "**Canary verdict**: PASS: every deciding metric within tolerance of its control" in v
    assert "**orin-a-01** vs controls **orin-a-02**, **orin-a-03** (pooled): PASS" in v
    assert "**rpi-b-01** vs control **rpi-b-02**: PASS" in v
    drawn = table_after(v, "**orin-a-01** vs controls")
    assert drawn[:2] == [
        "| error_rate | 0.12 % | 0.11 % | +0.01 pp [-0.02, +0.04] | +1.00 pp | PASS |",
        "| latency_ms | +1.2 % | +0.4 % | +0.8 % [-1.2, +2.7] | +25.1 % | PASS |",
    ]
    assert (
        "| cpu_percent | +1.0 % | -1.0 % | +2.0 % [-4.0, +7.0] | +24.8 % | PASS (not deciding) |"
        in drawn
    )
    assert f"| {APP_METRIC} | 0.0404 | 0.04 | +0.0004 [-0.0008, +0.0016] | +0.01 | PASS |" in drawn
    # A PASS decided by nothing: the sparkline shows latency.
    spark = rnd["analysis"][0]["sparkline"]
    assert rnd["analysis"][0]["decided_by"] == "latency_ms" == spark["metric"]
    assert spark["points"] == spark["control_points"] == 21
    assert spark["svg"] in v
    assert (
        "<details><summary>latency_ms over the soak: orin-a-01 (solid) vs its 2 controls "
        "(dashed, median per tick), relative to its own value before the soak</summary>"
    ) in v


def test_json_and_markdown_print_the_same_rows() -> None:
    for events in (analysis_pass(), analysis_inconclusive(), analysis_error_fail()):
        r, md = report_of(events)
        for rnd in r["verify"]["rounds"]:
            for a in rnd["analysis"]:
                drawn = table_after(md, f"**{a['canary']}** vs ")
                want = [
                    "| "
                    + " | ".join(
                        f[k]
                        for k in ("metric", "canary", "control", "effect", "tolerated", "verdict")
                    )
                    + " |"
                    for f in map(format_row, a["metrics"])
                ]
                assert drawn == want


def test_inconclusive_accepted_by_a_person_says_so_everywhere() -> None:
    r, md = report_of(analysis_inconclusive())
    v = r["verify"]
    assert v["verdict"] == "INCONCLUSIVE" and v["inconclusive"] == ["rpi-b-01"]
    assert (v["soak_s"], v["soak_extended_s"], v["soak_extension_served"]) == (600, 900, True)
    text = (
        "INCONCLUSIVE after the extended soak: latency_ms on rpi-b-01 "
        "(+23.9 % [+22.4, +25.4], tolerated +25.1 %); approved by alice accepting the risk"
    )
    assert v["verdict_text"] == text
    page = verify_md(md)
    assert f"**Canary verdict**: {text}\n" in page
    assert "**Soak period**: 10m + 15m extended\n" in page
    assert (
        "| latency_ms | +23.9 % | +0.2 % | +23.9 % [+22.4, +25.4] | +25.1 % | INCONCLUSIVE |"
        in (table_after(page, "**rpi-b-01** vs control **rpi-b-02**"))
    )
    assert "**Baseline comparison**: Inconclusive (a person decides)" in page
    assert (
        "**Approval**: GRANTED by alice at 2026-11-26T08:36:07+00:00, accepting the "
        'INCONCLUSIVE verdict — "latency budget allows +25 %"'
    ) in page
    assert r["approval"]["accept_inconclusive"] and r["approval"]["verdict"] == "INCONCLUSIVE"
    # The inconclusive canary's box says so; its neighbour passed its own comparison, but no
    # PASS verdict proved the release.
    boxes = boxes_of(md)
    assert boxes["rpi-b-01"]["Verdict"] == "INCONCLUSIVE"
    assert boxes["rpi-b-01"]["Reason"].startswith("canary rpi-b-01 vs control rpi-b-02:")
    assert boxes["orin-a-01"]["Verdict"] == "NOT PROVEN"
    box = next(b for b in r["verify"]["health_boxes"] if b["device_id"] == "orin-a-01")
    assert (
        box["reason"]
        == "its own checks passed; round 1 verdict INCONCLUSIVE (rpi-b-01 inconclusive)"
    )
    # The sparkline runs over both soaks and marks where the extension began.
    spark = r["verify"]["rounds"][0]["analysis"][1]["sparkline"]
    assert spark["metric"] == "latency_ms" and spark["points"] == 21 + 31
    assert spark["extended_at_s"] == 600.0
    assert spark["svg"].count("<line ") == 2  # the extension mark and the tolerance line


def test_inconclusive_waiting_for_a_person_names_both_choices() -> None:
    r, md = report_of(until(analysis_inconclusive(), "approval.requested"))
    assert r["approval"]["status"] == "PENDING" and r["phase"] == "AWAITING_APPROVAL"
    assert r["verify"]["verdict_text"].endswith(
        "; waiting for a person to accept the risk or reject"
    )
    assert "**Requesting a human decision on an INCONCLUSIVE canary verdict**" in md
    assert (
        f"**Approval**: PENDING — fleetgate deploy approve {DEP} --as NAME --accept-inconclusive, "
        f"or fleetgate deploy reject {DEP} --as NAME"
    ) in md
    assert "**Requesting human approval for fleet rollout...**" not in md


def test_a_soak_in_progress_shows_its_controls_and_the_extension_under_way() -> None:
    events = analysis_inconclusive()
    ext = next(i for i, e in enumerate(events) if e.details.get("round") == "soak-ext")
    _, md = report_of(events[: ext + 4])  # the extension started, three ticks in
    v = verify_md(md)
    assert "**Soak period**: 10m + 15m extended (in progress)" in v
    assert "**Canary verdict**: PENDING" in v
    assert (
        "**Controls** (sampled with the canaries, never deployed): orin-a-01 -> orin-a-02, "
        "rpi-b-01 -> rpi-b-02; sampled 24 times so far"
    ) in v


def test_a_fail_on_error_rate_names_the_metric_in_percentage_points() -> None:
    r, md = report_of(analysis_error_fail())
    v = r["verify"]
    assert v["verdict_text"] == (
        "FAIL: error_rate on orin-a-01 (+4.80 pp [+4.62, +4.95], tolerated +1.00 pp)"
    )
    rnd = v["rounds"][0]
    assert rnd["without_control"] == ["rpi-b-01"]
    [a] = rnd["analysis"]
    assert a["decided_by"] == "error_rate"
    assert a["sparkline"]["metric"] == "error_rate" and not a["sparkline"]["relative"]
    page = verify_md(md)
    assert "**Without a control** (judged against their own baseline): rpi-b-01" in page
    assert "| error_rate | 4.92 % | 0.11 % | +4.80 pp [+4.62, +4.95] | +1.00 pp | FAIL |" in page
    assert "<details><summary>error_rate over the soak: orin-a-01 (solid) vs control orin-a-02" in (
        page
    )
    assert boxes_of(md)["orin-a-01"]["Verdict"] == "FAIL"
    assert boxes_of(md)["rpi-b-01"]["Verdict"] == "NOT PROVEN"


def test_a_threshold_only_round_shows_the_note_and_no_comparison() -> None:
    r, md = report_of(threshold_note())
    rnd = r["verify"]["rounds"][0]
    assert rnd["judge"] == "threshold" and rnd["notes"] == [THRESHOLD_NOTE]
    assert rnd["analysis"] == [] and r["verify"]["verdict_text"] == "PASS"
    page = verify_md(md)
    assert "**Judge**: threshold rules against each canary's own baseline" in page
    assert f"> Note: {THRESHOLD_NOTE}" in page
    assert "Canary vs control" not in page and "<svg" not in page


def test_logs_before_the_analysis_report_as_before() -> None:
    """A verdict without ``judge``/``analysis`` (logs written before issue 11) reads as it did."""
    from report_scenarios import happy

    r, md = report_of(happy())
    rnd = r["verify"]["rounds"][0]
    assert (rnd["judge"], rnd["analysis"], rnd["notes"], rnd["ticks"]) == (None, [], [], 0)
    assert "**Canary verdict**: PASS\n" in md and "Canary vs control" not in md


# -- the formats, on their own -------------------------------------------------------------------
def _row(name: str, **over: Any) -> dict[str, Any]:
    row: dict[str, Any] = {
        "name": name,
        "verdict": "PASS",
        "critical": True,
        "relative": False,
        "adjusted": False,
        "harm": "+",
        "canary_median": 31.0,
        "control_median": 24.5,
        "effect": 6.25,
        "ci_low": 5.0,
        "ci_high": 7.5,
        "tolerated": 6.125,
        "n_canary": 20,
        "n_control": 20,
        "reason": "",
    }
    row.update(over)
    return row


def test_unscaled_metrics_print_in_their_own_unit_and_missing_numbers_as_na() -> None:
    assert format_row(_row("latency_ms")) == {
        "metric": "latency_ms",
        "canary": "31.0 ms",
        "control": "24.5 ms",
        "effect": "+6.2 ms [+5.0, +7.5]",
        "tolerated": "+6.1 ms",
        "verdict": "PASS",
    }
    silent = format_row(
        _row(
            "latency_ms",
            verdict="NO_DATA",
            canary_median=None,
            effect=None,
            ci_low=None,
            ci_high=None,
            tolerated=None,
        )
    )
    assert (silent["canary"], silent["effect"], silent["tolerated"]) == ("n/a", "n/a", "n/a")
    short = format_row(_row("queue_depth", ci_low=None, ci_high=None, harm="-", critical=False))
    assert short["effect"] == "+6.25 [no interval]" and short["tolerated"] == "-6.125"
    assert short["verdict"] == "PASS (not deciding)"


def test_the_report_reads_ratio_or_additive_from_the_recorded_before_values() -> None:
    """The judge's rule: a ratio only where both devices have a positive value before."""
    verdict = {
        "judge": "analysis",
        "analysis": {
            "c1": {
                "control": "k1",
                "verdict": "FAIL",
                "reasons": [],
                "metrics": [
                    {k: v for k, v in row.items() if k not in ("relative", "adjusted", "harm")}
                    for row in (
                        _row("latency_ms", verdict="NO_DATA"),
                        _row("cpu_percent", canary_median=1.1, control_median=1.0),
                    )
                ],
            }
        },
    }
    ticks = [
        {"round": "soak", "t": 0.0, "samples": {"c1": None, "k1": {"cpu_percent": 20.0}}},
        {"round": "soak", "t": 30.0, "samples": {"c1": {"cpu_percent": 22.0}, "k1": None}},
    ]
    controls = {"controls": {"c1": "k1"}, "pre": {"k1": {"cpu_percent": 20.0, "latency_ms": 0}}}
    ev = round_evidence(verdict, ticks, controls, {"c1": {"cpu_percent": 20.0}}, 0.98)
    [a] = ev["analysis"]
    assert [m["relative"] for m in a["metrics"]] == [False, True]
    assert a["decided_by"] == "latency_ms"
    assert verdict_text("FAIL", ev, extended=False, decision=None) == (
        "FAIL: latency_ms on c1 (no data)"
    )
    assert a["sparkline"] is None  # no latency measured on either side: nothing to draw


def test_svgs_are_deterministic_and_safe_to_inline() -> None:
    first = build_report(DEP, analysis_inconclusive())
    again = build_report(DEP, analysis_inconclusive())
    svgs = [a["sparkline"]["svg"] for a in first["verify"]["rounds"][0]["analysis"]]
    assert svgs == [a["sparkline"]["svg"] for a in again["verify"]["rounds"][0]["analysis"]]
    for svg in svgs:
        assert "\n" not in svg and len(svg) < 4000
        assert not re.search(r"<script|href|on\w+=", svg)


def test_a_shift_adjusted_for_the_standing_difference_is_read_as_measured() -> None:
    """With a pre-deployment window the judge compares raw series and takes the standing
    canary-control difference out: no ratio, even where before-values exist."""
    reason = (
        "latency_ms: canary median 24.88 (n=52) vs control median 33.66 (n=156): shift "
        "adjusted for the pre-deployment difference -0.59 (98% CI -4.573 to +0.99), "
        "tolerated +8.4; the interval lies within the tolerance"
    )
    doc = {k: v for k, v in _row("latency_ms", reason=reason).items() if k != "relative"}
    del doc["adjusted"], doc["harm"]
    verdict = {"analysis": {"c1": {"control": "k1", "verdict": "PASS", "metrics": [doc]}}}
    pre = {"k1": {"latency_ms": 30.0}}
    ev = round_evidence(
        verdict, [], {"controls": {"c1": "k1"}, "pre": pre}, {"c1": pre["k1"]}, 0.98
    )
    [row] = ev["analysis"][0]["metrics"]
    assert (row["relative"], row["adjusted"]) == (False, True)
    explicit = {**doc, "relative": True, "baseline_adjusted": False}
    verdict["analysis"]["c1"]["metrics"] = [explicit]
    ev = round_evidence(
        verdict, [], {"controls": {"c1": "k1"}, "pre": pre}, {"c1": pre["k1"]}, 0.98
    )
    [row] = ev["analysis"][0]["metrics"]
    assert (row["relative"], row["adjusted"]) == (True, False)  # the engine's word wins
