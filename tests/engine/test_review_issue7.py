"""A fresh-eyes review of issue 7's guardrails: sequences nobody tried, on the virtual fleet.

Tests marked ``xfail(strict=True)`` expose a leak that is still there (the reason says which);
the plain tests are sequences that were tried and held. Every test asserts what the spec asks
for, from the event log, the state folded from it, the registry and the devices' own records.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from engine_harness import Harness, build_release, harness

from fleetgate.core.model import Device, DeviceState, HealthSample
from fleetgate.core.state import DeviceStatus, Phase
from fleetgate.engine.service import Controller, Decision
from fleetgate.errors import FleetgateError, GuardrailError, IllegalTransition, InputError
from fleetgate.transports.base import RollbackResult
from fleetgate.transports.memory import MemoryTransport

D = DeviceStatus
OLD = "app-1.0.0-00000000"


async def to_approval(h: Harness, **start: Any) -> str:
    dep = await h.start(**start)
    state = await h.controller.drive(dep)
    assert state.phase is Phase.AWAITING_APPROVAL, state.halt_reason
    return dep


async def decide(h: Harness, dep: str, action: str, actor: str = "bob", **details: Any) -> Any:
    """A human decision, driven on (what ``fleetgate deploy …`` does without --no-drive)."""
    return await h.controller.decide(dep, Decision(action, actor, None, details))


def on_old(h: Harness, dev: str) -> bool:
    return h.fleet.device_state(dev).current == OLD


def staged(h: Harness, dev: str) -> bool:
    return any(k[0] == "stage" for k in h.fleet.device_state(dev).executed)


async def confirm_counts(h: Harness, dep: str) -> dict[str, int]:
    done = [e for e in await h.events(dep) if e.action == "confirm.completed"]
    assert done, "no confirm.completed"
    counts: dict[str, int] = done[-1].details["counts"]
    return counts


# -- rollback requests in unexpected phases ------------------------------------------------------
async def test_a_rollback_of_a_device_outside_the_plan_is_refused(tmp_path: Path) -> None:
    async with harness(tmp_path) as h:
        dep = await to_approval(h)
        before = [e.seq for e in await h.events(dep)]
        # `deploy rollback DEP --device gw-a-3` (a typo for gw-a-03)
        with pytest.raises(InputError, match="gw-a-3 is not a device"):  # exit 2
            await h.controller.record_human(dep, "rollback.requested", "bob", devices=["gw-a-3"])
        assert [e.seq for e in await h.events(dep)] == before
        state = await h.controller.drive(dep)
        assert state.phase is Phase.AWAITING_APPROVAL


async def test_a_full_rollback_during_a_partial_one_ends_the_deployment(tmp_path: Path) -> None:
    async with harness(tmp_path) as h:
        dep = await to_approval(h)
        canaries = (await h.controller.state(dep)).canaries
        # `deploy rollback DEP --device C --no-drive`, then `deploy rollback DEP`
        await h.controller.record_human(dep, "rollback.requested", "bob", devices=[canaries[0]])
        state = await decide(h, dep, "rollback.requested")
        assert all(on_old(h, c) for c in canaries)
        assert state.phase is Phase.ROLLED_BACK, state.phase
        with pytest.raises(IllegalTransition):
            await decide(h, dep, "approval.granted", "alice")
        wave1 = state.stages[1]
        assert not any(staged(h, d) for d in wave1)


async def test_a_partial_rollback_during_a_reject_still_rolls_back_every_canary(
    tmp_path: Path,
) -> None:
    async with harness(tmp_path) as h:
        dep = await to_approval(h)
        canaries = (await h.controller.state(dep)).canaries
        # `deploy reject DEP --no-drive`, then `deploy rollback DEP --device C`
        await h.controller.record_human(dep, "approval.rejected", "bob")
        state = await decide(h, dep, "rollback.requested", devices=[canaries[0]])
        assert state.phase is Phase.ROLLED_BACK
        still_new = [c for c in canaries if not on_old(h, c)]
        assert still_new == [], f"{still_new} run the rejected release after ROLLED_BACK"


class KilledAtRollback(MemoryTransport):
    """The controller dies (an exception out of the drive) when it first sends ``rollback``."""

    def __init__(self, inner: MemoryTransport) -> None:
        super().__init__(inner.fleet)
        self.armed = True

    async def rollback(self, device: Device, **kw: Any) -> RollbackResult:
        if self.armed:
            raise RuntimeError("controller killed")
        return await super().rollback(device, **kw)


async def test_a_full_rollback_during_a_quarantine_does_not_deploy_the_next_wave(
    tmp_path: Path,
) -> None:
    async with harness(tmp_path, devices=200) as h:
        dep = await to_approval(h)
        state = await h.controller.state(dep)
        victim = state.stages[2][0]  # 1 of 50: < 5 %, quarantine and continue
        last_wave = state.stages[-1]
        h.fleet.inject(f"crash-loop:device={victim},version=2.0.0")
        killer = KilledAtRollback(h.controller.transport)
        h.controller.transport = killer
        await h.controller.record_human(dep, "approval.granted", "alice")
        with pytest.raises(BaseException, match=r"TaskGroup|controller killed"):
            await h.controller.drive(dep)
        state = await h.controller.state(dep)
        assert state.phase is Phase.ROLLING_BACK and state.rollback_then is Phase.ROLLOUT
        killer.armed = False
        # The operator, seeing a dead controller mid-rollout: `deploy rollback DEP`.
        state = await decide(h, dep, "rollback.requested")
        assert not any(staged(h, d) for d in last_wave), "the next wave was deployed"
        assert state.phase is Phase.ROLLED_BACK


async def test_approval_after_rolling_back_a_canary_needs_the_canary_again(
    tmp_path: Path,
) -> None:
    async with harness(tmp_path) as h:
        dep = await to_approval(h)
        canary = (await h.controller.state(dep)).canaries[0]
        state = await decide(h, dep, "rollback.requested", devices=[canary])
        assert state.phase is Phase.AWAITING_APPROVAL and on_old(h, canary)
        with pytest.raises(IllegalTransition):
            await decide(h, dep, "approval.granted", "alice")


# -- CONFIRM ------------------------------------------------------------------------------------
class FailsWhenArmed(MemoryTransport):
    def __init__(self, inner: MemoryTransport, victim: str) -> None:
        super().__init__(inner.fleet)
        self.victim = victim
        self.armed = False

    async def health(self, device: Device) -> HealthSample:
        sample = await super().health(device)
        if self.armed and device.id == self.victim:
            return replace(sample, app_up=False, crash_loop=True)
        return sample


async def test_a_device_failing_at_confirm_is_rolled_back_and_set_aside(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import fleetgate.engine.runner as runner

    async with harness(tmp_path) as h:
        dep = await to_approval(h)
        victim = (await h.controller.state(dep)).stages[-1][0]
        transport = FailsWhenArmed(h.controller.transport, victim)
        h.controller.transport = transport
        real_confirm = runner.run_confirm

        async def confirm_after_it_breaks(ctx: Any) -> None:
            transport.armed = True  # it crash-loops from CONFIRM on
            await real_confirm(ctx)

        monkeypatch.setattr(runner, "run_confirm", confirm_after_it_breaks)
        state = await decide(h, dep, "approval.granted", "alice")
        counts = await confirm_counts(h, dep)
        assert sum(counts.values()) == state.fleet_total  # holds
        assert counts["failed"] + counts["quarantined"] == 1  # counted, never as deployed
        assert on_old(h, victim), "a device failing at CONFIRM still runs the release"
        assert victim in await h.store.quarantined()


# -- canary rounds ------------------------------------------------------------------------------
async def test_a_failed_cell_without_a_same_cell_replacement_is_never_rolled_out(
    tmp_path: Path,
) -> None:
    async with harness(tmp_path, devices=60) as h:
        fleet = await h.store.list_devices()
        cell = sorted(d.id for d in fleet if (d.hardware, d.group) == ("gateway", "plant-a"))
        # Only the canary of gateway x plant-a is non-critical: no same-cell replacement.
        fleet = [replace(d, critical=True) if d.id in cell[1:] else d for d in fleet]
        await h.store.replace_devices(fleet)
        dep = await h.start()
        assert cell[0] in (await h.controller.state(dep)).canaries
        # The release breaks exactly that cell (a plant-a gateway configuration, say).
        h.fleet.inject("crash-loop:hardware=gateway,group=plant-a,version=2.0.0")
        state = await h.controller.drive(dep)
        assert state.canary_verdict == "FAIL" and state.phase is Phase.HALTED
        state = await decide(h, dep, "deployment.resumed")  # replace
        assert state.phase is Phase.AWAITING_APPROVAL  # round 2 passed, on other cells
        state = await decide(h, dep, "approval.granted", "alice")
        touched = [d for d in cell[1:] if staged(h, d)]
        assert touched == [], f"unproven cell gateway x plant-a deployed to {touched}"


async def test_a_skipped_canary_is_a_failure_replaced_in_round_two(tmp_path: Path) -> None:
    """Held: a canary skipped at pre-flight (no disk) fails the verdict; it is quarantined,
    replaced by a same-cell device that is staged and soaked; CONFIRM counts add up."""
    async with harness(tmp_path, devices=60) as h:
        dep = await h.start()
        bad = (await h.controller.state(dep)).canaries[0]
        h.fleet.inject(f"low-disk:free_mb=10,device={bad}")
        state = await h.controller.drive(dep)
        assert state.phase is Phase.HALTED and state.canary_verdict == "FAIL"
        assert state.devices[bad] is D.SKIPPED and not staged(h, bad)
        state = await decide(h, dep, "deployment.resumed")
        assert state.phase is Phase.AWAITING_APPROVAL
        replaced = [e for e in await h.events(dep) if e.action == "canary.replaced"]
        (new,) = replaced[0].details["replacements"]
        assert staged(h, new) and new in state.canaries
        state = await decide(h, dep, "approval.granted", "alice")
        assert state.phase is Phase.PARTIAL and not staged(h, bad)
        assert bad in await h.store.quarantined()
        assert sum((await confirm_counts(h, dep)).values()) == state.fleet_total


async def test_replacements_that_keep_failing_use_up_the_cell_and_never_deploy_it(
    tmp_path: Path,
) -> None:
    """Held: round after round the replacement of a broken cell fails too; each is rolled back
    and quarantined, the rounds end when the cell has no device left, nothing loops."""
    async with harness(tmp_path, devices=60) as h:
        dep = await h.start()
        h.fleet.inject("start-fail:hardware=gateway,group=plant-a,version=2.0.0")
        cell = [d.id for d in h.fleet.devices if (d.hardware, d.group) == ("gateway", "plant-a")]
        state = await h.controller.drive(dep)
        rounds = 1
        while state.phase is Phase.HALTED:
            assert rounds <= len(cell)
            state = await decide(h, dep, "deployment.resumed")
            rounds += 1
        assert state.phase is Phase.AWAITING_APPROVAL
        verdicts = [
            e.details["verdict"] for e in await h.events(dep) if e.action == "canary.verdict"
        ]
        assert verdicts == ["FAIL"] * len(cell) + ["PASS"]
        state = await decide(h, dep, "approval.granted", "alice")
        assert all(on_old(h, d) and state.devices[d] is D.QUARANTINED for d in cell)
        assert sum((await confirm_counts(h, dep)).values()) == state.fleet_total


async def test_a_failed_drill_recovered_then_resumed_needs_a_new_round(tmp_path: Path) -> None:
    """Held: the drill's rollback fails, the operator fixes the device and `recover`s it; the
    resume re-runs the drill on another canary, the recovered one fails the verdict (it is no
    longer on the release), and only a second round with a replacement passes."""
    async with harness(tmp_path) as h:
        dep = await h.start()
        drill = sorted((await h.controller.state(dep)).canaries)[0]
        h.fleet.inject(f"rollback-fail:device={drill}")
        state = await h.controller.drive(dep)
        assert state.manual_intervention == (drill,) and state.drill == "failed"
        with pytest.raises(IllegalTransition):
            await decide(h, dep, "deployment.resumed")
        h.fleet.clear_faults([drill])
        snap = h.fleet.device_state(drill)
        await h.controller.transport.rollback(
            h.fleet.device(drill).device, deployment_id="by-hand", seq=snap.last_seq + 1, to=OLD
        )
        await h.controller.recover(dep, drill, "bob", "reflashed")
        state = await decide(h, dep, "deployment.resumed")
        assert state.phase is Phase.HALTED and state.canary_verdict == "FAIL"
        assert state.drill == "done" and state.drill_device != drill
        state = await decide(h, dep, "deployment.resumed")
        assert state.phase is Phase.AWAITING_APPROVAL and state.canary_round == 2
        assert drill in await h.store.quarantined()


# -- evidence ----------------------------------------------------------------------------------
class Answers(MemoryTransport):
    """Health of ``ids`` answered by ``make(device, real_sample)``."""

    def __init__(self, inner: MemoryTransport, ids: set[str], make: Any) -> None:
        super().__init__(inner.fleet)
        self.ids = ids
        self.make = make

    async def health(self, device: Device) -> HealthSample:
        sample = await super().health(device)
        return self.make(device, sample) if device.id in self.ids else sample


async def test_canaries_answering_with_no_data_do_not_pass(tmp_path: Path) -> None:
    async with harness(tmp_path) as h:
        dep = await h.start()
        canaries = set((await h.controller.state(dep)).canaries)
        h.controller.transport = Answers(
            h.controller.transport, canaries, lambda d, s: HealthSample(d.id, app_up=True)
        )
        state = await h.controller.drive(dep)
        assert state.canary_verdict == "FAIL"


async def test_a_canary_healthy_on_the_old_release_fails_the_verdict(tmp_path: Path) -> None:
    async with harness(tmp_path) as h:
        dep = await h.start()
        liar = (await h.controller.state(dep)).canaries[1]
        h.controller.transport = Answers(
            h.controller.transport, {liar}, lambda d, s: replace(s, release=OLD)
        )
        state = await h.controller.drive(dep)
        assert state.devices[liar] is D.QUARANTINED or state.devices[liar] is D.FAILED
        assert "runs app-1.0.0" in state.reasons[liar]  # check_health saw it
        assert state.canary_verdict == "FAIL", "PASS with a canary the log calls FAILED"


async def test_a_canary_that_failed_its_smoke_test_fails_the_verdict(tmp_path: Path) -> None:
    async with harness(tmp_path) as h:
        dep = await h.start()
        flaky = (await h.controller.state(dep)).canaries[1]
        calls = [0]

        def down_at_the_smoke_test(d: Device, s: HealthSample) -> HealthSample:
            if s.release is None or not s.release.startswith("app-2.0.0"):
                return s  # the baseline window and the baseline: the old release
            calls[0] += 1  # 1: the smoke test, then the soak
            return replace(s, app_up=False) if calls[0] == 1 else s

        h.controller.transport = Answers(h.controller.transport, {flaky}, down_at_the_smoke_test)
        state = await h.controller.drive(dep)
        smoke = [
            e
            for e in await h.events(dep)
            if e.action == "device.health"
            and e.device_id == flaky
            and e.details["round"] == "smoke"
        ]
        assert smoke[0].details["status"] == "failed"
        assert state.canary_verdict == "FAIL"


# -- the wave matrix ----------------------------------------------------------------------------
async def test_skipped_devices_do_not_dilute_the_wave_failure_rate(tmp_path: Path) -> None:
    async with harness(tmp_path) as h:
        dep = await to_approval(h)
        wave3 = (await h.controller.state(dep)).stages[3]
        assert len(wave3) == 20
        for d in wave3[:15]:  # skipped at pre-flight: no disk (not "unreachable")
            h.fleet.inject(f"low-disk:free_mb=10,device={d}")
        for d in wave3[15:18]:
            h.fleet.inject(f"crash-loop:device={d},version=2.0.0")
        await decide(h, dep, "approval.granted", "alice")
        ev = [e for e in await h.events(dep) if e.action == "wave.evaluated"][-1]
        assert ev.details["stage"] == 3
        assert ev.details["action"] == "ROLLBACK_WAVE_AND_HALT", ev.details["reason"]
        # The wave still names all it targeted; the rate is over the five it tried to deploy.
        assert (ev.details["targeted"], ev.details["attempted"]) == (20, 5)
        assert ev.details["rate"] == pytest.approx(0.6)
        assert "3/5 devices failed" in ev.details["reason"]
        # The report names both: all the wave targeted, and the base of its rate.
        from fleetgate.report.session import build_report, render_report_md

        report = build_report(dep, await h.events(dep))
        (wave,) = [w for w in report["rollout"] if w["number"] == 3]
        assert (wave["targeted"], wave["attempted"]) == (20, 5)
        assert "| Devices attempted (the failure rate's base) | 5 |" in render_report_md(report)


# -- the registry and other deployments ---------------------------------------------------------
async def test_a_device_put_in_maintenance_mid_deployment_is_not_deployed(tmp_path: Path) -> None:
    async with harness(tmp_path) as h:
        dep = await to_approval(h)
        x = (await h.controller.state(dep)).stages[1][0]
        fleet = [
            replace(d, state=DeviceState.MAINTENANCE, state_reason="technician on site")
            if d.id == x
            else d
            for d in await h.store.list_devices()
        ]
        await h.store.replace_devices(fleet)  # what `registry import` does
        await decide(h, dep, "approval.granted", "alice")
        assert not staged(h, x)


async def test_a_set_aside_device_missing_from_the_registry_is_still_listed(
    tmp_path: Path,
) -> None:
    async with harness(tmp_path) as h:
        dep = await to_approval(h)
        x = (await h.controller.state(dep)).stages[1][0]
        h.fleet.inject(f"crash-loop:device={x},version=2.0.0")
        await h.store.replace_devices([d for d in await h.store.list_devices() if d.id != x])
        await decide(h, dep, "approval.granted", "alice")
        state = await decide(h, dep, "deployment.resumed")
        # Pre-flight reads the registry as it is now: the device is gone, so it is skipped.
        assert state.devices[x] in (D.QUARANTINED, D.SKIPPED)
        # The next import lists it again: it must come back quarantined, not active.
        assert x in await h.store.quarantined()


async def test_a_decision_landing_before_the_drivers_row_update_is_not_overwritten(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The driver reaches COMPLETE; before it writes the summary row (a SIGSTOPped process
    that comes back, say), a human requests a rollback, which writes its own row. The
    driver's older COMPLETE must not overwrite it: admission trusts an ended row, and would
    let a second deployment take devices the first is rolling back."""
    async with harness(tmp_path) as h:
        first = await to_approval(h)
        original = Controller._cache_status
        landed: list[Any] = []

        async def decision_lands_first(self: Controller, rec: Any, fence: Any) -> None:
            if rec.state.phase is Phase.COMPLETE and not landed:
                landed.append(await h.controller.record_human(first, "rollback.requested", "bob"))
            await original(self, rec, fence)

        with monkeypatch.context() as m:
            m.setattr(Controller, "_cache_status", decision_lands_first)
            driven = await decide(h, first, "approval.granted", "alice")
        assert driven.phase is Phase.COMPLETE  # what the driver folded
        assert landed and landed[0].phase is Phase.ROLLING_BACK
        (row,) = await h.store.list_deployments()
        assert row.status == "ROLLING_BACK"  # the decision's row, not the driver's COMPLETE
        bundle, _ = build_release(tmp_path, "2.1.0")
        with pytest.raises(GuardrailError, match=first):
            await h.controller.start(bundle, h.policy, policy_doc=h.policy_doc)
        # Driven on, the rollback ends the first deployment; the row follows the log.
        state = await h.controller.drive(first)
        assert state.phase is Phase.ROLLED_BACK
        (row,) = await h.store.list_deployments()
        assert row.status == "ROLLED_BACK"


