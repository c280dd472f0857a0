"""The inventory, releases (upload and the standing distribution point), the audit chain,
health and metrics."""

from __future__ import annotations

import asyncio
import hashlib
import os
import re
import tempfile
from pathlib import Path
from typing import Annotated, Any, BinaryIO

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import FileResponse, Response

from fleetgate.api.context import ApiContext, api, caller
from fleetgate.api.errors import ApiError
from fleetgate.api.tokens import Permission
from fleetgate.clock import utc_now_iso
from fleetgate.core.events import Event
from fleetgate.errors import FleetgateError, IntegrityError
from fleetgate.store.catalog import ApiUser, ReleaseRecord

router = APIRouter()
Reader = Annotated[ApiUser, Depends(caller(Permission.READ))]
Operator = Annotated[ApiUser, Depends(caller(Permission.OPERATE))]
Ctx = Annotated[ApiContext, Depends(api)]
SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
INVENTORY_MAX = 64 * 1024 * 1024


@router.get("/api/v1/health")
async def health(ctx: Ctx) -> dict[str, Any]:
    """Liveness and the store's reachability; unauthenticated and says nothing about the fleet."""
    try:
        await ctx.store.now()
    except FleetgateError:
        raise ApiError(503, "store-unavailable", "the store is not reachable") from None
    return {"status": "ok"}


@router.get("/api/v1/devices")
async def devices(
    ctx: Ctx, _who: Reader, select: Annotated[str | None, Query(max_length=2000)] = None
) -> dict[str, Any]:
    from fleetgate.registry import device_to_dict
    from fleetgate.registry.selector import select_devices

    fleet = await ctx.store.list_devices()
    try:
        chosen = select_devices(fleet, select) if select else fleet
    except FleetgateError as exc:
        raise ApiError(400, "invalid", f"select: {exc}", "select") from None
    return {"devices": [device_to_dict(d) for d in chosen], "count": len(chosen)}


