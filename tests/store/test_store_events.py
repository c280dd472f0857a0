"""The event log: appends get dense seqs and chain hashes; reads page; verify finds tampering."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import pytest

from fleetgate.core.events import GENESIS_HASH, Event, event_hash, verify_chain
from fleetgate.store import Store
from fleetgate.store.engine import create_store_engine


def ev(
    i: int, deployment: str | None = "dep-1", device: str | None = None, **details: object
) -> Event:
    return Event(
        ts=f"2026-11-26T08:{i // 60:02d}:{i % 60:02d}.000000+00:00",
        deployment_id=deployment,
        device_id=device,
        action=f"action-{i}",
        outcome="ok" if i % 3 else "failed",
        details={"i": i, **details},
    )


async def test_appends_get_dense_seqs_and_chain(store: Store) -> None:
    first = await store.append(ev(1))
    rest = await store.append_many([ev(2), ev(3, deployment=None, device="orin-01")])
    stored = [first, *rest]
    assert [e.seq for e in stored] == [1, 2, 3]
    assert stored[0].prev_hash == GENESIS_HASH
    assert [e.prev_hash for e in stored[1:]] == [e.hash for e in stored[:-1]]
    assert all(event_hash(e.seq, e, e.prev_hash) == e.hash for e in stored)
    assert await store.events() == stored
    assert verify_chain(stored).ok
    assert await store.chain_head() == (3, stored[-1].hash)
    report = await store.verify()
    assert report.ok and report.checked == 3


async def test_details_round_trip_as_json(store: Store) -> None:
    details = {"versions": ("2.4.0", "2.4.1"), "nested": {"b": 1.5, "a": None}, "ünï": "✓"}
    stored = await store.append(ev(1, **details))
    assert stored.details == {
        "i": 1,
        "versions": ["2.4.0", "2.4.1"],
        "nested": {"a": None, "b": 1.5},
        "ünï": "✓",
    }
    (read,) = await store.events()
    assert read == stored
    assert (await store.verify()).ok


async def test_filters_and_paging(store: Store) -> None:
    await store.append_many(
        [ev(i, deployment="dep-a" if i % 2 else "dep-b", device=f"d{i % 3}") for i in range(1, 26)]
    )
    assert [e.seq for e in await store.events("dep-a")] == list(range(1, 26, 2))
    assert [e.seq for e in await store.events("dep-b", after_seq=10)] == [
        12,
        14,
        16,
        18,
        20,
        22,
        24,
    ]
    assert [e.seq for e in await store.events(device_id="d0")] == [3, 6, 9, 12, 15, 18, 21, 24]
    paged = [e.seq async for e in store.iter_events(page_size=4)]
    assert paged == list(range(1, 26))
    paged_filtered = [e.seq async for e in store.iter_events("dep-a", after_seq=5, page_size=2)]
    assert paged_filtered == list(range(7, 26, 2))
    assert await store.events("no-such-deployment") == []


async def test_verify_streams_big_logs_in_pages(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    from fleetgate.store import audit_log

    monkeypatch.setattr(audit_log, "PAGE_SIZE", 7)
    await store.append_many([ev(i) for i in range(1, 51)])
    report = await store.verify()
    assert report.ok and report.checked == 50


async def test_empty_append_and_bad_events(store: Store) -> None:
    assert await store.append_many([]) == []
    with pytest.raises(ValueError, match="not an ISO-8601"):
        await store.append(Event(ts="yesterday", deployment_id=None, action="x"))
    with pytest.raises(ValueError, match="details are not JSON"):
        await store.append(
            Event(
                ts="2026-11-26T08:30:00+00:00",
                deployment_id=None,
                action="x",
                details={"when": object()},
            )
        )
    # A rejected batch leaves nothing behind: the chain is still empty.
    with pytest.raises(ValueError):
        await store.append_many([ev(1), Event(ts="bad", deployment_id=None, action="x")])
    assert await store.events() == []
    assert (await store.verify()).checked == 0


async def test_transaction_groups_writes_atomically(store: Store) -> None:
    await store.create_deployment("dep-1", "vision 2.4.1", "a" * 64, {"phase": "PREPARE"})
    async with store.transaction():
        await store.append_many([ev(1), ev(2)])
        await store.update_deployment("dep-1", "CANARY", {"phase": "CANARY"})
    with pytest.raises(RuntimeError, match="boom"):
        async with store.transaction():
            await store.append(ev(3))
            await store.update_deployment("dep-1", "VERIFY", {"phase": "VERIFY"})
            raise RuntimeError("boom")
    assert [e.seq for e in await store.events()] == [1, 2]
    record = await store.get_deployment("dep-1")
    assert record is not None and record.status == "CANARY"
    assert (await store.verify()).ok


async def test_last_only_returns_the_last_event_as_a_full_append_would(store: Store) -> None:
    """The recorder's append (``last_only``) writes every event and hands back the last one
    exactly as stored — details as their JSON gives them back — on both write paths."""
    batch = [ev(1, device="d-1", ids=("a", "b")), ev(2), ev(3, nested={"t": (1, 2.5)})]
    (last,) = await store.append_many(batch, last_only=True)
    async with store.transaction():  # the other write path (SQLAlchemy, joined)
        (joined,) = await store.append_many([ev(4), ev(5, ids=("c",))], last_only=True)
    stored = await store.events()
    assert [e.seq for e in stored] == [1, 2, 3, 4, 5]
    assert last == stored[2] and last.details["nested"] == {"t": [1, 2.5]}
    assert joined == stored[4] and joined.details["ids"] == ["c"]
    assert stored[0].details["ids"] == ["a", "b"]
    assert (await store.verify()).ok


async def test_a_summary_from_an_older_fold_is_refused_and_writes_nothing(store: Store) -> None:
    """``update_deployment(expect_last=N)`` writes only while N is the deployment's newest
    event: a driver's state from before a decision must not overwrite the decision's row."""
    from fleetgate.errors import LogMoved

    await store.create_deployment("dep-1", "vision 2.4.1", "a" * 64, {"phase": "PREPARE"})
    await store.append_many([ev(1), ev(2, deployment="dep-2"), ev(3)])
    await store.update_deployment("dep-1", "COMPLETE", {"n": 1}, expect_last=3)  # in step
    decided = await store.append(ev(4))  # a decision lands
    await store.update_deployment("dep-1", "ROLLING_BACK", {"n": 2})
    with pytest.raises(LogMoved, match="dep-1"):
        await store.update_deployment("dep-1", "COMPLETE", {"n": 3}, expect_last=3)
    record = await store.get_deployment("dep-1")
    assert record is not None and (record.status, record.data) == ("ROLLING_BACK", {"n": 2})
    # Another deployment's events do not count against this one.
    await store.append(ev(5, deployment="dep-2"))
    await store.update_deployment("dep-1", "ROLLED_BACK", {"n": 4}, expect_last=decided.seq)
    record = await store.get_deployment("dep-1")
    assert record is not None and record.status == "ROLLED_BACK"


# --- tampering -------------------------------------------------------------------------------


async def _sql(store: Store, *statements: str) -> None:
    """Change the database behind the store's back, as an attacker with SQL access would."""
    engine = create_store_engine(store.target)
    try:
        async with engine.begin() as conn:
            for statement in statements:
                await conn.exec_driver_sql(statement)
    finally:
        await engine.dispose()


