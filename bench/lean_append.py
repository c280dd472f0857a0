"""The benchmarks' prototype appends (issue 12 item 5), beside the store's own.

``LeanSqliteSink`` runs ``fleetgate.store.sqlite_append.append_sync`` — since ADR 0019 the store's
own SQLite append — in a dedicated thread, as an ``EventSink`` (what ``Recorder`` appends
through) that ``bench/engine_bench.py --lean-append`` and the writer-process prototype plug in.
``SaSyncSink`` runs the same statements through SQLAlchemy Core on a synchronous connection:
which half of the saving is aiosqlite's per-statement thread hops and which is SQLAlchemy's own
per-row work. Not production code.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from fleetgate.core.events import Event, StoredEvent
from fleetgate.errors import LogMoved
from fleetgate.store.audit_log import _normalised, seal_run
from fleetgate.store.leases import Fence, Lease, lease_lost
from fleetgate.store.sqlite_append import append_sync, connect

__all__ = ["LeanSqliteSink", "SaSyncSink", "append_sync", "connect"]


class LeanSqliteSink:
    """``append_sync`` in one dedicated thread (sqlite3 connections are not for sharing).
    Subclasses change the handle and the append (``SaSyncSink``)."""

    def __init__(self, path: str) -> None:
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="lean-append")
        self._handle = self._pool.submit(self._open, path).result()

    def _open(self, path: str) -> Any:
        return connect(path)

    def _append(
        self, handle: Any, new: Sequence[Event], fence: Fence | None, expect_last: int | None
    ) -> list[StoredEvent]:
        return append_sync(handle, new, fence, expect_last)

    def _release(self, handle: Any) -> None:
        handle.close()

    async def append_many(
        self, new: list[Event], *, fence: Fence | None = None, expect_last: int | None = None
    ) -> list[StoredEvent]:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(
            self._pool, self._append, self._handle, new, fence, expect_last
        )

    async def close(self) -> None:
        self._pool.submit(self._release, self._handle).result()
        self._pool.shutdown()


# -- the same statements through SQLAlchemy Core, synchronously: which half of the saving is
# -- the per-statement thread hops (aiosqlite) and which is SQLAlchemy's own per-row work?
def sa_engine(path: str) -> Any:
    """A synchronous SQLAlchemy engine on the stdlib driver, with the store's pragmas and
    ``BEGIN IMMEDIATE`` (as ``fleetgate.store.engine`` sets up its async one)."""
    from sqlalchemy import create_engine, event

    engine = create_engine(f"sqlite:///{path}")

    @event.listens_for(engine, "connect")
    def _connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None
        for pragma in ("busy_timeout = 30000", "journal_mode = WAL", "foreign_keys = ON"):
            dbapi_connection.execute(f"PRAGMA {pragma}")

    @event.listens_for(engine, "begin")
    def _begin(conn: Any) -> None:
        conn.exec_driver_sql("BEGIN IMMEDIATE")

    return engine


def append_sa_sync(
    engine: Any,
    new: Sequence[Event],
    fence: Fence | None = None,
    expect_last: int | None = None,
) -> list[StoredEvent]:
    """``audit_log.append_events``'s statements (SQLAlchemy Core, the same tables and rows) on a
    synchronous connection: one thread hop per batch instead of one per statement."""
    from sqlalchemy import func, insert, select, update

    from fleetgate.store.audit_log import _to_row
    from fleetgate.store.schema import chain_head, events, leases

    if not new:
        return []
    prepared = [_normalised(ev) for ev in new]
    with engine.connect() as conn, conn.begin():
        if fence is not None:
            row = conn.execute(
                select(leases).where(leases.c.deployment_id == fence.deployment_id)
            ).first()
            current = None if row is None else Lease(str(row[0]), str(row[1]), str(row[2]), row[3])
            if current is None or (current.holder, current.epoch) != (fence.holder, fence.epoch):
                raise lease_lost(fence, current)
        head = conn.execute(select(chain_head.c.last_seq, chain_head.c.last_hash)).one()
        seq, prev = int(head[0]), str(head[1])
        if expect_last is not None:
            dep = str(new[0].deployment_id)
            last = conn.execute(
                select(func.max(events.c.seq)).where(events.c.deployment_id == dep)
            ).scalar()
            if int(last or 0) != expect_last:
                raise LogMoved(f"deployment {dep}: its log moved", deployment_id=dep)
        chained = seal_run(prepared, seq, prev)
        conn.execute(insert(events), [_to_row(st, d.decode()) for st, d in chained])
        last = chained[-1][0]
        conn.execute(update(chain_head).values(last_seq=last.seq, last_hash=last.hash))
    return [st for st, _d in chained]


class SaSyncSink(LeanSqliteSink):
    """``append_sa_sync`` in one dedicated thread."""

    def _open(self, path: str) -> Any:
        return sa_engine(path)

    def _append(
        self, handle: Any, new: Sequence[Event], fence: Fence | None, expect_last: int | None
    ) -> list[StoredEvent]:
        return append_sa_sync(handle, new, fence, expect_last)

    def _release(self, handle: Any) -> None:
        handle.dispose()
