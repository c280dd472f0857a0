"""Shared fixtures.

Store: ``store_url`` runs a test once against SQLite (a file under ``tmp_path``) and once against
the PostgreSQL server on 127.0.0.1:5432 (database ``test``), each PostgreSQL test in a fresh
schema (``?schema=fg_…``) dropped at the end of the session. ``store`` is an open ``Store`` on
that URL.

PostgreSQL being unreachable makes the PostgreSQL cases FAIL, so CI cannot pass without testing
it; set ``FLEETGATE_SKIP_PG=1`` to skip them on a machine without the server. Set
``FLEETGATE_TEST_PG`` to use another server (a ``postgresql://`` URL without a schema).

Parallel runs (pytest-xdist, ``--dist loadfile``: a module's tests run on one worker, in order):
a test marked ``alone`` runs while no other test does. Every test holds a lock file shared by the
run's workers, ``alone`` ones exclusively, the rest shared; for the tests whose outcome depends
on the machine's spare CPU (real agents' latency gates).
"""

from __future__ import annotations

import asyncio
import fcntl
import os
import secrets
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

PG_CANDIDATES = (
    "postgresql://postgres@127.0.0.1:5432/test",
    "postgresql://root@127.0.0.1:5432/test",
)


class PgServer:
    """The test PostgreSQL server: hands out fresh schemas and drops them all at the end."""

    def __init__(self, base_url: str) -> None:
        self.base_url = base_url
        self.schemas: list[str] = []

    def new_schema_url(self) -> str:
        schema = f"fg_{secrets.token_hex(6)}"
        self.schemas.append(schema)
        return f"{self.base_url}?schema={schema}"

    async def execute(self, *statements: str) -> None:
        import asyncpg

        conn = await asyncpg.connect(self.base_url, timeout=5)
        try:
            for sql in statements:
                await conn.execute(sql)
        finally:
            await conn.close()


@pytest.fixture(scope="session")
def _run_lock(tmp_path_factory: pytest.TempPathFactory) -> Path | None:
    if os.environ.get("PYTEST_XDIST_WORKER") is None:
        return None  # one process: nothing runs beside any test
    # The run's base directory (pytest-N), shared by its workers (popen-gwK below it).
    return tmp_path_factory.getbasetemp().parent / "alone.lock"


@pytest.fixture(autouse=True)
def _alone_or_together(request: pytest.FixtureRequest, _run_lock: Path | None) -> Iterator[None]:
    if _run_lock is None:
        yield
        return
    alone = request.node.get_closest_marker("alone") is not None
    with _run_lock.open("a") as fh:  # closing it releases the lock
        fcntl.flock(fh, fcntl.LOCK_EX if alone else fcntl.LOCK_SH)
        yield


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PgServer]:
    if os.environ.get("FLEETGATE_SKIP_PG") == "1":
        pytest.skip("FLEETGATE_SKIP_PG=1: PostgreSQL tests skipped")
    env = os.environ.get("FLEETGATE_TEST_PG")
    problems: list[str] = []
    for url in (env,) if env else PG_CANDIDATES:
        server = PgServer(url)
        try:
            asyncio.run(server.execute("SELECT 1"))
        except Exception as exc:
            problems.append(f"{url}: {exc}")
            continue
        yield server
        if server.schemas:
            asyncio.run(
                server.execute(*(f'DROP SCHEMA IF EXISTS "{s}" CASCADE' for s in server.schemas))
            )
        return
    pytest.fail(
        "PostgreSQL is unreachable (" + "; ".join(problems) + "). "
        "Start it, point FLEETGATE_TEST_PG at one, or set FLEETGATE_SKIP_PG=1 to skip locally."
    )


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def store_url(request: Any, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'store' / 'fleetgate.db'}"
    server: PgServer = request.getfixturevalue("pg_server")
    return server.new_schema_url()


@pytest.fixture
async def store(store_url: str) -> AsyncIterator[Any]:
    from fleetgate.store import Store

    async with Store.open(store_url) as opened:
        yield opened
