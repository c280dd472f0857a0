"""Enrolment tokens, the devices' public keys and ``last_seen``; mixed into ``Store``.

Every method is one transaction (or joins ``Store.transaction``). Tokens never reach the store:
callers pass ``token_hash`` (SHA-256). Times are the caller's ``now`` in the stored format, so
expiry is judged on one clock the caller chose (the API passes the store's clock).
"""

from __future__ import annotations

from collections.abc import Mapping
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Any

from sqlalchemy import insert, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from fleetgate.clock import normalise_iso
from fleetgate.core.manifest import canonical_json
from fleetgate.core.model import Device
from fleetgate.registry.codec import device_to_dict
from fleetgate.registry.facts import ReportedFacts, apply_facts
from fleetgate.store.schema import device_keys, devices, enrol_tokens, upsert


@dataclass(frozen=True, slots=True)
class EnrolToken:
    id: str
    token_hash: str
    group: str
    auto_accept: bool
    created_by: str
    created_at: str
    expires_at: str
    used_at: str | None = None
    used_by: str | None = None
    revoked_at: str | None = None

    def status(self, now: str) -> str:
        """``usable`` | ``used`` | ``revoked`` | ``expired`` at ``now`` (stored format)."""
        if self.used_at is not None:
            return "used"
        if self.revoked_at is not None:
            return "revoked"
        if normalise_iso(now) >= self.expires_at:
            return "expired"
        return "usable"

    def to_dict(self, now: str | None = None) -> dict[str, Any]:
        """Everything but the hash (no part of a secret leaves the store)."""
        out: dict[str, Any] = {
            "id": self.id,
            "group": self.group,
            "auto_accept": self.auto_accept,
            "created_by": self.created_by,
            "created_at": self.created_at,
            "expires_at": self.expires_at,
            "used_at": self.used_at,
            "used_by": self.used_by,
            "revoked_at": self.revoked_at,
        }
        if now is not None:
            out["status"] = self.status(now)
        return out


def _token(row: Mapping[Any, Any]) -> EnrolToken:
    return EnrolToken(
        id=row["id"],
        token_hash=row["token_hash"],
        group=row["group_name"],
        auto_accept=bool(row["auto_accept"]),
        created_by=row["created_by"],
        created_at=row["created_at"],
        expires_at=row["expires_at"],
        used_at=row["used_at"],
        used_by=row["used_by"],
        revoked_at=row["revoked_at"],
    )


class EnrolmentMixin:
    def _tx(
        self, *, write: bool, snapshot: bool = False, opening: bool = False
    ) -> AbstractAsyncContextManager[AsyncConnection]:
        raise NotImplementedError  # provided by Store

    @staticmethod
    def _device(device_id: str, data: str) -> Device:
        raise NotImplementedError  # provided by Store

    # -- tokens ---------------------------------------------------------------------------------
    async def add_enrol_token(self, tok: EnrolToken) -> None:
        row = {
            "id": tok.id,
            "token_hash": tok.token_hash,
            "group_name": tok.group,
            "auto_accept": 1 if tok.auto_accept else 0,
            "created_by": tok.created_by,
            "created_at": normalise_iso(tok.created_at),
            "expires_at": normalise_iso(tok.expires_at),
            "used_at": None,
            "used_by": None,
            "revoked_at": None,
        }
        async with self._tx(write=True) as conn:
            await conn.execute(insert(enrol_tokens), [row])

    async def enrol_token_by_hash(self, token_hash: str) -> EnrolToken | None:
        async with self._tx(write=False) as conn:
            row = (
                await conn.execute(
                    select(enrol_tokens).where(enrol_tokens.c.token_hash == token_hash)
                )
            ).first()
        return None if row is None else _token(row._mapping)

    async def consume_enrol_token(self, token_hash: str, device_id: str, now: str) -> bool:
        """Mark the token used by ``device_id`` if it is usable at ``now``: one conditional
        ``UPDATE``, so two enrolments racing with one token cannot both win."""
        stamp = normalise_iso(now)
        async with self._tx(write=True) as conn:
            row = (
                await conn.execute(
                    update(enrol_tokens)
                    .where(
                        enrol_tokens.c.token_hash == token_hash,
                        enrol_tokens.c.used_at.is_(None),
                        enrol_tokens.c.revoked_at.is_(None),
                        enrol_tokens.c.expires_at > stamp,
                    )
                    .values(used_at=stamp, used_by=device_id)
                    .returning(enrol_tokens.c.id)
                )
            ).first()
        return row is not None

    async def revoke_enrol_token(self, token_id: str, now: str) -> bool:
        """Revoke an unused token; False if there is no such unused, unrevoked token."""
        async with self._tx(write=True) as conn:
            row = (
                await conn.execute(
                    update(enrol_tokens)
                    .where(
                        enrol_tokens.c.id == token_id,
                        enrol_tokens.c.used_at.is_(None),
                        enrol_tokens.c.revoked_at.is_(None),
                    )
                    .values(revoked_at=normalise_iso(now))
                    .returning(enrol_tokens.c.id)
                )
            ).first()
        return row is not None

    async def list_enrol_tokens(self) -> list[EnrolToken]:
        async with self._tx(write=False) as conn:
            rows = (
                await conn.execute(
                    select(enrol_tokens).order_by(enrol_tokens.c.created_at, enrol_tokens.c.id)
                )
            ).all()
        return [_token(r._mapping) for r in rows]

    # -- device keys and last_seen --------------------------------------------------------------
    async def device_key(self, device_id: str) -> str | None:
        async with self._tx(write=False) as conn:
            row = (
                await conn.execute(
                    select(device_keys.c.public_key).where(device_keys.c.device_id == device_id)
                )
            ).first()
        return None if row is None else str(row[0])

    async def set_device_key(self, device_id: str, public_key: str, now: str) -> None:
        async with self._tx(write=True) as conn:
            stmt = upsert(conn, device_keys).values(
                device_id=device_id, public_key=public_key, enrolled_at=normalise_iso(now)
            )
            await conn.execute(
                stmt.on_conflict_do_update(
                    index_elements=[device_keys.c.device_id],
                    set_={"public_key": stmt.excluded.public_key},
                )
            )

    async def record_facts(self, reported: Mapping[str, ReportedFacts], now: str) -> list[Device]:
        """Apply each device's reported facts to its *current* record and set ``last_seen``,
        in one transaction: what else changed meanwhile (a deployment quarantined it, an
        operator accepted it) is kept. A device no longer in the inventory stays removed.
        Returns the devices as written."""
        if not reported:
            return []
        stamp = normalise_iso(now)
        out: list[Device] = []
        async with self._tx(write=True) as conn:
            rows = (
                await conn.execute(
                    select(devices.c.id, devices.c.data).where(devices.c.id.in_(list(reported)))
                )
            ).all()
            for row in sorted(rows, key=lambda r: r.id):
                device = apply_facts(self._device(row.id, row.data), reported[row.id])
                await conn.execute(
                    update(devices)
                    .where(devices.c.id == row.id)
                    .values(
                        data=canonical_json(device_to_dict(device)).decode(),
                        updated_at=stamp,
                        last_seen=stamp,
                    )
                )
                out.append(device)
        return out

    async def last_seen(self) -> dict[str, str | None]:
        async with self._tx(write=False) as conn:
            rows = (await conn.execute(select(devices.c.id, devices.c.last_seen))).all()
        return {r.id: r.last_seen for r in rows}
