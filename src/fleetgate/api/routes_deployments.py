"""Deployments: create, read, report, events, and the human decisions.

A decision is recorded in one short transaction (the state machine validates it against the
log) and the answer returns at once: the service's worker drives the deployment on.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from pydantic import BaseModel, ConfigDict, Field

from fleetgate.api.context import ApiContext, api, caller
from fleetgate.api.errors import ApiError
from fleetgate.api.policy_input import policy_input
from fleetgate.api.tokens import Permission
from fleetgate.core.state import DeploymentState, Phase, exit_code, render_state_block
from fleetgate.store.catalog import ApiUser

router = APIRouter(prefix="/api/v1")
Reader = Annotated[ApiUser, Depends(caller(Permission.READ))]
Operator = Annotated[ApiUser, Depends(caller(Permission.OPERATE))]
Approver = Annotated[ApiUser, Depends(caller(Permission.APPROVE))]
Ctx = Annotated[ApiContext, Depends(api)]
SHA256 = r"^[0-9a-f]{64}$"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class NewDeployment(_Strict):
    release: str = Field(pattern=SHA256, description="sha256 of an uploaded release's payload")
    policy: dict[str, Any] | None = None
    policy_toml: str | None = None
    select: str | None = None


class DecisionBody(_Strict):
    comment: str = Field(default="", max_length=2000)
    accept_inconclusive: bool = False
    exclude_failed_cells: bool = False
    devices: list[str] = Field(default_factory=list, max_length=100_000)


def state_fields(state: DeploymentState) -> dict[str, str]:
    lines = render_state_block(state).splitlines()[1:-1]
    return dict(line.split(": ", 1) for line in lines)


def state_doc(state: DeploymentState) -> dict[str, Any]:
    return {
        "id": state.deployment_id,
        "phase": state.phase.value,
        "artifact": state.artifact,
        "sha256": state.sha256,
        "started_by": state.started_by,
        "halt_reason": state.halt_reason or None,
        "exit_code": exit_code(state),
        "canary_verdict": state.canary_verdict,
        "devices": {i: s.value for i, s in state.device_items()},
        "state": state_fields(state),
    }


async def _events(ctx: ApiContext, dep_id: str) -> list[Any]:
    events: list[Any] = await ctx.store.events(dep_id)
    if not events:
        raise ApiError(404, "not-found", f"no deployment {dep_id!r}", "id")
    return events


async def known(ctx: ApiContext, dep_id: str) -> None:
    """404 unless the deployment exists (its cached summary row: no fold)."""
    if len(dep_id) > 128 or await ctx.store.get_deployment(dep_id) is None:
        raise ApiError(404, "not-found", f"no deployment {dep_id!r}", "id")


class StateCache:
    """Each deployment's folded state as this process last saw it, extended with only the
    events written since (a page at a time): a client polling a 100,000-event deployment does
    not make the service re-read and re-fold its whole log each time."""

    PAGE = 5000
    KEEP = 256  # deployments held; the least recently read are dropped

    def __init__(self, store: Any) -> None:
        self.store = store
        self.held: OrderedDict[str, tuple[int, DeploymentState]] = OrderedDict()

    async def get(self, dep_id: str) -> tuple[DeploymentState, int]:
        from fleetgate.core.machine import apply

        last, state = self.held.get(dep_id, (0, DeploymentState.empty(dep_id)))
        while True:
            page = await self.store.events_page(dep_id, last, self.PAGE)
            for ev in page:
                state = apply(state, ev)
            if page:
                last = page[-1].seq
            if len(page) < self.PAGE:
                break
        if last == 0:
            raise ApiError(404, "not-found", f"no deployment {dep_id!r}", "id")
        self.held[dep_id] = (last, state)
        self.held.move_to_end(dep_id)
        while len(self.held) > self.KEEP:
            self.held.popitem(last=False)
        return state, last


def _select(expr: str | None) -> Any:
    from fleetgate.registry.selector import parse_selector

    if not expr:
        return None
    try:
        return parse_selector(expr).matches
    except Exception as exc:  # the selector's own error names the problem
        raise ApiError(400, "invalid", f"select: {exc}", "select") from None


@router.post("/plans")
async def dry_run(body: NewDeployment, ctx: Ctx, _who: Reader) -> dict[str, Any]:
    """What a deployment of this release under this policy would do; nothing is written."""
    from fleetgate.artifacts.distribution import load_published
    from fleetgate.artifacts.root import load_trust
    from fleetgate.artifacts.signing import verify_manifest
    from fleetgate.core.plan import plan_deployment
    from fleetgate.core.plan_doc import plan_to_dict

    policy, _doc = policy_input(body.policy, body.policy_toml)
    if await ctx.store.get_release(body.release) is None:
        raise ApiError(404, "not-found", f"no uploaded release {body.release}", "release")
    if ctx.public_key is None:
        raise ApiError(409, "no-key", "the service has no public key to verify releases")
    raw, sig = load_published(ctx.blob_dir, body.release)
    manifest = verify_manifest(raw, sig, load_trust(ctx.public_key))
    plan = plan_deployment(await ctx.store.list_devices(), manifest, policy, _select(body.select))
    return {"plan": plan_to_dict(plan, policy, sha256=body.release), "blockers": plan.blockers}


@router.post("/deployments", status_code=201)
async def create(body: NewDeployment, ctx: Ctx, who: Operator) -> dict[str, Any]:
    policy, doc = policy_input(body.policy, body.policy_toml)
    dep_id = await ctx.controller.start_published(
        body.release, policy, policy_doc=doc, select=_select(body.select), actor=who.name
    )
    ctx.poke()
    return {"id": dep_id, "phase": Phase.PREPARE.value}


@router.get("/deployments")
async def listing(
    ctx: Ctx, _who: Reader, phase: Annotated[str | None, Query(max_length=40)] = None
) -> dict[str, Any]:
    if phase is not None and phase not in {p.value for p in Phase}:
        raise ApiError(400, "invalid", f"phase: unknown phase {phase!r}", "phase")
    rows = await ctx.store.list_deployments()
    return {
        "deployments": [
            {
                "id": r.id,
                "phase": r.status,
                "artifact": r.artifact_label,
                "sha256": r.sha256,
                "created_at": r.created_at,
                "updated_at": r.updated_at,
            }
            for r in rows
            if phase is None or r.status == phase
        ]
    }


@router.get("/deployments/{dep_id}")
async def one(dep_id: str, request: Request, ctx: Ctx, _who: Reader) -> dict[str, Any]:
    if len(dep_id) > 128:
        raise ApiError(404, "not-found", f"no deployment {dep_id[:40]!r}…", "id")
    cache: StateCache = request.app.state.states
    state, last = await cache.get(dep_id)
    return {**state_doc(state), "last_seq": last}


@router.get("/deployments/{dep_id}/report", response_model=None)
async def report(
    dep_id: str,
    ctx: Ctx,
    _who: Reader,
    format: Annotated[Literal["md", "json"], Query()] = "md",
) -> Response:
    from fleetgate.report.session import build_report, render_report_md

    doc = build_report(dep_id, await _events(ctx, dep_id))
    if format == "json":
        import json

        return Response(json.dumps(doc, default=str), media_type="application/json")
    return PlainTextResponse(render_report_md(doc), media_type="text/markdown")


@router.get("/deployments/{dep_id}/events")
async def events(
    dep_id: str,
    ctx: Ctx,
    _who: Reader,
    after: Annotated[int, Query(ge=0)] = 0,
    limit: Annotated[int, Query(ge=1, le=10_000)] = 1000,
) -> dict[str, Any]:
    from fleetgate.core.events import event_to_dict

    await known(ctx, dep_id)
    # One page (and one more event, to tell whether there is more): never the whole tail.
    found = await ctx.store.events_page(dep_id, after, limit + 1)
    page = found[:limit]
    return {
        "events": [event_to_dict(e) for e in page],
        "next_after": page[-1].seq if page else after,
        "more": len(found) > limit,
    }


# -- decisions --------------------------------------------------------------------------------
async def _decide(
    ctx: ApiContext, dep_id: str, action: str, who: ApiUser, details: dict[str, Any]
) -> JSONResponse:
    from fleetgate.engine.service import Decision

    await known(ctx, dep_id)
    state = await ctx.controller.record_decision(dep_id, Decision(action, who.name, None, details))
    if action == "rollback.requested":
        ctx.metrics.rollbacks.inc()
    ctx.poke()
    return JSONResponse(state_doc(state))


@router.post("/deployments/{dep_id}/approve")
async def approve(
    dep_id: str, ctx: Ctx, who: Approver, body: DecisionBody | None = None
) -> JSONResponse:
    b = body or DecisionBody()
    details: dict[str, Any] = {"comment": b.comment}
    if b.accept_inconclusive:
        details["accept_inconclusive"] = True
    return await _decide(ctx, dep_id, "approval.granted", who, details)


@router.post("/deployments/{dep_id}/reject")
async def reject(
    dep_id: str, ctx: Ctx, who: Approver, body: DecisionBody | None = None
) -> JSONResponse:
    b = body or DecisionBody()
    return await _decide(ctx, dep_id, "approval.rejected", who, {"comment": b.comment})


@router.post("/deployments/{dep_id}/resume")
async def resume(
    dep_id: str, ctx: Ctx, who: Operator, body: DecisionBody | None = None
) -> JSONResponse:
    b = body or DecisionBody()
    details: dict[str, Any] = {"comment": b.comment}
    if b.exclude_failed_cells:
        details["canary_failure"] = "exclude"
    return await _decide(ctx, dep_id, "deployment.resumed", who, details)


@router.post("/deployments/{dep_id}/halt")
async def halt(
    dep_id: str, ctx: Ctx, who: Operator, body: DecisionBody | None = None
) -> JSONResponse:
    """Pause a moving deployment at its next safe point (the driver's next step); resume
    carries on from there. A rollback is never paused."""
    b = body or DecisionBody()
    return await _decide(ctx, dep_id, "deployment.halted", who, {"comment": b.comment})


@router.post("/deployments/{dep_id}/rollback")
async def rollback(
    dep_id: str, ctx: Ctx, who: Operator, body: DecisionBody | None = None
) -> JSONResponse:
    b = body or DecisionBody()
    details = {
        "comment": b.comment,
        "devices": b.devices,
        "reason": b.comment or "operator rollback",
    }
    return await _decide(ctx, dep_id, "rollback.requested", who, details)


class RecoverBody(_Strict):
    deployment: str = Field(min_length=1, max_length=128)
    comment: str = Field(default="", max_length=2000)


@router.post("/devices/{device_id}/recover")
async def recover(device_id: str, body: RecoverBody, ctx: Ctx, who: Operator) -> JSONResponse:
    await known(ctx, body.deployment)
    state = await ctx.controller.recover(body.deployment, device_id, who.name, body.comment)
    ctx.poke()
    return JSONResponse(state_doc(state))
