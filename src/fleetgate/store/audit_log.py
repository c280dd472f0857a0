"""The event log: appending to the global hash chain, reading it back, verifying it.

Contract (all functions take an ``AsyncConnection`` already inside a transaction; ``Store``
decides which kind):

- ``append_events`` gives each event the next ``seq`` (dense from 1), seals it onto the chain
  with ``fleetgate.core.events.event_hash`` and moves ``chain_head`` forward, all in the caller's
  transaction. It must run in a write transaction: on SQLite that began with ``BEGIN
  IMMEDIATE``; on PostgreSQL it locks the chain-head row (``SELECT … FOR UPDATE``) before reading
  it. Either way two appenders never read the same head, so the chain never forks.
- ``details`` are stored as canonical JSON text and returned as what that text decodes to (a
  tuple comes back as a list); the hash is computed over the same canonical form, so a stored
  event always re-verifies. A row that no longer decodes (its details edited into something
  that is not a JSON object, a seq that is not a number) raises ``CorruptEventError`` naming its
  seq when it is read, instead of handing a reader garbage.
- ``verify_log`` reads the chain head and then every event in ``seq`` order, in pages, in one
  snapshot, and feeds them to ``verify_chain`` running in a worker thread (hashing a big log is
  CPU work that must not stall the event loop). Beyond what ``verify_chain`` finds (edits, gaps,
  reordering), it reports events missing from the end (the head is ahead of the log), events
  added past the head without going through the store, a head whose hash is not the last
  event's, and a row that does not decode (BROKEN at its seq, like any other edit).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterator, Sequence
from typing import Any

from sqlalchemy import Row, func, insert, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from fleetgate.clock import parse_iso
from fleetgate.core.events import (
    GENESIS_HASH,
    ChainReport,
    Event,
    StoredEvent,
    event_hash,
    placed,
    verify_chain,
)
from fleetgate.core.manifest import canonical_json
from fleetgate.errors import IntegrityError, LogMoved, StoreError
from fleetgate.store.schema import CHAIN_HEAD_ID, chain_head
from fleetgate.store.schema import events as events_table

PAGE_SIZE = 1000


class CorruptEventError(IntegrityError):
    """A stored event's row cannot be decoded: it was edited outside the store."""

    def __init__(self, seq: int | None, reason: str, deployment_id: str | None = None) -> None:
        where = f"seq {seq}" if seq is not None else "an event"
        super().__init__(
            f"audit log {where}: {reason} (edited outside the store; "
            "`fleetgate audit verify` checks the whole chain)",
            deployment_id=deployment_id,
        )
        self.seq = seq
        self.reason = reason


def details_json(event: Event) -> bytes:
    """The event's details as canonical JSON — what its row stores and its hash covers,
    serialised once (issue 12) — after checking its time; ``ValueError`` naming the event's
    action if either is unfit for the log."""
    try:
        parse_iso(event.ts)
    except ValueError as exc:
        raise ValueError(f"event ts {event.ts!r} is not an ISO-8601 time with offset") from exc
    try:
        return canonical_json(dict(event.details))
    except (TypeError, ValueError) as exc:
        raise ValueError(
            f"event {event.action!r}: details are not JSON-serialisable: {exc}"
        ) from exc


# An event ready for the chain: the event and its ``details_json``.
Prepared = tuple[Event, bytes]
# Its place in the chain: (seq, prev_hash, hash).
Link = tuple[int, str, str]


def prepare(new: Sequence[Event]) -> list[Prepared]:
    """Each event with its ``details_json``, checked before any transaction begins."""
    return [(ev, details_json(ev)) for ev in new]


def chain_run(prepared: Sequence[Prepared], seq: int, prev: str) -> list[Link]:
    """The links of ``prepared`` sealed in order onto the chain whose head is (``seq``,
    ``prev``): ``core.events.event_hash`` over each event and its details JSON."""
    out: list[Link] = []
    for event, details in prepared:
        seq += 1
        digest = event_hash(seq, event, prev, details)
        out.append((seq, prev, digest))
        prev = digest
    return out