async def test_an_ended_deployment_cannot_roll_back_devices_another_one_owns(
    tmp_path: Path,
) -> None:
    async with harness(tmp_path) as h:
        first = await to_approval(h)
        assert (await decide(h, first, "approval.granted", "alice")).phase is Phase.COMPLETE
        bundle, _ = build_release(tmp_path, "2.1.0")
        second = await h.controller.start(bundle, h.policy, policy_doc=h.policy_doc)
        assert (await h.controller.drive(second)).phase is Phase.AWAITING_APPROVAL
        with pytest.raises(FleetgateError, match=second):
            await decide(h, first, "rollback.requested")


# -- decisions replayed or out of phase ---------------------------------------------------------
async def test_decisions_replayed_or_out_of_phase_are_refused_and_write_nothing(
    tmp_path: Path,
) -> None:
    """Held: a second approval, a reject after the approval, an approval after a partial
    canary FAIL, and a resume of a running deployment write nothing."""
    async with harness(tmp_path) as h:
        dep = await h.start()
        bad = (await h.controller.state(dep)).canaries[0]
        h.fleet.inject(f"start-fail:device={bad},version=2.0.0")
        state = await h.controller.drive(dep)
        assert state.phase is Phase.HALTED and state.canary_verdict == "FAIL"
        head = [e.seq for e in await h.events(dep)]
        for action in ("approval.granted", "approval.rejected"):
            with pytest.raises(IllegalTransition):
                await h.controller.record_human(dep, action, "alice")
        assert [e.seq for e in await h.events(dep)] == head
        state = await decide(h, dep, "deployment.resumed")
        assert state.phase is Phase.AWAITING_APPROVAL
        await h.controller.record_human(dep, "approval.granted", "alice")
        head = [e.seq for e in await h.events(dep)]
        for action in ("approval.granted", "approval.rejected"):
            with pytest.raises(IllegalTransition):
                await h.controller.record_human(dep, action, "carol")
        state = await h.controller.record_human(dep, "deployment.resumed", "carol")
        assert [e.seq for e in await h.events(dep)] == head
        assert state.phase is Phase.ROLLOUT
