"""The lease is a fence and safety times come from the store's clock (DESIGN.md invariant 9).

Controllers here share one store and one virtual fleet; each has its own clock, which may be
wrong by years. The soak's authority is a virtual store clock shared by all controllers (time
moves when one of them sleeps), except in the tests marked "real store clock", which use the
store's own clock (``Store.now``) with a two-second soak. Every test runs on SQLite and on
PostgreSQL.
"""

from __future__ import annotations

import asyncio
import socket
import subprocess
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from engine_harness import FAST_POLICY, Harness, VirtualClock, harness

from fleetgate.clock import parse_iso, to_iso
from fleetgate.core.events import Event
from fleetgate.core.state import Phase
from fleetgate.engine.context import Clock
from fleetgate.engine.service import Controller, ControllerConfig
from fleetgate.errors import FleetgateError, LeaseLost, StoreError
from fleetgate.store import Fence, Store

YEARS_5 = 5 * 365.25 * 86400
CANARY_SOAK_S = 600.0  # FAST_POLICY's canary soak, in virtual seconds
SHORT_SOAK_POLICY: dict[str, Any] = {
    "allow_short_soak": True,
    "soak": {"canary": "2s", "between_waves": "1s"},
    "retries": {"attempts": 3, "backoff": "1s"},
}

# These tests measure the canary soak itself: no baseline window before it (issue 11).
NO_WINDOW: dict[str, Any] = {**FAST_POLICY, "analysis": {"baseline": 0}}


class Crash(Exception):
    """A controller dying in the middle of a soak."""


class ControllerClock(Clock):
    """One controller's view of the shared virtual time: its own clock is off by ``skew_s``;
    its sleeps move the shared time. It can crash after sleeping ``crash_after_s`` in all,
    or park in its first sleep until ``unpark`` is set (a process that stopped running)."""

    def __init__(
        self,
        shared: VirtualClock,
        *,
        skew_s: float = 0.0,
        crash_after_s: float | None = None,
        park: bool = False,
    ) -> None:
        self.shared = shared
        self.skew_s = skew_s
        self.crash_after_s = crash_after_s
        self.park = park
        self.unpark = asyncio.Event()
        self.slept = 0.0

    def now(self) -> float:
        return self.shared.t + self.skew_s

    def now_iso(self) -> str:
        return to_iso(datetime.fromtimestamp(self.now(), UTC))

    async def sleep(self, seconds: float) -> None:
        if self.park:
            self.park = False
            await self.unpark.wait()
        if self.crash_after_s is not None and self.slept + seconds >= self.crash_after_s:
            self.shared.t += self.crash_after_s - self.slept
            self.slept = self.crash_after_s
            raise Crash(f"crashed after {self.slept:g} s of sleep")
        if seconds > 0:
            self.shared.t += seconds
            self.slept += seconds


class SkewedClock(Clock):
    """The real clock of a host that is ``skew_s`` off."""

    def __init__(self, skew_s: float) -> None:
        self.skew_s = skew_s

    def now(self) -> float:
        return super().now() + self.skew_s

    def now_iso(self) -> str:
        return to_iso(datetime.fromtimestamp(self.now(), UTC))


def controller(
    h: Harness,
    clock: Clock,
    *,
    store: Store | None = None,
    virtual_store_clock: bool = True,
    lease_ttl_s: float = 60.0,
    holder: str | None = None,
) -> Controller:
    config = ControllerConfig(
        h.controller.config.blob_dir, h.controller.config.public_key, lease_ttl_s=lease_ttl_s
    )
    ctl = Controller(
        store or h.store,
        h.controller.transport,
        config,
        clock=clock,
        store_clock=h.clock.store_now if virtual_store_clock else None,
    )
    if holder is not None:
        ctl.holder = holder
    return ctl


async def wait_for_event(store: Store, dep: str, action: str, task: asyncio.Task[Any]) -> None:
    while not any(e.action == action for e in await store.events(dep)):
        if task.done():
            task.result()  # raises what the drive raised
            raise AssertionError(f"the drive ended before {action}")
        await asyncio.sleep(0.02)


async def wait_lease_expired(store: Store, dep: str) -> None:
    """Until the store's clock is past the lease's expiry (no controller clock involved)."""
    while True:
        lease = await store.get_lease(dep)
        assert lease is not None
        if await store.now() > parse_iso(lease.expires_at):
            return
        await asyncio.sleep(0.05)


async def cancel(task: asyncio.Task[Any]) -> None:
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


def count(events: list[Any], action: str, stage: int | None = None) -> int:
    return sum(
        1
        for e in events
        if e.action == action and (stage is None or e.details.get("stage") == stage)
    )


