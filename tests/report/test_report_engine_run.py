"""The VERIFY evidence from a real engine run: the virtual fleet, the default test policy (a
10 min canary soak, long enough for the analysis at 30 s), the events as the store keeps them.
The report shows a canary-vs-control table and a sparkline per canary, and warns of nothing."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "engine"))
from engine_harness import harness

from fleetgate.core.state import Phase
from fleetgate.report.metric_format import format_row
from fleetgate.report.session import build_report, render_report_md

HEADER = "| Metric | Canary median | Control median | Effect [98 % CI] | Tolerated | Verdict |"


def _check_tables(r: dict[str, Any], md: str) -> None:
    v = r["verify"]
    [rnd] = v["rounds"]
    state_canaries = {b["device_id"] for b in v["health_boxes"]}
    assert {a["canary"] for a in rnd["analysis"]} == state_canaries
    assert rnd["controls"] == {a["canary"]: a["pool"] for a in rnd["analysis"]}
    lines = md.split("\n")
    for a in rnd["analysis"]:
        assert a["pool"][0] == a["control"]
        [at] = [i for i, x in enumerate(lines) if x.startswith(f"**{a['canary']}** vs ")]
        assert lines[at].endswith(f"**{a['control']}**: {a['verdict']}") or "(pooled)" in lines[at]
        assert lines[at + 2] == HEADER
        table = lines[at + 4 : at + 4 + len(a["metrics"])]
        assert lines[at + 4 + len(a["metrics"])] == ""  # a table ends at a blank line
        for row, f in zip(table, map(format_row, a["metrics"]), strict=True):
            assert row.startswith(f"| {f['metric']} | {f['canary']} | {f['control']} | ")
        names = [m["name"] for m in a["metrics"]]
        assert {"error_rate", "latency_ms", "restarts"} <= set(names)
        spark = a["sparkline"]
        assert spark is not None and spark["svg"] in md
        assert spark["points"] == rnd["ticks"]  # every tick answered


async def test_a_real_pass_shows_the_comparison_tables_and_no_warnings(tmp_path: Path) -> None:
    async with harness(tmp_path, devices=60) as h:
        dep = await h.start()
        state = await h.controller.drive(dep)
        assert state.phase is Phase.AWAITING_APPROVAL, state.halt_reason
        events = await h.events(dep)
    r = build_report(dep, events)
    md = render_report_md(r)
    assert r["warnings"] == []
    v = r["verify"]
    assert v["verdict"] == "PASS" and v["rounds"][0]["judge"] == "analysis"
    # Sampled every 30 s over the soak (and its extension, if the judge needed one); any
    # window sampled before the deployment is not the soak.
    extended = v["soak_extension_served"]
    assert v["rounds"][0]["ticks"] == 600 // 30 + 1 + (900 // 30 + 1 if extended else 0)
    assert v["verdict_text"] == (
        "PASS"
        + (" after the extended soak" if extended else "")
        + ": every deciding metric within tolerance of its control"
    )
    _check_tables(r, md)
    assert ("**Soak period**: 10m + 15m extended\n" if extended else "**Soak period**: 10m\n") in md


async def test_a_real_latency_change_at_the_tolerance(tmp_path: Path) -> None:
    """The engine test's seeded case: a latency change right at the 25 % tolerance, which the
    judge reads INCONCLUSIVE (the soak extends once) or, with enough evidence, PASS. Either
    way the report shows the evidence; an INCONCLUSIVE one names who accepted the risk."""
    faults = ("latency:factor=1.22,version=2.0.0",)
    async with harness(tmp_path, devices=60, faults=faults) as h:
        dep = await h.start()
        state = await h.controller.drive(dep)
        unsure = state.canary_verdict == "INCONCLUSIVE"
        await h.controller.record_human(
            dep, "approval.granted", "alice", **({"accept_inconclusive": True} if unsure else {})
        )
        events = await h.events(dep)
    r = build_report(dep, events)
    md = render_report_md(r)
    assert r["warnings"] == []
    _check_tables(r, md)
    v = r["verify"]
    if not unsure:
        assert v["verdict"] == "PASS"
        return
    assert v["inconclusive"]
    assert v["verdict_text"].startswith("INCONCLUSIVE after the extended soak: latency_ms on ")
    assert v["verdict_text"].endswith("; approved by alice accepting the risk")
    assert "**Soak period**: 10m + 15m extended\n" in md
    for a in v["rounds"][0]["analysis"]:
        if a["verdict"] == "INCONCLUSIVE":
            assert a["decided_by"] == "latency_ms" and a["sparkline"]["extended_at_s"] == 600.0
