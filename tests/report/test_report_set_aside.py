"""Issue 7 in the report: a device counts as deployed only when it runs the release (stage
failures count in their wave, over every device it targeted), and every device set aside —
quarantined, skipped, excluded, failed to deploy, rollback failed — is named with its reason."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest
from all_scenarios import SCENARIOS
from report_scenarios import (
    BIG_WAVE1,
    CRASHED,
    DEP,
    DISK_FULL,
    EXCLUDE_WHY,
    RPI_IN_WAVES,
    STAGE_FAILED,
    UNREACHABLE,
    canary_excluded,
    happy,
    rollback_failure,
    stage_failures,
)

from fleetgate.core.events import Event
from fleetgate.core.machine import fold
from fleetgate.core.state import DeviceStatus, render_state_block
from fleetgate.report.session import build_report, render_report_md
from fleetgate.report.session_log import display_status

D = DeviceStatus
SET_ASIDE = (
    D.QUARANTINED,
    D.SKIPPED,
    D.UNREACHABLE,
    D.EXCLUDED,
    D.DEPLOY_FAILED,
    D.FAILED,
    D.ROLLBACK_FAILED,
)


def report_of(events: list[Event]) -> tuple[dict[str, Any], str]:
    r = build_report(DEP, events)
    return r, render_report_md(r)


def until(events: list[Event], action: str, nth: int = 1) -> list[Event]:
    """The log up to and including the ``nth`` ``action``."""
    seen = 0
    for i, e in enumerate(events):
        seen += e.action == action
        if seen == nth:
            return events[: i + 1]
    raise AssertionError(f"no {action} #{nth}")


def test_exclude_decision_excludes_the_unproven_cell_and_lists_it() -> None:
    events = canary_excluded()
    r, md = report_of(events)
    assert (
        "**Canary verdict**: PASS (round 2, after round 1 FAIL; failed cells excluded by bob)" in md
    )
    first, second = r["verify"]["rounds"]
    assert first["decision"]["choice"] == "exclude"
    assert [x["device_id"] for x in first["replaced"]["excluded"]] == RPI_IN_WAVES
    assert first["replaced"]["uncovered"] == ["group=plant-b", "hardware=rpi4"]
    assert second["canaries"] == ["orin-a-01"] and second["verdict"] == "PASS"
    assert f"- excluded rpi-b-02: {EXCLUDE_WHY}" in md
    assert "- uncovered (no canary proves): group=plant-b, hardware=rpi4" in md
    assert "| Excluded (cell not proven by a canary) | 4 | 33.3% |" in md
    excluded = [x for x in r["confirm"]["set_aside"] if x["status"] == "EXCLUDED"]
    assert excluded == [
        {"device": d, "status": "EXCLUDED", "reason": EXCLUDE_WHY} for d in RPI_IN_WAVES
    ]
    # Excluded devices left their waves but are still targeted and listed.
    assert r["targeted"] == 10
    assert {d["id"]: d["stage"] for d in r["devices"] if d["status"] == "EXCLUDED"} == {
        d: None for d in RPI_IN_WAVES
    }
    assert r["state"]["skipped"] == "4" and r["warnings"] == []


# -- waves with stage failures -------------------------------------------------------------------
def test_a_stage_failure_counts_in_its_wave_over_every_device_targeted() -> None:
    r, md = report_of(stage_failures())
    w1, w2 = r["rollout"]
    assert (w1["targeted"], w1["deployed"], w1["failed"], w1["failed_ids"]) == (
        len(BIG_WAVE1),
        len(BIG_WAVE1) - 1,
        1,
        [STAGE_FAILED],
    )
    assert w1["failure_rate"] == pytest.approx(1 / 22)
    assert w1["decision"] == "QUARANTINE_AND_CONTINUE"
    assert w1["failed_reasons"] == {STAGE_FAILED: f"stage failed: {DISK_FULL}"}
    block = md[md.index("**Wave 1**") : md.index("**Wave 2**")]
    assert "| Devices targeted | 22 |" in block and "| Devices failed | 1 |" in block
    assert "**Decision**: QUARANTINE_AND_CONTINUE (4.5% failed, scope DEVICE)" in block
    assert f"**Failed devices**: {STAGE_FAILED} (stage failed: {DISK_FULL})" in block
    assert (w2["failed_ids"], w2["skipped_ids"]) == ([CRASHED], [UNREACHABLE])


def test_stage_failures_count_even_when_stage_deployed_omits_them() -> None:
    """Before the wave is evaluated, the device that failed to stage is already a failure of
    its wave (stage.deployed lists only devices that failed to start), and never deployed."""
    events = until(stage_failures(), "stage.deployed", 2)
    r, md = report_of(events)
    w1 = r["rollout"][0]
    assert w1["failed_ids"] == [STAGE_FAILED] and w1["health_check"] == "PENDING"
    rows = {x["status"]: x["count"] for x in r["confirm"]["rows"]}
    assert rows["Failed (not deployed)"] == 1
    assert "| Failed (not deployed) | 1 | 2.1% |" in md
    assert r["state"]["deployed_count"] == str(2 + len(BIG_WAVE1) - 1)
    (aside,) = r["confirm"]["set_aside"]
    assert aside == {
        "device": STAGE_FAILED,
        "status": "FAILED (NOT DEPLOYED)",
        "reason": f"stage failed: {DISK_FULL}",
    }


def test_a_staged_device_is_not_counted_deployed() -> None:
    events = stage_failures()
    cut = next(
        i for i, e in enumerate(events) if e.action == "device.staged" and e.details["stage"] == 1
    )
    r, md = report_of(events[: cut + 1])
    rows = {x["status"]: x["count"] for x in r["confirm"]["rows"]}
    assert "| Staged (not activated) | 1 | 2.1% |" in md
    assert rows["Staged (not activated)"] == 1
    assert rows["Deployed (healthy)"] == 2  # the canaries
    assert r["state"]["deployed_count"] == "2"


def test_confirm_finding_a_device_on_another_release_is_failed_not_deployed() -> None:
    events = happy()
    checked = next(i for i, e in enumerate(events) if e.action == "confirm.checked")
    found = Event(
        ts=events[checked].ts,
        deployment_id=DEP,
        action="device.deploy_failed",
        outcome="failed",
        device_id="orin-a-03",
        details={"stage": 2, "step": "confirm", "error": "runs vision-2.4.0, not vision-2.4.1"},
    )
    done = events[-1]
    counts = {**done.details["counts"], "deployed_healthy": 9, "failed": 1}
    events = [*events[:checked], found, *events[checked:-1]]
    events.append(replace(done, details={**done.details, "counts": counts, "result": "PARTIAL"}))
    r, md = report_of(events)
    rows = {x["status"]: x["count"] for x in r["confirm"]["rows"]}
    assert rows["Deployed (healthy)"] == 9 and rows["Failed (not deployed)"] == 1
    assert "| orin-a-03 | FAILED (NOT DEPLOYED) | confirm failed: runs vision-2.4.0, not" in md
    assert r["confirm"]["set_aside"] == [
        {
            "device": "orin-a-03",
            "status": "FAILED (NOT DEPLOYED)",
            "reason": "confirm failed: runs vision-2.4.0, not vision-2.4.1",
        }
    ]
    assert r["rollout"][1]["failed_ids"] == []  # not a failure of wave 2's deployment
    assert r["warnings"] == []


def test_recorded_counts_that_disagree_are_named() -> None:
    events = stage_failures()
    done = events[-1]
    counts = {**done.details["counts"], "quarantined": 1, "excluded": 3}
    r, _ = report_of([*events[:-1], replace(done, details={**done.details, "counts": counts})])
    assert sorted(r["warnings"]) == [
        "confirm.completed counts excluded=3, the device events give 0",
        "confirm.completed counts quarantined=1, the device events give 2",
    ]


# -- CONFIRM: set aside --------------------------------------------------------------------------
EXPECTED_REASONS = {
    "canary_replaced": {
        "rpi-b-01": "canary failed: health failed: error rate 6.0 %",
        "orin-a-05": "unreachable after 3 retries (3 attempts, last: connection refused)",
    },
    "canary_excluded": {d: EXCLUDE_WHY for d in RPI_IN_WAVES}
    | {"rpi-b-01": "canary failed: health failed: error rate 6.0 %"},
    "stage_failures": {
        STAGE_FAILED: f"stage failed: {DISK_FULL}",
        CRASHED: "health failed: crash loop detected; 3 restarts on this release (max 2)",
        UNREACHABLE: "unreachable after 3 retries (3 attempts, last: connection refused)",
    },
    "partial": {
        "rpi-b-04": "health failed: error rate 8.0 %",
        "orin-a-05": "unreachable after 3 retries (3 attempts",
    },
    "rollback_failure": {"rpi-b-03": "rollback failed: agent unreachable after slot switch"},
}


@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_set_aside_names_every_set_aside_device_with_its_reason(name: str) -> None:
    events = SCENARIOS[name]()
    r, md = report_of(events)
    state = fold(DEP, events)
    aside = r["confirm"]["set_aside"]
    want = {i: display_status(s) for i, s in state.devices.items() if s in SET_ASIDE}
    assert {x["device"]: x["status"] for x in aside} == want
    assert len(aside) == len(want)
    for x in aside:
        assert list(x) == ["device", "status", "reason"]
        assert x["reason"] and "no reason recorded" not in x["reason"], x
        assert f"| {x['device']} | {x['status']} | {x['reason']} |" in md
    for dev, reason in EXPECTED_REASONS.get(name, {}).items():
        got = next(x["reason"] for x in aside if x["device"] == dev)
        assert got.startswith(reason), (dev, got)
    if aside:
        n = len(aside)
        assert f"**Set aside** ({n} device{'s' if n != 1 else ''}):" in md
    else:
        assert "**Set aside**" not in md


@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_counts_sum_to_the_fleet_and_healthy_means_running_the_release(name: str) -> None:
    events = SCENARIOS[name]()
    r, md = report_of(events)
    state = fold(DEP, events)
    rows = {x["status"]: x["count"] for x in r["confirm"]["rows"]}
    assert sum(rows.values()) == r["fleet_total"] == state.fleet_total
    assert rows["Deployed (healthy)"] == state.count(D.HEALTHY)
    assert r["state_block"] == render_state_block(state)
    assert r["warnings"] == []  # the engine's recorded counts agree with the device events
    for x in r["verify"]["rounds"]:
        for row in x["rows"]:
            assert f"| {row['device_id']} | {row['health']} | " in md


def test_rollback_failure_is_set_aside_first() -> None:
    r, _ = report_of(rollback_failure())
    assert [(x["device"], x["status"]) for x in r["confirm"]["set_aside"]] == [
        ("rpi-b-03", "ROLLBACK FAILED")
    ]


def test_devices_put_on_the_registry_quarantine_list_are_named() -> None:
    events = stage_failures()
    aside = {
        STAGE_FAILED: f"stage failed: {DISK_FULL}",
        CRASHED: "health failed: crash loop",
        UNREACHABLE: "unreachable after 3 retries",
    }
    last = events[-1]
    events.append(
        Event(
            ts=last.ts, deployment_id=DEP, action="registry.quarantined", details={"devices": aside}
        )
    )
    r, md = report_of(events)
    assert r["confirm"]["registry_quarantined"] == sorted(aside)  # details in canonical order
    assert (
        f"**Quarantine list**: 3 devices put on the registry's quarantine list "
        f"({CRASHED}, {STAGE_FAILED}, {UNREACHABLE}); the next plan leaves them out until "
        "fleetgate registry release ID"
    ) in md
    assert r["warnings"] == [] and r["phase"] == "PARTIAL"
