"""Opening a store migrates it; the migrated schema is the one the code expects."""

from __future__ import annotations

import asyncio

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import inspect, text
from sqlalchemy.engine import Connection

from fleetgate.core.events import GENESIS_HASH, Event
from fleetgate.errors import StoreError
from fleetgate.store import Store
from fleetgate.store.engine import create_store_engine
from fleetgate.store.migrate import head_revision
from fleetgate.store.schema import metadata

TABLES = {"devices", "deployments", "events", "chain_head", "leases", "device_seq"}


def _inspect(conn: Connection) -> tuple[set[str], str | None, list[object]]:
    tables = set(inspect(conn).get_table_names())
    revision = MigrationContext.configure(conn).get_current_revision()
    diffs = compare_metadata(MigrationContext.configure(conn), metadata)
    return tables, revision, diffs


async def test_open_creates_the_schema_at_head(store: Store) -> None:
    engine = create_store_engine(store.target)
    try:
        async with engine.connect() as conn:
            tables, revision, diffs = await conn.run_sync(_inspect)
            head = (
                await conn.execute(text("SELECT id, last_seq, last_hash FROM chain_head"))
            ).all()
    finally:
        await engine.dispose()
    assert tables >= TABLES | {"alembic_version"}
    assert revision == head_revision()
    assert diffs == [], "migrations and schema.py disagree"
    assert [tuple(row) for row in head] == [(1, 0, GENESIS_HASH)]
    assert await store.chain_head() == (0, GENESIS_HASH)


async def test_reopening_keeps_data_and_does_not_migrate_again(store_url: str) -> None:
    async with Store.open(store_url) as store:
        await store.append(Event(ts="2026-11-26T08:30:00+00:00", deployment_id=None, action="a"))
    async with Store.open(store_url) as store:
        assert [ev.action for ev in await store.events()] == ["a"]
        assert (await store.verify()).ok


async def test_two_processes_opening_a_new_store_at_once_both_succeed(store_url: str) -> None:
    first, second = await asyncio.gather(Store.open(store_url), Store.open(store_url))
    try:
        assert (await first.verify()).ok and (await second.verify()).ok
    finally:
        await first.close()
        await second.close()


async def test_a_schema_from_a_newer_fleetgate_is_refused(store: Store, store_url: str) -> None:
    engine = create_store_engine(store.target)
    try:
        async with engine.begin() as conn:
            await conn.execute(text("UPDATE alembic_version SET version_num = '9999_future'"))
    finally:
        await engine.dispose()
    with pytest.raises(StoreError, match=r"revision '9999_future'.*upgrade fleetgate"):
        await Store.open(store_url)
