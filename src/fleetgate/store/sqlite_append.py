"""The SQLite event append, in one thread hop per batch (issue 12; ADR 0018, ADR 0019).

``Store.append_many`` on SQLite, outside a ``store.transaction()`` block, comes here: the batch
goes to one dedicated thread holding one standard-library ``sqlite3`` connection to the store's
file, and ``append_sync`` writes it there in one call. Through SQLAlchemy Core over aiosqlite the
same append cost ~95 µs per event on the event loop (one thread hop per statement, parameter
processing per row); here it costs ~4 µs on the loop and ~50 µs in all.

``append_sync`` does exactly what ``audit_log.append_events`` does inside ``Store.append_many``,
in one ``BEGIN IMMEDIATE`` transaction: the lease's fence checked first, the chain head read, the
deployment's newest seq compared with ``expect_last``, every event normalised and sealed onto the
chain (``audit_log.chain_run``: the same hashes), the rows inserted, the head moved, ``COMMIT``.
Any failure rolls the whole batch back: nothing of it is written. ``LeaseLost``, ``LogMoved`` and
a ``ValueError`` for an event that cannot be stored pass through as they are; every ``sqlite3``
error becomes a one-line ``StoreError`` (``retryable`` for operational ones: a lock held past
the busy timeout, a full disk, an I/O error), as the SQLAlchemy path maps them.

The connection has the store's pragmas (30 s busy timeout, foreign keys; the file is already in
WAL mode: ``Store.open`` put it there) and SQLite's default durability, like the engine's.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

from fleetgate.core.events import Event, StoredEvent
from fleetgate.errors import StoreError
from fleetgate.store.audit_log import (
    INSERT_COLUMNS,
    chain_run,
    log_moved,
    missing_head,
    prepare,
    row_values,
    stored_event,
)
from fleetgate.store.engine import BUSY_TIMEOUT_MS, first_line
from fleetgate.store.leases import Fence, Lease, check_holding
from fleetgate.store.schema import CHAIN_HEAD_ID
from fleetgate.store.store_file import StoreFile

# The row of ``audit_log.row_values``: its column list, so the two cannot drift apart. (Built
# from constants of our own schema, no input: nothing to inject.)
INSERT = (
    f"INSERT INTO events ({', '.join(INSERT_COLUMNS)}) "  # noqa: S608
    f"VALUES ({', '.join('?' * len(INSERT_COLUMNS))})"
)


def connect(path: str) -> sqlite3.Connection:
    """A connection with the store's pragmas, for the calling thread only."""
    conn = sqlite3.connect(path, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None)
    conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
    conn.execute("PRAGMA foreign_keys = ON")
    return conn


def append_sync(
    conn: sqlite3.Connection,
    new: Sequence[Event],
    fence: Fence | None = None,
    expect_last: int | None = None,
    last_only: bool = False,
) -> list[StoredEvent]:
    """Append ``new`` in order, in one transaction (module docstring); the events as stored,
    or (``last_only``) only the last of them: rebuilding each with its details decoded again
    was a third of this function's CPU, for a recorder that reads the last seq only."""
    if not new:
        return []
    prepared = prepare(new)
    conn.execute("BEGIN IMMEDIATE")
    try:
        if fence is not None:
            row = conn.execute(
                "SELECT deployment_id, holder, expires_at, epoch FROM leases "
                "WHERE deployment_id = ?",
                (fence.deployment_id,),
            ).fetchone()
            check_holding(
                fence, None if row is None else Lease(str(row[0]), str(row[1]), str(row[2]), row[3])
            )
        head = conn.execute(
            "SELECT last_seq, last_hash FROM chain_head WHERE id = ?", (CHAIN_HEAD_ID,)
        ).fetchone()
        if head is None:
            raise missing_head()
        if expect_last is not None:
            dep = str(new[0].deployment_id)
            query = "SELECT max(seq) FROM events WHERE deployment_id = ?"
            last = conn.execute(query, (dep,)).fetchone()[0] or 0  # no event yet: seq 0
            if last != expect_last:
                raise log_moved(dep, last, expect_last)
        links = chain_run(prepared, int(head[0]), str(head[1]))
        conn.executemany(INSERT, [row_values(p, k) for p, k in zip(prepared, links, strict=True)])
        last_seq, _prev, last_hash = links[-1]
        conn.execute(
            "UPDATE chain_head SET last_seq = ?, last_hash = ? WHERE id = ?",
            (last_seq, last_hash, CHAIN_HEAD_ID),
        )
        conn.execute("COMMIT")
    except BaseException:
        # SQLite may already have rolled back on its own (a full disk can do that).
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    if last_only:
        return [stored_event(prepared[-1], links[-1])]
    return [stored_event(p, k) for p, k in zip(prepared, links, strict=True)]


class SqliteAppender:
    """``append_sync`` in one dedicated thread with its own connection (a ``sqlite3``
    connection belongs to the thread that opened it). Batches queue on that one thread in the
    order they were submitted; the event loop only waits for the answer."""

    def __init__(self, path: str, display: str) -> None:
        self._path = path
        self._display = display
        # The file the store opened (``store_file``); checked before each batch.
        self.file: StoreFile | None = None
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="fleetgate-sqlite-append")
        self._conn: sqlite3.Connection | None = None
        self._closed = False

    def _run(
        self,
        new: Sequence[Event],
        fence: Fence | None,
        expect_last: int | None,
        last_only: bool = False,
    ) -> list[StoredEvent]:
        if self.file is not None:
            self.file.check()
        try:
            if self._conn is None:
                self._conn = connect(self._path)
            return append_sync(self._conn, new, fence, expect_last, last_only)
        except sqlite3.Error as exc:
            # SQLite opens a file it may not write (immutable, read-only mount at that moment)
            # read-only and the connection stays so: kept, it would fail every later batch
            # with this "retryable" error after the file is writable again, while the
            # SQLAlchemy path recovers. Dropped, the next batch reconnects.
            if getattr(exc, "sqlite_errorcode", 0) & 0xFF == sqlite3.SQLITE_READONLY:
                self._close()
            raise StoreError(
                f"store error on {self._display}: {first_line(exc)}",
                retryable=isinstance(exc, sqlite3.OperationalError),
            ) from exc

    async def append_many(
        self,
        new: Sequence[Event],
        *,
        fence: Fence | None = None,
        expect_last: int | None = None,
        last_only: bool = False,
    ) -> list[StoredEvent]:
        if self._closed:
            # Not the executor's RuntimeError: every failure of the store is a StoreError.
            raise StoreError(f"store {self._display} is closed")
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(
            self._pool, self._run, list(new), fence, expect_last, last_only
        )

    @property
    def path(self) -> str:
        return self._path

    def _close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    async def close(self) -> None:
        """Wait for the batches already submitted, then close the connection and the thread.
        A second close does nothing (``AsyncEngine.dispose``, the rest of ``Store.close``,
        may be called twice too; submitting to the shut-down executor raised RuntimeError)."""
        if self._closed:
            return
        self._closed = True
        await asyncio.wrap_future(self._pool.submit(self._close))
        self._pool.shutdown(wait=False)
