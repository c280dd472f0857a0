"""Self-enrolment and the registry's life cycle (docs/enrolment.md).

- ``POST /api/v1/enroll``: a device enrols itself, authenticated by a one-time enrolment token
  (``Authorization: Bearer fge_…``), never a user's token. Every refusal is ``api.refused``.
- ``POST /api/v1/enroll/tokens`` (operator; ``auto_accept`` needs admin: such a token admits a
  device with no human looking), ``GET /api/v1/enroll/tokens`` (viewer),
  ``DELETE /api/v1/enroll/tokens/{id}`` (operator).
- ``GET /api/v1/registry`` (viewer: devices with state and ``last_seen``),
  ``POST /api/v1/registry:accept`` and ``POST /api/v1/registry:refresh`` (operator).
"""

from __future__ import annotations

import json
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request
from pydantic import BaseModel, ConfigDict, Field

from fleetgate.api.context import ApiContext, api, caller, refuse
from fleetgate.api.errors import ApiError
from fleetgate.api.tokens import Permission, Role
from fleetgate.errors import FleetgateError, InputError
from fleetgate.store.catalog import ApiUser

router = APIRouter(prefix="/api/v1")
Reader = Annotated[ApiUser, Depends(caller(Permission.READ))]
Operator = Annotated[ApiUser, Depends(caller(Permission.OPERATE))]
Ctx = Annotated[ApiContext, Depends(api)]
ENROL_BODY_MAX = 256 * 1024


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TokenRequest(_Body):
    group: str = Field(max_length=128)
    expires: str | float = "24h"
    auto_accept: bool = False


class AcceptRequest(_Body):
    ids: list[str] = Field(default_factory=list, max_length=100_000)
    all_pending: bool = False


class RefreshRequest(_Body):
    select: str | None = Field(default=None, max_length=2000)


async def _store_now(ctx: ApiContext) -> str:
    from fleetgate.clock import to_iso

    return to_iso(await ctx.store.now())


@router.post("/enroll", status_code=201)
async def enroll(request: Request, ctx: Ctx) -> dict[str, Any]:
    from fleetgate.core.enrolment import sha256_text
    from fleetgate.engine.enrolment import EnrolRefused, enrol

    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    token = token.strip()
    actor = "anonymous"
    try:
        if scheme.lower() != "bearer" or not token:
            raise EnrolRefused(
                401,
                "unauthorized",
                "token: missing (Authorization: Bearer ENROLMENT-TOKEN)",
                "token",
            )
        rec = await ctx.store.enrol_token_by_hash(sha256_text(token))
        if rec is not None:
            actor = f"enrolment:{rec.id}"
        declared = request.headers.get("content-length", "")
        too_big = declared.isdigit() and int(declared) > ENROL_BODY_MAX
        raw = b"" if too_big else await request.body()
        if too_big or len(raw) > ENROL_BODY_MAX:
            raise EnrolRefused(
                413, "too-large", f"body: larger than {ENROL_BODY_MAX} bytes", "body"
            )
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            raise EnrolRefused(400, "invalid", "body: not JSON", "body") from None
        done = await enrol(
            ctx.store, token, body, credentials_dir=ctx.credentials, now=await _store_now(ctx)
        )
    except EnrolRefused as exc:
        err = await refuse(ctx, request, exc.status, exc.code, str(exc), actor)
        err.field = exc.field
        raise err from None
    out: dict[str, Any] = {
        "id": done.device.id,
        "group": done.device.group,
        "state": done.device.state.value,
        "again": done.again,
    }
    trust = _trust(ctx)
    if trust is not None:
        out["trust"] = trust
    return out


def _trust(ctx: ApiContext) -> dict[str, str] | None:
    """What the service verifies releases with (a PEM key or a root.json), for a new device's
    agent.toml: the device already trusts this server (TLS) and holds a token it issued."""
    path = ctx.public_key
    if path is None:
        return None
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return None
    kind = "root" if text.lstrip().startswith("{") else "public_key"
    return {"kind": kind, "text": text}


@router.post("/enroll/facts")
async def enrolled_facts(request: Request, ctx: Ctx) -> dict[str, Any]:
    """An enrolled device re-sends its facts, signed with its own key
    (``X-Fleetgate-Signature``): no token, the key it enrolled with is its credential here."""
    from fleetgate.engine.enrolment import EnrolRefused, receive_facts

    declared = request.headers.get("content-length", "")
    try:
        if declared.isdigit() and int(declared) > ENROL_BODY_MAX:
            raise EnrolRefused(
                413, "too-large", f"body: larger than {ENROL_BODY_MAX} bytes", "body"
            )
        raw = await request.body()
        if len(raw) > ENROL_BODY_MAX:
            raise EnrolRefused(
                413, "too-large", f"body: larger than {ENROL_BODY_MAX} bytes", "body"
            )
        signature = request.headers.get("x-fleetgate-signature", "")
        if not signature:
            raise EnrolRefused(401, "unauthorized", "signature: missing", "signature")
        device = await receive_facts(ctx.store, raw, signature, now=await ctx.store.now())
    except EnrolRefused as exc:
        err = await refuse(ctx, request, exc.status, exc.code, str(exc), "anonymous")
        err.field = exc.field
        raise err from None
    return {"id": device.id, "facts_known": device.facts_known}