async def _body(request: Request, limit: int, what: str) -> bytes:
    """The whole request body, refused (413) past ``limit`` before it is all read."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise ApiError(413, "too-large", f"{what}: larger than {limit} bytes", "body")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise ApiError(413, "too-large", f"{what}: larger than {limit} bytes", "body")
        chunks.append(chunk)
    return b"".join(chunks)


@router.post("/api/v1/devices:import")
async def import_devices(
    request: Request,
    ctx: Ctx,
    who: Operator,
    format: Annotated[str, Query(pattern="^(yaml|csv|ini|auto)$")] = "auto",
) -> dict[str, Any]:
    """Replace the inventory (the formats of ``registry import``: fleet.yaml, CSV, Ansible)."""
    from fleetgate.engine.inventory import import_inventory
    from fleetgate.registry.loader import parse_inventory

    raw = await _body(request, INVENTORY_MAX, "inventory")
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ApiError(400, "invalid", f"body: not UTF-8 text (byte {exc.start})", "body") from None
    suffix = "" if format == "auto" else f".{format}"
    devices = parse_inventory(text, "body", suffix)
    done = await import_inventory(
        ctx.store,
        devices,
        actor=who.name,
        source="POST /api/v1/devices:import",
        sha256=hashlib.sha256(raw).hexdigest(),
    )
    return {"devices": done.devices, "kept_in_quarantine": done.kept_in_quarantine}


# -- releases and the distribution point ----------------------------------------------------------
def _spool_file(ctx: ApiContext) -> tuple[Path, BinaryIO]:
    ctx.blob_dir.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=ctx.blob_dir, prefix=".upload-", suffix=".fgb")
    return Path(name), os.fdopen(fd, "wb")


async def _receive(request: Request, ctx: ApiContext) -> tuple[Path, str, int]:
    """Stream the upload to a file beside the blobs (same filesystem), chunk by chunk: a
    2 GiB bundle never sits in memory. Refused (413) past the limit, the file removed."""
    limit = ctx.max_upload_bytes
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise ApiError(413, "too-large", f"bundle: larger than {limit} bytes", "body")
    path, fh = await asyncio.to_thread(_spool_file, ctx)
    digest, size = hashlib.sha256(), 0
    try:
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise ApiError(413, "too-large", f"bundle: larger than {limit} bytes", "body")
            digest.update(chunk)
            await asyncio.to_thread(fh.write, chunk)
    except BaseException:
        fh.close()
        path.unlink(missing_ok=True)
        raise
    fh.close()
    return path, digest.hexdigest(), size


def _publish(ctx: ApiContext, path: Path) -> tuple[Any, str, int]:
    from fleetgate.artifacts.distribution import publish_bundle, publish_roots
    from fleetgate.artifacts.root import Root, load_trust
    from fleetgate.artifacts.signing import verify_bundle

    assert ctx.public_key is not None
    pub = load_trust(ctx.public_key)  # a PEM key, or a root.json whose chain devices walk
    if isinstance(pub, Root):
        publish_roots(ctx.public_key, ctx.blob_dir)
    manifest = verify_bundle(path, pub)
    sha, size = publish_bundle(path, ctx.blob_dir, public_key=pub)
    return manifest, sha, size


@router.post("/api/v1/releases", status_code=201)
async def upload(request: Request, ctx: Ctx, who: Operator) -> dict[str, Any]:
    """A signed ``.fgb`` bundle as the body: verified, its payload stored by sha256."""
    if ctx.public_key is None:
        raise ApiError(409, "no-key", "the service has no public key (FLEETGATE_PUBKEY)")
    path, bundle_sha, size = await _receive(request, ctx)
    try:
        if size == 0:
            raise ApiError(400, "invalid", "body: empty; send the .fgb bundle", "body")
        manifest, sha, size = await asyncio.to_thread(_publish, ctx, path)
    except IntegrityError as exc:
        msg = str(exc).replace(str(path), "bundle")
        raise ApiError(422, "integrity-error", msg, "body") from None
    except FleetgateError as exc:
        msg = str(exc).replace(str(path), "bundle")
        raise ApiError(400, "invalid", msg, "body") from None
    finally:
        path.unlink(missing_ok=True)
    rec = await ctx.store.add_release(
        ReleaseRecord(
            sha256=sha,
            release_id=manifest.release_id,
            name=manifest.name,
            version=str(manifest.version),
            size=size,
            bundle_sha256=bundle_sha,
            uploaded_by=who.name,
            uploaded_at=utc_now_iso(),
        )
    )
    await ctx.store.append(
        Event(
            ts=utc_now_iso(),
            deployment_id=None,
            action="release.uploaded",
            actor=who.name,
            details=rec.to_dict(),
        )
    )
    out: dict[str, Any] = rec.to_dict()
    return out


@router.get("/api/v1/releases")
async def releases(ctx: Ctx, _who: Reader) -> dict[str, Any]:
    return {"releases": [r.to_dict() for r in await ctx.store.list_releases()]}


@router.api_route("/blobs/{sha256}", methods=["GET", "HEAD"], response_model=None)
async def blob(sha256: str, ctx: Ctx) -> Response:
    """The content-addressed payloads devices fetch (Range and HEAD supported). Public by
    design, like any static mirror: each is signed, and a device checks size and sha256."""
    if not SHA256_RE.match(sha256):
        raise ApiError(404, "not-found", "no such blob")
    path = ctx.blob_dir / sha256
    if not path.is_file():
        raise ApiError(404, "not-found", f"no blob {sha256}")
    return FileResponse(path, media_type="application/octet-stream")


@router.get("/roots/{name}", response_model=None)
async def root_doc(name: str, ctx: Ctx) -> Response:
    """The root metadata chain (``N.root.json``) devices walk at each stage, beside the blobs
    (agent/trust.py). Public like the blobs: each root is signed."""
    from fleetgate.artifacts.distribution import ROOT_NAME_RE, ROOTS_DIR

    path = ctx.blob_dir / ROOTS_DIR / name
    if not ROOT_NAME_RE.match(name) or not path.is_file():
        raise ApiError(404, "not-found", f"no root {name}")
    return FileResponse(path, media_type="application/json")


# -- audit and metrics ----------------------------------------------------------------------------
@router.get("/api/v1/audit/verify")
async def audit_verify(ctx: Ctx, _who: Reader) -> dict[str, Any]:
    report = await ctx.store.verify()
    return {
        "ok": report.ok,
        "events": report.checked,
        "broken_at": report.first_bad_seq,
        "reason": report.reason,
    }


@router.get("/metrics")
async def metrics(ctx: Ctx, _who: Reader) -> Response:
    return Response(await ctx.metrics.render(ctx.store), media_type="text/plain; version=0.0.4")
