"""SQLite's append runs in one thread of its own (``store/sqlite_append.py``): the same chain as
the SQLAlchemy path, and the same behaviour when things go wrong — a full disk, another writer
holding the lock, a cancelled caller, a store closed with batches in flight."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest
from lock_kit import write_lock_held

from fleetgate.core.events import Event
from fleetgate.errors import StoreError
from fleetgate.store import Store, sqlite_append


def ev(i: int, size: int = 10) -> Event:
    return Event(
        ts=f"2026-11-26T08:{i // 60 % 60:02d}:{i % 60:02d}.000000+00:00",
        deployment_id="dep-1",
        device_id=f"dev-{i % 7}",
        action="probe",
        details={"i": i, "pad": "x" * size, "tuple": (i, "é")},
    )


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "fleetgate.db"


async def test_same_chain_as_the_sqlalchemy_path(tmp_path: Path) -> None:
    """Appends outside and inside ``store.transaction()`` (which keeps the SQLAlchemy path)
    interleave on one chain, and the hashes are the ones the other path gives."""
    batches = [[ev(1)], [ev(2), ev(3)], [ev(4)], [ev(5), ev(6), ev(7)]]
    hashes = []
    for name in ("lean", "joined"):
        async with Store.open(f"sqlite:///{tmp_path / name}.db") as store:
            for k, batch in enumerate(batches):
                if name == "joined" or k % 2:
                    async with store.transaction():
                        await store.append_many(batch)
                else:
                    await store.append_many(batch)
            report = await store.verify()
            assert report.ok and report.checked == 7
            hashes.append([(e.seq, e.hash) for e in await store.events()])
    assert hashes[0] == hashes[1]


@pytest.fixture
def capped(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[sqlite3.Connection]]:
    """The append's connection, with its page count capped at the file's size when asked:
    SQLite then answers SQLITE_FULL, the code a full disk gives, through the real write path."""
    conns: list[sqlite3.Connection] = []
    real = sqlite_append.connect

    def connect(path: str) -> sqlite3.Connection:
        conn = real(path)
        conns.append(conn)
        return conn

    monkeypatch.setattr(sqlite_append, "connect", connect)
    yield conns


async def _on_append_thread(store: Store, sql: str) -> None:
    appender = store._appender
    assert appender is not None
    conn = appender._conn
    assert conn is not None
    await asyncio.wrap_future(appender._pool.submit(conn.execute, sql))


async def test_a_full_disk_writes_nothing_and_the_store_goes_on(
    db: Path, capped: list[sqlite3.Connection]
) -> None:
    async with Store.open(f"sqlite:///{db}") as store:
        await store.append_many([ev(i) for i in range(1, 4)])
        (pages,) = sqlite3.connect(db).execute("PRAGMA page_count").fetchone()
        await _on_append_thread(store, f"PRAGMA max_page_count = {pages}")
        with pytest.raises(StoreError) as err:
            await store.append_many([ev(i, size=20_000) for i in range(4, 40)])
        assert err.value.retryable
        assert "full" in str(err.value) and str(db) in str(err.value)
        assert "\n" not in str(err.value)
        report = await store.verify()
        assert report.ok and report.checked == 3  # nothing of the refused batch
        assert (await store.chain_head())[0] == 3
        await _on_append_thread(store, "PRAGMA max_page_count = 1073741823")
        stored = await store.append_many([ev(4)])
        assert stored[0].seq == 4
        assert (await store.verify()).ok


async def test_waits_for_another_writer_without_stalling_the_loop(db: Path) -> None:
    async with Store.open(f"sqlite:///{db}") as store:
        await store.append(ev(1))
        lock = ["BEGIN IMMEDIATE", "UPDATE chain_head SET last_seq = last_seq"]
        async with write_lock_held(db, lock) as wait:
            stored = await store.append(ev(2))
        ticks = wait.ticks
        assert stored.seq == 2
        assert ticks >= 20  # the wait was in the append's thread, not on the loop
        assert (await store.verify()).checked == 2


async def test_a_cancelled_caller_leaves_a_whole_batch_or_none(db: Path) -> None:
    async with Store.open(f"sqlite:///{db}") as store:
        for delay in (0.0, 0.001, 0.005, 0.02):
            task = asyncio.create_task(store.append_many([ev(i) for i in range(50)]))
            await asyncio.sleep(delay)
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        # Whatever the cancels caught, every batch is all in or all out, and the chain holds.
        report = await store.verify()
        assert report.ok and report.checked % 50 == 0
        assert (await store.append(ev(99))).seq == report.checked + 1


async def test_close_waits_for_batches_in_flight(db: Path) -> None:
    store = await Store.open(f"sqlite:///{db}")
    tasks = [asyncio.create_task(store.append_many([ev(i) for i in range(20)])) for _ in range(5)]
    await asyncio.sleep(0)
    await store.close()
    results = await asyncio.gather(*tasks)
    assert [r[0].seq for r in results] == [1, 21, 41, 61, 81]
    async with Store.open(f"sqlite:///{db}") as again:
        report = await again.verify()
        assert report.ok and report.checked == 100


async def test_a_missing_chain_head_is_a_store_error(db: Path) -> None:
    async with Store.open(f"sqlite:///{db}") as store:
        await store.append(ev(1))
        conn = sqlite3.connect(db)
        conn.execute("DELETE FROM chain_head")
        conn.commit()
        conn.close()
        with pytest.raises(StoreError, match="chain_head row is missing"):
            await store.append(ev(2))
        assert (await store.events())[-1].seq == 1
