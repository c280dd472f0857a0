"""The service's catalogue: API users (roles, hashed tokens) and uploaded releases.

Mixed into ``Store``; every method is one transaction (or joins ``Store.transaction``).
Tokens never reach the store: callers pass ``token_hash`` (``fleetgate.api.tokens``).
"""

from __future__ import annotations

from collections.abc import Mapping
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Any

from sqlalchemy import insert, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from fleetgate.clock import normalise_iso, utc_now_iso
from fleetgate.errors import InputError
from fleetgate.store.schema import api_users, releases


@dataclass(frozen=True, slots=True)
class ApiUser:
    name: str
    role: str
    created_at: str
    revoked_at: str | None

    @property
    def active(self) -> bool:
        return self.revoked_at is None


@dataclass(frozen=True, slots=True)
class ReleaseRecord:
    sha256: str
    release_id: str
    name: str
    version: str
    size: int
    bundle_sha256: str
    uploaded_by: str
    uploaded_at: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "sha256": self.sha256,
            "release_id": self.release_id,
            "name": self.name,
            "version": self.version,
            "size": self.size,
            "bundle_sha256": self.bundle_sha256,
            "uploaded_by": self.uploaded_by,
            "uploaded_at": self.uploaded_at,
        }


def _user(row: Mapping[Any, Any]) -> ApiUser:
    return ApiUser(row["name"], row["role"], row["created_at"], row["revoked_at"])


def _release(row: Mapping[Any, Any]) -> ReleaseRecord:
    return ReleaseRecord(**{k: row[k] for k in ReleaseRecord.__slots__})


class CatalogMixin:
    def _tx(
        self, *, write: bool, snapshot: bool = False, opening: bool = False
    ) -> AbstractAsyncContextManager[AsyncConnection]:
        raise NotImplementedError  # provided by Store

    # -- users ----------------------------------------------------------------------------------
    async def add_user(
        self, name: str, role: str, token_hash: str, *, now: str | None = None
    ) -> ApiUser:
        """A new user; refused if the name is taken (revoked names stay taken: the audit log
        must keep meaning one person per name)."""
        stamp = normalise_iso(now) if now is not None else utc_now_iso()
        row = {
            "name": name,
            "role": role,
            "token_hash": token_hash,
            "created_at": stamp,
            "revoked_at": None,
        }
        async with self._tx(write=True) as conn:
            taken = await conn.execute(select(api_users.c.name).where(api_users.c.name == name))
            if taken.first() is not None:
                raise InputError(f"user {name!r} already exists (names are never reused)")
            await conn.execute(insert(api_users), [row])
        return _user(row)

    async def set_user_token(self, name: str, token_hash: str) -> bool:
        """Replace an active user's token (rotation); False if no such active user."""
        async with self._tx(write=True) as conn:
            row = (
                await conn.execute(
                    update(api_users)
                    .where(api_users.c.name == name, api_users.c.revoked_at.is_(None))
                    .values(token_hash=token_hash)
                    .returning(api_users.c.name)
                )
            ).first()
        return row is not None

    async def revoke_user(self, name: str, *, now: str | None = None) -> bool:
        stamp = normalise_iso(now) if now is not None else utc_now_iso()
        async with self._tx(write=True) as conn:
            row = (
                await conn.execute(
                    update(api_users)
                    .where(api_users.c.name == name, api_users.c.revoked_at.is_(None))
                    .values(revoked_at=stamp)
                    .returning(api_users.c.name)
                )
            ).first()
        return row is not None

    async def user_by_token_hash(self, token_hash: str) -> ApiUser | None:
        """The active user holding this token, if any."""
        async with self._tx(write=False) as conn:
            row = (
                await conn.execute(
                    select(api_users).where(
                        api_users.c.token_hash == token_hash, api_users.c.revoked_at.is_(None)
                    )
                )
            ).first()
        return None if row is None else _user(row._mapping)

    async def list_users(self) -> list[ApiUser]:
        async with self._tx(write=False) as conn:
            rows = (await conn.execute(select(api_users).order_by(api_users.c.name))).all()
        return [_user(r._mapping) for r in rows]

    # -- releases -------------------------------------------------------------------------------
    async def add_release(self, rec: ReleaseRecord) -> ReleaseRecord:
        """Record an uploaded release; an upload of the same payload again returns the first
        record (idempotent: the bytes are the same, content-addressed)."""
        async with self._tx(write=True) as conn:
            row = (
                await conn.execute(select(releases).where(releases.c.sha256 == rec.sha256))
            ).first()
            if row is not None:
                return _release(row._mapping)
            await conn.execute(insert(releases), [rec.to_dict()])
        return rec

    async def get_release(self, sha256: str) -> ReleaseRecord | None:
        async with self._tx(write=False) as conn:
            row = (await conn.execute(select(releases).where(releases.c.sha256 == sha256))).first()
        return None if row is None else _release(row._mapping)

    async def list_releases(self) -> list[ReleaseRecord]:
        async with self._tx(write=False) as conn:
            rows = (await conn.execute(select(releases).order_by(releases.c.uploaded_at))).all()
        return [_release(r._mapping) for r in rows]
