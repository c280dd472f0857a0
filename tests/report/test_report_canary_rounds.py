"""Issue 7 in the report: every canary round is shown, and a later PASS never hides a FAIL
(invariant 11) — not in the verdict line, not in a failed canary's health box."""

from __future__ import annotations

import re
from typing import Any

import pytest
from all_scenarios import SCENARIOS
from report_scenarios import DEP, canary_replaced

from fleetgate.core.events import Event
from fleetgate.core.machine import fold
from fleetgate.report.session import build_report, render_report_md


def report_of(events: list[Event]) -> tuple[dict[str, Any], str]:
    r = build_report(DEP, events)
    return r, render_report_md(r)


def boxes_of(md: str) -> dict[str, dict[str, str]]:
    """The markdown's health boxes, by device: each label's text (wrapped lines joined)."""
    out: dict[str, dict[str, str]] = {}
    for box in re.findall(r"```\nCANARY HEALTH REPORT\n(.*?)\n```", md, flags=re.S):
        fields: dict[str, str] = {}
        key = ""
        for row in box.split("\n")[1:-1]:
            text = row[2:-2].rstrip()
            m = re.match(r"\s*([A-Z][\w ]*): (.*)$", text)
            if m and not text.startswith("   "):
                key = m.group(1)
                fields[key] = m.group(2)
            elif key and text.startswith("   "):
                fields[key] += " " + text.strip()
        out[fields["Device"]] = fields
    return out


def until(events: list[Event], action: str, nth: int = 1) -> list[Event]:
    """The log up to and including the ``nth`` ``action``."""
    seen = 0
    for i, e in enumerate(events):
        seen += e.action == action
        if seen == nth:
            return events[: i + 1]
    raise AssertionError(f"no {action} #{nth}")


# -- the failed canary's box ---------------------------------------------------------------------
def test_the_failed_canarys_box_says_fail_and_replacements_have_boxes() -> None:
    r, md = report_of(canary_replaced())
    boxes = {b["device_id"]: b for b in r["verify"]["health_boxes"]}
    bad = boxes["rpi-b-01"]
    assert (bad["status"], bad["device_status"], bad["verdict"]) == (
        "FAILED",
        "QUARANTINED",
        "FAIL",
    )
    assert bad["canary_round"] == 1 and bad["error_rate"] == 0.06
    assert "error rate 6.0 %" in bad["reason"]
    assert (boxes["rpi-b-02"]["verdict"], boxes["rpi-b-02"]["canary_round"]) == ("PASS", 2)
    assert (boxes["orin-a-01"]["verdict"], boxes["orin-a-01"]["canary_round"]) == ("PASS", 2)
    drawn = boxes_of(md)
    assert set(drawn) == {"orin-a-01", "rpi-b-01", "rpi-b-02"}
    assert drawn["rpi-b-01"]["Status"] == "FAILED (now QUARANTINED)"
    assert drawn["rpi-b-01"]["Verdict"] == "FAIL"
    assert drawn["rpi-b-01"]["Reason"].startswith("canary rpi-b-01 is FAILED: after soak:")
    assert "**Canary health reports, round 1**:" in md
    assert md.index("**Canary health reports, round 1**:") < md.index("Device: rpi-b-01")
    assert md.index("Device: rpi-b-01") < md.index("**Canary health reports, round 2**:")


@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_no_box_reads_failed_with_pass(name: str) -> None:
    events = SCENARIOS[name]()
    r, md = report_of(events)
    state = fold(DEP, events)
    for dev, box in boxes_of(md).items():
        if "FAILED" in box["Status"] or "QUARANTINED" in box["Status"]:
            assert box["Verdict"] != "PASS", (dev, box)
        if box["Verdict"] == "FAIL":
            assert box["Reason"] != "-", (dev, box)
    for h in state.canary_history:
        for dev in h["failed"]:
            box = next(b for b in r["verify"]["health_boxes"] if b["device_id"] == dev)
            assert box["verdict"] == "FAIL", (dev, box)


