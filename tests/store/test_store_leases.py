"""Leases (one controller per deployment) and per-device command sequence numbers."""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta, timezone

import pytest

from fleetgate.store import Lease, Store

T0 = datetime(2026, 11, 26, 8, 30, tzinfo=timezone.utc)


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


async def test_only_one_holder_until_expiry(store: Store) -> None:
    assert await store.acquire_lease("dep-1", "ctl-a", 30, at(0))
    assert not await store.acquire_lease("dep-1", "ctl-b", 30, at(10))
    assert not await store.acquire_lease("dep-1", "ctl-b", 30, at(30))  # expires_at is not < now
    assert await store.get_lease("dep-1") == Lease(
        "dep-1", "ctl-a", "2026-11-26T08:30:30.000000+00:00"
    )
    assert await store.acquire_lease("dep-1", "ctl-b", 30, at(30.5))  # expired: taken over
    assert not await store.renew_lease("dep-1", "ctl-a", 30, at(31))
    assert not await store.release_lease("dep-1", "ctl-a")
    assert (await store.get_lease("dep-1")) == Lease(
        "dep-1", "ctl-b", "2026-11-26T08:31:00.500000+00:00"
    )
    assert await store.release_lease("dep-1", "ctl-b")
    assert await store.get_lease("dep-1") is None
    assert await store.acquire_lease("dep-1", "ctl-a", 30, at(32))


async def test_holder_reacquires_and_renews(store: Store) -> None:
    assert await store.acquire_lease("dep-1", "ctl-a", 10, at(0))
    assert await store.acquire_lease("dep-1", "ctl-a", 10, at(5))  # extends to 15
    assert not await store.acquire_lease("dep-1", "ctl-b", 10, at(12))
    assert await store.renew_lease("dep-1", "ctl-a", 10, at(14))  # extends to 24
    assert not await store.acquire_lease("dep-1", "ctl-b", 10, at(20))
    # Lapsed but not taken over: the row still names ctl-a, so nobody else drove it.
    assert await store.renew_lease("dep-1", "ctl-a", 10, at(40))
    assert not await store.renew_lease("dep-2", "ctl-a", 10, at(40))


async def test_leases_are_per_deployment_and_accept_iso_times(store: Store) -> None:
    assert await store.acquire_lease("dep-1", "ctl-a", 60, "2026-11-26T08:30:00Z")
    assert await store.acquire_lease("dep-2", "ctl-b", 60, "2026-11-26T09:30:00+01:00")
    lease = await store.get_lease("dep-2")
    assert lease is not None and lease.expires_at == "2026-11-26T08:31:00.000000+00:00"


async def test_bad_lease_arguments(store: Store) -> None:
    with pytest.raises(ValueError, match="positive"):
        await store.acquire_lease("dep-1", "ctl-a", 0, at(0))
    with pytest.raises(ValueError, match="naive"):
        await store.acquire_lease("dep-1", "ctl-a", 5, datetime(2026, 11, 26, 8, 30))


async def test_racing_controllers_get_exactly_one_lease(store_url: str) -> None:
    async with Store.open(store_url) as one, Store.open(store_url) as two:
        results = await asyncio.gather(
            *(
                (one if i % 2 else two).acquire_lease("dep-1", f"ctl-{i}", 30, at(0))
                for i in range(12)
            )
        )
        assert sum(results) == 1
        lease = await one.get_lease("dep-1")
        assert lease is not None and lease.holder == f"ctl-{results.index(True)}"


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
