"""``Store``: fleetgate's durable state behind one async API, on SQLite or PostgreSQL.

Lifecycle: ``store = await Store.open(url)`` or ``async with Store.open(url) as store``. Opening
validates the URL (``StoreConfigError``: exit 2), connects and migrates the schema to the
current revision; an unreachable or unusable database is a one-line ``StoreError``. Every
database failure after that is a ``StoreError`` too (``retryable`` for operational ones: lost
connection, lock timeout), never a driver exception.

Transactions: each method is one transaction of its own. ``async with store.transaction():``
groups several calls (say, appending events and updating the deployment summary) into one
atomic write; calls made by the same task inside the block join it. Do not start other tasks
that use the store inside such a block — they would share its connection.

Timestamps are supplied by callers (``fleetgate.clock.utc_now_iso`` where the caller has no
clock of its own); methods that stamp rows take an optional ``now`` and read the clock only when
it is omitted. Events keep the ``ts`` their caller gave them. The exceptions are the times that
gate safety: lease expiry is computed and compared with the store's clock (``Store.now``:
PostgreSQL's ``clock_timestamp()``, the host clock for SQLite), never a caller's.

Fencing: ``append_many``/``append``/``update_deployment`` take an optional ``fence`` (the
driver's lease holding). It is checked inside the same write transaction, before anything is
written; a stale one is refused with ``LeaseLost`` and nothing of the call is written.
"""

from __future__ import annotations

import json
import os
from collections.abc import AsyncIterator, Generator, Mapping, Sequence
from contextlib import asynccontextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import datetime
from types import TracebackType
from typing import Any

import sqlalchemy.exc as sa_exc
from sqlalchemy import delete, insert, or_, select, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from fleetgate.clock import normalise_iso, to_iso, utc_now_iso
from fleetgate.core.events import ChainReport, Event, StoredEvent
from fleetgate.core.manifest import canonical_json
from fleetgate.core.model import Device
from fleetgate.errors import StoreError, ValidationError
from fleetgate.registry.codec import device_from_dict, device_to_dict
from fleetgate.store import audit_log, leases, migrate
from fleetgate.store.catalog import CatalogMixin
from fleetgate.store.engine import (
    WRITE_OPTION,
    StoreTarget,
    create_store_engine,
    first_line,
    parse_store_url,
)
from fleetgate.store.enrolment import EnrolmentMixin
from fleetgate.store.leases import Fence, Lease
from fleetgate.store.schema import deployments, devices, quarantine, upsert
from fleetgate.store.sqlite_append import SqliteAppender
from fleetgate.store.store_file import StoreFile

# The transaction the current task is inside, if any (see ``Store.transaction``).
_CURRENT: ContextVar[tuple[Store, AsyncConnection] | None] = ContextVar(
    "fleetgate_store_transaction", default=None
)


@dataclass(frozen=True, slots=True)
class DeploymentRecord:
    """The cached summary row of a deployment (the event log is the truth)."""

    id: str
    created_at: str
    updated_at: str
    artifact_label: str
    sha256: str
    status: str
    data: Mapping[str, Any]
    wake_at: str | None = None


def _json_text(data: Mapping[str, Any]) -> str:
    return canonical_json(dict(data)).decode()


class StoreOpener:
    """What ``Store.open`` returns: await it for a ``Store``, or use it with ``async with``."""

    def __init__(self, url: str) -> None:
        self._url = url
        self._store: Store | None = None

    def __await__(self) -> Generator[Any, None, Store]:
        return Store._open(self._url).__await__()

    async def __aenter__(self) -> Store:
        self._store = await Store._open(self._url)
        return self._store

    async def __aexit__(
        self, _t: type[BaseException] | None, _e: BaseException | None, _tb: TracebackType | None
    ) -> None:
        if self._store is not None:
            await self._store.close()