def holdings(events: list[Any]) -> list[tuple[str, int]]:
    """The lease holdings that drove, in order (recorded at the start of every drive)."""
    return [
        (e.details["holder"], e.details["epoch"])
        for e in events
        if e.action == "distribution.started"
    ]


# -- (a) a skewed clock cannot take a live lease -------------------------------------------------


@pytest.mark.parametrize("skew_s", [YEARS_5, -YEARS_5])
async def test_a_clock_years_off_cannot_take_a_live_lease(
    tmp_path: Path, store_url: str, skew_s: float
) -> None:
    async with harness(tmp_path, devices=10, store_url=store_url, policy=NO_WINDOW) as h:
        dep = await h.start()
        a = controller(h, ControllerClock(h.clock, park=True))
        driving = asyncio.create_task(a.drive(dep))
        try:
            await wait_for_event(h.store, dep, "soak.sampled", driving)
            head = await h.store.chain_head()
            b = controller(h, ControllerClock(h.clock, skew_s=skew_s))
            with pytest.raises(FleetgateError, match=rf"being driven by {a.holder} \(epoch 1\)"):
                await b.drive(dep)
            assert await h.store.chain_head() == head  # b wrote nothing
            lease = await h.store.get_lease(dep)
            assert lease is not None and (lease.holder, lease.epoch) == (a.holder, 1)
        finally:
            await cancel(driving)


# -- (b) a stale driver writes nothing ------------------------------------------------------------


