"""Issue 10 on the controller side, on the virtual fleet: every device that passed its smoke
test is committed (intent + result, like every command), a device that reverted the release by
itself is rolled back without a rollback failure — even when it reverts between the
controller's facts read and its rollback command — and a downgrade authorisation is recorded
and carried to every stage."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from engine_harness import harness

from fleetgate.artifacts.downgrade_auth import make_authorization
from fleetgate.artifacts.keys import load_private_key
from fleetgate.core.model import Device
from fleetgate.core.state import DeviceStatus, Phase
from fleetgate.errors import InputError
from fleetgate.transports.base import RollbackResult, StageResult
from fleetgate.transports.memory import MemoryTransport

D = DeviceStatus
OLD = "app-1.0.0-00000000"


async def test_every_deployed_device_is_committed_after_its_smoke_test(tmp_path: Path) -> None:
    async with harness(tmp_path, devices=40) as h:
        dep = await h.start()
        await h.controller.drive(dep)
        await h.controller.record_human(dep, "approval.granted", "alice")
        state = await h.controller.drive(dep)
        assert state.phase is Phase.COMPLETE, state.halt_reason
        events = await h.events(dep)
        rid = next(e for e in events if e.action == "deployment.created").details["release"][
            "release_id"
        ]
        for dev_id in state.devices:
            mine = [e for e in events if e.device_id == dev_id]
            actions = [e.action for e in mine]
            # The last smoke test passed, then the commit: intent first, its result after.
            i = len(actions) - 1 - actions[::-1].index("device.commit_requested")
            assert actions[i + 1] == "device.committed", (dev_id, actions)
            smoke = [e for e in mine[:i] if e.action == "device.health"]
            assert smoke and smoke[-1].details["status"] == "healthy"
            act = [e for e in mine if e.action == "device.activate_requested"][-1]
            assert mine[i].details["seq"] > act.details["seq"]
            assert mine[i + 1].details["seq"] == mine[i].details["seq"]
            assert mine[i + 1].details["status"] == "committed"
            snap = h.fleet.device(dev_id)
            assert snap.current == rid and snap.trial is None
            assert snap.committed == {"app": "2.0.0"}
            # One commit per activation (the drill's canary is activated twice).
            snap_c = h.fleet.device_state(dev_id)
            assert snap_c.executed_count("commit", rid) == snap_c.executed_count("activate", rid)


async def test_a_canary_that_reverted_by_itself_is_rolled_back_without_a_failure(
    tmp_path: Path,
) -> None:
    """The release kills the agent at each start on one canary: the device reverts it by itself
    during the activate. The canary fails, its rollback finds it already back: not a rollback
    failure, nothing for manual intervention."""
    async with harness(tmp_path, devices=40) as h:
        dep = await h.start()
        victim = (await h.controller.state(dep)).canaries[0]
        h.fleet.inject(f"reboot-loop:device={victim},version=2.0.0")
        state = await h.controller.drive(dep)
        assert state.manual_intervention == ()
        assert state.devices[victim] in (D.QUARANTINED, D.ROLLED_BACK)
        assert h.fleet.device_state(victim).current == OLD
        events = [e for e in await h.events(dep) if e.device_id == victim]
        failed = next(e for e in events if e.action == "device.deploy_failed")
        assert failed.details["step"] == "activate"
        assert "reverted by the device" in failed.details["error"]
        (back,) = [e for e in events if e.action == "device.rolled_back"]
        assert back.details["self_reverted"]["reason"] == "start-limit"
        assert not [e for e in events if e.action == "device.rollback_failed"]
        assert not [e for e in events if e.action == "device.commit_requested"]


class RevertsBeforeTheRollback(MemoryTransport):
    """The device reverts the release on trial by itself in the window between the controller's
    facts read (it still runs the release) and its rollback command (the ~0.3 s race of the
    issue): its previous release is used up by the revert."""

    def __init__(self, inner: MemoryTransport, victim: str) -> None:
        super().__init__(inner.fleet)
        self.victim = victim
        self.reverted = False

    async def rollback(self, device: Device, **kw: Any) -> RollbackResult:
        if device.id == self.victim and not self.reverted:
            self.reverted = self.fleet.device(self.victim).self_revert(
                "crash-loop", "crash loop (≥ 3 restarts within 60 s) on trial"
            )
        return await super().rollback(device, **kw)


async def test_a_device_that_reverts_while_the_rollback_is_sent_is_not_a_rollback_failure(
    tmp_path: Path,
) -> None:
    async with harness(tmp_path, devices=40) as h:
        dep = await h.start()
        victim = (await h.controller.state(dep)).canaries[0]
        h.fleet.inject(f"crash-loop:device={victim},version=2.0.0")
        racer = RevertsBeforeTheRollback(h.controller.transport, victim)  # type: ignore[arg-type]
        h.controller.transport = racer
        state = await h.controller.drive(dep)
        assert racer.reverted, "the race was not exercised"
        assert state.manual_intervention == (), state.halt_reason
        assert state.phase is not Phase.HALTED or "rollback failed" not in state.halt_reason
        assert h.fleet.device_state(victim).current == OLD
        events = [e for e in await h.events(dep) if e.device_id == victim]
        (back,) = [e for e in events if e.action == "device.rolled_back"]
        assert back.details["release"] == OLD and back.details["seq"] > 0
        assert back.details["self_reverted"]["reason"] == "crash-loop"
        assert not [e for e in events if e.action == "device.rollback_failed"]


class RecordsStages(MemoryTransport):
    def __init__(self, inner: MemoryTransport) -> None:
        super().__init__(inner.fleet)
        self.auths: list[Any] = []

    async def stage(self, device: Device, **kw: Any) -> StageResult:
        self.auths.append(kw.get("downgrade_authorization"))
        return await super().stage(device, **kw)


async def test_a_downgrade_authorisation_is_audited_and_sent_with_every_stage(
    tmp_path: Path,
) -> None:
    async with harness(tmp_path, devices=20) as h:
        key = load_private_key(tmp_path / "keys" / "fleetgate-signing.key")
        until = datetime.now(UTC) + timedelta(hours=1)
        path = tmp_path / "auth.json"
        auth = make_authorization(key, name="app", version="2.0.0", devices="*", valid_until=until)
        path.write_text(json.dumps(auth))
        wrong = tmp_path / "wrong.json"
        wrong.write_text(
            json.dumps(
                make_authorization(key, name="app", version="1.9.0", devices="*", valid_until=until)
            )
        )
        with pytest.raises(InputError, match=r"authorises app 1\.9\.0, not app 2\.0\.0"):
            await h.start(downgrade_authorization=wrong)
        rec = RecordsStages(h.controller.transport)  # type: ignore[arg-type]
        h.controller.transport = rec
        dep = await h.start(downgrade_authorization=path)
        await h.controller.drive(dep)
        events = await h.events(dep)
        (ev,) = [e for e in events if e.action == "deployment.downgrade_authorized"]
        assert ev.details["version"] == "2.0.0" and ev.details["signature"] == auth["signature"]
        assert rec.auths and all(a == auth for a in rec.auths)


class DiesAfterCommitSent(MemoryTransport):
    """The controller dies right after the device executed its first ``commit`` (the answer
    never recorded): the intent is in the log, the result is not."""

    def __init__(self, inner: MemoryTransport) -> None:
        super().__init__(inner.fleet)
        self.armed = True
        self.victim: str | None = None

    async def commit(self, device: Device, **kw: Any) -> Any:
        result = await super().commit(device, **kw)
        if self.armed:
            self.armed = False
            self.victim = device.id
            raise RuntimeError("controller killed")
        return result


async def test_a_commit_in_flight_when_the_controller_died_is_resent_with_its_seq(
    tmp_path: Path,
) -> None:
    async with harness(tmp_path, devices=40) as h:
        dep = await h.start()
        killer = DiesAfterCommitSent(h.controller.transport)  # type: ignore[arg-type]
        h.controller.transport = killer
        with pytest.raises(BaseException, match=r"TaskGroup|controller killed"):
            await h.controller.drive(dep)
        victim = killer.victim
        assert victim is not None
        events = [e for e in await h.events(dep) if e.device_id == victim]
        assert events[-1].action == "device.commit_requested"  # no result recorded
        seq = events[-1].details["seq"]
        state = await h.controller.drive(dep)  # a controller resumes from the log
        assert state.phase is Phase.AWAITING_APPROVAL, state.halt_reason
        events = [e for e in await h.events(dep) if e.device_id == victim]
        done = [e for e in events if e.action == "device.committed"]
        assert done[0].details["seq"] == seq and done[0].details["replayed"] is True
        rid = h.fleet.device(victim).current
        assert rid is not None and h.fleet.device(victim).trial is None
        # Committed once on the device: the resent command was answered from its record.
        commits = [c for c in h.fleet.device_state(victim).history if c.command == "commit"]
        assert [c.replayed for c in commits if c.seq == seq] == [False, True]


async def test_a_device_smoke_tested_but_never_sent_its_commit_gets_it_on_resume(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The controller dies after a device's healthy smoke test is logged and before the commit
    intent is: nothing in flight, yet the device must still be committed by the resumed run."""
    import fleetgate.engine.stage as stage_mod

    real = stage_mod.commit_one
    died: list[str] = []

    victims: list[str] = []

    async def dies_first(ctx: Any, stage: int, dev_id: str) -> None:
        if not died and dev_id in victims:
            died.append(dev_id)
            raise RuntimeError("controller killed")
        await real(ctx, stage, dev_id)

    async with harness(tmp_path, devices=40) as h:
        dep = await h.start()
        # Not the drill's canary (the first healthy one by id): its drill commits it again.
        victims.append(max((await h.controller.state(dep)).canaries))
        monkeypatch.setattr(stage_mod, "commit_one", dies_first)
        with pytest.raises(BaseException, match=r"TaskGroup|controller killed"):
            await h.controller.drive(dep)
        (victim,) = died
        mine = [e for e in await h.events(dep) if e.device_id == victim]
        assert mine[-1].action == "device.health" and mine[-1].details["status"] == "healthy"
        monkeypatch.setattr(stage_mod, "commit_one", real)
        state = await h.controller.drive(dep)
        assert state.phase is Phase.AWAITING_APPROVAL, state.halt_reason
        mine = [e for e in await h.events(dep) if e.device_id == victim]
        assert [e.action for e in mine].count("device.committed") >= 1
        assert h.fleet.device(victim).trial is None
        assert h.fleet.device(victim).committed == {"app": "2.0.0"}
