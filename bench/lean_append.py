"""The benchmarks' prototype appends (issue 12 item 5), beside the store's own.

``LeanSqliteSink`` runs ``fleetgate.store.sqlite_append.append_sync`` — since ADR 0019 the store's
own SQLite append — in a dedicated thread, as an ``EventSink`` (what ``Recorder`` appends
through) that ``bench/engine_bench.py --lean-append`` and the writer-process prototype plug in.
``SaSyncSink`` runs the same statements through SQLAlchemy Core on a synchronous connection:
which half of the saving is aiosqlite's per-statement thread hops and which is SQLAlchemy's own
per-row work. Not production code.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from fleetgate.core.events import Event, StoredEvent
from fleetgate.store.audit_log import chain_run, log_moved, prepare, stored_event
from fleetgate.store.leases import Fence, Lease, check_holding
from fleetgate.store.sqlite_append import SqliteAppender, append_sync, connect

__all__ = ["LeanSqliteSink", "SaSyncSink", "append_sync", "connect"]


class LeanSqliteSink(SqliteAppender):
    """The store's own append thread (``SqliteAppender``) as a stand-alone sink on ``path``."""

    def __init__(self, path: str) -> None:
        super().__init__(path, path)


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

    from fleetgate.store.audit_log import INSERT_COLUMNS, row_values
    from fleetgate.store.schema import chain_head, events, leases

    if not new:
        return []
    prepared = prepare(new)
    with engine.connect() as conn, conn.begin():
        if fence is not None:
            row = conn.execute(
                select(leases).where(leases.c.deployment_id == fence.deployment_id)
            ).first()
            check_holding(
                fence, None if row is None else Lease(str(row[0]), str(row[1]), str(row[2]), row[3])
            )
        head = conn.execute(select(chain_head.c.last_seq, chain_head.c.last_hash)).one()
        seq, prev = int(head[0]), str(head[1])
        if expect_last is not None:
            dep = str(new[0].deployment_id)
            last = conn.execute(
                select(func.max(events.c.seq)).where(events.c.deployment_id == dep)
            ).scalar()
            if int(last or 0) != expect_last:
                raise log_moved(dep, int(last or 0), expect_last)
        links = chain_run(prepared, seq, prev)
        conn.execute(
            insert(events),
            [
                dict(zip(INSERT_COLUMNS, row_values(p, k), strict=True))
                for p, k in zip(prepared, links, strict=True)
            ],
        )
        conn.execute(update(chain_head).values(last_seq=links[-1][0], last_hash=links[-1][2]))
    return [stored_event(p, k) for p, k in zip(prepared, links, strict=True)]


class SaSyncSink(SqliteAppender):
    """``append_sa_sync`` in the same kind of dedicated thread."""

    def __init__(self, path: str) -> None:
        super().__init__(path, path)
        self._sa = sa_engine(path)

    def _run(
        self,
        new: Sequence[Event],
        fence: Fence | None,
        expect_last: int | None,
        last_only: bool = False,
    ) -> list[StoredEvent]:
        stored = append_sa_sync(self._sa, new, fence, expect_last)
        return stored[-1:] if last_only else stored

    async def close(self) -> None:
        await super().close()
        self._sa.dispose()
