"""The SQLite append thread (``store/sqlite_append.py``, ADR 0019) under real faults: a writer
process SIGKILLed mid-stream or mid-commit, a writer SIGSTOPped while it holds the write lock,
a lease taken over mid-stream, a stale ``expect_last``, events that cannot be stored, a store
edited on disk, files made unwritable or deleted, a closed store, and lean appends racing
``store.transaction()`` blocks and a second ``Store`` on the same file. Whatever happens, every
batch is whole or absent, the chain never forks, and ``verify()`` tells the truth."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
from collections import defaultdict
from collections.abc import AsyncIterator, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from fleetgate.clock import parse_iso
from fleetgate.core.events import Event, StoredEvent
from fleetgate.errors import LeaseLost, LogMoved, StoreError
from fleetgate.store import Lease, Store, engine, sqlite_append

TS = "2026-11-26T08:30:00.000000+00:00"


def ev(writer: str, n: int, *, batch: int = 0, dep: str = "dep-1", pad: int = 0) -> Event:
    return Event(
        ts=TS,
        deployment_id=dep,
        device_id=f"dev-{n % 5}",
        action="probe",
        details={"writer": writer, "batch": batch, "n": n, "pad": "x" * pad},
    )


def rows(db: Path, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
    conn = sqlite3.connect(db)
    try:
        return conn.execute(sql, params).fetchall()
    finally:
        conn.close()


def write(db: Path, sql: str, params: Sequence[Any] = ()) -> None:
    conn = sqlite3.connect(db)
    try:
        conn.execute(sql, params)
        conn.commit()
    finally:
        conn.close()


def assert_batches_whole(logged: Sequence[StoredEvent], size: int, writer: str) -> list[int]:
    """Every batch ``writer`` has in the log is all there, in one run of seqs, in order; and
    its batches are 0, 1, 2, … with none missing. Returns the batch numbers."""
    by_batch: dict[int, list[StoredEvent]] = defaultdict(list)
    for e in logged:
        if e.details["writer"] == writer:
            by_batch[int(e.details["batch"])].append(e)
    for k, events in by_batch.items():
        assert [e.details["n"] for e in events] == list(range(size)), f"batch {k} torn"
        first = events[0].seq
        assert [e.seq for e in events] == list(range(first, first + size)), f"batch {k} split"
    assert sorted(by_batch) == list(range(len(by_batch)))
    return sorted(by_batch)


async def assert_sound(store: Store, total: int) -> list[StoredEvent]:
    report = await store.verify()
    assert report.ok, report
    assert report.checked == total
    logged = await store.events()
    assert [e.seq for e in logged] == list(range(1, total + 1))
    assert await store.chain_head() == (
        (logged[-1].seq, logged[-1].hash) if logged else (0, "0" * 64)
    )
    return logged


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "store" / "fleetgate.db"


@pytest.fixture
async def store(db: Path) -> AsyncIterator[Store]:
    async with Store.open(f"sqlite:///{db}") as opened:
        yield opened


async def append(store: Store, batch: Sequence[Event], *, joined: bool, **kw: Any) -> Any:
    if joined:
        async with store.transaction():
            return await store.append_many(batch, **kw)
    return await store.append_many(batch, **kw)


# -- processes killed and stopped ------------------------------------------------------------

STREAM_SCRIPT = """
import asyncio, sys
from fleetgate.core.events import Event
from fleetgate.store import Store

async def main(url, size):
    async with Store.open(url) as store:
        k = 0
        while True:
            await store.append_many([
                Event(ts="2026-11-26T08:30:00+00:00", deployment_id="dep-k", action="probe",
                      details={"writer": "child", "batch": k, "n": n, "pad": "x" * 3000})
                for n in range(size)
            ])
            print(k, flush=True)
            k += 1

asyncio.run(main(sys.argv[1], int(sys.argv[2])))
"""

# Stops just before the ``COMMIT`` of its HOLD-th batch, every row and the head written: a big
# batch (~6 MB > SQLite's 2 MB page cache) has spilled uncommitted pages into the WAL by then.
HOLD_COMMIT_SCRIPT = """
import asyncio, sqlite3, sys, time
from fleetgate.core.events import Event
from fleetgate.store import Store, sqlite_append

HOLD = int(sys.argv[3])
commits = 0

