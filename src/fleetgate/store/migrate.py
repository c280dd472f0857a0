"""Bring a store's schema up to date, programmatically, when it is opened.

Contract: ``upgrade(conn, target)`` runs every Alembic revision the database has not seen, inside
the caller's write transaction, so an interrupted upgrade leaves the schema as it was (both
SQLite and PostgreSQL have transactional DDL). Two processes opening a new store at once are
serialised: on SQLite by the ``BEGIN IMMEDIATE`` the write transaction already took, on
PostgreSQL by a transaction-scoped advisory lock; the second finds the schema current and does
nothing. A database stamped with a revision this code does not know (written by a newer
fleetgate) is refused with a ``StoreError`` rather than guessed at.

The migration scripts ship inside the package (``migrations/``); no ``alembic.ini`` is involved.
Alembic is synchronous, so it runs through ``AsyncConnection.run_sync``.
"""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from alembic.util.exc import CommandError
from sqlalchemy import text
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncConnection

from fleetgate.errors import StoreError
from fleetgate.store.engine import StoreTarget

MIGRATIONS_DIR = Path(__file__).parent / "migrations"
# Any fixed 64-bit number; it only has to be the same in every fleetgate process.
_PG_MIGRATION_LOCK = 0x666C_6565_7467_6174 & 0x7FFF_FFFF_FFFF_FFFF


def alembic_config(connection: Connection | None = None) -> Config:
    cfg = Config()
    # ConfigParser interpolates '%': escape it in case the install path contains one.
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR).replace("%", "%%"))
    if connection is not None:
        cfg.attributes["connection"] = connection
    return cfg


def head_revision() -> str:
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    assert head is not None
    return head


def current_revision(connection: Connection) -> str | None:
    return MigrationContext.configure(connection).get_current_revision()


def _upgrade_sync(connection: Connection, display: str) -> None:
    current = current_revision(connection)
    script = ScriptDirectory.from_config(alembic_config())
    if current is not None:
        try:
            script.get_revision(current)
        except CommandError as exc:
            raise StoreError(
                f"store {display} has schema revision {current!r}, which this fleetgate does not "
                "know (written by a newer version?); upgrade fleetgate"
            ) from exc
    command.upgrade(alembic_config(connection), "head")


async def upgrade(conn: AsyncConnection, target: StoreTarget) -> None:
    """Migrate to head inside ``conn``'s current (write) transaction."""
    if target.backend == "postgresql":
        await conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _PG_MIGRATION_LOCK})
        if target.schema:
            # The name was checked to be a plain identifier by parse_store_url.
            await conn.execute(text(f'CREATE SCHEMA IF NOT EXISTS "{target.schema}"'))
    await conn.run_sync(_upgrade_sync, target.display)
