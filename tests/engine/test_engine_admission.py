"""Issue 7 items 5 and 7, adversarially: ``deploy recover`` re-checks the device before it lifts
a rollback failure, and admission refuses a deployment that overlaps one that has not ended (or
any deployment while a rollback failure is unresolved) — also when two controllers race.

Every test fails if its guardrail is removed: each asserts the refusal *and* that nothing was
recorded (the log, the deployments table, the devices' own command records).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from engine_harness import Harness, harness

from fleetgate.core.model import Device
from fleetgate.core.state import DeviceStatus, Phase
from fleetgate.engine.service import Controller, ControllerConfig, Decision
from fleetgate.errors import GuardrailError, IllegalTransition, InputError
from fleetgate.store import Store

D = DeviceStatus
OLD = "app-1.0.0-00000000"


def in_group(*groups: str) -> Callable[[Device], bool]:
    return lambda d: d.group in groups


async def rollback_failure_on_a_canary(h: Harness, **start: Any) -> tuple[str, str]:
    """One canary crash-loops on the release and cannot roll back: a partial canary FAIL whose
    rollback fails. The deployment halts with the device flagged for manual intervention, still
    running the new release."""
    dep = await h.start(**start)
    victim = (await h.controller.state(dep)).canaries[-1]
    h.fleet.inject(f"crash-loop:device={victim},version=2.0.0")
    h.fleet.inject(f"rollback-fail:device={victim}")
    state = await h.controller.drive(dep)
    assert state.phase is Phase.HALTED, state.halt_reason
    assert state.manual_intervention == (victim,)
    assert state.devices[victim] is D.ROLLBACK_FAILED
    assert h.fleet.device_state(victim).current != OLD
    return dep, victim


async def operator_fixes(h: Harness, device_id: str, *, to: str = OLD) -> None:
    """What an operator does by hand (SSH, console): clear the device's fault and roll it back
    to its known-good release, outside any deployment."""
    h.fleet.clear_faults([device_id])
    snap = h.fleet.device_state(device_id)
    result = await h.controller.transport.rollback(
        h.fleet.device(device_id).device,
        deployment_id="manual-fix",
        seq=snap.last_seq + 1,
        to=to,
    )
    assert result.release == to
    assert h.fleet.device_state(device_id).current == to


async def assert_recover_refused(h: Harness, dep: str, victim: str, needle: str) -> None:
    before = await h.events(dep)
    with pytest.raises(GuardrailError, match=needle) as err:
        await h.controller.recover(dep, victim, "bob", "tried")
    assert err.value.device_id == victim and err.value.deployment_id == dep
    after = await h.events(dep)
    assert [e.seq for e in after] == [e.seq for e in before], "a refused recover wrote events"
    state = await h.controller.state(dep)
    assert state.manual_intervention == (victim,)
    # The block stays: no resume, and no new deployment anywhere.
    with pytest.raises(IllegalTransition, match="rollback failure is unresolved"):
        await h.controller.record_human(dep, "deployment.resumed", "bob")
    with pytest.raises(GuardrailError, match="rollback failed and is unresolved"):
        await h.start()


# -- 7.5 deploy recover ---------------------------------------------------------------------------
async def test_recover_is_refused_while_the_device_cannot_roll_back(tmp_path: Path) -> None:
    """The operator tried a manual rollback, it failed again: the device still runs the new
    release. Recording it as recovered would lift the fleet-wide block on a broken device."""
    async with harness(tmp_path, devices=40) as h:
        dep, victim = await rollback_failure_on_a_canary(h)
        snap = h.fleet.device_state(victim)
        with pytest.raises(Exception, match="Input/output error"):
            await h.controller.transport.rollback(
                h.fleet.device(victim).device, deployment_id="manual", seq=snap.last_seq + 1
            )
        await assert_recover_refused(h, dep, victim, "still runs the deployment's release")


async def test_recover_is_refused_for_a_healthy_device_still_on_the_new_release(
    tmp_path: Path,
) -> None:
    """Faults gone, app healthy, but it never went back to known-good: check 2 alone refuses."""
    async with harness(tmp_path, devices=40) as h:
        dep, victim = await rollback_failure_on_a_canary(h)
        h.fleet.clear_faults([victim])
        assert (await h.controller.transport.health(h.fleet.device(victim).device)).app_up
        await assert_recover_refused(h, dep, victim, "still runs the deployment's release")


async def test_recover_is_refused_while_the_device_is_unreachable(tmp_path: Path) -> None:
    async with harness(tmp_path, devices=40) as h:
        dep, victim = await rollback_failure_on_a_canary(h)
        await operator_fixes(h, victim)
        h.fleet.inject(f"unreachable:device={victim}")
        await assert_recover_refused(h, dep, victim, "unreachable")


async def test_recover_is_refused_when_rolled_back_but_the_app_is_down(tmp_path: Path) -> None:
    """Back on the known-good release, but its app does not start there: not healthy."""
    async with harness(tmp_path, devices=40) as h:
        dep, victim = await rollback_failure_on_a_canary(h)
        await operator_fixes(h, victim)
        h.fleet.inject(f"start-fail:device={victim}")
        await assert_recover_refused(h, dep, victim, "not recovered: FAILED: .*application down")


async def test_recover_after_a_real_fix_is_recorded_and_lifts_the_block(tmp_path: Path) -> None:
    async with harness(tmp_path, devices=40) as h:
        dep, victim = await rollback_failure_on_a_canary(h)
        await operator_fixes(h, victim)
        state = await h.controller.recover(dep, victim, "bob", "reflashed slot B over serial")
        assert state.manual_intervention == ()
        assert state.devices[victim] is D.QUARANTINED  # still set aside, never redeployed
        events = await h.events(dep)
        (rec,) = [e for e in events if e.action == "device.recovered"]
        assert rec.device_id == victim and rec.actor == "bob"
        assert rec.details["comment"] == "reflashed slot B over serial"
        assert rec.details["checks"] == {
            "reachable": True,
            "current": OLD,
            "known_good": True,
            "healthy": True,
        }
        # The device stays quarantined in the registry until a human releases it.
        reg = await h.store.get_device(victim)
        assert reg is not None and reg.state.value == "quarantine"

        # A replayed recover is refused and changes nothing.
        before = [e.seq for e in await h.events(dep)]
        with pytest.raises(IllegalTransition, match="no unresolved rollback failure"):
            await h.controller.recover(dep, victim, "bob", "again")
        assert [e.seq for e in await h.events(dep)] == before

        # Resume is allowed now: the failed cell gets a replacement canary; the victim is
        # never touched again.
        executed = dict(h.fleet.device_state(victim).executed)
        state = await h.controller.decide(dep, Decision("deployment.resumed", "bob"))
        assert state.phase is Phase.AWAITING_APPROVAL, state.halt_reason
        assert any(e.action == "canary.replaced" for e in await h.events(dep))
        assert h.fleet.device_state(victim).executed == executed
        assert h.fleet.device_state(victim).current == OLD


async def test_recover_of_a_device_that_never_failed_is_refused(tmp_path: Path) -> None:
    """A device that passes every re-check but whose rollback never failed (a wave device
    never touched): the state machine refuses, nothing is recorded, the block stays."""
    async with harness(tmp_path, devices=40) as h:
        dep, victim = await rollback_failure_on_a_canary(h)
        state = await h.controller.state(dep)
        bystander = state.stages[1][0]
        assert h.fleet.device_state(bystander).current == OLD  # reachable, healthy, known-good
        before = [e.seq for e in await h.events(dep)]
        with pytest.raises(IllegalTransition, match="no unresolved rollback failure"):
            await h.controller.recover(dep, bystander, "bob")
        # A canary that passed runs the new release: refused by the re-check already.
        good = next(c for c in state.canaries if c != victim)
        with pytest.raises(GuardrailError, match="still runs the deployment's release"):
            await h.controller.recover(dep, good, "bob")
        assert [e.seq for e in await h.events(dep)] == before
        assert (await h.controller.state(dep)).manual_intervention == (victim,)


async def test_recover_names_only_real_targets_and_deployments(tmp_path: Path) -> None:
    async with harness(tmp_path, devices=40) as h:
        dep, victim = await rollback_failure_on_a_canary(h, select=in_group("plant-a"))
        outsider = next(d.id for d in h.fleet.devices if d.group != "plant-a")
        with pytest.raises(InputError, match="not a target"):
            await h.controller.recover(dep, outsider, "bob")
        with pytest.raises(InputError, match="no deployment"):
            await h.controller.recover("d-nope", victim, "bob")
        await operator_fixes(h, victim)
        with pytest.raises(InputError, match="--as NAME"):
            await h.controller.recover(dep, victim, "")
        assert not any(e.action == "device.recovered" for e in await h.events(dep))


async def test_resume_after_recover_does_not_undo_an_operator_rollback(tmp_path: Path) -> None:
    """A 5-20 % wave pause; the operator rolls back the whole deployment instead of resuming;
    one device's rollback fails. Once it is fixed and recovered, resume must finish the
    rollback the operator asked for, not carry on with the rollout."""
    async with harness(tmp_path, devices=200) as h:
        dep = await h.start()
        await h.controller.drive(dep)
        wave = (await h.controller.state(dep)).stages[1]
        for dev in wave[: len(wave) // 10]:
            h.fleet.inject(f"start-fail:device={dev},version=2.0.0")
        await h.controller.record_human(dep, "approval.granted", "alice")
        state = await h.controller.drive(dep)
        assert state.phase is Phase.HALTED and state.pending_quarantine
        victim = wave[-1]
        h.fleet.inject(f"rollback-fail:device={victim}")
        state = await h.controller.decide(
            dep, Decision("rollback.requested", "alice", None, {"devices": [], "reason": "abandon"})
        )
        assert state.manual_intervention == (victim,)
        await operator_fixes(h, victim)
        await h.controller.recover(dep, victim, "bob")
        state = await h.controller.decide(dep, Decision("deployment.resumed", "bob"))
        on_new = [d.id for d in h.fleet.devices if h.fleet.device_state(d.id).current != OLD]
        assert on_new == [], f"{len(on_new)} devices run the release the operator rolled back"
        assert state.phase is Phase.ROLLED_BACK


async def test_resume_after_recover_keeps_an_all_canaries_failed_abort(tmp_path: Path) -> None:
    """Every canary failed: the spec aborts. A failed rollback on one of them must not turn the
    abort into a second canary round on other devices once that device is recovered."""
    async with harness(tmp_path, devices=40, faults=("crash-loop:version=2.0.0",)) as h:
        dep = await h.start()
        canaries = set((await h.controller.state(dep)).canaries)
        victim = sorted(canaries)[0]
        h.fleet.inject(f"rollback-fail:device={victim}")
        state = await h.controller.drive(dep)
        assert state.manual_intervention == (victim,)
        await operator_fixes(h, victim)
        await h.controller.recover(dep, victim, "bob")
        state = await h.controller.decide(dep, Decision("deployment.resumed", "bob"))
        touched = [
            d.id
            for d in h.fleet.devices
            if d.id not in canaries
            and any(k[0] == "stage" for k in h.fleet.device_state(d.id).executed)
        ]
        assert touched == [], f"the failed release was staged on {touched}"
        assert state.phase is Phase.ABORTED


# -- 7.7 admission: overlap and the rollback-failure block -----------------------------------------
async def test_second_start_while_the_first_awaits_approval_is_refused(tmp_path: Path) -> None:
    async with harness(tmp_path, devices=40) as h:
        first = await h.start()
        assert (await h.controller.drive(first)).phase is Phase.AWAITING_APPROVAL
        head = await h.store.chain_head()
        with pytest.raises(GuardrailError, match=f"deployment {first} .*AWAITING_APPROVAL"):
            await h.start()
        assert [r.id for r in await h.store.list_deployments()] == [first]
        assert await h.store.chain_head() == head, "a refused start wrote to the log"
        # Overlapping in one group only is still an overlap.
        with pytest.raises(GuardrailError, match=f"deployment {first} "):
            await h.start(select=in_group("plant-b"))


async def test_a_created_but_never_driven_deployment_blocks_an_overlap(tmp_path: Path) -> None:
    """A controller that died right after creating a deployment: its summary row was never
    updated from PREPARE, and it still owns its targets."""
    async with harness(tmp_path, devices=40) as h:
        first = await h.start()
        with pytest.raises(GuardrailError, match=f"deployment {first} .*PREPARE"):
            await h.start(select=in_group("plant-a"))


async def test_disjoint_targets_may_run_side_by_side(tmp_path: Path) -> None:
    async with harness(tmp_path, devices=60) as h:
        a = await h.start(select=in_group("plant-a"))
        assert (await h.controller.drive(a)).phase is Phase.AWAITING_APPROVAL
        b = await h.start(select=in_group("plant-b"))
        with pytest.raises(GuardrailError, match=f"deployment {a} "):
            await h.start(select=in_group("plant-c", "plant-a"))
        c = await h.start(select=in_group("plant-c"))
        assert len({a, b, c}) == 3
        targets = [set((await h.controller.state(x)).devices) for x in (a, b, c)]
        assert not (targets[0] & targets[1] or targets[0] & targets[2] or targets[1] & targets[2])


@pytest.mark.parametrize("how", ["rejected", "rolled back", "completed"])
async def test_an_ended_deployment_no_longer_blocks(tmp_path: Path, how: str) -> None:
    async with harness(tmp_path, devices=40) as h:
        first = await h.start()
        await h.controller.drive(first)
        if how == "rejected":
            decision = Decision("approval.rejected", "alice")
            end = Phase.ROLLED_BACK
        elif how == "rolled back":
            decision = Decision("rollback.requested", "alice", None, {"devices": []})
            end = Phase.ROLLED_BACK
        else:
            decision = Decision("approval.granted", "alice")
            end = Phase.COMPLETE
        assert (await h.controller.decide(first, decision)).phase is end
        second = await h.start()
        assert second != first
        assert (await h.controller.drive(second)).phase is Phase.AWAITING_APPROVAL


async def test_a_halted_deployment_still_owns_its_devices(tmp_path: Path) -> None:
    async with harness(tmp_path, devices=100) as h:
        first = await h.start()
        await h.controller.drive(first)
        wave = (await h.controller.state(first)).stages[1]
        for dev in wave[: len(wave) // 3]:
            h.fleet.inject(f"unreachable:device={dev}")
        await h.controller.record_human(first, "approval.granted", "alice")
        assert (await h.controller.drive(first)).phase is Phase.HALTED
        with pytest.raises(GuardrailError, match=f"deployment {first} .*HALTED"):
            await h.start()


async def test_an_unresolved_rollback_failure_blocks_even_disjoint_targets(
    tmp_path: Path,
) -> None:
    """Spec, Rollback Failure: "Do NOT proceed with any deployment until rollback is resolved"
    — not only on the devices of the deployment where it happened."""
    async with harness(tmp_path, devices=60) as h:
        dep, victim = await rollback_failure_on_a_canary(h, select=in_group("plant-a"))
        with pytest.raises(GuardrailError) as err:
            await h.start(select=in_group("plant-b"))
        msg = str(err.value)
        assert "rollback failed and is unresolved" in msg and victim in msg
        assert f"fleetgate deploy recover {dep} --device" in msg
        assert [r.id for r in await h.store.list_deployments()] == [dep]
        # Recovered: a disjoint deployment may start; the halted one still owns its devices.
        await operator_fixes(h, victim)
        await h.controller.recover(dep, victim, "bob")
        await h.start(select=in_group("plant-b"))
        with pytest.raises(GuardrailError, match=f"deployment {dep} .*has not ended"):
            await h.start(select=in_group("plant-a"))


class Rendezvous:
    """Holds each caller until ``n`` have arrived or ``timeout`` passed. Put in front of
    ``create_deployment``: if admission's check and the creation were not serialised, both
    racing starts would be past the check here at once and both would create."""

    def __init__(self, n: int, timeout: float) -> None:
        self.n, self.timeout, self.arrived = n, timeout, 0
        self.all_here = asyncio.Event()

    async def meet(self) -> None:
        self.arrived += 1
        if self.arrived >= self.n:
            self.all_here.set()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.all_here.wait(), self.timeout)


def hold_creation(store: Store, meeting: Rendezvous) -> None:
    create = store.create_deployment

    async def create_deployment(*args: Any, **kw: Any) -> Any:
        await meeting.meet()
        return await create(*args, **kw)

    store.create_deployment = create_deployment  # type: ignore[method-assign]


async def race_two_starts(
    h: Harness, url: str, tmp_path: Path, selects: tuple[Any, Any]
) -> list[str | BaseException]:
    """Two controllers, each with its own Store connection to the same database, start at
    once; the first to reach the creation waits for the other."""
    async with Store.open(url) as other:
        second = Controller(
            other,
            h.controller.transport,
            ControllerConfig(tmp_path / "blobs-2", h.controller.config.public_key),
            clock=h.clock,
        )
        meeting = Rendezvous(2, timeout=1.0)
        hold_creation(h.store, meeting)
        hold_creation(other, meeting)
        return list(
            await asyncio.gather(
                h.start(select=selects[0]),
                second.start(h.bundle, h.policy, policy_doc=h.policy_doc, select=selects[1]),
                return_exceptions=True,
            )
        )


async def test_two_controllers_racing_overlapping_starts_create_one(
    tmp_path: Path, store_url: str
) -> None:
    async with harness(tmp_path, devices=40, store_url=store_url) as h:
        results = await race_two_starts(h, store_url, tmp_path, (None, in_group("plant-a")))
        created = [r for r in results if isinstance(r, str)]
        refused = [r for r in results if isinstance(r, BaseException)]
        assert len(created) == 1, results
        (err,) = refused
        assert isinstance(err, GuardrailError), repr(err)
        assert f"deployment {created[0]} " in str(err)
        assert [r.id for r in await h.store.list_deployments()] == created
        log = await h.store.events(None)
        assert [e.deployment_id for e in log if e.action == "deployment.created"] == created
        assert await h.store.verify()


async def test_two_controllers_racing_disjoint_starts_both_create(
    tmp_path: Path, store_url: str
) -> None:
    """The serialisation must not turn into a refusal: disjoint starts both go through."""
    async with harness(tmp_path, devices=40, store_url=store_url) as h:
        results = await race_two_starts(
            h, store_url, tmp_path, (in_group("plant-a"), in_group("plant-b"))
        )
        created = [r for r in results if isinstance(r, str)]
        assert len(created) == 2, results
        assert sorted(r.id for r in await h.store.list_deployments()) == sorted(created)
        assert await h.store.verify()
