"""Every ``fleetgate demo`` scenario end to end: real HTTP on loopback, a virtual fleet plus real
agent processes supervising the real demo app, the SQLite store. Outcomes are proven from the
event log, not from the demo's own summary."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from fleetgate.core.machine import fold
from fleetgate.core.state import DeviceStatus, Phase
from fleetgate.sim.demo import run_demo
from fleetgate.store import Store

# Under pytest-xdist, nothing beside these: real agents' latency gates (see test_demo_mqtt.py).
pytestmark = [pytest.mark.slow, pytest.mark.alone]


async def _run(tmp_path: Path, scenario: str) -> tuple[Any, list[Any]]:
    db = f"sqlite+aiosqlite:///{tmp_path}/fg.db"
    result = await run_demo(
        db, scenario, 20, yes=True, agents=2, home=tmp_path / "home", say=lambda _l: None
    )
    async with Store.open(db) as store:
        events = await store.events(result.deployment_id)
        assert (await store.verify()).ok
    return result, events


def _touched(events: list[Any]) -> set[str]:
    return {e.device_id for e in events if e.action == "device.stage_requested"}


async def test_happy_completes_with_real_agents(tmp_path: Path) -> None:
    result, events = await _run(tmp_path, "happy")
    state = fold(result.deployment_id, events)
    assert result.phase == "COMPLETE" and result.exit_code == 0
    assert all(s is DeviceStatus.HEALTHY for s in state.devices.values())
    agents = [d for d in state.devices if d.startswith("agent-")]
    assert agents and all(d in _touched(events) for d in agents)
    assert "## Fleet Deployment: demo v2.0.0" in result.report
    assert "<fleet-deploy-state>" in result.report
    # Approval came from the command line and preceded the fleet rollout.
    approval = next(e for e in events if e.action == "approval.granted")
    assert "--yes" in approval.actor
    assert approval.seq < min(
        e.seq for e in events if e.action == "stage.started" and e.details["stage"] == 1
    )


async def test_bad_canary_rolls_back_canaries_only(tmp_path: Path) -> None:
    result, events = await _run(tmp_path, "bad-canary")
    state = fold(result.deployment_id, events)
    assert state.phase is Phase.ABORTED and result.exit_code == 3
    assert state.canary_verdict == "FAIL"
    assert _touched(events) == set(state.canaries)
    assert all(state.devices[c] is DeviceStatus.ROLLED_BACK for c in state.canaries)
    # Real agents among the canaries came back on v1 with the app running.
    assert any(c.startswith("agent-") for c in state.canaries)
    recovered = next(e for e in events if e.action == "rollback.completed").details["recovered"]
    assert set(recovered) == set(state.canaries)


async def test_wave_degradation_rolls_back_the_wave_and_halts(tmp_path: Path) -> None:
    result, events = await _run(tmp_path, "wave-degradation")
    state = fold(result.deployment_id, events)
    assert state.phase is Phase.HALTED and result.exit_code == 3
    wave = next(e for e in events if e.action == "wave.evaluated")
    assert wave.details["action"] == "ROLLBACK_WAVE_AND_HALT"
    assert not _touched(events) & set(state.stages[2])
    for dev in state.stages[1]:
        assert state.devices[dev] in (DeviceStatus.ROLLED_BACK, DeviceStatus.SKIPPED)


async def test_unreachable_halts_before_deploying_the_wave(tmp_path: Path) -> None:
    result, events = await _run(tmp_path, "unreachable")
    state = fold(result.deployment_id, events)
    assert state.phase is Phase.HALTED
    assert "unreachable" in state.halt_reason
    assert not _touched(events) & set(state.stages[1])


async def test_rollback_failure_stops_everything(tmp_path: Path) -> None:
    result, events = await _run(tmp_path, "rollback-failure")
    state = fold(result.deployment_id, events)
    assert state.phase is Phase.HALTED
    assert len(state.manual_intervention) == 1
    assert "rollback_available: false" in result.report
    assert any(e.action == "rollback.capability_checked" for e in events)
    assert _touched(events) == set(state.canaries)


async def test_a_demo_run_after_a_halted_one_ends_it_and_completes(tmp_path: Path) -> None:
    """The README's demo, run again on the same store after a run that halted: the earlier
    deployment (its fleet is gone) would block the new one (one deployment per device at a
    time); the demo ends it as ABORTED, and only deployments the demo started."""
    first, _ = await _run(tmp_path, "wave-degradation")
    assert first.phase == "HALTED"
    second, _ = await _run(tmp_path, "happy")
    assert second.phase == "COMPLETE" and second.exit_code == 0
    async with Store.open(f"sqlite+aiosqlite:///{tmp_path}/fg.db") as store:
        earlier = fold(first.deployment_id, await store.events(first.deployment_id))
    assert earlier.phase is Phase.ABORTED
    assert "earlier demo run" in earlier.halt_reason