# -- every round in VERIFY -----------------------------------------------------------------------
def test_verify_shows_both_rounds_the_decision_and_the_replacement() -> None:
    r, md = report_of(canary_replaced())
    v = r["verify"]
    assert [(x["round"], x["verdict"]) for x in v["rounds"]] == [(1, "FAIL"), (2, "PASS")]
    first, second = v["rounds"]
    assert first["canaries"] == ["orin-a-01", "rpi-b-01"] and first["failed"] == ["rpi-b-01"]
    assert first["decision"] == {
        "by": "bob",
        "ts": first["decision"]["ts"],
        "choice": "replace",
        "comment": "rpi-b-01 had a bad SD card",
    }
    assert first["replaced"]["replacements"] == [
        {"device_id": "rpi-b-02", "why": "replaces failed canary rpi-b-01 (same cell)"}
    ]
    assert first["replaced"]["retired"] == ["rpi-b-01"]
    assert second["canaries"] == ["orin-a-01", "rpi-b-02"] and second["soak_served"]
    assert v["verdict"] == "PASS" and r["state"]["canary_verdict"] == "PASS"
    line = "**Canary verdict**: PASS (round 2, after round 1 FAIL; replacements approved by bob)"
    assert line in md.split("\n")
    order = [
        "**Round 1**: canaries orin-a-01, rpi-b-01; soak 15m; verdict FAIL",
        "| rpi-b-01 | FAILED | 35.5% | 1800 MB | 6.00% | 20 ms |",
        "- canary rpi-b-01 is FAILED: after soak: error rate 6.0 %",
        "**Failed canaries**: rpi-b-01 (some canaries failed)",
        "**Decision**: resumed by bob at ",
        "**Canaries replaced** (for round 2): retired rpi-b-01",
        "- replacement rpi-b-02: replaces failed canary rpi-b-01 (same cell)",
        "**Round 2**: canaries orin-a-01, rpi-b-02; soak 15m; verdict PASS",
        "| rpi-b-02 | OK | ",
        "**Baseline comparison**: Within bounds",
    ]
    lines = md.split("\n")
    start = lines.index("### VERIFY Phase")
    pos = [next(i for i, x in enumerate(lines) if x.startswith(o) and i > start) for o in order]
    assert pos == sorted(pos)
    assert ', canary_failure=replace — "rpi-b-01 had a bad SD card"' in lines[pos[4]]
    # The canary table lists the replacement, and why it was chosen.
    rows = {x["device_id"]: x for x in r["canary"]["rows"]}
    assert (rows["rpi-b-02"]["round"], rows["rpi-b-01"]["status"]) == (2, "QUARANTINED")
    assert (
        "**Replacement canaries, round 2**: rpi-b-02: replaces failed canary rpi-b-01 (same cell)"
        in md
    )
    assert r["rollbacks"][0]["scope"] == "canary quarantine"


def test_a_round_in_progress_and_a_decision_not_yet_applied_do_not_hide_the_fail() -> None:
    events = canary_replaced()
    r, md = report_of(until(events, "canary.verdict"))
    assert "**Canary verdict**: FAIL\n" in md and r["verify"]["verdict_note"] == ""
    r, md = report_of(until(events, "deployment.resumed"))
    assert "**Canary verdict**: FAIL (round 1; replacements approved by bob, not applied yet)" in md
    r, md = report_of(until(events, "canary.replaced"))
    assert r["verify"]["verdict"] == "PENDING"
    assert (
        "**Canary verdict**: PENDING (round 2 in progress, after round 1 FAIL; "
        "replacements approved by bob)" in md
    )
    assert boxes_of(md)["rpi-b-01"]["Verdict"] == "FAIL"
    assert boxes_of(md)["rpi-b-02"]["Verdict"] == "PENDING"