class Store(CatalogMixin, EnrolmentMixin):
    def __init__(self, target: StoreTarget, engine: AsyncEngine) -> None:
        self.target = target
        self._engine = engine
        # SQLite's append goes through one thread of its own (``sqlite_append``, ADR 0019).
        self._appender: SqliteAppender | None = None
        # The SQLite file this store opened (``store_file``): set once the store is open.
        self._file: StoreFile | None = None
        if target.backend == "sqlite":
            assert target.url.database is not None
            # os.path.abspath, as SQLAlchemy's SQLite dialect makes it: Path.absolute() keeps
            # ".." and, past a symlinked directory, would name another file than the one
            # SQLAlchemy opened (split log).
            self._appender = SqliteAppender(
                os.path.abspath(target.url.database),  # noqa: PTH100 - lexical, as SQLAlchemy
                target.display,
            )

    # -- lifecycle -----------------------------------------------------------------------------

    @classmethod
    def open(cls, url: str) -> StoreOpener:
        return StoreOpener(url)

    @classmethod
    async def _open(cls, url: str) -> Store:
        target = parse_store_url(url)
        store = cls(target, create_store_engine(target))
        try:
            async with store._tx(write=True, opening=True) as conn:
                await migrate.upgrade(conn, target)
            if store._appender is not None:
                store._file = StoreFile.capture(store._appender.path, target.display)
                store._appender.file = store._file
        except BaseException:
            await store.close()
            raise
        return store

    async def close(self) -> None:
        if self._appender is not None:
            await self._appender.close()
        await self._engine.dispose()

    async def __aenter__(self) -> Store:
        return self

    async def __aexit__(
        self, _t: type[BaseException] | None, _e: BaseException | None, _tb: TracebackType | None
    ) -> None:
        await self.close()

    @property
    def backend(self) -> str:
        return self.target.backend

    # -- transactions --------------------------------------------------------------------------

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[None]:
        """One atomic write transaction for every store call this task makes inside the block."""
        if self._joined() is not None:
            yield
            return
        async with self._tx(write=True) as conn:
            token = _CURRENT.set((self, conn))
            try:
                yield
            finally:
                _CURRENT.reset(token)

    def _joined(self) -> AsyncConnection | None:
        current = _CURRENT.get()
        return current[1] if current is not None and current[0] is self else None

    @asynccontextmanager
    async def _tx(
        self, *, write: bool, snapshot: bool = False, opening: bool = False
    ) -> AsyncIterator[AsyncConnection]:
        joined = self._joined()
        if joined is not None:
            yield joined
            return
        if write and self._file is not None:
            self._file.check()  # a deleted store file would swallow the writes (store_file)
        try:
            async with self._engine.connect() as conn:
                if write:
                    await conn.execution_options(**{WRITE_OPTION: True})
                if snapshot and self.backend == "postgresql":
                    await conn.execution_options(isolation_level="REPEATABLE READ")
                async with conn.begin():
                    yield conn
        except (sa_exc.DBAPIError, OSError, TimeoutError) as exc:
            what = "cannot open store" if opening else "store error on"
            raise StoreError(
                f"{what} {self.target.display}: {first_line(exc)}",
                # A refused or lost connection may come back; a missing database or role won't.
                retryable=isinstance(exc, (OSError, TimeoutError))
                or (not opening and isinstance(exc, sa_exc.OperationalError)),
            ) from exc

    # -- devices -------------------------------------------------------------------------------

    async def replace_devices(self, new: Sequence[Device], *, now: str | None = None) -> None:
        """Make ``new`` the whole inventory, atomically (an import replaces, never merges)."""
        rows = self._device_rows(new, now)
        async with self._tx(write=True) as conn:
            await conn.execute(delete(devices))
            if rows:
                await conn.execute(insert(devices), rows)

    async def upsert_devices(self, changed: Sequence[Device], *, now: str | None = None) -> None:
        """Insert or overwrite these devices; others are left alone."""
        rows = self._device_rows(changed, now)
        if not rows:
            return
        async with self._tx(write=True) as conn:
            stmt = upsert(conn, devices).values(rows)
            await conn.execute(
                stmt.on_conflict_do_update(
                    index_elements=[devices.c.id],
                    set_={"data": stmt.excluded.data, "updated_at": stmt.excluded.updated_at},
                )
            )

    @staticmethod
    def _device_rows(items: Sequence[Device], now: str | None) -> list[dict[str, Any]]:
        stamp = normalise_iso(now) if now is not None else utc_now_iso()
        seen: set[str] = set()
        for device in items:
            if device.id in seen:
                raise ValueError(f"device {device.id!r} given twice")
            seen.add(device.id)
        return [
            {"id": d.id, "data": _json_text(device_to_dict(d)), "updated_at": stamp} for d in items
        ]

    async def list_devices(self) -> list[Device]:
        async with self._tx(write=False) as conn:
            rows = (await conn.execute(select(devices).order_by(devices.c.id))).all()
        return [self._device(row.id, row.data) for row in rows]

    async def get_device(self, device_id: str) -> Device | None:
        async with self._tx(write=False) as conn:
            row = (await conn.execute(select(devices).where(devices.c.id == device_id))).first()
        return None if row is None else self._device(row.id, row.data)

    @staticmethod
    def _device(device_id: str, data: str) -> Device:
        try:
            return device_from_dict(json.loads(data), where=f"stored device {device_id!r}")
        except (ValidationError, ValueError, TypeError, KeyError) as exc:
            # A row that no longer decodes is damage to the store, not the user's input.
            raise StoreError(
                f"device {device_id!r} in the store is unreadable: {exc}", device_id=device_id
            ) from exc

    # -- events --------------------------------------------------------------------------------

    async def append(self, event: Event, *, fence: Fence | None = None) -> StoredEvent:
        return (await self.append_many([event], fence=fence))[0]

    async def append_many(
        self,
        new: Sequence[Event],
        *,
        fence: Fence | None = None,
        expect_last: int | None = None,
        last_only: bool = False,
    ) -> list[StoredEvent]:
        """Append in order, in one transaction; returns the events with their seq and hashes
        (``last_only``: only the last one — the recorder needs its seq, not copies of the rest).
        With ``fence``, the lease must still be that holding (checked in the same transaction,
        before writing): else ``LeaseLost`` and nothing is written. With ``expect_last``, the
        deployment's newest event must still be that seq: else ``LogMoved``."""
        if not new:
            return []
        if self._appender is not None and self._joined() is None:
            return await self._appender.append_many(
                new, fence=fence, expect_last=expect_last, last_only=last_only
            )
        async with self._tx(write=True) as conn:
            if fence is not None:
                await leases.check_fence(conn, fence)
            stored = await audit_log.append_events(conn, new, expect_last=expect_last)
        return stored[-1:] if last_only else stored

    async def iter_events(
        self,
        deployment_id: str | None = None,
        after_seq: int = 0,
        *,
        device_id: str | None = None,
        page_size: int = audit_log.PAGE_SIZE,
    ) -> AsyncIterator[StoredEvent]:
        """Events with ``seq > after_seq`` in order, read one short transaction per page."""
        after = after_seq
        while True:
            async with self._tx(write=False) as conn:
                page = await audit_log.fetch_page(
                    conn,
                    after_seq=after,
                    limit=page_size,
                    deployment_id=deployment_id,
                    device_id=device_id,
                )
            for ev in page:
                yield ev
            if len(page) < page_size:
                return
            after = page[-1].seq

    async def events(
        self, deployment_id: str | None = None, after_seq: int = 0, *, device_id: str | None = None
    ) -> list[StoredEvent]:
        return [ev async for ev in self.iter_events(deployment_id, after_seq, device_id=device_id)]

    async def events_page(
        self, deployment_id: str | None, after_seq: int = 0, limit: int = audit_log.PAGE_SIZE
    ) -> list[StoredEvent]:
        """Up to ``limit`` events after ``after_seq``, in order: one short read (keyset)."""
        async with self._tx(write=False) as conn:
            return await audit_log.fetch_page(
                conn, after_seq=after_seq, limit=limit, deployment_id=deployment_id
            )

    async def latest_seq(self, deployment_id: str) -> int:
        """The seq of the deployment's newest event (0: none): one indexed read."""
        async with self._tx(write=False) as conn:
            return await audit_log.latest_seq(conn, deployment_id)

    async def chain_head(self) -> tuple[int, str]:
        """``(last seq, last hash)`` as recorded by the last append."""
        async with self._tx(write=False) as conn:
            return await audit_log.read_head(conn)

    async def verify(self) -> ChainReport:
        """Check the whole chain and the chain head in one consistent snapshot."""
        async with self._tx(write=False, snapshot=True) as conn:
            return await audit_log.verify_log(conn)

    # -- deployments ---------------------------------------------------------------------------

    async def create_deployment(
        self,
        deployment_id: str,
        artifact_label: str,
        sha256: str,
        data: Mapping[str, Any],
        *,
        status: str = "PREPARE",
        now: str | None = None,
    ) -> DeploymentRecord:
        stamp = normalise_iso(now) if now is not None else utc_now_iso()
        row = {
            "id": deployment_id,
            "created_at": stamp,
            "updated_at": stamp,
            "artifact_label": artifact_label,
            "sha256": sha256,
            "status": status,
            "data": _json_text(data),
        }
        async with self._tx(write=True) as conn:
            exists = await conn.execute(
                select(deployments.c.id).where(deployments.c.id == deployment_id)
            )
            if exists.first() is not None:
                raise StoreError(
                    f"deployment {deployment_id!r} already exists", deployment_id=deployment_id
                )
            await conn.execute(insert(deployments), [row])
        return self._deployment(row)

    async def update_deployment(
        self,
        deployment_id: str,
        status: str,
        data: Mapping[str, Any],
        *,
        now: str | None = None,
        fence: Fence | None = None,
        expect_last: int | None = None,
    ) -> DeploymentRecord:
        """Set the deployment's cached summary. ``expect_last``: the seq of the newest event
        the caller's ``status`` folds; if the log holds a newer one (a decision recorded
        meanwhile, which wrote the row itself), nothing is written and ``LogMoved`` is raised,
        so a stale state never overwrites a fresher row — above all a stale "ended" that
        admission would trust (engine.admission)."""
        stamp = normalise_iso(now) if now is not None else utc_now_iso()
        async with self._tx(write=True) as conn:
            if fence is not None:
                await leases.check_fence(conn, fence)
            if expect_last is not None:
                # Under the log's append lock (as a decision takes it), so no decision can
                # commit between this check and the update.
                await audit_log.read_head(conn, for_update=True)
                last = await audit_log.latest_seq(conn, deployment_id)
                if last != expect_last:
                    raise audit_log.log_moved(deployment_id, last, expect_last)
            row = (
                await conn.execute(
                    update(deployments)
                    .where(deployments.c.id == deployment_id)
                    .values(status=status, data=_json_text(data), updated_at=stamp)
                    .returning(*deployments.c)
                )
            ).first()
        if row is None:
            raise StoreError(f"no deployment {deployment_id!r}", deployment_id=deployment_id)
        return self._deployment(row._mapping)

    async def set_wake(
        self, deployment_id: str, wake_at: datetime | None, *, fence: Fence | None = None
    ) -> None:
        """Park the deployment until ``wake_at`` (store clock), or make it runnable now."""
        stamp = None if wake_at is None else to_iso(wake_at)
        async with self._tx(write=True) as conn:
            if fence is not None:
                await leases.check_fence(conn, fence)
            await conn.execute(
                update(deployments).where(deployments.c.id == deployment_id).values(wake_at=stamp)
            )

    async def claim_runnable(
        self,
        holder: str,
        ttl_s: float,
        skip: Sequence[str],
        limit: int,
        *,
        now: datetime | None = None,
        exclude: Sequence[str] = (),
    ) -> tuple[list[str], list[Lease]]:
        """Deployments that can move on now, claimed for ``holder``: not in a ``skip`` status
        (ended, or waiting for a human), not parked past the store's now, and not leased to
        a live holding. Returns the ones whose lease this call took, and the leases of the
        ones another holder still has (its process may be dead on this host).

        One transaction; on PostgreSQL the rows are taken ``FOR UPDATE SKIP LOCKED``, so
        several controllers claiming at once each get different deployments, without waiting
        on each other."""
        async with self._tx(write=True) as conn:
            # ``now``: the soak clock when it is not this store's (tests' virtual clock).
            stamp = to_iso(now if now is not None else await leases.store_now(conn))
            query = (
                select(deployments.c.id)
                .where(
                    deployments.c.status.not_in(list(skip)),
                    or_(deployments.c.wake_at.is_(None), deployments.c.wake_at <= stamp),
                    deployments.c.id.not_in(list(exclude)),
                )
                .order_by(deployments.c.updated_at)
                .limit(limit)
            )
            if self.backend == "postgresql":
                query = query.with_for_update(skip_locked=True)
            ids = [r.id for r in (await conn.execute(query)).all()]
            claimed: list[str] = []
            held: list[Lease] = []
            for dep in ids:
                lease = await leases.acquire(conn, dep, holder, ttl_s)
                if lease is not None:
                    claimed.append(dep)
                else:
                    other = await leases.get(conn, dep)
                    if other is not None:
                        held.append(other)
        return claimed, held

    async def get_deployment(self, deployment_id: str) -> DeploymentRecord | None:
        async with self._tx(write=False) as conn:
            row = (
                await conn.execute(select(deployments).where(deployments.c.id == deployment_id))
            ).first()
        return None if row is None else self._deployment(row._mapping)

    async def list_deployments(self) -> list[DeploymentRecord]:
        """All deployments, oldest first."""
        async with self._tx(write=False) as conn:
            rows = (
                await conn.execute(
                    select(deployments).order_by(deployments.c.created_at, deployments.c.id)
                )
            ).all()
        return [self._deployment(row._mapping) for row in rows]

    @staticmethod
    def _deployment(row: Mapping[Any, Any]) -> DeploymentRecord:
        return DeploymentRecord(
            id=row["id"],
            created_at=row["created_at"],
            updated_at=row["updated_at"],
            artifact_label=row["artifact_label"],
            sha256=row["sha256"],
            status=row["status"],
            data=json.loads(row["data"]),
            wake_at=row.get("wake_at"),
        )

    # -- leases and device sequence numbers ----------------------------------------------------

    async def now(self) -> datetime:
        """The store's clock (PostgreSQL server's ``clock_timestamp()``; SQLite: this host's):
        the one lease expiry and soak times are measured on."""
        async with self._tx(write=False) as conn:
            return await leases.store_now(conn)

    async def acquire_lease(self, deployment_id: str, holder: str, ttl_s: float) -> Lease | None:
        """Take the lease (a new holding, with a higher epoch) if it is free, expired on the
        store's clock, or already ours; None if someone else holds it."""
        async with self._tx(write=True) as conn:
            return await leases.acquire(conn, deployment_id, holder, ttl_s)

    async def renew_lease(self, deployment_id: str, holder: str, epoch: int, ttl_s: float) -> bool:
        """Extend the holding to store-now + ``ttl_s``; False if it is no longer the lease's."""
        async with self._tx(write=True) as conn:
            return await leases.renew(conn, deployment_id, holder, epoch, ttl_s)

    async def release_lease(self, deployment_id: str, holder: str, epoch: int) -> bool:
        """End this holding now (the row and its epoch stay); False if it was not current."""
        async with self._tx(write=True) as conn:
            return await leases.release(conn, deployment_id, holder, epoch)

    async def get_lease(self, deployment_id: str) -> Lease | None:
        """The deployment's lease row (also when expired or released), None if never leased."""
        async with self._tx(write=False) as conn:
            return await leases.get(conn, deployment_id)

    async def next_device_seq(self, device_id: str) -> int:
        """The next command sequence number for ``device_id`` (1, 2, 3 …), atomically."""
        async with self._tx(write=True) as conn:
            return await leases.next_device_seq(conn, device_id)

    async def lock_log(self) -> None:
        """Inside ``transaction()``: take the log's append lock until the transaction ends, so
        a check-then-create (``engine.admission``) cannot race another controller. SQLite's
        write transaction already holds it; PostgreSQL locks the chain-head row."""
        async with self._tx(write=True) as conn:
            await audit_log.read_head(conn, for_update=True)

    async def get_devices(self, ids: Sequence[str]) -> list[Device]:
        """These devices (unknown ids are left out), in id order; one query per 500 ids."""
        wanted = sorted(set(ids))
        out: list[Device] = []
        async with self._tx(write=False) as conn:
            for i in range(0, len(wanted), 500):
                chunk = wanted[i : i + 500]
                rows = (
                    await conn.execute(
                        select(devices).where(devices.c.id.in_(chunk)).order_by(devices.c.id)
                    )
                ).all()
                out.extend(self._device(row.id, row.data) for row in rows)
        return out

    # -- the quarantine list ------------------------------------------------------------------

    async def set_quarantine(
        self, entries: Mapping[str, str], deployment_id: str | None, *, now: str | None = None
    ) -> None:
        """Put these devices (id -> reason) on the quarantine list (kept if already on it)."""
        if not entries:
            return
        stamp = normalise_iso(now) if now is not None else utc_now_iso()
        rows = [
            {"device_id": d, "deployment_id": deployment_id, "reason": r, "since": stamp}
            for d, r in sorted(entries.items())
        ]
        async with self._tx(write=True) as conn:
            stmt = upsert(conn, quarantine).values(rows)
            await conn.execute(stmt.on_conflict_do_nothing(index_elements=[quarantine.c.device_id]))

    async def clear_quarantine(self, device_id: str) -> bool:
        """Take a device off the quarantine list; False if it was not on it."""
        async with self._tx(write=True) as conn:
            row = (
                await conn.execute(
                    delete(quarantine)
                    .where(quarantine.c.device_id == device_id)
                    .returning(quarantine.c.device_id)
                )
            ).first()
        return row is not None

    async def quarantined(self) -> dict[str, str]:
        """The quarantine list: device id -> reason (naming the deployment, when one did it)."""
        async with self._tx(write=False) as conn:
            rows = (await conn.execute(select(quarantine))).all()
        return {
            r.device_id: (f"{r.deployment_id}: {r.reason}" if r.deployment_id else r.reason)
            for r in rows
        }
