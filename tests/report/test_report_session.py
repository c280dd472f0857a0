"""The session report: spec shape, numbers per scenario, JSON and markdown agreeing."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
from all_scenarios import SCENARIOS
from report_scenarios import (
    BUNDLE_SHA,
    CANARIES,
    DEP,
    FLEET_TOTAL,
    SHA,
    WAVE1,
    WAVE2,
    Log,
    bad_canary,
    happy,
    partial,
    rollback_failure,
    wave_rolled_back,
)

from fleetgate.core.events import Event
from fleetgate.core.machine import fold
from fleetgate.core.state import render_state_block
from fleetgate.errors import InputError
from fleetgate.report.health_box import BOX_WIDTH
from fleetgate.report.session import build_report, render_report_md

SPEC_LINES = [
    "## Fleet Deployment: vision v2.4.1",
    "Mode: Semi-Autonomous (fleet-deployment-agent)",
    "Fleet: 12 devices across 2 groups",
    "Strategy: canary -> staged rollout",
    "### PREPARE Phase",
    "**Artifact**: vision v2.4.1",
    f"**Checksum**: sha256 {BUNDLE_SHA} (bundle, as printed by artifact build); "
    f"payload sha256 {SHA}",
    "**Device groups**:",
    "| Group | Device Type | Count | Architecture |",
    "**Canary selection**: 2 devices",
    "| Device ID | Type | Group | Reason Selected |",
    "**Compatibility**: All groups PASS",
    "### CANARY Phase",
    "| Device ID | Transfer | Deploy | Smoke Test | Status |",
    "|-----------|----------|--------|------------|--------|",
    "### VERIFY Phase",
    "**Soak period**: 15m",
    "**Canary verdict**: PASS",
    "| Device ID | Health | CPU | Memory | Error Rate | Latency |",
    "|-----------|--------|-----|--------|------------|---------|",
    "**Baseline comparison**: Within bounds",
    "CANARY HEALTH REPORT",
    "**Requesting human approval for fleet rollout...**",
    "### ROLLOUT Phase",
    "**Wave 1** (50% of fleet):",
    "| Metric | Value |",
    "|--------|-------|",
    "| Health check | PASS |",
    "| Soak period | 15m |",
    "**Wave 2** (100% of fleet):",
    "### CONFIRM Phase",
    "**Fleet status**:",
    "| Status | Count | Percentage |",
    "|--------|-------|------------|",
    "**Deployment result**: COMPLETE",
    "<fleet-deploy-state>",
    "</fleet-deploy-state>",
]


def report_of(events: list[Event]) -> tuple[dict[str, Any], str]:
    r = build_report(DEP, events)
    return r, render_report_md(r)


def lines_of(md: str) -> list[str]:
    return md.split("\n")


def confirm_counts(r: dict[str, Any]) -> dict[str, tuple[int, float]]:
    return {row["status"]: (row["count"], row["percent"]) for row in r["confirm"]["rows"]}


def section(md: str, heading: str) -> str:
    start = md.index(heading)
    end = md.find("\n---\n", start)
    return md[start:end]


# -- shape -------------------------------------------------------------------------------------
def test_happy_path_has_every_spec_heading_and_table_header_in_order() -> None:
    _, md = report_of(happy())
    lines = lines_of(md)
    pos = 0
    for expected in SPEC_LINES:
        found = [i for i, line in enumerate(lines) if line.startswith(expected) and i >= pos]
        assert found, f"missing (in order): {expected!r}"
        pos = found[0]
    assert lines[0] == "## Fleet Deployment: vision v2.4.1"
    assert "### ROLLBACK" not in md  # nothing was rolled back
    assert md.rstrip().endswith("---")
    # Sections are separated by the spec's rule lines.
    for heading in ("### PREPARE", "### CANARY", "### VERIFY", "### ROLLOUT", "### CONFIRM"):
        before = md[: md.index(heading)].rstrip("\n")
        assert before.endswith("---"), heading


def test_state_block_is_the_machines_block_with_the_spec_field_names() -> None:
    for name, scenario in SCENARIOS.items():
        events = scenario()
        r, md = report_of(events)
        block = render_state_block(fold(DEP, events))
        assert r["state_block"] == block, name
        assert md.rstrip().removesuffix("---").rstrip().endswith(block), name
        spec_fields = [
            "phase", "artifact", "fleet_total", "canary_count", "canary_healthy",
            "deployed_count", "deployed_healthy", "deployed_degraded", "skipped", "quarantined",
            "rollback_available", "canary_verdict", "human_approval", "current_wave",
            "wave_failure_rate", "last_action", "next_action", "blockers",
        ]  # fmt: skip
        assert list(r["state"]) == spec_fields, name


def test_health_boxes_are_aligned_and_wrap_long_text() -> None:
    for scenario in SCENARIOS.values():
        r, md = report_of(scenario())
        boxes = re.findall(r"```\nCANARY HEALTH REPORT\n(.*?)\n```", md, flags=re.S)
        assert len(boxes) == len(r["canary"]["rows"])  # replacement canaries have boxes too
        for box in boxes:
            rows = box.split("\n")
            assert rows[0] == rows[-1] == "+" + "-" * (BOX_WIDTH + 2) + "+"
            assert {len(row) for row in rows} == {BOX_WIDTH + 4}
            assert all(row.startswith("| ") and row.endswith(" |") for row in rows[1:-1])
            for label in ("Device:", "Type:", "Status:", "Health endpoint:", "Response time:",
                          "Error rate:", "CPU:", "Memory:", "Disk:", "GPU:", "Temperature:",
                          "Verdict:", "Reason:"):  # fmt: skip
                assert any(row[2:].lstrip().startswith(label) for row in rows), label
    # A long reason wraps inside the box rather than breaking the border.
    _, md = report_of(bad_canary())
    assert "| Reason: canary rpi-b-01 is FAILED: after soak:   |" in md
    assert "|   error rate too high                            |" in md


# -- numbers per scenario ------------------------------------------------------------------------
def test_happy_path_numbers() -> None:
    r, md = report_of(happy())
    assert (r["artifact"], r["sha256"], r["fleet_total"], r["targeted"]) == (
        "vision v2.4.1",
        SHA,
        12,
        10,
    )
    assert r["bundle_sha256"] == BUNDLE_SHA
    assert r["groups"] == ["plant-a", "plant-b"]
    assert [(x["device_id"], x["type"], x["group"]) for x in r["canary"]["rows"]] == [
        ("orin-a-01", "jetson-orin-nano", "plant-a"),
        ("rpi-b-01", "rpi4", "plant-b"),
    ]
    assert {(x["transfer"], x["deploy"], x["smoke"], x["status"]) for x in r["canary"]["rows"]} == {
        ("OK", "OK", "PASS", "HEALTHY")
    }
    assert r["canary"]["rollback_drill"][0]["device_id"] == "orin-a-01"
    assert r["canary"]["rollback_drill"][0]["forward_again"] is True
    assert "**Rollback drill**: orin-a-01 rolled back to vision-2.4.0 and forward again" in md
    v = r["verify"]
    assert (v["verdict"], v["soak_s"], v["baseline_comparison"]) == ("PASS", 900, "Within bounds")
    assert [b["verdict"] for b in v["health_boxes"]] == ["PASS", "PASS"]
    assert "| orin-a-01 | OK | 35.5% | 1800 MB | 0.20% | 20 ms |" in md
    assert r["approval"]["status"] == "GRANTED" and r["approval"]["by"] == "alice"
    assert "**Approval**: GRANTED by alice at 2026-11-26T08:" in md
    assert [
        (w["targeted"], w["deployed"], w["failed"], w["health_check"]) for w in r["rollout"]
    ] == [
        (3, 3, 0, "PASS"),
        (5, 5, 0, "PASS"),
    ]
    assert [w["percent"] for w in r["rollout"]] == [50.0, 100.0]
    assert r["rollbacks"] == []
    assert confirm_counts(r) == {
        "Deployed (healthy)": (10, 83.3),
        "Skipped (unreachable)": (0, 0.0),
        "Quarantined (failed)": (0, 0.0),
        "Not targeted": (2, 16.7),
    }
    assert r["confirm"]["result"] == r["result"] == "COMPLETE"
    assert r["state"]["phase"] == "COMPLETE" and r["state"]["current_wave"] == "2/2"
    assert r["warnings"] == []
    t = r["timeline"]
    assert t["first_ts"].startswith("2026-11-26T08:00:02") and t["duration_s"] > 3 * 900
    assert [p["phase"] for p in t["phases"]] == [
        "PREPARE", "CANARY", "VERIFY", "AWAITING_APPROVAL", "ROLLOUT", "CONFIRM", "COMPLETE"
    ]  # fmt: skip


def test_bad_canary_rolled_back_and_rollout_not_reached() -> None:
    r, md = report_of(bad_canary())
    assert r["verify"]["verdict"] == "FAIL" and r["verify"]["failed"] == ["rpi-b-01"]
    assert "**Canary verdict**: FAIL" in md
    assert "**Baseline comparison**: Not within bounds" in md
    assert "| rpi-b-01 | FAILED | 35.5% | 1800 MB | 6.00% | 20 ms |" in md
    boxes = {b["device_id"]: b for b in r["verify"]["health_boxes"]}
    assert (boxes["rpi-b-01"]["status"], boxes["rpi-b-01"]["verdict"]) == ("FAILED", "FAIL")
    assert boxes["rpi-b-01"]["error_rate"] == 0.06
    # Its own checks passed, but its round failed: it proved nothing, so never "PASS".
    assert (boxes["orin-a-01"]["status"], boxes["orin-a-01"]["verdict"]) == (
        "HEALTHY",
        "NOT PROVEN",
    )
    assert "| Status: FAILED (now QUARANTINED)" in md
    # A partial canary FAIL quarantines the failed canary; bob then rolled back the other.
    assert [x["status"] for x in r["canary"]["rows"]] == ["ROLLED BACK", "QUARANTINED"]
    assert r["approval"]["status"] == "NOT REQUESTED"
    assert "Requesting human approval" not in md
    assert "**Approval**: not requested (canary verdict FAIL)" in md
    assert section(md, "### ROLLOUT Phase").split("\n")[2] == (
        "_not reached: deployment rolled back in VERIFY_"
    )
    assert not any(w["reached"] for w in r["rollout"])
    first, second = r["rollbacks"]
    assert (first["scope"], first["phase"], first["rolled_back"]) == (
        "canary quarantine",
        "VERIFY",
        ["rpi-b-01"],
    )
    assert (second["scope"], second["requested_by"], second["rolled_back"]) == (
        "operator",
        "bob",
        ["orin-a-01"],
    )
    assert "**Rollback 2** (operator, during HALTED): operator: abandon vision 2.4.1" in md
    assert confirm_counts(r)["Rolled back"] == (1, 8.3)
    assert confirm_counts(r)["Quarantined (failed)"] == (1, 8.3)
    assert [(x["device"], x["status"]) for x in r["confirm"]["set_aside"]] == [
        ("rpi-b-01", "QUARANTINED")
    ]
    assert confirm_counts(r)["Pending (not reached)"] == (8, 66.7)
    assert r["result"] == "ROLLED_BACK" and "**Deployment result**: ROLLED_BACK" in md
    assert "_not reached: deployment rolled back in VERIFY_" in section(md, "### CONFIRM")


def test_wave_rolled_back_and_halted() -> None:
    r, md = report_of(wave_rolled_back())
    w1, w2 = r["rollout"]
    assert (w1["health_check"], w1["decision"]) == ("PASS", "CONTINUE")
    assert (w2["targeted"], w2["deployed"], w2["failed"], w2["health_check"]) == (
        5,
        5,
        2,
        "ROLLED BACK",
    )
    assert w2["failed_ids"] == ["orin-a-04", "rpi-b-05"] and w2["failure_rate"] == 0.4
    assert "| Health check | ROLLED BACK |" in md
    assert "**Decision**: ROLLBACK_WAVE_AND_HALT (40.0% failed, scope WAVE)" in md
    (rb,) = r["rollbacks"]
    assert (rb["scope"], rb["phase"], rb["devices"], rb["seconds"]) == (
        "wave 2",
        "ROLLOUT",
        WAVE2,
        42.0,
    )
    assert rb["logs_captured"] == WAVE2 and rb["recovered"] == WAVE2
    assert "### ROLLBACK" in md and "| Rolled back | 5 |" in md
    counts = confirm_counts(r)
    assert counts["Deployed (healthy)"] == (5, 41.7) and counts["Rolled back"] == (5, 41.7)
    assert sum(c for c, _ in counts.values()) == FLEET_TOTAL
    assert r["result"] == "HALTED" and r["state"]["phase"] == "HALTED"
    assert "_not reached: deployment halted in ROLLOUT_" in section(md, "### CONFIRM")
    assert r["state"]["blockers"].startswith("2 of 5 devices failed")


def test_rollback_failure_stops_everything_and_flags_the_device() -> None:
    r, md = report_of(rollback_failure())
    (rb,) = r["rollbacks"]
    assert rb["failed"] == ["rpi-b-03"] and rb["rolled_back"] == ["orin-a-02", "rpi-b-02"]
    assert rb["failures"][0]["error"] == "agent unreachable after slot switch"
    assert rb["capability"] == {"ok": CANARIES, "missing": []}
    assert "**ROLLBACK FAILED** on rpi-b-03 (highest severity)" in md
    assert "**Rollback capability re-verified**: 2 devices OK, 0 missing" in md
    assert r["state"]["rollback_available"] == "false"
    assert "manual intervention needed: rpi-b-03" in r["state"]["blockers"]
    assert confirm_counts(r)["Rollback failed (manual intervention)"] == (1, 8.3)
    assert "| Rollback failed (manual intervention) | 1 | 8.3% |" in md
    w1, w2 = r["rollout"]
    assert w1["health_check"] == "ROLLED BACK" and not w2["reached"]
    assert "**Wave 2** (100% of fleet): _not reached_" in md


def test_partial_with_a_skipped_device_and_a_paused_wave() -> None:
    r, md = report_of(partial())
    w2 = r["rollout"][1]
    assert (w2["targeted"], w2["deployed"], w2["failed"], w2["skipped"]) == (5, 4, 1, 1)
    assert w2["health_check"] == "PAUSED" and w2["skipped_ids"] == ["orin-a-05"]
    assert w2["resumed"]["by"] == "carol"
    assert "| Devices skipped (unreachable) | 1 |" in md
    assert "**Resumed** by carol at" in md
    assert r["rollbacks"][0]["scope"] == "quarantine"
    assert confirm_counts(r) == {
        "Deployed (healthy)": (8, 66.7),
        "Skipped (unreachable)": (1, 8.3),
        "Quarantined (failed)": (1, 8.3),
        "Not targeted": (2, 16.7),
    }
    assert r["result"] == "PARTIAL" and "**Deployment result**: PARTIAL" in md
    assert r["warnings"] == []  # the engine's recorded counts agree with the device events


# -- agreement -----------------------------------------------------------------------------------
@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_json_and_markdown_agree(name: str) -> None:
    r, md = report_of(SCENARIOS[name]())
    assert json.loads(json.dumps(r)) == r
    counts = confirm_counts(r)
    assert sum(c for c, _ in counts.values()) == r["fleet_total"]
    for status, (count, percent) in counts.items():
        assert f"| {status} | {count} | {percent:.1f}% |" in md
    for row in r["canary"]["rows"]:
        cells = [row[k] for k in ("device_id", "transfer", "deploy", "smoke", "status")]
        assert "| " + " | ".join(cells) + " |" in md
    for row in r["verify"]["rows"]:
        assert f"| {row['device_id']} | {row['health']} | " in md
    for w in r["rollout"]:
        if w["reached"]:
            block = md[md.index(f"**Wave {w['number']}** ({w['percent']:g}% of fleet):") :]
            for metric, value in (
                ("Devices targeted", w["targeted"]),
                ("Devices deployed", w["deployed"]),
                ("Devices failed", w["failed"]),
                ("Health check", w["health_check"]),
            ):
                assert f"| {metric} | {value} |" in block.split("\n\n")[0]
    for key, value in r["state"].items():
        assert f"\n{key}: {value}\n" in md
    assert f"**Deployment result**: {r['confirm']['result']}" in md
    assert f"**Canary verdict**: {r['verify']['verdict']}" in md


@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_every_table_ends_at_a_blank_line(name: str) -> None:
    """In GitHub markdown a text line right after a table becomes one of its rows."""
    _, md = report_of(SCENARIOS[name]())
    lines = lines_of(md)
    in_fence = False
    for i, line in enumerate(lines[:-1]):
        if line.startswith("```"):
            in_fence = not in_fence
        if not in_fence and line.startswith("|") and not lines[i + 1].startswith("|"):
            assert lines[i + 1] == "", f"line {i + 2} follows a table: {lines[i + 1]!r}"


@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_every_prefix_of_the_log_reports(name: str) -> None:
    """A report can be asked for at any moment of a deployment (``deploy report`` while it
    runs): every prefix of the log builds and renders, and the state block matches the fold."""
    events = SCENARIOS[name]()
    fleet_total = fold(DEP, events).fleet_total
    # Every prefix that ends a phase step, and every third one inside the device chatter.
    cuts = [
        n
        for n in range(1, len(events) + 1)
        if n % 3 == 0 or n == len(events) or not events[n - 1].action.startswith("device.")
    ]
    for n in cuts:
        r = build_report(DEP, events[:n])
        md = render_report_md(r)
        assert r["state_block"] == render_state_block(fold(DEP, events[:n]))
        assert md.startswith("## Fleet Deployment: vision v2.4.1\n")
        assert sum(row["count"] for row in r["confirm"]["rows"]) == fleet_total
        assert r["warnings"] == []


def test_waiting_for_approval() -> None:
    events = happy()
    cut = next(i for i, e in enumerate(events) if e.action == "approval.requested") + 1
    r, md = report_of(events[:cut])
    assert r["approval"]["status"] == "PENDING" and r["phase"] == "AWAITING_APPROVAL"
    assert f"**Approval**: PENDING — fleetgate deploy approve {DEP} --as NAME" in md
    assert "_not reached yet: waiting for human approval of the fleet rollout_" in md
    assert confirm_counts(r)["Pending (not reached)"] == (8, 66.7)


def test_events_of_other_deployments_are_ignored_and_unknown_id_is_an_input_error() -> None:
    events = happy()
    other = [
        Event(ts=e.ts, deployment_id="dep-other", action=e.action, device_id=e.device_id,
              actor=e.actor, outcome=e.outcome, details=e.details)
        for e in events[:5]
    ]  # fmt: skip
    mixed = [x for pair in zip(events, other, strict=False) for x in pair] + events[len(other) :]
    assert build_report(DEP, mixed) == build_report(DEP, events)
    with pytest.raises(InputError, match=r"no deployment\.created"):
        build_report("dep-nope", events)


def test_a_refused_event_is_left_out_and_named() -> None:
    events = happy()
    cut = next(i for i, e in enumerate(events) if e.action == "canary.verdict")
    robot = Event(ts=events[cut].ts, deployment_id=DEP, action="approval.granted",
                  actor="fleetgate", details={"comment": "auto"})  # fmt: skip
    r, md = report_of([*events[:cut], robot, *events[cut:]])
    assert len(r["warnings"]) == 1 and "approval.granted ignored" in r["warnings"][0]
    assert r["approval"]["by"] == "alice"
    assert "> Note: event #" in md


def test_a_log_without_a_recorded_plan_still_reports() -> None:
    log = Log()
    log.created(with_plan=False)
    log.deploy(0, CANARIES)
    r, md = report_of(log.events)
    plan = r["prepare"]["plan"]
    assert [c["id"] for c in plan["canaries"]] == CANARIES
    assert [w["count"] for w in plan["waves"]] == [len(WAVE1), len(WAVE2)]
    assert plan["device_groups"] == [
        {"group": "plant-a", "hardware": "jetson-orin-nano", "arch": "arm64", "count": 5},
        {"group": "plant-b", "hardware": "rpi4", "arch": "arm64", "count": 5},
    ]
    assert "**Artifact**: vision v2.4.1" in md and "### CANARY Phase" in md
    assert "_not reached yet: deployment in progress (VERIFY)_" in md


def test_checksum_names_the_bundle_digest_artifact_build_printed() -> None:
    r, md = report_of(happy())
    assert r["prepare"]["plan"]["artifact"]["bundle_sha256"] == BUNDLE_SHA
    line = next(x for x in md.splitlines() if x.startswith("**Checksum**"))
    assert line == (
        f"**Checksum**: sha256 {BUNDLE_SHA} (bundle, as printed by artifact build); "
        f"payload sha256 {SHA}"
    )
    # A log written before the bundle's digest was recorded says which digest it shows.
    log = Log()
    log.created(with_bundle_sha=False)
    r, md = report_of(log.events)
    assert r["bundle_sha256"] is None
    assert f"**Checksum**: payload sha256 {SHA} (the bundle's digest was not recorded)" in md


def test_prepare_failure_reports_every_later_phase_as_not_reached() -> None:
    log = Log()
    log.created()
    log.events.pop()  # distribution.started
    log.events.pop()  # prepare.passed
    bad = {"check": "artifact signature", "ok": False, "detail": "bad signature"}
    log.add("prepare.failed", outcome="failed", reason="signature does not verify", checks=[bad])
    r, md = report_of(log.events)
    assert r["prepare"]["status"] == "FAILED" and r["result"] == "ABORTED"
    assert "**PREPARE failed**: signature does not verify" in md
    assert "| artifact signature | FAIL | bad signature |" in md
    for heading in ("### CANARY Phase", "### VERIFY Phase", "### ROLLOUT Phase"):
        assert section(md, heading).split("\n")[2] == "_not reached: deployment aborted in PREPARE_"
    assert confirm_counts(r)["Pending (not reached)"] == (10, 83.3)


def test_a_wave_halted_at_preflight_reports_not_run_with_the_reason() -> None:
    log = Log()
    log.created()
    log.deploy(0, CANARIES)
    log.verify()
    log.approve()
    log.add("stage.started", stage=1, devices=3)
    for d in WAVE1[1:]:
        log.add("device.unreachable", d, stage=1, attempt=1, error="timeout", outcome="failed")
    reason = "2 of 3 devices unreachable (66.7 %) > 20 %: halt"
    log.add("stage.preflight", stage=1, reachable=WAVE1[:1], unreachable=WAVE1[1:], rate=2 / 3,
            decision="HALT", reason=reason)  # fmt: skip
    log.add("deployment.halted", reason=reason)
    r, md = report_of(log.events)
    w1 = r["rollout"][0]
    assert w1["reached"] and w1["health_check"] == "NOT RUN"
    assert (w1["decision"], w1["reason"], w1["deployed"]) == ("HALT", reason, 0)
    assert w1["unreachable_ids"] == WAVE1[1:]
    assert f"**Decision**: HALT — {reason}" in md
    assert confirm_counts(r)["Skipped (unreachable)"] == (2, 16.7)
    assert r["state"]["phase"] == "HALTED"


def test_an_unanswered_health_check_reads_not_responding_with_no_invented_numbers() -> None:
    log = Log()
    log.created()
    log.deploy(0, CANARIES)
    for d in CANARIES:
        log.health(0, d, "initial")
    log.soak(0)
    log.health(0, "orin-a-01", "post-soak")
    log.add("device.health", "rpi-b-01", stage=0, round="post-soak", status="failed",
            outcome="failed", reasons=["health endpoint not responding: timeout"], sample=None,
            baseline=None)  # fmt: skip
    r, md = report_of(log.events)
    row = r["verify"]["rows"][1]
    assert row["health"] == "FAILED" and row["cpu_percent"] is None
    assert "| rpi-b-01 | FAILED | n/a | n/a | n/a | n/a |" in md
    box = r["verify"]["health_boxes"][1]
    assert box["endpoint_responding"] is False and box["baseline_latency_ms"] == 18.0
    assert "| " + "  Health endpoint: not responding".ljust(BOX_WIDTH) + " |" in md
    assert box["verdict"] == "PENDING"  # no canary.verdict recorded yet
