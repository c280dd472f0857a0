"""Fenced leases (one controller per deployment, an epoch checked by every append) on the
store's clock, and per-device command sequence numbers."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import pytest
from sqlalchemy import text

from fleetgate.clock import parse_iso
from fleetgate.core.events import Event
from fleetgate.errors import LeaseLost
from fleetgate.store import Fence, Lease, Store
from fleetgate.store.engine import create_store_engine, parse_store_url
from fleetgate.store.migrate import alembic_config


def ev(action: str, dep: str = "dep-1") -> Event:
    return Event(ts="2026-11-26T08:30:00+00:00", deployment_id=dep, action=action)


async def wait_expired(store: Store, lease: Lease) -> None:
    """Until the store's clock is past ``lease``'s expiry (no caller time is involved)."""
    while await store.now() <= parse_iso(lease.expires_at):
        await asyncio.sleep(0.05)


async def test_one_holding_at_a_time_and_every_acquire_raises_the_epoch(store: Store) -> None:
    a = await store.acquire_lease("dep-1", "ctl-a", 30)
    assert a is not None and (a.holder, a.epoch) == ("ctl-a", 1)
    assert await store.acquire_lease("dep-1", "ctl-b", 30) is None
    # The same holder acquiring again starts a new holding: its first one is fenced off.
    again = await store.acquire_lease("dep-1", "ctl-a", 30)
    assert again is not None and again.epoch == 2
    assert not await store.renew_lease("dep-1", "ctl-a", 1, 30)
    assert not await store.release_lease("dep-1", "ctl-a", 1)
    assert await store.renew_lease("dep-1", "ctl-a", 2, 30)
    assert not await store.renew_lease("dep-2", "ctl-a", 2, 30)
    # Release keeps the row and its epoch, so the next holder gets a higher one.
    assert await store.release_lease("dep-1", "ctl-a", 2)
    released = await store.get_lease("dep-1")
    assert released is not None and (released.holder, released.epoch) == ("ctl-a", 2)
    b = await store.acquire_lease("dep-1", "ctl-b", 30)
    assert b is not None and (b.holder, b.epoch) == ("ctl-b", 3)
    assert await store.get_lease("dep-1") == b
    assert not await store.renew_lease("dep-1", "ctl-a", 2, 30)
    assert await store.get_lease("dep-2") is None


async def test_expiry_is_computed_and_compared_on_the_store_clock(store: Store) -> None:
    before = await store.now()
    a = await store.acquire_lease("dep-1", "ctl-a", 0.3)
    after = await store.now()
    assert a is not None
    expires = parse_iso(a.expires_at)
    assert before + timedelta(seconds=0.3) <= expires <= after + timedelta(seconds=0.3)
    # Lapsed but not taken over: nobody else can have written, the holding may renew.
    await wait_expired(store, a)
    assert await store.renew_lease("dep-1", "ctl-a", a.epoch, 0.3)
    renewed = await store.get_lease("dep-1")
    assert renewed is not None and renewed.epoch == a.epoch
    assert await store.acquire_lease("dep-1", "ctl-b", 30) is None
    await wait_expired(store, renewed)
    b = await store.acquire_lease("dep-1", "ctl-b", 30)
    assert b is not None and (b.holder, b.epoch) == ("ctl-b", a.epoch + 1)
    assert not await store.renew_lease("dep-1", "ctl-a", a.epoch, 30)


async def test_bad_lease_arguments(store: Store) -> None:
    with pytest.raises(ValueError, match="positive"):
        await store.acquire_lease("dep-1", "ctl-a", 0)
    with pytest.raises(ValueError, match="positive"):
        await store.renew_lease("dep-1", "ctl-a", 1, -1)


async def test_racing_controllers_get_exactly_one_lease(store_url: str) -> None:
    async with Store.open(store_url) as one, Store.open(store_url) as two:
        for epoch in (1, 2):
            results = await asyncio.gather(
                *(
                    (one if i % 2 else two).acquire_lease("dep-1", f"ctl-{epoch}-{i}", 30)
                    for i in range(12)
                )
            )
            won = [r for r in results if r is not None]
            assert len(won) == 1 and won[0].epoch == epoch
            assert await one.get_lease("dep-1") == won[0]
            assert await two.release_lease("dep-1", won[0].holder, won[0].epoch)


async def test_a_stale_holding_appends_nothing(store: Store) -> None:
    a = await store.acquire_lease("dep-1", "ctl-a", 30)
    assert a is not None
    await store.append_many([ev("soak.started")], fence=a.fence)
    assert await store.release_lease("dep-1", "ctl-a", a.epoch)
    b = await store.acquire_lease("dep-1", "ctl-b", 30)
    assert b is not None
    head = await store.chain_head()

    with pytest.raises(LeaseLost, match=rf"lease lost to ctl-b \(epoch {b.epoch}\)") as info:
        await store.append_many([ev("soak.completed"), ev("canary.verdict")], fence=a.fence)
    assert info.value.deployment_id == "dep-1" and not info.value.retryable
    assert (info.value.holder, info.value.epoch) == ("ctl-b", b.epoch)
    # The right holder with an old epoch is stale too (its own earlier holding).
    with pytest.raises(LeaseLost):
        await store.append(ev("x"), fence=Fence("dep-1", "ctl-b", a.epoch))
    with pytest.raises(LeaseLost, match="no lease recorded"):
        await store.append(ev("x", "dep-2"), fence=Fence("dep-2", "ctl-a", 1))
    await store.create_deployment("dep-1", "app v2", "0" * 64, {})
    with pytest.raises(LeaseLost):
        await store.update_deployment("dep-1", "COMPLETE", {}, fence=a.fence)
    assert await store.chain_head() == head
    assert [e.action for e in await store.events("dep-1")] == ["soak.started"]
    record = await store.get_deployment("dep-1")
    assert record is not None and record.status == "PREPARE"

    stored = await store.append(ev("soak.completed"), fence=b.fence)
    assert stored.seq == head[0] + 1
    assert (await store.verify()).ok


async def test_a_take_over_waits_for_an_append_in_flight(store_url: str) -> None:
    """The fence is read in the append's transaction with a lock a take-over must wait for:
    the old holding's batch commits whole before the new holding exists, never after."""
    order: list[str] = []
    async with Store.open(store_url) as one, Store.open(store_url) as two:
        a = await one.acquire_lease("dep-1", "ctl-a", 0.2)
        assert a is not None
        await wait_expired(one, a)
        appended = asyncio.Event()

        async def old_holder() -> None:
            async with one.transaction():
                await one.append_many([ev("soak.completed")], fence=a.fence)
                appended.set()
                await asyncio.sleep(0.5)  # a take-over attempted now must wait for the commit
                order.append("committed")

        async def new_holder() -> Lease | None:
            await appended.wait()
            lease = await two.acquire_lease("dep-1", "ctl-b", 30)
            order.append("acquired")
            return lease

        _, b = await asyncio.gather(old_holder(), new_holder())
        assert order == ["committed", "acquired"]
        assert b is not None and b.epoch == a.epoch + 1
        with pytest.raises(LeaseLost):
            await one.append(ev("canary.verdict"), fence=a.fence)
        assert [e.action for e in await two.events("dep-1")] == ["soak.completed"]


