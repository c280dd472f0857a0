"""Real agent processes supervising the real demo app: the happy path, a release that never
starts, and what the health endpoint measures."""

from __future__ import annotations

import dataclasses
import os

import pytest

from fleetgate.core.model import HealthSample
from fleetgate.transports.results import parse_health


def test_stage_activate_health_rollback_round_trip(make_agent, kit):
    a = make_agent()
    facts = a.facts()
    assert facts["current"] is None and facts["releases"] == [] and facts["last_seq"] == 0
    assert facts["state"] == "idle" and facts["app_running"] is False
    assert facts["id"] == "dev-1" and facts["hardware"] == "test-board"
    assert facts["software"]["os"] == "test"

    assert a.post("stage", deployment_id="d1", seq=1, **kit.v1.stage) == (
        200,
        {"status": "staged", "release": kit.v1.id},
    )
    status, body = a.post("activate", deployment_id="d1", seq=2, release=kit.v1.id)
    assert (status, body) == (200, {"status": "active", "release": kit.v1.id, "previous": None})
    assert a.app_version() == "1.0.0"

    assert a.post("stage", deployment_id="d2", seq=3, **kit.v2.stage)[1]["status"] == "staged"
    status, body = a.post("activate", deployment_id="d2", seq=4, release=kit.v2.id)
    assert body == {"status": "active", "release": kit.v2.id, "previous": kit.v1.id}
    assert a.app_version() == "2.0.0"

    facts = a.facts()
    assert facts["current"] == kit.v2.id and facts["previous"] == kit.v1.id
    assert facts["rollback_available"] is True and facts["app_running"] is True
    assert facts["releases"] == sorted([kit.v1.id, kit.v2.id]) and facts["last_seq"] == 4
    assert os.readlink(a.data_dir / "current") == f"releases/{kit.v2.id}"

    a.wait_for(lambda: a.health()["error_rate"] is not None, what="a measured error rate")
    health = a.health()
    assert set(health) == {f.name for f in dataclasses.fields(HealthSample)}
    sample = HealthSample(**health)
    assert sample.app_up and sample.release == kit.v2.id and sample.device_id == "dev-1"
    assert sample.error_rate == 0.0 and sample.restarts == 0 and not sample.crash_loop
    assert sample.latency_ms is not None and sample.mem_total_mb and sample.disk_free_mb
    assert sample.cpu_percent is not None

    status, logs = a.get("/v1/logs?lines=50")
    assert status == 200 and any("demo app 2.0.0" in line for line in logs["app"])
    assert any("activate seq=4" in line for line in logs["agent"])
    assert not any("t0ken" in line for line in logs["agent"])

    status, body = a.post("rollback", deployment_id="d2", seq=5)
    assert (status, body) == (
        200,
        {"status": "rolled-back", "release": kit.v1.id, "from": kit.v2.id, "app_healthy": True},
    )
    assert a.app_version() == "1.0.0"
    facts = a.facts()
    assert facts["current"] == kit.v1.id and facts["previous"] is None
    assert facts["rollback_available"] is False
    assert os.readlink(a.data_dir / "current") == f"releases/{kit.v1.id}"

    status, body = a.post("rollback", deployment_id="d2", seq=6)
    assert status == 409 and body["error"] == "no-rollback-copy" and body["retryable"] is False

    # Redeploying what is there downloads nothing.
    assert a.post("stage", deployment_id="d3", seq=7, **kit.v1.stage)[1] == {
        "status": "already-installed",
        "release": kit.v1.id,
    }
    assert a.post("stage", deployment_id="d3", seq=8, **kit.v2.stage)[1] == {
        "status": "already-staged",
        "release": kit.v2.id,
    }
    # Explicit rollback target, then a graceful stop takes the app down with the agent.
    status, body = a.post("rollback", deployment_id="d3", seq=9, to=kit.v2.id)
    assert body["status"] == "rolled-back" and body["release"] == kit.v2.id
    assert a.app_version() == "2.0.0"
    a.stop()
    assert a.app_version() is None and not (a.data_dir / "app.json").exists()

    # A restarted agent starts the current release again.
    a.start()
    a.wait_for(lambda: a.app_version() == "2.0.0", what="app restarted with the agent")
    assert a.facts()["last_seq"] == 9


