"""Store URLs and the SQLAlchemy async engine behind a store.

Contract:

- ``parse_store_url`` accepts ``sqlite:///PATH`` / ``sqlite+aiosqlite:///PATH`` and
  ``postgresql://…`` / ``postgres://…`` / ``postgresql+asyncpg://…`` and normalises them to the
  async drivers (aiosqlite, asyncpg). Anything else — unparseable text, another database, a sync
  driver named explicitly, in-memory SQLite (each pooled connection would get its own empty
  database) — is a ``StoreConfigError`` with one line saying what to write instead.
- PostgreSQL URLs may carry ``?schema=NAME``: fleetgate removes it from the URL and sets the
  session ``search_path`` to that schema (created at open if missing), so several stores can
  share one database (the tests use a schema per test).
- SQLite connections run with WAL, ``foreign_keys=ON`` and a 30 s ``busy_timeout``. fleetgate
  emits ``BEGIN`` itself: write transactions (connection option ``fleetgate_write``) start with
  ``BEGIN IMMEDIATE`` so two processes that append at once queue on SQLite's write lock instead
  of both reading the same chain head — the serialisation the hash chain needs. Reads use plain
  ``BEGIN``, which under WAL never blocks a writer.
- Passwords never appear in messages: ``StoreTarget.display`` hides them.
"""

from __future__ import annotations

import asyncio
import re
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import URL, Connection, make_url
from sqlalchemy.exc import ArgumentError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.util import await_only

from fleetgate.errors import StoreConfigError

SQLITE_DRIVER = "sqlite+aiosqlite"
POSTGRES_DRIVER = "postgresql+asyncpg"
BUSY_TIMEOUT_MS = 30_000
CONNECT_TIMEOUT_S = 10
WRITE_OPTION = "fleetgate_write"

_SCHEMA_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")
_HINT = "use sqlite:///PATH or postgresql://USER@HOST:PORT/DBNAME"


@dataclass(frozen=True, slots=True)
class StoreTarget:
    """A validated store location: the async-driver URL plus what fleetgate adds to it."""

    url: URL
    backend: str  # "sqlite" | "postgresql"
    schema: str | None = None

    @property
    def display(self) -> str:
        return self.url.render_as_string(hide_password=True) + (
            f" (schema {self.schema})" if self.schema else ""
        )


def parse_store_url(raw: str) -> StoreTarget:
    """Validate and normalise a store URL (see the module docstring)."""
    try:
        url = make_url(raw.strip())
    except (ArgumentError, ValueError) as exc:
        raise StoreConfigError(f"store URL {raw!r} is not a database URL; {_HINT}") from exc
    backend, _, driver = url.drivername.partition("+")
    shown = url.render_as_string(hide_password=True)
    if backend == "sqlite":
        if driver not in ("", "aiosqlite"):
            raise StoreConfigError(
                f"store URL {shown!r}: driver {driver!r} is not async; write sqlite:///PATH"
            )
        if not url.database or url.database == ":memory:" or url.database.startswith("file:"):
            raise StoreConfigError(
                f"store URL {shown!r}: in-memory SQLite cannot be shared; give a file path"
            )
        if url.query:
            raise StoreConfigError(
                f"store URL {shown!r}: SQLite URLs take no options ({', '.join(url.query)})"
            )
        return StoreTarget(url.set(drivername=SQLITE_DRIVER), "sqlite")
    if backend in ("postgresql", "postgres"):
        if driver not in ("", "asyncpg"):
            raise StoreConfigError(
                f"store URL {shown!r}: driver {driver!r} is not supported; write postgresql://…"
            )
        schema = url.query.get("schema")
        if isinstance(schema, tuple):
            raise StoreConfigError(f"store URL {shown!r}: schema given more than once")
        if schema is not None and not _SCHEMA_RE.match(schema):
            raise StoreConfigError(
                f"store URL {shown!r}: schema {schema!r} must be a plain SQL identifier"
            )
        url = url.difference_update_query(["schema"]).set(drivername=POSTGRES_DRIVER)
        return StoreTarget(url, "postgresql", schema)
    raise StoreConfigError(f"store URL {shown!r}: database {backend!r} is not supported; {_HINT}")


def first_line(exc: BaseException) -> str:
    """A driver error's message in one line (the database's own words, without SQLAlchemy's
    statement and background link)."""
    orig = getattr(exc, "orig", None) or exc
    lines = str(orig).strip().splitlines()
    return lines[0] if lines else type(orig).__name__


def create_store_engine(target: StoreTarget) -> AsyncEngine:
    """An async engine for ``target`` with fleetgate's connection set-up attached."""
    if target.backend == "sqlite":
        return _sqlite_engine(target)
    connect_args: dict[str, Any] = {"timeout": CONNECT_TIMEOUT_S}
    if target.schema:
        connect_args["server_settings"] = {"search_path": target.schema}
    return create_async_engine(target.url, connect_args=connect_args, pool_pre_ping=True)


def _sqlite_engine(target: StoreTarget) -> AsyncEngine:
    assert target.url.database is not None
    try:
        Path(target.url.database).expanduser().parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise StoreConfigError(
            f"store URL {target.display!r}: cannot create its directory: {exc.strerror}"
        ) from exc
    engine = create_async_engine(target.url, connect_args={"timeout": BUSY_TIMEOUT_MS / 1000})

    @event.listens_for(engine.sync_engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Stop the driver from emitting its own (deferred) BEGIN: ``_on_begin`` decides.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        try:
            cursor.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            _ensure_wal(cursor)
            cursor.execute("PRAGMA foreign_keys = ON")
        finally:
            cursor.close()

    @event.listens_for(engine.sync_engine, "begin")
    def _on_begin(conn: Connection) -> None:
        write = conn.get_execution_options().get(WRITE_OPTION, False)
        conn.exec_driver_sql("BEGIN IMMEDIATE" if write else "BEGIN")

    return engine


def _ensure_wal(cursor: Any) -> None:
    """Put the database file in WAL mode, waiting out other processes for up to busy_timeout.

    Switching a file that is still in rollback-journal mode (a store being created by another
    process at this very moment) reads the header under a shared lock and then upgrades it.
    SQLite answers that upgrade ``database is locked`` at once, without its busy handler, when
    another connection holds the write lock (waiting could deadlock). So the switch is retried
    here; the pause is awaited (this hook runs in SQLAlchemy's greenlet on the event loop, where
    a blocking sleep would stall every other task). A file that is already WAL — every store
    after its first open — needs no switch and no retry.
    """
    cursor.execute("PRAGMA journal_mode")
    if cursor.fetchone()[0] == "wal":
        return
    # A plain loop, not stamina: this is a lock wait like busy_timeout's own, not a fault worth
    # a logged retry (stamina would log each one, on stdout under the CLI's JSON output).
    deadline = time.monotonic() + BUSY_TIMEOUT_MS / 1000
    pause = 0.005
    while True:
        try:
            cursor.execute("PRAGMA journal_mode = WAL")
            cursor.fetchall()
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() + pause > deadline:
                raise
        await_only(asyncio.sleep(pause))
        pause = min(pause * 2, 0.1)
