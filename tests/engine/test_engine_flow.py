"""The engine end to end on the in-memory virtual fleet: each spec scenario's outcome, proven
from the event log and the devices' own records."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest
from engine_harness import harness
from test_engine_admission import operator_fixes

from fleetgate.core.machine import fold
from fleetgate.core.state import DeviceStatus, Phase
from fleetgate.engine.service import Decision
from fleetgate.errors import IllegalTransition, InputError

D = DeviceStatus


async def test_happy_path_waits_for_approval_then_completes(tmp_path: Path) -> None:
    async with harness(tmp_path) as h:
        dep = await h.start()
        state = await h.controller.drive(dep)
        assert state.phase is Phase.AWAITING_APPROVAL
        assert state.canary_verdict == "PASS"
        canaries = set(state.canaries)
        release = fold(dep, await h.events(dep)).artifact
        assert release == "app v2.0.0"
        # Nothing beyond the canaries was touched before the approval (Guardrail 1).
        for d in h.fleet.devices:
            snap = h.fleet.device_state(d.id)
            touched = any(k[0] in ("stage", "activate") for k in snap.executed)
            assert touched == (d.id in canaries), d.id
        # The soak was served (virtual time) and recorded.
        assert h.clock.slept >= 600

        state = await h.controller.record_human(
            dep, "approval.granted", "alice", comment="canaries look good"
        )
        state = await h.controller.drive(dep)
        assert state.phase is Phase.COMPLETE, state.halt_reason
        events = await h.events(dep)
        assert fold(dep, events) == state  # the log rebuilds the live state exactly
        assert await h.store.verify()
        rel = {e.details["release"] for e in events if e.action == "device.activated"}
        assert len(rel) == 1
        (release_id,) = rel
        # Every targeted device runs the release; stage/activate executed exactly once each.
        # (the drill canary was rolled back and activated again on purpose: 2 activations)
        assert state.drill == "done" and state.drill_device in state.canaries
        for dev in state.devices:
            snap = h.fleet.device_state(dev)
            assert snap.current == release_id
            assert snap.executed[("stage", release_id)] == 1
            drilled = dev == state.drill_device
            assert snap.executed[("activate", release_id)] == (2 if drilled else 1)
            assert (("rollback", "app-1.0.0-00000000") in snap.executed) == drilled
        # Waves: health checks covered ALL deployed devices after each wave, not just the wave.
        checked = [e.details["checked"] for e in events if e.action == "wave.evaluated"]
        assert checked == sorted(checked) and checked[-1] == len(state.devices)
        approvals = [e for e in events if e.action == "approval.granted"]
        assert approvals[0].actor == "alice"
        first_wave = min(
            e.seq for e in events if e.action == "stage.started" and e.details["stage"] == 1
        )
        assert approvals[0].seq < first_wave


async def test_bad_canary_is_rolled_back_and_no_other_device_touched(tmp_path: Path) -> None:
    async with harness(tmp_path, faults=("crash-loop:version=2.0.0",)) as h:
        dep = await h.start()
        state = await h.controller.drive(dep)
        assert state.canary_verdict == "FAIL"
        assert state.phase is Phase.ABORTED
        for d in h.fleet.devices:
            snap = h.fleet.device_state(d.id)
            if d.id in state.canaries:
                assert snap.current == "app-1.0.0-00000000"  # rolled back
                assert state.devices[d.id] is D.ROLLED_BACK
            else:
                assert not snap.executed, f"{d.id} was touched"
        events = await h.events(dep)
        assert any(e.action == "device.logs_captured" for e in events)
        assert not any(e.action == "approval.requested" for e in events)


async def test_wave_with_many_failures_is_rolled_back_and_halted(tmp_path: Path) -> None:
    async with harness(tmp_path, devices=60) as h:
        dep = await h.start()
        await h.controller.drive(dep)
        state = await h.controller.state(dep)
        wave1 = state.stages[1]
        # After approval, half of wave 1 starts failing to start the new version.
        for dev in wave1[: len(wave1) // 2]:
            h.fleet.inject(f"start-fail:device={dev},version=2.0.0")
        await h.controller.record_human(dep, "approval.granted", "alice")
        state = await h.controller.drive(dep)
        assert state.phase is Phase.HALTED
        events = await h.events(dep)
        ev = next(e for e in events if e.action == "wave.evaluated")
        assert ev.details["action"] == "ROLLBACK_WAVE_AND_HALT"
        for dev in wave1:
            assert h.fleet.device_state(dev).current == "app-1.0.0-00000000"
        # Later waves never touched.
        for dev in state.stages[2]:
            assert not h.fleet.device_state(dev).executed
        # Resume is a human decision; nothing proceeds without it.
        with pytest.raises(IllegalTransition):
            await h.controller.record_human(dep, "approval.granted", "alice")


async def test_isolated_failure_is_quarantined_and_rollout_continues(tmp_path: Path) -> None:
    async with harness(tmp_path, devices=200) as h:
        dep = await h.start()
        await h.controller.drive(dep)
        state = await h.controller.state(dep)
        bad = state.stages[2][0]
        h.fleet.inject(f"start-fail:device={bad},version=2.0.0")
        await h.controller.record_human(dep, "approval.granted", "alice")
        state = await h.controller.drive(dep)
        assert state.phase is Phase.PARTIAL
        assert state.devices[bad] is D.QUARANTINED
        assert h.fleet.device_state(bad).current == "app-1.0.0-00000000"


async def test_pause_between_five_and_twenty_percent(tmp_path: Path) -> None:
    async with harness(tmp_path, devices=200) as h:
        dep = await h.start()
        await h.controller.drive(dep)
        state = await h.controller.state(dep)
        wave = state.stages[1]
        n = max(1, len(wave) // 10)  # ~10 %
        for dev in wave[:n]:
            h.fleet.inject(f"start-fail:device={dev},version=2.0.0")
        await h.controller.record_human(dep, "approval.granted", "alice")
        state = await h.controller.drive(dep)
        assert state.phase is Phase.HALTED
        ev = [e for e in await h.events(dep) if e.action == "wave.evaluated"][-1]
        assert ev.details["action"] == "PAUSE_FOR_HUMAN"
        await h.controller.record_human(dep, "deployment.resumed", "bob")
        state = await h.controller.drive(dep)
        assert state.phase is Phase.PARTIAL
        assert Counter(state.devices[d] for d in wave[:n]) == {D.QUARANTINED: n}


async def test_unreachable_above_twenty_percent_halts_before_deploying(tmp_path: Path) -> None:
    async with harness(tmp_path, devices=100) as h:
        dep = await h.start()
        await h.controller.drive(dep)
        state = await h.controller.state(dep)
        wave = state.stages[1]
        for dev in wave[: len(wave) // 3]:
            h.fleet.inject(f"unreachable:device={dev}")
        await h.controller.record_human(dep, "approval.granted", "alice")
        state = await h.controller.drive(dep)
        assert state.phase is Phase.HALTED
        assert "unreachable" in state.halt_reason
        for dev in wave:
            assert not h.fleet.device_state(dev).executed


async def test_rollback_failure_stops_everything(tmp_path: Path) -> None:
    async with harness(tmp_path, faults=("crash-loop:version=2.0.0",)) as h:
        state0 = await h.controller.state(await h.start())
        victim = state0.canaries[0]
        h.fleet.inject(f"rollback-fail:device={victim}")
        state = await h.controller.drive(state0.deployment_id)
        assert state.phase is Phase.HALTED
        assert state.manual_intervention == (victim,)
        events = await h.events(state.deployment_id)
        assert any(e.action == "rollback.capability_checked" for e in events)
        failed = next(e for e in events if e.action == "device.rollback_failed")
        assert failed.device_id == victim and "state" in failed.details
        with pytest.raises(IllegalTransition):
            await h.controller.record_human(state.deployment_id, "deployment.resumed", "bob")


async def test_failed_rollback_drill_halts_before_the_verdict(tmp_path: Path) -> None:
    async with harness(tmp_path) as h:
        dep = await h.start()
        canaries = (await h.controller.state(dep)).canaries
        for dev in canaries:  # whichever canary is drilled cannot roll back
            h.fleet.inject(f"rollback-fail:device={dev}")
        state = await h.controller.drive(dep)
        assert state.phase is Phase.HALTED
        assert "rollback drill failed" in state.halt_reason
        assert state.manual_intervention == (state.drill_device,)
        assert state.canary_verdict == "PENDING"  # no verdict, no approval request
        events = await h.events(dep)
        assert not any(e.action == "approval.requested" for e in events)


async def test_no_deployable_canary_fails_at_once_without_a_soak(tmp_path: Path) -> None:
    async with harness(tmp_path) as h:
        dep = await h.start()
        for dev in (await h.controller.state(dep)).canaries:
            h.fleet.inject(f"low-disk:free_mb=0,device={dev}")
        state = await h.controller.drive(dep)
        assert state.phase is Phase.ABORTED
        assert h.clock.slept < 60  # retries' backoff at most, never the 10 min soak
        verdict = next(e for e in await h.events(dep) if e.action == "canary.verdict")
        assert "no canary was deployed" in verdict.details["reasons"]


async def test_no_new_deployment_while_a_rollback_failure_is_unresolved(tmp_path: Path) -> None:
    from fleetgate.errors import GuardrailError

    async with harness(tmp_path, faults=("crash-loop:version=2.0.0",)) as h:
        dep = await h.start()
        victim = (await h.controller.state(dep)).canaries[0]
        h.fleet.inject(f"rollback-fail:device={victim}")
        await h.controller.drive(dep)
        record = next(r for r in await h.store.list_deployments() if r.id == dep)
        assert record.status == "HALTED"  # the summary row follows the log
        assert record.data["manual_intervention"] == [victim]
        with pytest.raises(GuardrailError, match="rollback failed and is unresolved"):
            await h.start()
        # An operator fixes the device by hand and records it: the block is lifted, but this
        # deployment has not ended and targets the same devices (issue 7.7): end it first.
        with pytest.raises(InputError, match="re-checks the device"):  # no shortcut around it
            await h.controller.record_human(dep, "device.recovered", "bob", device_id=victim)
        await operator_fixes(h, victim)
        await h.controller.recover(dep, victim, "bob", "reflashed")
        with pytest.raises(GuardrailError, match=f"deployment {dep} .* has not ended"):
            await h.start()
        state = await h.controller.decide(
            dep, Decision("rollback.requested", "bob", None, {"devices": []})
        )
        assert state.phase is Phase.ROLLED_BACK
        second = await h.start()
        # The device whose rollback failed stays quarantined in the registry, with the reason,
        # and the new plan leaves it out.
        reg = await h.store.get_device(victim)
        assert reg is not None and reg.state.value == "quarantine"
        assert dep in reg.state_reason and "rollback failed" in reg.state_reason
        assert victim not in (await h.controller.state(second)).devices