@router.post("/enroll/tokens", status_code=201)
async def create_enrol_token(
    request: Request, ctx: Ctx, who: Operator, body: TokenRequest
) -> dict[str, Any]:
    from fleetgate.config.policy_file import parse_duration
    from fleetgate.engine.enrolment import create_token

    if body.auto_accept and who.role != Role.ADMIN.value:
        raise await refuse(
            ctx,
            request,
            403,
            "forbidden",
            f"{who.name} is {who.role}: an auto_accept token admits devices unreviewed; it "
            "needs admin",
            who.name,
        )
    try:
        ttl = parse_duration(body.expires)
    except ValueError as exc:
        raise ApiError(400, "invalid", f"expires: {exc}", "expires") from None
    try:
        token, rec = await create_token(
            ctx.store,
            group=body.group,
            ttl_s=ttl,
            auto_accept=body.auto_accept,
            actor=who.name,
            now=await _store_now(ctx),
        )
    except InputError as exc:
        field = "group" if "group" in str(exc) else "expires"
        raise ApiError(400, "invalid", str(exc).replace("--", ""), field) from None
    return {"token": token, **rec.to_dict()}


@router.get("/enroll/tokens")
async def list_enrol_tokens(ctx: Ctx, _who: Reader) -> dict[str, Any]:
    now = await _store_now(ctx)
    return {"tokens": [t.to_dict(now) for t in await ctx.store.list_enrol_tokens()]}


@router.delete("/enroll/tokens/{token_id}")
async def revoke_enrol_token(token_id: str, ctx: Ctx, who: Operator) -> dict[str, Any]:
    from fleetgate.engine.enrolment import revoke_token

    try:
        await revoke_token(ctx.store, token_id, actor=who.name, now=await _store_now(ctx))
    except InputError as exc:
        raise ApiError(404, "not-found", str(exc), "id") from None
    return {"id": token_id, "revoked": True}


# -- the registry -------------------------------------------------------------------------------
@router.get("/registry")
async def registry(
    ctx: Ctx,
    _who: Reader,
    state: Annotated[str | None, Query(max_length=32)] = None,
    select: Annotated[str | None, Query(max_length=2000)] = None,
) -> dict[str, Any]:
    from fleetgate.registry import device_to_dict
    from fleetgate.registry.selector import select_devices

    fleet = await ctx.store.list_devices()
    try:
        chosen = select_devices(fleet, select) if select else fleet
    except FleetgateError as exc:
        raise ApiError(400, "invalid", f"select: {exc}", "select") from None
    if state is not None:
        chosen = [d for d in chosen if d.state.value == state]
    seen = await ctx.store.last_seen()
    return {
        "devices": [
            {**device_to_dict(d), "facts_known": d.facts_known, "last_seen": seen.get(d.id)}
            for d in chosen
        ],
        "count": len(chosen),
    }


@router.post("/registry:accept")
async def registry_accept(ctx: Ctx, who: Operator, body: AcceptRequest) -> dict[str, Any]:
    from fleetgate.engine.enrolment import accept

    if body.all_pending == bool(body.ids):
        raise ApiError(400, "invalid", "give ids or all_pending: true (one of them)", "ids")
    try:
        done = await accept(
            ctx.store,
            body.ids,
            all_pending=body.all_pending,
            actor=who.name,
            now=await _store_now(ctx),
        )
    except InputError as exc:
        raise ApiError(400, "invalid", str(exc), "ids") from None
    return {"accepted": done, "count": len(done)}


@router.post("/registry:refresh")
async def registry_refresh(ctx: Ctx, who: Operator, body: RefreshRequest) -> dict[str, Any]:
    from fleetgate.engine.facts_refresh import refresh_facts
    from fleetgate.registry.selector import select_devices

    fleet = await ctx.store.list_devices()
    try:
        chosen = select_devices(fleet, body.select)
    except FleetgateError as exc:
        raise ApiError(400, "invalid", f"select: {exc}", "select") from None
    done = await refresh_facts(
        ctx.store, ctx.controller.transport, chosen, now=await _store_now(ctx), actor=who.name
    )
    return {
        "asked": len(chosen),
        "updated": [d.id for d in done.updated],
        "failed": done.failed,
    }
