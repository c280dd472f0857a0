"""Fenced leases (which controller drives a deployment) and per-device command sequence numbers.

A lease row is ``(deployment_id, holder, expires_at, epoch)``. A *holding* is a holder and an
epoch: every successful ``acquire`` starts a new holding with ``epoch`` one higher than any
before it for that deployment (the row is kept on release, so the counter never goes back).

Contract:

- Time is the store's clock, read inside the transaction (``store_now``): PostgreSQL's
  ``clock_timestamp()`` on the database server, the host clock for SQLite (one file, one host).
  Callers pass no time, so a controller whose own clock is wrong can neither steal a live lease
  nor keep one alive.
- ``acquire`` succeeds when there is no lease, the lease has expired (``expires_at <= now``) or
  the caller's holder already holds it, and returns the new holding. It is one atomic
  compare-and-set, ``INSERT … ON CONFLICT (deployment_id) DO UPDATE SET …, epoch = epoch + 1
  WHERE expires_at <= :now OR holder = :holder RETURNING …``: two controllers racing cannot both
  win (the loser's conflicting insert waits for the winner's row, then fails the ``WHERE``).
  Re-acquiring by the same holder also starts a new epoch, fencing off its earlier holding.
- ``renew`` extends the lease while the row still names the caller's holding (holder *and*
  epoch). A holding that lapsed may still renew if nobody took over: no one else can have
  written meanwhile, since every append checks the epoch.
- ``release`` ends the caller's holding by setting ``expires_at`` to now; the row and its epoch
  stay.
- ``check_fence`` runs inside an append's write transaction, before anything is written: it reads
  the lease row with a share lock (PostgreSQL ``SELECT … FOR SHARE``: a take-over waits until the
  append committed; on SQLite ``BEGIN IMMEDIATE`` already serialises every write) and raises
  ``LeaseLost`` unless holder and epoch match. Expiry alone does not refuse a write: until
  someone else acquires, no one else can have written.

``next_device_seq`` is an atomic ``INSERT … ON CONFLICT DO UPDATE SET last_seq = last_seq + 1
RETURNING last_seq``: concurrent callers always get distinct, increasing numbers, starting at 1.

All functions run on a connection inside a write transaction chosen by ``Store``.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Row, func, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from fleetgate.clock import add_seconds, to_iso, utc_now
from fleetgate.errors import LeaseLost
from fleetgate.store.schema import device_seq, leases, upsert


@dataclass(frozen=True, slots=True)
class Fence:
    """What a driver proves on every append: the holding it believes it has."""

    deployment_id: str
    holder: str
    epoch: int


@dataclass(frozen=True, slots=True)
class Lease:
    deployment_id: str
    holder: str
    expires_at: str  # store clock, ``fleetgate.clock`` format
    epoch: int

    @property
    def fence(self) -> Fence:
        return Fence(self.deployment_id, self.holder, self.epoch)


def _check_ttl(ttl_s: float) -> None:
    if not ttl_s > 0:
        raise ValueError(f"lease ttl must be positive, got {ttl_s!r}")


async def store_now(conn: AsyncConnection) -> datetime:
    """The store's clock: the database server's on PostgreSQL, the host's on SQLite."""
    if conn.dialect.name == "postgresql":
        moment = (await conn.execute(select(func.clock_timestamp()))).scalar_one()
        assert isinstance(moment, datetime)
        return moment
    return utc_now()


def _lease(row: Row[Any]) -> Lease:
    return Lease(str(row.deployment_id), str(row.holder), str(row.expires_at), int(row.epoch))


async def acquire(
    conn: AsyncConnection, deployment_id: str, holder: str, ttl_s: float
) -> Lease | None:
    _check_ttl(ttl_s)
    now = to_iso(await store_now(conn))
    stmt = upsert(conn, leases).values(
        deployment_id=deployment_id, holder=holder, expires_at=add_seconds(now, ttl_s), epoch=1
    )
    stmt = stmt.on_conflict_do_update(
        index_elements=[leases.c.deployment_id],
        set_={
            "holder": stmt.excluded.holder,
            "expires_at": stmt.excluded.expires_at,
            "epoch": leases.c.epoch + 1,
        },
        where=(leases.c.expires_at <= now) | (leases.c.holder == holder),
    ).returning(*leases.c)
    row = (await conn.execute(stmt)).first()
    return None if row is None else _lease(row)


async def renew(
    conn: AsyncConnection, deployment_id: str, holder: str, epoch: int, ttl_s: float
) -> bool:
    _check_ttl(ttl_s)
    now = to_iso(await store_now(conn))
    stmt = (
        update(leases)
        .where(
            leases.c.deployment_id == deployment_id,
            leases.c.holder == holder,
            leases.c.epoch == epoch,
        )
        .values(expires_at=add_seconds(now, ttl_s))
        .returning(leases.c.epoch)
    )
    return (await conn.execute(stmt)).first() is not None


async def release(conn: AsyncConnection, deployment_id: str, holder: str, epoch: int) -> bool:
    now = to_iso(await store_now(conn))
    stmt = (
        update(leases)
        .where(
            leases.c.deployment_id == deployment_id,
            leases.c.holder == holder,
            leases.c.epoch == epoch,
            leases.c.expires_at > now,
        )
        .values(expires_at=now)
        .returning(leases.c.epoch)
    )
    return (await conn.execute(stmt)).first() is not None


async def get(conn: AsyncConnection, deployment_id: str) -> Lease | None:
    row = (
        await conn.execute(select(leases).where(leases.c.deployment_id == deployment_id))
    ).first()
    return None if row is None else _lease(row)


def lease_lost(fence: Fence, current: Lease | None) -> LeaseLost:
    """The one-line error a driver whose holding ``fence`` is gone stops with."""
    dep = fence.deployment_id
    if current is None:
        return LeaseLost(
            f"deployment {dep}: lease lost (no lease recorded): this controller wrote nothing more",
            deployment_id=dep,
        )
    return LeaseLost(
        f"deployment {dep}: lease lost to {current.holder} (epoch {current.epoch}): "
        "this controller wrote nothing more",
        deployment_id=dep,
        holder=current.holder,
        epoch=current.epoch,
    )


def check_holding(fence: Fence, current: Lease | None) -> None:
    """Raise ``LeaseLost`` unless ``current`` (the lease row read in the writer's transaction)
    is still the holding ``fence`` names. Every append path checks its fence with this."""
    if current is None or (current.holder, current.epoch) != (fence.holder, fence.epoch):
        raise lease_lost(fence, current)


async def check_fence(conn: AsyncConnection, fence: Fence) -> None:
    """Raise ``LeaseLost`` unless ``fence`` is the lease's current holding (module docstring)."""
    query = select(leases).where(leases.c.deployment_id == fence.deployment_id)
    # FOR SHARE on PostgreSQL: a take-over's row update waits for this transaction to end.
    # SQLite ignores it: the BEGIN IMMEDIATE write transaction already excludes other writers.
    row = (await conn.execute(query.with_for_update(read=True))).first()
    check_holding(fence, None if row is None else _lease(row))


async def next_device_seq(conn: AsyncConnection, device_id: str) -> int:
    stmt = upsert(conn, device_seq).values(device_id=device_id, last_seq=1)
    stmt = stmt.on_conflict_do_update(
        index_elements=[device_seq.c.device_id],
        set_={"last_seq": device_seq.c.last_seq + 1},
    ).returning(device_seq.c.last_seq)
    return int((await conn.execute(stmt)).scalar_one())
