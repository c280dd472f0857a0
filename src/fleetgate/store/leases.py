"""Leases (which controller drives a deployment) and per-device command sequence numbers.

Lease contract — at most one holder per deployment at any instant of the *callers'* clock:

- ``acquire`` succeeds when there is no lease, the lease has expired (``expires_at < now``), or
  the caller already holds it (then it is extended). It is one atomic compare-and-set statement,
  ``INSERT … ON CONFLICT (deployment_id) DO UPDATE … WHERE expires_at < :now OR holder = :holder
  RETURNING holder``, so two controllers racing for a free lease cannot both win: the loser's
  conflicting insert waits for the winner's row and then fails the ``WHERE``.
- ``renew`` extends the lease only while the row still names the caller. A holder that let its
  lease lapse may still renew if nobody took it over in the meantime — nobody else can have driven
  the deployment, because driving requires holding the lease.
- ``release`` deletes the lease only if the caller holds it.
- Times are compared as fixed-width ISO UTC text (``fleetgate.clock``), identical on all backends.

``next_device_seq`` is an atomic ``INSERT … ON CONFLICT DO UPDATE SET last_seq = last_seq + 1
RETURNING last_seq``: concurrent callers always get distinct, increasing numbers, starting at 1.

All functions run on a connection inside a write transaction chosen by ``Store``.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import delete, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from fleetgate.clock import add_seconds, normalise_iso
from fleetgate.store.schema import device_seq, leases, upsert


@dataclass(frozen=True, slots=True)
class Lease:
    deployment_id: str
    holder: str
    expires_at: str


def _check_ttl(ttl_s: float) -> None:
    if not ttl_s > 0:
        raise ValueError(f"lease ttl must be positive, got {ttl_s!r}")


async def acquire(
    conn: AsyncConnection, deployment_id: str, holder: str, ttl_s: float, now: datetime | str
) -> bool:
    _check_ttl(ttl_s)
    now_iso = normalise_iso(now)
    stmt = upsert(conn, leases).values(
        deployment_id=deployment_id, holder=holder, expires_at=add_seconds(now_iso, ttl_s)
    )
    stmt = stmt.on_conflict_do_update(
        index_elements=[leases.c.deployment_id],
        set_={"holder": stmt.excluded.holder, "expires_at": stmt.excluded.expires_at},
        where=(leases.c.expires_at < now_iso) | (leases.c.holder == holder),
    ).returning(leases.c.holder)
    return (await conn.execute(stmt)).first() is not None


async def renew(
    conn: AsyncConnection, deployment_id: str, holder: str, ttl_s: float, now: datetime | str
) -> bool:
    _check_ttl(ttl_s)
    stmt = (
        update(leases)
        .where(leases.c.deployment_id == deployment_id, leases.c.holder == holder)
        .values(expires_at=add_seconds(normalise_iso(now), ttl_s))
        .returning(leases.c.holder)
    )
    return (await conn.execute(stmt)).first() is not None


async def release(conn: AsyncConnection, deployment_id: str, holder: str) -> bool:
    stmt = (
        delete(leases)
        .where(leases.c.deployment_id == deployment_id, leases.c.holder == holder)
        .returning(leases.c.holder)
    )
    return (await conn.execute(stmt)).first() is not None


async def get(conn: AsyncConnection, deployment_id: str) -> Lease | None:
    row = (
        await conn.execute(select(leases).where(leases.c.deployment_id == deployment_id))
    ).first()
    if row is None:
        return None
    return Lease(row.deployment_id, row.holder, row.expires_at)


async def next_device_seq(conn: AsyncConnection, device_id: str) -> int:
    stmt = upsert(conn, device_seq).values(device_id=device_id, last_seq=1)
    stmt = stmt.on_conflict_do_update(
        index_elements=[device_seq.c.device_id],
        set_={"last_seq": device_seq.c.last_seq + 1},
    ).returning(device_seq.c.last_seq)
    return int((await conn.execute(stmt)).scalar_one())