async def test_leases_from_before_epochs_start_at_epoch_0(store_url: str) -> None:
    """A store migrated from revision 0001 keeps its lease rows; the next acquire is epoch 1."""
    target = parse_store_url(store_url)
    engine = create_store_engine(target)
    try:
        async with engine.begin() as conn:
            if target.schema:
                await conn.execute(text(f'CREATE SCHEMA IF NOT EXISTS "{target.schema}"'))

            def to_0001(sync_conn: object) -> None:
                from alembic import command

                command.upgrade(alembic_config(sync_conn), "0001")  # type: ignore[arg-type]

            await conn.run_sync(to_0001)
            await conn.execute(
                text(
                    "INSERT INTO leases (deployment_id, holder, expires_at) "
                    "VALUES ('dep-1', 'old-ctl', '2000-01-01T00:00:00.000000+00:00')"
                )
            )
    finally:
        await engine.dispose()
    async with Store.open(store_url) as store:
        old = await store.get_lease("dep-1")
        assert old is not None and (old.holder, old.epoch) == ("old-ctl", 0)
        new = await store.acquire_lease("dep-1", "ctl-a", 30)
        assert new is not None and new.epoch == 1


async def test_device_seq_increments_per_device(store: Store) -> None:
    assert [await store.next_device_seq("orin-01") for _ in range(3)] == [1, 2, 3]
    assert await store.next_device_seq("orin-02") == 1
    assert await store.next_device_seq("orin-01") == 4


async def test_device_seq_is_atomic_across_stores(store_url: str) -> None:
    async with Store.open(store_url) as one, Store.open(store_url) as two:
        got = await asyncio.gather(
            *((one if i % 2 else two).next_device_seq("orin-01") for i in range(40))
        )
    assert sorted(got) == list(range(1, 41))