class Conn(sqlite3.Connection):
    def execute(self, sql, *args):
        global commits
        if sql == "COMMIT":
            commits += 1
            if commits == HOLD:
                print("holding", flush=True)
                time.sleep(60)
        return super().execute(sql, *args)

def connect(path):
    conn = sqlite3.connect(path, timeout=30, isolation_level=None, factory=Conn)
    conn.execute("PRAGMA busy_timeout = 30000")
    return conn

sqlite_append.connect = connect

async def main(url, size):
    async with Store.open(url) as store:
        for k in range(HOLD):
            await store.append_many([
                Event(ts="2026-11-26T08:30:00+00:00", deployment_id="dep-k", action="probe",
                      details={"writer": "child", "batch": k, "n": n, "pad": "y" * 30000})
                for n in range(size)
            ])

asyncio.run(main(sys.argv[1], int(sys.argv[2])))
"""

# Holds the write lock (inside ``append_sync``, between BEGIN IMMEDIATE and COMMIT) for a
# moment at its second batch, long enough for the test to SIGSTOP it there.
HOLD_LOCK_SCRIPT = """
import asyncio, sys, time
from fleetgate.core.events import Event
from fleetgate.store import Store, sqlite_append

real = sqlite_append.chain_run
calls = 0

def chain_run(prepared, seq, prev):
    global calls
    calls += 1
    if calls == 2:
        print("holding", flush=True)
        time.sleep(0.5)
    return real(prepared, seq, prev)

sqlite_append.chain_run = chain_run

async def main(url, size):
    async with Store.open(url) as store:
        for k in range(4):
            await store.append_many([
                Event(ts="2026-11-26T08:30:00+00:00", deployment_id="dep-k", action="probe",
                      details={"writer": "child", "batch": k, "n": n})
                for n in range(size)
            ])
    print("done", flush=True)