def row_values(item: Prepared, link: Link) -> tuple[Any, ...]:
    """An ``events`` row in column order (``INSERT_COLUMNS``)."""
    ev, details = item
    seq, prev, digest = link
    return (
        seq,
        ev.ts,
        ev.deployment_id,
        ev.device_id,
        ev.actor,
        ev.action,
        ev.outcome,
        details.decode(),
        prev,
        digest,
    )


INSERT_COLUMNS = (
    "seq",
    "ts",
    "deployment_id",
    "device_id",
    "actor",
    "action",
    "outcome",
    "details",
    "prev_hash",
    "hash",
)


def stored_event(item: Prepared, link: Link) -> StoredEvent:
    """The event as stored: its details as their JSON gives them back (tuples become lists)."""
    ev, details = item
    seq, prev, digest = link
    return placed(ev, seq, prev, digest, json.loads(details))


async def read_head(conn: AsyncConnection, *, for_update: bool = False) -> tuple[int, str]:
    query = select(chain_head.c.last_seq, chain_head.c.last_hash).where(
        chain_head.c.id == CHAIN_HEAD_ID
    )
    if for_update:
        query = query.with_for_update()  # SQLite ignores it; BEGIN IMMEDIATE already serialises.
    row = (await conn.execute(query)).first()
    if row is None:
        raise missing_head()
    return int(row.last_seq), str(row.last_hash)


def missing_head() -> StoreError:
    return StoreError("the store's chain_head row is missing: run `fleetgate audit verify`")


def log_moved(deployment_id: str, last: int, expect_last: int) -> LogMoved:
    """The refusal of an append whose writer missed an event of its deployment."""
    return LogMoved(
        f"deployment {deployment_id}: its log moved (seq {last} is newer than {expect_last}): "
        "re-reading it",
        deployment_id=deployment_id,
    )


async def latest_seq(conn: AsyncConnection, deployment_id: str) -> int:
    query = select(func.max(events_table.c.seq)).where(
        events_table.c.deployment_id == deployment_id
    )
    return int((await conn.execute(query)).scalar() or 0)


async def append_events(
    conn: AsyncConnection, new: Sequence[Event], *, expect_last: int | None = None
) -> list[StoredEvent]:
    """Seal ``new`` onto the chain in order; returns them as stored.

    ``expect_last``: the seq of the last event of ``new[0]``'s deployment the caller has seen;
    checked under the append lock, so a writer that missed an event of its deployment (a
    decision recorded meanwhile) is refused with ``LogMoved`` and writes nothing."""
    if not new:
        return []
    prepared = prepare(new)
    seq, prev = await read_head(conn, for_update=True)
    if expect_last is not None:
        dep = str(new[0].deployment_id)
        last = await latest_seq(conn, dep)
        if last != expect_last:
            raise log_moved(dep, last, expect_last)
    links = chain_run(prepared, seq, prev)
    await conn.execute(
        insert(events_table),
        [
            dict(zip(INSERT_COLUMNS, row_values(p, k), strict=True))
            for p, k in zip(prepared, links, strict=True)
        ],
    )
    head_seq, _prev, head_hash = links[-1]
    await conn.execute(
        update(chain_head)
        .where(chain_head.c.id == CHAIN_HEAD_ID)
        .values(last_seq=head_seq, last_hash=head_hash)
    )
    return [stored_event(p, k) for p, k in zip(prepared, links, strict=True)]


def _from_row(row: Row[Any]) -> StoredEvent:
    try:
        seq = int(row.seq)
    except (TypeError, ValueError):
        raise CorruptEventError(None, f"seq {row.seq!r} is not a number") from None
    dep = row.deployment_id if isinstance(row.deployment_id, str) else None
    try:
        details = json.loads(row.details)
    except (TypeError, ValueError):
        raise CorruptEventError(seq, "details are not JSON", dep) from None
    if not isinstance(details, dict):
        raise CorruptEventError(seq, "details are not a JSON object", dep)
    return StoredEvent(
        seq=seq,
        ts=row.ts,
        deployment_id=row.deployment_id,
        device_id=row.device_id,
        actor=row.actor,
        action=row.action,
        outcome=row.outcome,
        details=details,
        prev_hash=row.prev_hash,
        hash=row.hash,
    )


