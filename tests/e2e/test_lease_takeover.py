"""A controller SIGSTOPped mid-soak, taken over, then resumed writes nothing (invariant 9).

Real processes on loopback, on SQLite and PostgreSQL: a virtual fleet (``fleetgate sim run``),
``fleetgate deploy start`` driving the canary soak with a 1.5 s lease (``FLEETGATE_LEASE_TTL``).
It is stopped with SIGSTOP (never inside a store transaction: a stopped process holding a lock
would only prove that locks block), its lease expires on the store's clock, and ``deploy resume``
in another process takes over and drives the deployment to the approval gate. Then the first is
resumed with SIGCONT. It must exit non-zero with the lease-lost message naming the new holder,
and the log must be exactly what it was when the second controller finished: one
``soak.completed``, one ``canary.verdict``, an intact chain.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from crash_harness import LogReader, Procs, Run, Workspace, build_release, start_sim
from sqlalchemy.engine import make_url

from fleetgate.clock import parse_iso
from fleetgate.core.state import Phase

POLICY_TOML = """\
allow_short_soak = true

[soak]
canary = "5s"
between_waves = "1s"

[retries]
backoff = "0.2s"
"""
LEASE_TTL_S = "1.5"


@pytest.fixture
def procs() -> Iterator[Procs]:
    p = Procs()
    try:
        yield p
    finally:
        p.kill_all()  # SIGKILL ends a stopped process too


def _store_is_free(db: str, dep: str) -> bool:
    """True when no transaction holds the locks an append or a take-over needs."""
    url = make_url(db)
    if url.get_backend_name() == "sqlite":
        assert url.database is not None
        conn = sqlite3.connect(url.database, timeout=0.5, isolation_level=None)
        try:
            conn.execute("BEGIN IMMEDIATE")
            conn.execute("ROLLBACK")
            return True
        except sqlite3.OperationalError:
            return False
        finally:
            conn.close()

    async def probe() -> bool:
        import asyncpg

        schema = url.query["schema"]
        base = url.difference_update_query(["schema"]).set(drivername="postgresql")
        conn = await asyncpg.connect(base.render_as_string(hide_password=False), timeout=5)
        try:
            await conn.execute(f'SET search_path = "{schema}"')
            async with conn.transaction():
                await conn.execute(
                    "SELECT 1 FROM leases WHERE deployment_id = $1 FOR UPDATE NOWAIT", dep
                )
                await conn.execute("SELECT 1 FROM chain_head FOR UPDATE NOWAIT")
            return True
        except asyncpg.exceptions.LockNotAvailableError:
            return False
        finally:
            await conn.close()

    return asyncio.run(probe())


def _stop_outside_a_transaction(run: Run, db: str, dep: str) -> None:
    for _ in range(50):
        os.kill(run.proc.pid, signal.SIGSTOP)
        if _store_is_free(db, dep):
            return
        os.kill(run.proc.pid, signal.SIGCONT)  # caught mid-transaction: let it finish
        time.sleep(0.05)
    raise AssertionError("could not stop the controller outside a store transaction")


def _store_call(reader: LogReader, call: Any) -> Any:
    return reader._loop.run_until_complete(call(reader._store))  # the reader's own store


def _wait_lease_expired(reader: LogReader, dep: str) -> None:
    async def expired(store: Any) -> bool:
        lease = await store.get_lease(dep)
        return lease is not None and await store.now() > parse_iso(lease.expires_at)

    deadline = time.monotonic() + 60
    while not _store_call(reader, expired):
        assert time.monotonic() < deadline, "the stopped controller's lease never expired"
        time.sleep(0.1)


def _holdings(events: list[Any]) -> list[tuple[str, int]]:
    return [
        (e.details["holder"], e.details["epoch"])
        for e in events
        if e.action == "distribution.started"
    ]


@pytest.mark.slow
@pytest.mark.parametrize(
    "backend", ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)]
)
def test_a_sigstopped_driver_resumed_after_a_take_over_writes_nothing(
    tmp_path: Path, procs: Procs, backend: str, request: pytest.FixtureRequest
) -> None:
    bundle, pubkey = build_release(tmp_path / "release")
    policy = tmp_path / "rollout.toml"
    policy.write_text(POLICY_TOML)
    ws = Workspace(tmp_path / "ws", procs)
    if backend == "postgresql":
        ws.db = request.getfixturevalue("pg_server").new_schema_url()
    ws.env["FLEETGATE_LEASE_TTL"] = LEASE_TTL_S
    start_sim(ws, "--devices", "10", "--seed", "3")
    res = ws.cli("registry", "import", "fleet.yaml")
    assert res.returncode == 0, res.stderr
    key = ("--pubkey", str(pubkey), "--json")

    first = ws.spawn("deploy", "start", str(bundle), "--policy", str(policy), *key)
    reader = LogReader(ws.db)
    try:
        deadline = time.monotonic() + 120
        while ("soak.started", None, 0, "soak") not in reader.reached:
            reader.poll()
            assert first.proc.poll() is None, f"exited {first.proc.poll()}: {first.stderr()}"
            assert time.monotonic() < deadline, "no canary soak started"
            time.sleep(0.02)
        dep = _latest(ws)
        _stop_outside_a_transaction(first, ws.db, dep)
        events = reader.events(dep)
        ((stopped_holder, stopped_epoch),) = _holdings(events)
        assert not any(e.action == "soak.completed" for e in events)

        _wait_lease_expired(reader, dep)
        second = ws.cli("deploy", "resume", dep, *key, timeout=120)
        assert second.returncode == 4, second.stderr
        assert json.loads(second.stdout)["phase"] == Phase.AWAITING_APPROVAL.value
        head = reader.poll()
        events = reader.events(dep)
        (stopped, (holder, epoch)) = _holdings(events)
        assert stopped == (stopped_holder, stopped_epoch) and epoch > stopped_epoch

        os.kill(first.proc.pid, signal.SIGCONT)
        rc = first.proc.wait(timeout=60)
        assert rc not in (0, 4), (rc, first.stdout())
        assert f"lease lost to {holder} (epoch {epoch})" in first.stderr(), first.stderr()
        assert "this controller wrote nothing more" in first.stderr()

        assert reader.poll() == head  # not one event from the resumed controller
        events = reader.events(dep)
        assert sum(e.action == "soak.completed" for e in events) == 1
        assert sum(e.action == "canary.verdict" for e in events) == 1
        (done,) = (e for e in events if e.action == "soak.completed")
        assert done.details["served_s"] >= 5.0
        res = ws.cli("audit", "verify")
        assert res.returncode == 0, res.stdout + res.stderr
    finally:
        reader.close()


def _latest(ws: Workspace) -> str:
    _rc, doc = ws.status()
    assert doc is not None
    return str(doc["deployment_id"])
