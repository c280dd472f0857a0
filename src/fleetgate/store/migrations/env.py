"""Alembic environment for fleetgate's store.

Migrations run only through ``fleetgate.store.migrate``, which opens the connection, starts the
migration transaction (taking the lock that keeps two processes from migrating at once) and hands
the connection in through ``config.attributes["connection"]``. So there is no ``alembic.ini`` and
no URL here: the whole upgrade commits or rolls back with the caller's transaction.
"""

from __future__ import annotations

from alembic import context
from sqlalchemy.engine import Connection

from fleetgate.store.schema import metadata


def run_migrations() -> None:
    connection = context.config.attributes.get("connection")
    if not isinstance(connection, Connection):
        raise RuntimeError(
            "fleetgate's migrations run when a store is opened (fleetgate.store.Store.open), "
            "not from the alembic command line"
        )
    context.configure(connection=connection, target_metadata=metadata)
    with context.begin_transaction():
        context.run_migrations()


run_migrations()
