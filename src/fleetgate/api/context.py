"""What every request handler shares: the store, the controller, the service's settings, and
who is asking (``caller``: the bearer token's user, checked against the permission the route
needs; every refusal is itself written to the audit log)."""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fastapi import Request

from fleetgate.api.errors import ApiError
from fleetgate.api.metrics import Metrics
from fleetgate.api.tokens import Permission, allowed, hash_token
from fleetgate.clock import utc_now_iso
from fleetgate.core.events import Event
from fleetgate.errors import FleetgateError
from fleetgate.store.catalog import ApiUser


@dataclass
class ApiContext:
    store: Any  # fleetgate.store.Store
    controller: Any  # fleetgate.engine.service.Controller
    blob_dir: Path
    public_key: Path | None
    max_upload_bytes: int
    metrics: Metrics
    # Set by the worker: wakes it at once when a decision was recorded.
    poke: Callable[[], None] = lambda: None
    # Where self-enrolled devices' credentials are kept (0600 files); default beside the blobs.
    credentials_dir: Path | None = None

    @property
    def credentials(self) -> Path:
        base = self.credentials_dir or self.blob_dir.parent / "credentials"
        return base.absolute()


def api(request: Request) -> ApiContext:
    ctx: ApiContext = request.app.state.api
    return ctx


async def refuse(
    ctx: ApiContext, request: Request, status: int, code: str, message: str, actor: str
) -> ApiError:
    """Write the refusal to the audit log (best effort: a store outage must not turn a 401
    into a 500), then return the error to raise."""
    with contextlib.suppress(FleetgateError):
        await ctx.store.append(
            Event(
                ts=utc_now_iso(),
                # Never the deployment's own id: its log folds into its state, and a refused
                # request is not part of the deployment's history.
                deployment_id=None,
                action="api.refused",
                outcome="refused",
                actor=actor,
                details={
                    "method": request.method,
                    "path": request.url.path,
                    "status": status,
                    "reason": message,
                    "deployment": request.path_params.get("dep_id"),
                },
            )
        )
    return ApiError(status, code, message)


def caller(permission: Permission) -> Callable[[Request], Awaitable[ApiUser]]:
    """A dependency: the authenticated user, who must hold ``permission``."""

    async def check(request: Request) -> ApiUser:
        ctx = api(request)
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise await refuse(
                ctx,
                request,
                401,
                "unauthorized",
                "missing bearer token (Authorization: Bearer TOKEN; see fleetgate users add)",
                "anonymous",
            )
        user: ApiUser | None = await ctx.store.user_by_token_hash(hash_token(token.strip()))
        if user is None:
            raise await refuse(
                ctx, request, 401, "unauthorized", "unknown or revoked token", "anonymous"
            )
        if not allowed(user.role, permission):
            raise await refuse(
                ctx,
                request,
                403,
                "forbidden",
                f"{user.name} is {user.role}: {permission.value} needs one of "
                + ", ".join(r for r in ("operator", "approver", "admin") if allowed(r, permission)),
                user.name,
            )
        return user

    return check
