"""The benchmarks' prototype sinks (issue 12 item 5) write the store's own chain and keep its
checks, so the figures compare like with like; and the per-thread CPU split names the threads."""

from __future__ import annotations

import sys
import threading
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

import engine_bench
from lean_append import LeanSqliteSink, SaSyncSink
from writer_child import RemoteSink

from fleetgate.core.events import Event
from fleetgate.errors import LeaseLost, LogMoved
from fleetgate.store import Store


def ev(i: int, deployment: str = "dep-1") -> Event:
    return Event(
        ts=f"2026-11-26T08:{i // 60:02d}:{i % 60:02d}.000000+00:00",
        deployment_id=deployment,
        device_id=f"dev-{i % 7}",
        action=f"action-{i}",
        outcome="ok",
        details={"i": i, "nested": {"b": [1, 2], "a": "é"}, "tuple": (i, "x")},
    )


BATCHES = [[ev(1)], [ev(2), ev(3), ev(4, deployment="dep-2")], [ev(5)]]


async def _reference(tmp_path: Path) -> list[tuple[int, str]]:
    async with Store.open(f"sqlite:///{tmp_path}/ref.db") as store:
        for batch in BATCHES:
            await store.append_many(batch)
        return [(e.seq, e.hash) for e in await store.events()]


@pytest.mark.parametrize("where", ["in process", "in process, SQLAlchemy", "writer process"])
async def test_prototype_sinks_write_the_stores_chain(tmp_path: Path, where: str) -> None:
    want = await _reference(tmp_path)
    url = f"sqlite+aiosqlite:///{tmp_path}/proto.db"
    async with Store.open(url) as store:
        lease = await store.acquire_lease("dep-1", "me", 60.0)
        assert lease is not None
        sink: LeanSqliteSink | RemoteSink
        if where == "in process":
            sink = LeanSqliteSink(f"{tmp_path}/proto.db")
        elif where == "in process, SQLAlchemy":
            sink = SaSyncSink(f"{tmp_path}/proto.db")
        else:
            sink = RemoteSink(url, lean=True)
            await sink.start()
        try:
            last = 0
            for batch in BATCHES:
                stored = await sink.append_many(batch, fence=lease.fence, expect_last=last)
                last = stored[-1].seq - 1 if batch[-1].deployment_id != "dep-1" else stored[-1].seq
            # a stale expectation and a lost lease are refused, and nothing is written
            with pytest.raises(LogMoved):
                await sink.append_many([ev(6)], fence=lease.fence, expect_last=1)
            taken = await store.acquire_lease("dep-1", "other", 60.0)
            assert taken is None  # still ours: force a take-over by a newer epoch instead
            again = await store.acquire_lease("dep-1", "me", 60.0)
            assert again is not None and again.epoch > lease.epoch
            with pytest.raises(LeaseLost):
                await sink.append_many([ev(6)], fence=lease.fence, expect_last=last)
        finally:
            await sink.close()
        got = [(e.seq, e.hash) for e in await store.events()]
        assert got == want
        assert (await store.verify()).ok


async def test_remote_sink_with_the_store_in_the_child(tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path}/s.db"
    want = await _reference(tmp_path)
    async with Store.open(url) as store:
        sink = RemoteSink(url)
        await sink.start()
        try:
            for batch in BATCHES:
                await sink.append_many(batch)
        finally:
            await sink.close()
        assert [(e.seq, e.hash) for e in await store.events()] == want


def test_thread_split_counts_the_event_loop_and_the_rest_apart() -> None:
    stop = threading.Event()

    def burn() -> None:
        while not stop.is_set():
            sum(range(1000))

    before = engine_bench.thread_cpu()
    t = threading.Thread(target=burn, name="burner")
    t.start()
    t0 = time.thread_time()
    while time.thread_time() - t0 < 0.2:
        sum(range(1000))
    after = engine_bench.thread_cpu()
    stop.set()
    t.join()
    main, store = engine_bench.split_threads(before, after)
    assert main >= 0.15  # the main thread's own burning (clock ticks: 10 ms)
    assert store == 0.0  # no aiosqlite thread here
    roles = {role for role, _ in after.values()}
    assert roles == {"main", "other"}