async def test_a_driver_resumed_after_a_take_over_writes_nothing(
    tmp_path: Path, store_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The reported incident: a controller stalls in the canary soak, its lease expires, a
    second one takes over and finishes the soak and the verdict; the first comes back. It must
    record neither ``soak.completed`` nor ``canary.verdict``: its append is refused."""
    async with harness(tmp_path, devices=10, store_url=store_url, policy=NO_WINDOW) as h:
        dep = await h.start()
        stalled = ControllerClock(h.clock, park=True)
        a = controller(h, stalled, lease_ttl_s=0.5)

        async def renewal_stalled(*_args: Any) -> None:
            await asyncio.Event().wait()  # a stopped process renews nothing

        monkeypatch.setattr(a, "_keep_lease", renewal_stalled)
        driving = asyncio.create_task(a.drive(dep))
        try:
            await wait_for_event(h.store, dep, "soak.sampled", driving)
            await wait_lease_expired(h.store, dep)
            b = controller(h, ControllerClock(h.clock))
            state = await b.drive(dep)
            assert state.phase is Phase.AWAITING_APPROVAL and state.canary_verdict == "PASS"
            head = await h.store.chain_head()

            stalled.unpark.set()  # the first controller runs again, mid-soak
            with pytest.raises(LeaseLost, match=rf"lease lost to {b.holder} \(epoch 2\)"):
                await asyncio.wait_for(driving, 60)
        finally:
            await cancel(driving)
        assert await h.store.chain_head() == head
        events = await h.events(dep)
        assert count(events, "soak.completed", 0) == 1
        assert count(events, "canary.verdict") == 1
        assert holdings(events) == [(a.holder, 1), (b.holder, 2)]
        assert (await h.store.verify()).ok


async def test_holder_is_dead_take_over_raises_the_epoch(tmp_path: Path, store_url: str) -> None:
    async with harness(tmp_path, devices=10, store_url=store_url, policy=NO_WINDOW) as h:
        dep = await h.start()
        gone = subprocess.Popen([sys.executable, "-c", "pass"])
        gone.wait()
        dead = await h.store.acquire_lease(dep, f"{socket.gethostname()}:{gone.pid}:dead", 60)
        assert dead is not None and dead.epoch == 1
        state = await h.controller.drive(dep)  # taken over at once, not after 60 s
        assert state.phase is Phase.AWAITING_APPROVAL
        events = await h.events(dep)
        assert holdings(events) == [(h.controller.holder, 2)]
        head = await h.store.chain_head()
        late = Event(ts=h.clock.now_iso(), deployment_id=dep, action="soak.completed")
        with pytest.raises(LeaseLost):
            await h.store.append(late, fence=dead.fence)
        assert await h.store.chain_head() == head


# -- (c) two controllers racing -------------------------------------------------------------------


async def test_two_controllers_racing_exactly_one_drives(tmp_path: Path, store_url: str) -> None:
    async with (
        harness(tmp_path, devices=10, store_url=store_url, policy=NO_WINDOW) as h,
        Store.open(store_url) as other,
    ):
        dep = await h.start()
        clocks = [ControllerClock(h.clock, park=True), ControllerClock(h.clock, park=True)]
        ctls = [controller(h, clocks[0]), controller(h, clocks[1], store=other)]
        tasks = [asyncio.create_task(c.drive(dep)) for c in ctls]
        try:
            # The winner parks in the soak holding the lease; the loser is refused.
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            (loser,) = done
            with pytest.raises(FleetgateError, match="is being driven by"):
                loser.result()
            winner = ctls[1 - tasks.index(loser)]
            await wait_for_event(h.store, dep, "soak.sampled", tasks[ctls.index(winner)])
        finally:
            for t in tasks:
                await cancel(t)
        assert holdings(await h.events(dep)) == [(winner.holder, 1)]


# -- (d) soaks on the store's clock ---------------------------------------------------------------


@pytest.mark.parametrize("skew_s", [YEARS_5, -YEARS_5])
async def test_a_skewed_controller_serves_exactly_the_rest_of_a_soak(
    tmp_path: Path, store_url: str, skew_s: float
) -> None:
    """A controller dies 200 s into the canary soak; one whose clock is years off resumes it
    and serves exactly the 400 s left: neither skipped (clock ahead) nor served again (behind)."""
    async with harness(tmp_path, devices=10, store_url=store_url, policy=NO_WINDOW) as h:
        dep = await h.start()
        dying = ControllerClock(h.clock, crash_after_s=200)
        with pytest.raises(Crash):
            await controller(h, dying).drive(dep)
        assert dying.slept == pytest.approx(200)

        skewed = ControllerClock(h.clock, skew_s=skew_s)
        state = await controller(h, skewed).drive(dep)
        assert state.phase is Phase.AWAITING_APPROVAL
        assert skewed.slept == pytest.approx(CANARY_SOAK_S - 200, abs=1e-3)
        events = await h.events(dep)
        (started,) = (e for e in events if e.action == "soak.started")
        (done,) = (e for e in events if e.action == "soak.completed")
        assert done.details["served_s"] >= CANARY_SOAK_S
        assert done.details["served_s"] == pytest.approx(CANARY_SOAK_S, abs=1e-3)
        # The start is on the store's clock; the event's own ts is the first controller's.
        assert started.details["store_ts"] == started.ts
        own_clock_s = (parse_iso(done.ts) - parse_iso(started.ts)).total_seconds()
        assert own_clock_s == pytest.approx(CANARY_SOAK_S + skew_s, abs=1e-3)


async def test_real_store_clock_soak_is_served_in_full_by_a_skewed_controller(
    tmp_path: Path, store_url: str
) -> None:
    """Real store clock: a controller 5 years ahead resumes a 2 s canary soak that another
    began; the soak is served in full on the store's clock (it used to end at once)."""
    async with harness(tmp_path, devices=10, store_url=store_url, policy=SHORT_SOAK_POLICY) as h:
        dep = await h.start()
        first = controller(h, Clock(), virtual_store_clock=False)
        driving = asyncio.create_task(first.drive(dep))
        try:
            await wait_for_event(h.store, dep, "soak.started", driving)  # a 2 s soak: no sampling
        finally:
            await cancel(driving)  # dies mid-soak (its lease is released on the way out)
        ahead = controller(h, SkewedClock(YEARS_5), virtual_store_clock=False)
        state = await ahead.drive(dep)
        finished = await h.store.now()
        assert state.phase is Phase.AWAITING_APPROVAL
        events = await h.events(dep)
        (started,) = (e for e in events if e.action == "soak.started")
        (done,) = (e for e in events if e.action == "soak.completed")
        begun = parse_iso(started.details["store_ts"])
        assert done.details["served_s"] >= 2.0
        assert (finished - begun).total_seconds() >= 2.0
        assert parse_iso(done.ts).year >= begun.year + 4  # the resuming controller's own clock


# -- renewal ------------------------------------------------------------------------------------


async def test_a_failed_renewal_cancels_the_drive(tmp_path: Path, store_url: str) -> None:
    """Parked in a soak (writing nothing the fence could refuse), the driver learns from its
    renewal that the lease was taken and stops: it does not sit out the soak."""
    async with harness(tmp_path, devices=10, store_url=store_url, policy=NO_WINDOW) as h:
        dep = await h.start()
        a = controller(h, ControllerClock(h.clock, park=True), lease_ttl_s=0.6)
        driving = asyncio.create_task(a.drive(dep))
        try:
            await wait_for_event(h.store, dep, "soak.sampled", driving)
            # Taken over (as after an expiry the driver did not notice). Ending the holding
            # and taking it are two transactions: a renewal between them extends the ended
            # holding again (same holder and epoch), so take it the way a thief would, again.
            thief = None
            for _ in range(50):
                lease = await h.store.get_lease(dep)
                assert lease is not None
                await h.store.release_lease(dep, lease.holder, lease.epoch)
                thief = await h.store.acquire_lease(dep, "other-host:1:thief", 60)
                if thief is not None:
                    break
            assert thief is not None
            head = await h.store.chain_head()
            with pytest.raises(LeaseLost, match=r"lease lost to other-host:1:thief \(epoch 2\)"):
                await asyncio.wait_for(driving, 60)
        finally:
            await cancel(driving)
        assert await h.store.chain_head() == head
        lease = await h.store.get_lease(dep)
        assert lease is not None and lease.holder == "other-host:1:thief"  # not released by a


async def test_a_store_that_cannot_renew_for_a_ttl_cancels_the_drive(
    tmp_path: Path, store_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with (
        harness(tmp_path, devices=10, store_url=store_url, policy=NO_WINDOW) as h,
        Store.open(store_url) as own,
    ):
        dep = await h.start()
        a = controller(h, ControllerClock(h.clock, park=True), store=own, lease_ttl_s=0.6)
        driving = asyncio.create_task(a.drive(dep))
        try:
            await wait_for_event(h.store, dep, "soak.sampled", driving)

            async def unreachable(*_args: Any) -> bool:
                raise StoreError("connection refused", retryable=True)

            monkeypatch.setattr(own, "renew_lease", unreachable)
            with pytest.raises(LeaseLost, match=r"lease not renewed for 0.6 s"):
                await asyncio.wait_for(driving, 60)
        finally:
            await cancel(driving)
        events = await h.events(dep)
        assert count(events, "soak.completed") == 0


def _lease_ttl_env(monkeypatch: pytest.MonkeyPatch, value: str) -> Callable[[], float]:
    monkeypatch.setenv("FLEETGATE_LEASE_TTL", value)
    return lambda: ControllerConfig(Path("blobs"), None).lease_ttl_s


def test_lease_ttl_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    assert _lease_ttl_env(monkeypatch, "2.5")() == 2.5
    with pytest.raises(FleetgateError, match="FLEETGATE_LEASE_TTL"):
        _lease_ttl_env(monkeypatch, "0")()
    monkeypatch.delenv("FLEETGATE_LEASE_TTL")
    assert ControllerConfig(Path("blobs"), None).lease_ttl_s == 60.0


async def test_the_fence_is_passed_by_the_recorder(tmp_path: Path, store_url: str) -> None:
    """Every drive's appends carry its holding: a stale fence for the same holder is refused."""
    async with harness(tmp_path, devices=10, store_url=store_url, policy=NO_WINDOW) as h:
        dep = await h.start()
        await h.controller.drive(dep)
        ((holder, epoch),) = holdings(await h.events(dep))
        assert holder == h.controller.holder
        state = await h.controller.record_human(dep, "approval.granted", "alice")
        assert state.phase is not Phase.AWAITING_APPROVAL
        lease = await h.store.get_lease(dep)
        # Deciding is not driving: recording the approval took no lease.
        assert lease is not None and lease.epoch == epoch
        await h.controller.drive(dep)
        lease = await h.store.get_lease(dep)
        assert lease is not None and lease.epoch == epoch + 1  # one holding per drive
        with pytest.raises(LeaseLost):
            await h.store.append(
                Event(ts=h.clock.now_iso(), deployment_id=dep, action="x"),
                fence=Fence(dep, holder, epoch),
            )


async def test_a_take_over_mid_stage_ends_the_drive_with_lease_lost(
    tmp_path: Path, store_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The lease is taken while device tasks run in parallel: their refused records end the
    drive with the one-line LeaseLost, not a TaskGroup's exception group."""
    async with harness(tmp_path, store_url=store_url, policy=NO_WINDOW) as h:
        dep = await h.start()
        transport = h.controller.transport
        real_stage = transport.stage
        theft: list[tuple[int, str]] = []
        stolen = asyncio.Lock()

        async def stage_then_steal(*args: Any, **kw: Any) -> Any:
            async with stolen:  # the first device's command steals, the others wait for it
                if not theft:
                    lease = await h.store.get_lease(dep)
                    assert lease is not None
                    await h.store.release_lease(dep, lease.holder, lease.epoch)
                    assert await h.store.acquire_lease(dep, "other-host:1:thief", 60)
                    theft.append(await h.store.chain_head())
            return await real_stage(*args, **kw)

        monkeypatch.setattr(transport, "stage", stage_then_steal)
        with pytest.raises(LeaseLost, match=r"lease lost to other-host:1:thief \(epoch 2\)"):
            await h.controller.drive(dep)
        ((seq, last_hash),) = theft
        assert await h.store.chain_head() == (seq, last_hash)
        assert count(await h.events(dep), "device.staged") == 0