async def _fetch_rows(
    conn: AsyncConnection,
    *,
    after_seq: int = 0,
    limit: int = PAGE_SIZE,
    deployment_id: str | None = None,
    device_id: str | None = None,
) -> list[Row[Any]]:
    query = select(events_table).where(events_table.c.seq > after_seq)
    if deployment_id is not None:
        query = query.where(events_table.c.deployment_id == deployment_id)
    if device_id is not None:
        query = query.where(events_table.c.device_id == device_id)
    result = await conn.execute(query.order_by(events_table.c.seq).limit(limit))
    return list(result)


async def fetch_page(
    conn: AsyncConnection,
    *,
    after_seq: int = 0,
    limit: int = PAGE_SIZE,
    deployment_id: str | None = None,
    device_id: str | None = None,
) -> list[StoredEvent]:
    """Up to ``limit`` events with ``seq > after_seq`` in ``seq`` order (keyset paging).
    Raises ``CorruptEventError`` for a row that does not decode."""
    rows = await _fetch_rows(
        conn, after_seq=after_seq, limit=limit, deployment_id=deployment_id, device_id=device_id
    )
    return [_from_row(row) for row in rows]


async def iter_pages(
    conn: AsyncConnection, *, page_size: int = PAGE_SIZE, **filters: Any
) -> AsyncIterator[list[StoredEvent]]:
    after = int(filters.pop("after_seq", 0))
    while True:
        page = await fetch_page(conn, after_seq=after, limit=page_size, **filters)
        if not page:
            return
        yield page
        if len(page) < page_size:
            return
        after = page[-1].seq


async def verify_log(conn: AsyncConnection, *, page_size: int = PAGE_SIZE) -> ChainReport:
    """Verify the whole chain and the head against it (see the module docstring)."""
    head_row = (
        await conn.execute(
            select(chain_head.c.last_seq, chain_head.c.last_hash).where(
                chain_head.c.id == CHAIN_HEAD_ID
            )
        )
    ).first()
    loop = asyncio.get_running_loop()
    last: list[StoredEvent] = []
    corrupt: list[CorruptEventError] = []

    def stream() -> Iterator[StoredEvent]:
        # Runs in the worker thread; each page is fetched on the event loop, on ``conn``.
        # The stream ends at a row that does not decode: every event before it is checked.
        after = 0
        while True:
            future = asyncio.run_coroutine_threadsafe(
                _fetch_rows(conn, after_seq=after, limit=page_size), loop
            )
            rows = future.result()
            for row in rows:
                try:
                    ev = _from_row(row)
                except CorruptEventError as exc:
                    corrupt.append(exc)
                    return
                last[:] = [ev]
                yield ev
            if len(rows) < page_size:
                return
            after = last[-1].seq

    report = await asyncio.to_thread(verify_chain, stream())
    if not report.ok:
        return report
    if corrupt:
        bad = corrupt[0]
        seq = bad.seq if bad.seq is not None else (last[0].seq + 1 if last else 1)
        return ChainReport(False, report.checked, seq, f"{bad.reason} (edited)")
    if head_row is None:
        return ChainReport(False, report.checked, None, "the chain_head row is missing")
    head_seq, head_hash = int(head_row.last_seq), str(head_row.last_hash)
    last_seq = last[0].seq if last else 0
    last_hash = last[0].hash if last else GENESIS_HASH
    if last_seq < head_seq:
        return ChainReport(
            False,
            report.checked,
            last_seq + 1,
            f"the chain head records {head_seq} events but the log ends at seq {last_seq} "
            "(events removed from the end)",
        )
    if last_seq > head_seq:
        return ChainReport(
            False,
            head_seq,
            head_seq + 1,
            f"events after seq {head_seq} were not appended through the store "
            "(the chain head does not know them)",
        )
    if last_hash != head_hash:
        return ChainReport(
            False,
            report.checked,
            max(last_seq, 1),
            f"the chain head's hash does not match event {last_seq}",
        )
    return report