def test_release_that_never_starts_is_reported_then_rolled_back(make_agent, kit):
    """Before the device's own crash-loop revert (3 restarts, ~4 s) the controller's rollback
    is an ordinary one."""
    a = make_agent()
    a.post("stage", deployment_id="d1", seq=1, **kit.v1.stage)
    assert a.post("activate", deployment_id="d1", seq=2, release=kit.v1.id)[1]["status"] == "active"
    a.post("stage", deployment_id="d2", seq=3, **kit.bad.stage)

    status, body = a.post("activate", deployment_id="d2", seq=4, release=kit.bad.id)
    assert status == 200 and body["status"] == "start-failed"
    assert body["release"] == kit.bad.id and body["previous"] == kit.v1.id
    assert "exited with code 3" in body["error"]
    assert any("crash-at-start" in line for line in body["logs"])

    # Truthful state: the failed release is current (on trial: left alone, the device reverts
    # it once it crash-loops, test_agent_trial.py); the controller rolls it back first here.
    facts = a.facts()
    assert facts["current"] == kit.bad.id and facts["previous"] == kit.v1.id
    assert facts["rollback_available"] is True
    assert facts["trial"]["state"] == "on-trial" and facts["reverted"] is None
    health = a.health()
    assert health["app_up"] is False and health["release"] == kit.bad.id

    status, body = a.post("rollback", deployment_id="d2", seq=5)
    assert body == {
        "status": "rolled-back",
        "release": kit.v1.id,
        "from": kit.bad.id,
        "app_healthy": True,
    }
    assert a.app_version() == "1.0.0"
    health = a.health()
    assert health["app_up"] is True and health["restarts"] == 0 and not health["crash_loop"]


def test_health_reads_error_rate_and_latency_from_app_metrics(make_agent, kit):
    errors = kit.release("noisy", "1.0.0", "errors")
    slow = kit.release("sluggish", "1.0.0", "slow")
    a = make_agent()
    a.post("stage", deployment_id="d1", seq=1, **errors.stage)
    assert a.post("activate", deployment_id="d1", seq=2, release=errors.id)[1]["status"] == "active"
    # The demo app fails exactly 30 % of its simulated requests.
    a.wait_for(
        lambda: 0.25 < (a.health()["error_rate"] or 0) <= 0.32,
        what="error rate from app_errors_total",
    )

    a.post("stage", deployment_id="d2", seq=3, **slow.stage)
    assert a.post("activate", deployment_id="d2", seq=4, release=slow.id)[1]["status"] == "active"
    a.wait_for(lambda: a.health()["latency_ms"] == 300.0, what="latency gauge from metrics")
    a.wait_for(lambda: a.health()["error_rate"] == 0.0, what="error rate of the new release only")


def test_health_carries_the_apps_own_metrics(make_agent, kit):
    """The agent scrapes the demo app's /metrics with each health answer and sends every
    series, summary quantiles included, as ``metrics``; the controller reads them back."""
    slow = kit.release("metered", "1.0.0", "slow")  # reports 300 ms latency
    a = make_agent()
    assert a.health()["metrics"] == {}  # nothing runs yet
    a.post("stage", deployment_id="d1", seq=1, **slow.stage)
    assert a.post("activate", deployment_id="d1", seq=2, release=slow.id)[1]["status"] == "active"
    a.wait_for(lambda: a.health()["metrics"].get("app_requests_total", 0) > 0, what="app metrics")
    metrics = a.health()["metrics"]
    assert metrics["app_request_latency_ms"] == 300.0 and metrics["app_up"] == 1.0
    assert metrics['inference_latency_seconds{quantile="0.95"}'] == pytest.approx(0.3 * 1.779)
    assert metrics['inference_latency_seconds{quantile="0.5"}'] == pytest.approx(0.3 * 0.923)
    assert metrics["inference_latency_seconds_count"] >= metrics["app_requests_total"] > 0
    assert metrics["process_resident_memory_bytes"] > 1_000_000
    sample = parse_health("dev-1", a.health())
    assert sample.metrics['inference_latency_seconds{quantile="0.99"}'] == pytest.approx(
        0.3 * 2.344
    )
    assert not sample.has_no_data

    # A release without a metrics URL has no app metrics; the rest of the sample is there.
    bare = kit.release("bare", "1.0.0", metrics_url=False)
    a.post("stage", deployment_id="d2", seq=3, **bare.stage)
    assert a.post("activate", deployment_id="d2", seq=4, release=bare.id)[1]["status"] == "active"
    health = a.health()
    assert health["metrics"] == {} and health["app_up"] is True


def test_old_releases_are_pruned_but_never_current_or_previous(make_agent, kit):
    a = make_agent()  # keep_releases = 2: previous + one more besides current
    extra = [kit.release("demo", f"{n}.0.0") for n in (4, 5)]
    seq = 0
    for rel in (kit.v1, kit.v2, *extra):
        seq += 2
        assert a.post("stage", deployment_id="d", seq=seq - 1, **rel.stage)[0] == 200
        assert a.post("activate", deployment_id="d", seq=seq, release=rel.id)[0] == 200
    assert a.release_entries() == sorted([kit.v2.id, extra[0].id, extra[1].id])
    facts = a.facts()
    assert (facts["current"], facts["previous"]) == (extra[1].id, extra[0].id)
    # Staging one more makes room first: the oldest non-kept release goes, not the rollback copy.
    assert a.post("stage", deployment_id="d", seq=seq + 1, **kit.v1.stage)[0] == 200
    assert a.release_entries() == sorted([kit.v1.id, extra[0].id, extra[1].id])