async def _forge_next(store: Store) -> None:
    """Append a correctly chained event with raw SQL, leaving the chain head alone."""
    last = (await store.events())[-1]
    forged = Event(ts="2026-11-26T09:00:00+00:00", deployment_id="dep-1", action="forged")
    h = event_hash(last.seq + 1, forged, last.hash)
    await _sql(
        store,
        "INSERT INTO events (seq, ts, deployment_id, device_id, actor, action, outcome, details, "
        f"prev_hash, hash) VALUES ({last.seq + 1}, '{forged.ts}', 'dep-1', NULL, 'fleetgate', "
        f"'forged', 'ok', '{{}}', '{last.hash}', '{h}')",
    )


async def _rehash_last(store: Store) -> None:
    """Edit the last event and recompute its hash, so only the chain head can tell."""
    last = (await store.events())[-1]
    edited = Event(
        ts=last.ts,
        deployment_id=last.deployment_id,
        action=last.action,
        outcome="ok",
        device_id=last.device_id,
        actor=last.actor,
        details={"i": 999},
    )
    h = event_hash(last.seq, edited, last.prev_hash)
    await _sql(
        store,
        f"UPDATE events SET outcome = 'ok', details = '{{\"i\":999}}', "
        f"hash = '{h}' WHERE seq = {last.seq}",
    )


TAMPERING: dict[str, tuple[Callable[[Store], Awaitable[None]], int, str]] = {
    "edit details": (
        lambda s: _sql(
            s, 'UPDATE events SET details = \'{"i":4,"approved_by":"mallory"}\' WHERE seq = 4'
        ),
        4,
        "edited",
    ),
    "edit outcome": (
        lambda s: _sql(s, "UPDATE events SET outcome = 'ok' WHERE seq = 6"),
        6,
        "edited",
    ),
    "delete a middle event": (lambda s: _sql(s, "DELETE FROM events WHERE seq = 5"), 5, "missing"),
    "delete the last event": (
        lambda s: _sql(s, "DELETE FROM events WHERE seq = 10"),
        10,
        "removed from the end",
    ),
    "cut the last three": (
        lambda s: _sql(s, "DELETE FROM events WHERE seq > 7"),
        8,
        "removed from the end",
    ),
    "swap two events' seq": (
        lambda s: _sql(
            s,
            "UPDATE events SET seq = -1 WHERE seq = 3",
            "UPDATE events SET seq = 3 WHERE seq = 7",
            "UPDATE events SET seq = 7 WHERE seq = -1",
        ),
        3,
        "prev_hash",
    ),
    "edit and rehash the last event": (_rehash_last, 10, "chain head's hash"),
    "append outside the store": (_forge_next, 11, "not appended through the store"),
    "delete everything": (lambda s: _sql(s, "DELETE FROM events"), 1, "removed from the end"),
}


@pytest.mark.parametrize("case", list(TAMPERING))
async def test_verify_names_the_first_tampered_seq(store: Store, case: str) -> None:
    await store.append_many([ev(i) for i in range(1, 11)])
    assert (await store.verify()).ok
    tamper, bad_seq, reason = TAMPERING[case]
    await tamper(store)
    report = await store.verify()
    assert not report.ok
    assert report.first_bad_seq == bad_seq, report
    assert reason in report.reason
