"""Deciding is not driving, and waiting is data (issue 8).

- In service mode (``park_after_s``) a soak does not sleep: the drive ends with the
  deployment's ``wake_at`` set to the next sample (store clock) and its lease released; the
  next drive re-enters the step and serves only what is left, recording each sample, the
  initial round and the soak's end exactly once.
- A human decision is one short transaction with no lease; a driver that is mid-way notices at
  its next append (``LogMoved``) and drives on from the new state.
- ``deployment.halted`` by a human pauses a moving deployment; never a rollback.
Every test runs on SQLite and on PostgreSQL.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from engine_harness import FAST_POLICY, harness

from fleetgate.clock import parse_iso
from fleetgate.core.events import Event
from fleetgate.core.state import Phase
from fleetgate.engine.service import Decision
from fleetgate.errors import FleetgateError, GuardrailError, LeaseLost, LogMoved
from fleetgate.server.worker import NOT_RUNNABLE

# Analysis on (interval 30 s): a sampled 10-minute canary soak, no baseline window.
POLICY: dict[str, Any] = {**FAST_POLICY, "analysis": {"baseline": 0}}


async def test_a_parked_soak_is_data_and_every_step_happens_once(
    tmp_path: Path, store_url: str
) -> None:
    async with harness(tmp_path, devices=12, store_url=store_url, policy=POLICY) as h:
        h.controller.config.park_after_s = 1.0
        dep = await h.start()
        drives = 0
        while True:
            state = await h.controller.drive(dep)
            drives += 1
            if state.phase is not Phase.VERIFY:
                break
            # Parked: wake_at is set on the soak clock and no live lease is held.
            row = await h.store.get_deployment(dep)
            assert row is not None and row.wake_at is not None
            lease = await h.store.get_lease(dep)
            assert lease is not None and parse_iso(lease.expires_at) <= await h.store.now()
            now = await h.clock.store_now()
            assert parse_iso(row.wake_at) > now
            claimed, _ = await h.store.claim_runnable("someone", 60, NOT_RUNNABLE, 10, now=now)
            assert claimed == []  # not due yet: nobody picks it up
            h.clock.t += (parse_iso(row.wake_at) - now).total_seconds()  # time passes
            claimed, _ = await h.store.claim_runnable(
                h.controller.holder, 60, NOT_RUNNABLE, 10, now=await h.clock.store_now()
            )
            assert claimed == [dep]
            assert drives < 100
        assert state.phase is Phase.AWAITING_APPROVAL, state.halt_reason
        assert drives >= 600 / 30  # one drive per sample: it really parked between them
        events = await h.events(dep)
        count = Counter(e.action for e in events)
        assert count["soak.started"] == 1 and count["soak.completed"] == 1
        ticks = [e.details["tick"] for e in events if e.action == "soak.sampled"]
        assert ticks == sorted(set(ticks))  # no sample twice
        initial = Counter(
            e.device_id
            for e in events
            if e.action == "device.health" and e.details.get("round") == "initial"
        )
        assert set(initial.values()) == {1}  # the initial round was not retaken on re-entry
        done = next(e for e in events if e.action == "soak.completed")
        assert done.details["served_s"] >= 600


async def test_a_decision_needs_no_lease_and_the_driver_picks_it_up(
    tmp_path: Path, store_url: str
) -> None:
    """A rollback recorded while another task drives (holding the lease) is not refused as
    'being driven': the driver's next append is refused (LogMoved), it re-reads the log and
    carries out the rollback."""
    async with harness(tmp_path, devices=12, store_url=store_url, policy=POLICY) as h:
        dep = await h.start()
        driving = asyncio.create_task(h.controller.drive(dep))
        for _ in range(2000):
            events = await h.events(dep)
            if any(e.action == "soak.sampled" for e in events):
                break
            await asyncio.sleep(0.01)
        lease = await h.store.get_lease(dep)
        assert lease is not None and lease.holder == h.controller.holder  # it is driving
        state = await h.controller.record_human(
            dep, "rollback.requested", "bob", reason="operator rollback", devices=[]
        )
        assert state.phase is Phase.ROLLING_BACK
        final = await asyncio.wait_for(driving, 60)
        assert final.phase is Phase.ROLLED_BACK
        events = await h.events(dep)
        requested = [e for e in events if e.action == "rollback.requested"]
        assert [e.actor for e in requested] == ["bob"]
        # Nothing of the driver's stale state reached the log after the decision.
        after = events[events.index(requested[0]) + 1 :]
        assert not [e for e in after if e.action in ("soak.completed", "canary.verdict")]


async def test_a_stale_driver_append_is_refused_whole(tmp_path: Path, store_url: str) -> None:
    async with harness(tmp_path, devices=8, store_url=store_url, policy=POLICY) as h:
        dep = await h.start()
        last = await h.store.latest_seq(dep)
        await h.store.append(Event(ts=h.clock.now_iso(), deployment_id=dep, action="x"))
        head = await h.store.chain_head()
        with pytest.raises(LogMoved):
            await h.store.append_many(
                [Event(ts=h.clock.now_iso(), deployment_id=dep, action="y")], expect_last=last
            )
        assert await h.store.chain_head() == head


async def test_halt_pauses_a_moving_deployment_and_resume_finishes_it(
    tmp_path: Path, store_url: str
) -> None:
    async with harness(tmp_path, devices=12, store_url=store_url, policy=POLICY) as h:
        h.controller.config.park_after_s = 1.0
        dep = await h.start()
        state = await h.controller.drive(dep)  # parks in the canary soak
        assert state.phase is Phase.VERIFY
        state = await h.controller.record_decision(
            dep, Decision("deployment.halted", "carol", details={"comment": "change freeze"})
        )
        assert state.phase is Phase.HALTED
        assert state.halt_reason == "halted by carol: change freeze"
        row = await h.store.get_deployment(dep)
        assert row is not None and row.status == "HALTED" and row.wake_at is None
        claimed, _ = await h.store.claim_runnable(
            "w", 60, NOT_RUNNABLE, 10, now=await h.clock.store_now()
        )
        assert claimed == []  # a halted deployment waits for a human
        with pytest.raises(GuardrailError, match="nothing is running"):
            await h.controller.record_decision(dep, Decision("deployment.halted", "carol"))
        await h.controller.record_decision(dep, Decision("deployment.resumed", "carol"))
        h.controller.config.park_after_s = None
        state = await h.controller.drive(dep)
        assert state.phase is Phase.AWAITING_APPROVAL
        await h.controller.record_human(dep, "approval.granted", "alice")
        state = await h.controller.drive(dep)
        assert state.phase is Phase.COMPLETE


async def test_a_rollback_is_never_halted(tmp_path: Path, store_url: str) -> None:
    async with harness(tmp_path, devices=12, store_url=store_url, policy=POLICY) as h:
        dep = await h.start()
        await h.controller.drive(dep)
        await h.controller.record_human(dep, "approval.rejected", "bob")
        state = await h.controller.state(dep)
        assert state.phase is Phase.ROLLING_BACK
        with pytest.raises(GuardrailError, match="never paused"):
            await h.controller.record_decision(dep, Decision("deployment.halted", "carol"))
        assert (await h.controller.drive(dep)).phase is Phase.ROLLED_BACK


async def test_a_controller_dead_on_another_host_is_taken_over_when_its_lease_expires(
    tmp_path: Path, store_url: str
) -> None:
    """No pid to check on another host: the lease's expiry on the store's clock decides."""
    async with harness(tmp_path, devices=8, store_url=store_url, policy=POLICY) as h:
        dep = await h.start()
        far = await h.store.acquire_lease(dep, "far-away-host:4242:gone", 1.0)
        assert far is not None
        with pytest.raises(FleetgateError, match="being driven by far-away-host"):
            await h.controller.drive(dep)
        claimed, held = await h.store.claim_runnable(h.controller.holder, 60, NOT_RUNNABLE, 10)
        assert claimed == [] and [x.holder for x in held] == ["far-away-host:4242:gone"]
        await asyncio.sleep(1.3)  # real time: the store's clock lets the lease expire
        claimed, _ = await h.store.claim_runnable(h.controller.holder, 60, NOT_RUNNABLE, 10)
        assert claimed == [dep]
        state = await h.controller.drive(dep)
        assert state.phase is Phase.AWAITING_APPROVAL
        lease = await h.store.get_lease(dep)
        assert lease is not None and lease.epoch > far.epoch
        with pytest.raises(LeaseLost):  # the far controller, back, can write nothing
            await h.store.append(
                Event(ts=h.clock.now_iso(), deployment_id=dep, action="soak.completed"),
                fence=far.fence,
            )