asyncio.run(main(sys.argv[1], int(sys.argv[2])))
"""


async def spawn(script: str, *args: str) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        script,
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )


async def read_line(proc: asyncio.subprocess.Process, timeout: float = 15) -> str:
    assert proc.stdout is not None
    line = await asyncio.wait_for(proc.stdout.readline(), timeout)
    if not line:
        assert proc.stderr is not None
        err = await proc.stderr.read()
        raise AssertionError(f"child ended early: {err.decode()[-2000:]}")
    return line.decode().strip()


async def reap(proc: asyncio.subprocess.Process) -> None:
    """Kill (by its pid) a child still running, stopped or not, and wait for it."""
    if proc.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signal.SIGKILL)
        await proc.wait()


async def test_a_writer_sigkilled_mid_stream_leaves_whole_batches(db: Path) -> None:
    url = f"sqlite:///{db}"
    async with Store.open(url):
        pass
    size = 40
    proc = await spawn(STREAM_SCRIPT, url, str(size))
    try:
        reported = [await read_line(proc) for _ in range(6)]
        await asyncio.sleep(0.013)  # somewhere inside a later batch
        os.kill(proc.pid, signal.SIGKILL)
        await proc.wait()
    finally:
        await reap(proc)
    assert proc.returncode == -signal.SIGKILL
    async with Store.open(url) as store:
        total = (await store.chain_head())[0]
        assert total % size == 0
        logged = await assert_sound(store, total)
        batches = assert_batches_whole(logged, size, "child")
        assert len(batches) >= len(reported)  # every batch it saw committed survived
        # The dead process's lock went with it: the next append neither waits nor forks.
        more = await asyncio.wait_for(store.append(ev("parent", 0)), 5)
        assert more.seq == total + 1 and more.prev_hash == logged[-1].hash
        assert (await store.verify()).ok


async def test_a_writer_sigkilled_inside_commit_leaves_no_trace_of_its_batch(db: Path) -> None:
    url = f"sqlite:///{db}"
    size, hold = 200, 3
    proc = await spawn(HOLD_COMMIT_SCRIPT, url, str(size), str(hold))
    try:
        assert await read_line(proc, timeout=30) == "holding"
        os.kill(proc.pid, signal.SIGKILL)
        await proc.wait()
    finally:
        await reap(proc)
    async with Store.open(url) as store:
        # Two batches committed; the third's rows and head (written, some of them spilled into
        # the WAL, never committed) are gone.
        logged = await assert_sound(store, (hold - 1) * size)
        assert assert_batches_whole(logged, size, "child") == list(range(hold - 1))
        more = await asyncio.wait_for(store.append_many([ev("p", 0), ev("p", 1)]), 5)
        assert [e.seq for e in more] == [(hold - 1) * size + 1, (hold - 1) * size + 2]
        assert (await store.verify()).ok


@pytest.fixture
def short_busy_timeout(monkeypatch: pytest.MonkeyPatch) -> Iterator[float]:
    """Lock waits of 1 s instead of 30 (both the append thread's and SQLAlchemy's), so a
    stopped writer costs the test seconds, not minutes."""
    monkeypatch.setattr(sqlite_append, "BUSY_TIMEOUT_MS", 1000)
    monkeypatch.setattr(engine, "BUSY_TIMEOUT_MS", 1000)
    yield 1.0


async def test_a_sigstopped_writer_holding_the_lock_delays_but_never_forks(
    db: Path, short_busy_timeout: float
) -> None:
    url = f"sqlite:///{db}"
    size = 5
    async with Store.open(url) as store:
        await store.append(ev("parent", 0))
        proc = await spawn(HOLD_LOCK_SCRIPT, url, str(size))
        try:
            assert await read_line(proc) == "holding"
            os.kill(proc.pid, signal.SIGSTOP)  # frozen inside its second batch, lock held
            loop = asyncio.get_running_loop()
            started = loop.time()
            with pytest.raises(StoreError) as lean:
                await store.append(ev("parent", 1))
            assert loop.time() - started >= short_busy_timeout * 0.9  # it waited for the lock
            assert lean.value.retryable and "locked" in str(lean.value)
            with pytest.raises(StoreError) as joined:
                async with store.transaction():
                    await store.append(ev("parent", 1))
            assert joined.value.retryable
            # Readers are not blocked by the frozen writer, and see a sound chain.
            during = await store.verify()
            assert during.ok and during.checked == 1 + size

            async def resume() -> None:
                await asyncio.sleep(0.2)
                os.kill(proc.pid, signal.SIGCONT)

            waker = asyncio.create_task(resume())
            late = await store.append(ev("parent", 2))
            await waker
            assert await read_line(proc) == "done"
            await asyncio.wait_for(proc.wait(), 10)
        finally:
            await reap(proc)
        assert proc.returncode == 0
        logged = await assert_sound(store, 2 + 4 * size)
        assert assert_batches_whole(logged, size, "child") == [0, 1, 2, 3]
        mine = [e.details["n"] for e in logged if e.details["writer"] == "parent"]
        assert mine == [0, 2]  # the refused appends wrote nothing
        held = [e.seq for e in logged if e.details["writer"] == "child" and e.details["batch"] == 1]
        assert late.seq > max(held)  # it queued behind the frozen batch instead of racing it


# -- fences, expect_last, events that cannot be stored -----------------------------------------


async def wait_expired(store: Store, lease: Lease) -> None:
    while await store.now() <= parse_iso(lease.expires_at):
        await asyncio.sleep(0.02)


async def test_a_lease_taken_over_mid_stream_stops_the_old_writer_at_once(db: Path) -> None:
    url = f"sqlite:///{db}"
    size = 4
    async with Store.open(url) as old, Store.open(url) as new:
        lease = await old.acquire_lease("dep-1", "ctl-a", 0.3)
        assert lease is not None

        async def stream() -> tuple[int, LeaseLost]:
            k = 0
            while True:
                batch = [ev("a", n, batch=k) for n in range(size)]
                try:
                    await old.append_many(batch, fence=lease.fence)
                except LeaseLost as exc:
                    return k, exc
                k += 1
                await asyncio.sleep(0.005)

        writer = asyncio.create_task(stream())
        await wait_expired(new, lease)  # lapsed: the old holding may still write until ...
        taken = await new.acquire_lease("dep-1", "ctl-b", 30)  # ... someone takes over
        assert taken is not None and taken.epoch == lease.epoch + 1
        mark = await new.append(ev("b", 0), fence=taken.fence)
        written, lost = await asyncio.wait_for(writer, 5)
        assert (lost.holder, lost.epoch, lost.retryable) == ("ctl-b", taken.epoch, False)
        assert written > 0
        logged = await assert_sound(new, written * size + 1)
        assert assert_batches_whole(logged, size, "a") == list(range(written))
        assert all(e.seq < mark.seq for e in logged if e.details["writer"] == "a")
        # A joined append with the stale fence is refused the same way.
        with pytest.raises(LeaseLost):
            await append(old, [ev("a", 0, batch=99)], joined=True, fence=lease.fence)
        await assert_sound(new, written * size + 1)


@pytest.mark.parametrize("joined", [False, True], ids=["lean", "joined"])
async def test_expect_last_refuses_a_stale_writer_and_writes_nothing(
    store: Store, joined: bool
) -> None:
    await store.append_many([ev("w", n) for n in range(3)])  # dep-1: 1..3
    await store.append(ev("w", 3, dep="dep-2"))  # another deployment's event: not a move
    with pytest.raises(LogMoved) as moved:
        await append(store, [ev("w", 4), ev("w", 5)], joined=joined, expect_last=2)
    assert moved.value.deployment_id == "dep-1" and not moved.value.retryable
    await assert_sound(store, 4)
    stored = await append(store, [ev("w", 4)], joined=joined, expect_last=3)
    assert stored[0].seq == 5
    await assert_sound(store, 5)


async def test_log_moved_reads_the_same_on_both_paths(store: Store) -> None:
    """ADR 0019: the lean path's errors are the SQLAlchemy path's. A deployment with no event
    yet is at seq 0 on both (the lean path said "seq None")."""
    messages = []
    for joined in (False, True):
        with pytest.raises(LogMoved) as moved:
            await append(store, [ev("w", 0, dep="dep-new")], joined=joined, expect_last=7)
        messages.append(str(moved.value))
    assert messages[0] == messages[1]
    assert "seq 0 is newer than 7" in messages[0]
    await assert_sound(store, 0)


BAD_EVENTS: dict[str, tuple[dict[str, Any], type[Exception]]] = {
    # refused before the transaction starts (normalising)
    "details-object": ({"details": {"x": object()}}, ValueError),
    "details-bytes": ({"details": {"x": b"raw"}}, ValueError),
    "details-mixed-keys": ({"details": {1: "a", "b": 2}}, ValueError),
    "details-lone-surrogate": ({"details": {"x": "\ud800"}}, ValueError),
    "ts-not-a-time": ({"ts": "yesterday"}, ValueError),
    "ts-without-offset": ({"ts": "2026-11-26T08:30:00"}, ValueError),
    # refused inside the transaction, after BEGIN IMMEDIATE (sealing) ...
    "device-lone-surrogate": ({"device_id": "dev-\udfff"}, ValueError),
    # ... and after earlier rows of the batch were inserted (binding the third row)
    "device-unbindable": ({"device_id": ("a", "b")}, StoreError),
}


@pytest.mark.parametrize("joined", [False, True], ids=["lean", "joined"])
@pytest.mark.parametrize("case", sorted(BAD_EVENTS))
async def test_an_event_that_cannot_be_stored_writes_nothing(
    store: Store, case: str, joined: bool
) -> None:
    await store.append_many([ev("w", n) for n in range(2)])
    head = await store.chain_head()
    fields, error = BAD_EVENTS[case]
    bad = Event(**{"ts": TS, "deployment_id": "dep-1", "action": "probe", **fields})
    with pytest.raises(error) as err:
        await append(store, [ev("w", 2), ev("w", 3), bad, ev("w", 4)], joined=joined)
    if isinstance(err.value, StoreError):
        assert not err.value.retryable and "\n" not in str(err.value)
    assert await store.chain_head() == head
    await assert_sound(store, 2)
    # The connection is not left inside a transaction: the store goes on.
    stored = await append(store, [ev("w", 2), ev("w", 3)], joined=joined)
    assert [e.seq for e in stored] == [3, 4]
    await assert_sound(store, 4)


# -- a store edited on disk -------------------------------------------------------------------


async def test_an_edited_row_stays_broken_after_more_appends(store: Store, db: Path) -> None:
    await store.append_many([ev("w", n) for n in range(5)])
    write(db, "UPDATE events SET details = ? WHERE seq = 2", ('{"n":99,"writer":"w"}',))
    await store.append_many([ev("w", n, batch=1) for n in range(3)])
    async with store.transaction():
        await store.append(ev("w", 9, batch=2))
    report = await store.verify()
    assert not report.ok and report.first_bad_seq == 2 and "edited" in report.reason


@pytest.mark.parametrize(
    ("edit", "bad_seq", "refused"),
    [
        # the head's hash forged: the next event chains onto it, verify names that event
        ("UPDATE chain_head SET last_hash = '" + "f" * 64 + "'", 5, False),
        # the head moved back: the next seq is taken, the append is refused, nothing written
        ("UPDATE chain_head SET last_seq = 3", None, True),
        # the head moved on: the append leaves a gap, verify names the first missing seq
        ("UPDATE chain_head SET last_seq = 7", 5, False),
    ],
    ids=["forged-hash", "seq-behind", "seq-ahead"],
)
async def test_a_tampered_chain_head_is_never_hidden_by_an_append(
    store: Store, db: Path, edit: str, bad_seq: int | None, refused: bool
) -> None:
    await store.append_many([ev("w", n) for n in range(4)])
    write(db, edit)
    if refused:
        with pytest.raises(StoreError) as err:
            await store.append(ev("w", 4))
        assert not err.value.retryable and "UNIQUE" in str(err.value)
        assert rows(db, "SELECT count(*) FROM events") == [(4,)]
    else:
        await store.append(ev("w", 4))
    report = await store.verify()
    assert not report.ok
    if bad_seq is not None:
        assert report.first_bad_seq == bad_seq


# -- files that cannot be written, deleted, a closed store -------------------------------------


def chattr(flag: str, *paths: Path) -> bool:
    if shutil.which("chattr") is None:
        return False
    done = subprocess.run(["chattr", flag, *map(str, paths)], capture_output=True, check=False)
    return done.returncode == 0


@pytest.fixture
def immutable(db: Path) -> Iterator[list[Path]]:
    """Paths the test makes immutable (``chattr +i``: binds root too, unlike chmod), made
    mutable again whatever happens, so ``tmp_path`` can be cleaned up. Never the ``-shm``
    file: SQLite maps it into memory, and writing a mapped immutable page is a SIGBUS that
    kills the whole test run."""
    paths: list[Path] = []
    yield paths
    if paths:
        chattr("-i", *paths)


async def test_an_unwritable_wal_is_a_retryable_error_and_the_store_recovers(
    store: Store, db: Path, immutable: list[Path]
) -> None:
    await store.append_many([ev("w", n) for n in range(3)])
    targets = [db, Path(f"{db}-wal"), db.parent]
    if not chattr("+i", *targets):
        pytest.skip("chattr +i is not available on this filesystem")
    immutable.extend(targets)
    for joined in (False, True):
        with pytest.raises(StoreError) as err:
            await append(store, [ev("w", 3), ev("w", 4)], joined=joined)
        assert err.value.retryable and "\n" not in str(err.value)
    await assert_sound(store, 3)
    assert chattr("-i", *targets)
    stored = await store.append_many([ev("w", 3), ev("w", 4)])
    assert [e.seq for e in stored] == [4, 5]
    await assert_sound(store, 5)


async def test_a_file_unwritable_when_the_append_thread_connects_does_not_wedge_it(
    store: Store, db: Path, immutable: list[Path]
) -> None:
    """The append thread connects at its first batch. If the file cannot be written at that
    moment, SQLite opens it read-only and the connection stays read-only: every later batch
    failed with a "retryable" error for good, after the file was writable again, while the
    SQLAlchemy path (whose connections opened earlier) went on. It must reconnect."""
    await store.verify()  # opened, the append thread not yet connected
    targets = [db, Path(f"{db}-wal")]
    if not chattr("+i", *targets):
        pytest.skip("chattr +i is not available on this filesystem")
    immutable.extend(targets)
    with pytest.raises(StoreError) as err:
        await store.append(ev("w", 0))
    assert err.value.retryable
    assert chattr("-i", *targets)
    async with store.transaction():
        assert (await store.append(ev("w", 0))).seq == 1
    assert (await store.append(ev("w", 1))).seq == 2  # the retry the error promised
    await assert_sound(store, 2)


async def test_an_append_to_a_deleted_store_file_fails(store: Store, db: Path) -> None:
    """SQLite in WAL mode keeps writing to a store file deleted while open: the appends would
    succeed into the unlinked inode and be lost at close. Both write paths refuse instead."""
    await store.append_many([ev("w", n) for n in range(3)])
    for suffix in ("", "-wal", "-shm"):
        Path(f"{db}{suffix}").unlink()
    with pytest.raises(StoreError, match="deleted") as info:
        await store.append(ev("w", 3))
    assert not info.value.retryable and "\n" not in str(info.value)
    with pytest.raises(StoreError, match="deleted"):
        async with store.transaction():
            await store.append(ev("w", 3))
    assert not db.exists()  # nothing recreated it either


async def test_a_store_file_replaced_on_disk_is_refused_and_the_new_file_untouched(
    store: Store, db: Path, tmp_path: Path
) -> None:
    """A backup restored (renamed) over the store while a controller runs: the controller
    must not go on writing into the file it had open, nor into the restored one."""
    await store.append_many([ev("w", n) for n in range(2)])
    async with Store.open(f"sqlite:///{tmp_path / 'backup.db'}") as backup:
        await backup.append(ev("b", 0))
    for suffix in ("-wal", "-shm"):
        Path(f"{db}{suffix}").unlink(missing_ok=True)
    os.replace(tmp_path / "backup.db", db)
    with pytest.raises(StoreError, match="replaced"):
        await store.append(ev("w", 2))
    with pytest.raises(StoreError, match="replaced"):
        await store.update_deployment("dep", "COMPLETE", {})
    async with Store.open(f"sqlite:///{db}") as restored:
        assert [e.details["writer"] for e in await restored.events()] == ["b"]
        assert (await restored.verify()).ok


async def test_a_closed_store_closes_again_and_refuses_appends_with_a_store_error(
    db: Path,
) -> None:
    store = await Store.open(f"sqlite:///{db}")
    await store.append(ev("w", 0))
    await store.close()
    await store.close()  # was RuntimeError: cannot schedule new futures after shutdown
    with pytest.raises(StoreError, match="closed"):
        await store.append(ev("w", 1))
    async with Store.open(f"sqlite:///{db}") as again:
        await assert_sound(again, 1)


# -- concurrency in one process ----------------------------------------------------------------


class Abort(Exception):
    pass


async def test_lean_and_joined_appends_from_two_stores_at_once_keep_one_chain(db: Path) -> None:
    url = f"sqlite:///{db}"
    size, rounds = 3, 12
    async with Store.open(url) as one, Store.open(url) as two:
        await one.create_deployment("dep-1", "fw", "0" * 64, {"n": 0})

        async def lean(store: Store, name: str) -> None:
            for k in range(rounds):
                await store.append_many([ev(name, n, batch=k) for n in range(size)])
                await asyncio.sleep(0)

        async def joined(store: Store, name: str) -> None:
            for k in range(rounds):
                async with store.transaction():
                    await store.append_many([ev(name, n, batch=k) for n in range(size)])
                    await store.update_deployment("dep-1", "RUNNING", {"n": k})
                    await asyncio.sleep(0.002)  # hold the write lock across a loop turn

        async def rolled_back(store: Store) -> None:
            for k in range(rounds):
                with pytest.raises(Abort):
                    async with store.transaction():
                        await store.append_many([ev("gone", n, batch=k) for n in range(size)])
                        raise Abort
                await asyncio.sleep(0)

        await asyncio.wait_for(
            asyncio.gather(
                lean(one, "l1"),
                lean(one, "l2"),
                lean(two, "l3"),
                joined(one, "j1"),
                joined(two, "j2"),
                rolled_back(two),
            ),
            30,
        )
        logged = await assert_sound(one, 5 * rounds * size)
        for name in ("l1", "l2", "l3", "j1", "j2"):
            assert assert_batches_whole(logged, size, name) == list(range(rounds))
        assert not [e for e in logged if e.details["writer"] == "gone"]
        record = await two.get_deployment("dep-1")
        assert record is not None and record.status == "RUNNING"


async def test_a_path_through_a_symlinked_directory_and_dotdot_is_one_store(
    tmp_path: Path,
) -> None:
    """``l/../s.db`` with ``l`` a symlink to ``other/sub``: SQLAlchemy collapses the ``..``
    lexically (``./s.db``), the kernel after following ``l`` (``other/s.db``). The append thread
    must write the file SQLAlchemy opened, or appends and reads split across two logs."""
    (tmp_path / "other" / "sub").mkdir(parents=True)
    (tmp_path / "l").symlink_to(tmp_path / "other" / "sub")
    async with Store.open(f"sqlite:///{tmp_path}/l/../s.db") as store:
        await store.append_many([ev("w", n) for n in range(3)])
        assert [e.seq for e in await store.events()] == [1, 2, 3]
    assert not (tmp_path / "other" / "s.db").exists()
    assert rows(tmp_path / "s.db", "SELECT count(*) FROM events") == [(3,)]
