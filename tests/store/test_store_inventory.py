"""Devices (the imported inventory) and the cached deployment summaries."""

from __future__ import annotations

import pytest
from sqlalchemy import text

from fleetgate.core.model import Arch, Device, DeviceState, Monitoring, Resources
from fleetgate.errors import InputError, StoreError
from fleetgate.store import Store
from fleetgate.store.engine import create_store_engine

NOW = "2026-11-26T08:30:00.000000+00:00"


def device(i: int, **changes: object) -> Device:
    fields: dict[str, object] = {
        "id": f"orin-{i:02d}",
        "hardware": "jetson-orin-nano" if i % 2 else "rpi4",
        "arch": Arch.ARM64,
        "group": f"plant-{'ab'[i % 2]}",
        "address": f"http://127.0.0.{i}:7601",
        "resources": Resources(ram_mb=8192, disk_mb=120_000, gpu=bool(i % 2)),
        "token_env": f"FLEETGATE_TOKEN_{i}",
        "software": {"jetpack": "6.0", "os": "ubuntu-22.04"},
        "monitoring": Monitoring.HIGH,
        "critical": i == 3,
        "state": DeviceState.ACTIVE,
    }
    fields.update(changes)
    return Device(**fields)  # type: ignore[arg-type]


async def test_replace_and_list_round_trip(store: Store) -> None:
    fleet = [device(3), device(1), device(2, state=DeviceState.MAINTENANCE, software={})]
    await store.replace_devices(fleet, now=NOW)
    assert await store.list_devices() == sorted(fleet, key=lambda d: d.id)
    assert await store.get_device("orin-02") == fleet[2]
    assert await store.get_device("nope") is None


async def test_replace_drops_devices_not_in_the_new_inventory(store: Store) -> None:
    await store.replace_devices([device(1), device(2), device(3)])
    await store.replace_devices([device(2, group="plant-z"), device(4)])
    assert [(d.id, d.group) for d in await store.list_devices()] == [
        ("orin-02", "plant-z"),
        ("orin-04", "plant-a"),
    ]
    await store.replace_devices([])
    assert await store.list_devices() == []


async def test_upsert_changes_only_the_given_devices(store: Store) -> None:
    await store.replace_devices([device(1), device(2)])
    await store.upsert_devices([device(2, state=DeviceState.QUARANTINE), device(5)])
    states = {d.id: d.state for d in await store.list_devices()}
    assert states == {
        "orin-01": DeviceState.ACTIVE,
        "orin-02": DeviceState.QUARANTINE,
        "orin-05": DeviceState.ACTIVE,
    }
    await store.upsert_devices([])


async def test_a_failed_replace_keeps_the_old_inventory(store: Store) -> None:
    await store.replace_devices([device(1)])
    with pytest.raises(ValueError, match="given twice"):
        await store.replace_devices([device(2), device(2)])
    assert [d.id for d in await store.list_devices()] == ["orin-01"]


async def test_an_unreadable_device_row_is_a_store_error(store: Store) -> None:
    await store.replace_devices([device(1)])
    engine = create_store_engine(store.target)
    try:
        async with engine.begin() as conn:
            await conn.execute(text('UPDATE devices SET data = \'{"id": "orin-01"}\''))
    finally:
        await engine.dispose()
    with pytest.raises(StoreError, match="'orin-01' in the store is unreadable") as caught:
        await store.list_devices()
    assert not isinstance(caught.value, InputError)


async def test_deployments_create_update_get_list(store: Store) -> None:
    created = await store.create_deployment(
        "dep-2", "vision 2.4.1", "b" * 64, {"fleet_total": 12}, now=NOW
    )
    assert created.status == "PREPARE" and created.created_at == NOW
    await store.create_deployment(
        "dep-1", "vision 2.4.0", "a" * 64, {}, now="2026-11-26T09:00:00+01:00"
    )
    updated = await store.update_deployment(
        "dep-2",
        "CANARY",
        {"fleet_total": 12, "canary": ["orin-01"]},
        now="2026-11-26T08:45:00+00:00",
    )
    assert updated.status == "CANARY"
    assert updated.data == {"fleet_total": 12, "canary": ["orin-01"]}
    assert updated.created_at == NOW and updated.updated_at == "2026-11-26T08:45:00.000000+00:00"
    assert await store.get_deployment("dep-2") == updated
    assert await store.get_deployment("dep-9") is None
    # Oldest first; the +01:00 creation time was normalised to 08:00 UTC.
    assert [d.id for d in await store.list_deployments()] == ["dep-1", "dep-2"]


async def test_deployment_ids_are_unique_and_must_exist_to_update(store: Store) -> None:
    await store.create_deployment("dep-1", "vision 2.4.1", "a" * 64, {})
    with pytest.raises(StoreError, match="already exists"):
        await store.create_deployment("dep-1", "vision 2.4.2", "c" * 64, {})
    with pytest.raises(StoreError, match="no deployment 'dep-7'"):
        await store.update_deployment("dep-7", "CANARY", {})
