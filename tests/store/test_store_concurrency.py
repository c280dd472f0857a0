"""Concurrent appenders never fork the chain, and verify never false-alarms while they run."""

from __future__ import annotations

import asyncio
import sqlite3
import sys
from pathlib import Path

from lock_kit import write_lock_held

from fleetgate.core.events import Event, StoredEvent
from fleetgate.store import Store

PER_WRITER = 200


async def _appender(store: Store, name: str, batch: int) -> list[StoredEvent]:
    stored: list[StoredEvent] = []
    for i in range(0, PER_WRITER, batch):
        events = [
            Event(
                ts="2026-11-26T08:30:00.000000+00:00",
                deployment_id=f"dep-{name}",
                action="probe",
                details={"writer": name, "n": n},
            )
            for n in range(i, i + batch)
        ]
        stored.extend(
            await store.append_many(events) if batch > 1 else [await store.append(events[0])]
        )
        await asyncio.sleep(0)
    return stored


async def test_two_stores_appending_at_once_keep_one_chain(store_url: str) -> None:
    async with (
        Store.open(store_url) as one,
        Store.open(store_url) as two,
        Store.open(store_url) as auditor,
    ):
        done = asyncio.Event()
        reports = []

        async def keep_verifying() -> None:
            while not done.is_set():
                reports.append(await auditor.verify())
                await asyncio.sleep(0.01)

        checker = asyncio.create_task(keep_verifying(), name="verifier")
        try:
            a, b, c = await asyncio.gather(
                _appender(one, "a", 1), _appender(two, "b", 1), _appender(one, "c", 5)
            )
        finally:
            done.set()
            await checker

        assert reports and all(r.ok for r in reports), [r for r in reports if not r.ok]
        final = await auditor.verify()
        assert final.ok and final.checked == 3 * PER_WRITER
        seqs = sorted(e.seq for e in a + b + c)
        assert seqs == list(range(1, 3 * PER_WRITER + 1))
        logged = await auditor.events()
        assert [e.seq for e in logged] == seqs
        for name, mine in (("a", a), ("b", b), ("c", c)):
            # Each writer's events are in the log, in the order it wrote them.
            ns = [e.details["n"] for e in logged if e.details["writer"] == name]
            assert ns == list(range(PER_WRITER))
            assert [e.seq for e in mine] == sorted(e.seq for e in mine)
        # Batches are contiguous: append_many is one transaction.
        for k in range(0, PER_WRITER, 5):
            batch = c[k : k + 5]
            assert [e.seq for e in batch] == list(range(batch[0].seq, batch[0].seq + 5))
        assert await auditor.chain_head() == (logged[-1].seq, logged[-1].hash)


WRITER_SCRIPT = """
import asyncio, sys
from fleetgate.core.events import Event
from fleetgate.store import Store

async def main(url: str, name: str, count: int) -> None:
    async with Store.open(url) as store:
        for n in range(count):
            await store.append(Event(ts="2026-11-26T08:30:00+00:00", deployment_id=None,
                                     action="probe", details={"writer": name, "n": n}))

asyncio.run(main(sys.argv[1], sys.argv[2], int(sys.argv[3])))
"""


async def test_two_processes_open_and_append_at_once(store_url: str) -> None:
    procs = [
        await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            WRITER_SCRIPT,
            store_url,
            name,
            "150",
            stderr=asyncio.subprocess.PIPE,
        )
        for name in ("p", "q")
    ]
    try:
        results = await asyncio.wait_for(
            asyncio.gather(*(p.communicate() for p in procs)), timeout=120
        )
    finally:
        for p in procs:
            if p.returncode is None:
                p.kill()
                await p.wait()
    for p, (_, err) in zip(procs, results, strict=True):
        assert p.returncode == 0, err.decode()
    async with Store.open(store_url) as store:
        report = await store.verify()
        assert report.ok and report.checked == 300
        logged = await store.events()
    for name in ("p", "q"):
        assert [e.details["n"] for e in logged if e.details["writer"] == name] == list(range(150))


async def test_open_waits_while_another_process_creates_the_store(tmp_path: Path) -> None:
    """The CI race, made deterministic: a file still in rollback-journal mode whose write lock
    another connection holds. SQLite refuses the WAL switch at once there (no busy handler: it
    could deadlock), so a bare ``PRAGMA journal_mode = WAL`` failed the open in ~15 ms. The open
    must instead wait for the lock, without stalling the event loop, and then work."""
    path = tmp_path / "fleetgate.db"
    lock = ["CREATE TABLE scratch (x)", "BEGIN IMMEDIATE", "INSERT INTO scratch VALUES (1)"]
    async with write_lock_held(path, lock) as wait, Store.open(f"sqlite:///{path}") as store:
        waited = asyncio.get_running_loop().time() - wait.started
        await store.append(
            Event(ts="2026-11-26T08:30:00+00:00", deployment_id=None, action="probe")
        )
        assert (await store.verify()).checked == 1
    ticks = wait.ticks
    assert waited >= 0.45  # it waited for the other writer rather than failing or racing it
    assert ticks >= 20  # and the loop ran meanwhile (a blocking wait would leave ~0 ticks)
    mode = sqlite3.connect(path).execute("PRAGMA journal_mode").fetchone()[0]
    assert mode == "wal"
