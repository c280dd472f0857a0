"""Self-enrolment (docs/enrolment.md, ADR 0013): one-time tokens, a device's request, and the
operator's acceptance.

- ``create_token``: a random token (``fge_`` + 256 bits), of which the store keeps only the
  SHA-256, with its group, expiry and whether it admits at once; logged.
- ``enrol``: checks the token (unknown -> 401; used, revoked or expired -> 403), then the
  request (400 naming the field), then, in one transaction, consumes the token (a conditional
  update: a replay or a race loses), refuses an id that belongs to another key or another
  group (409 / 403), writes the device (``pending``, or ``active`` when the token says so),
  its public key, ``last_seen`` and ``device.enrolled``. A refusal writes nothing but the
  caller's ``api.refused``.
- The device's credential (the bearer token the controller presents to it) is generated on
  the device and sent once over TLS; the controller keeps it in a file of its credentials
  directory (0600, named by the credential's hash so a re-enrolment never overwrites the file
  a running deployment reads) and the device record names that file (``token_file``).
- ``accept``: pending -> active, logged per device.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import os
import re
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from fleetgate.clock import add_seconds, normalise_iso, parse_iso, to_iso
from fleetgate.core.enrolment import (
    ENROL_TOKEN_PREFIX,
    FACTS_MAX_SKEW_S,
    facts_message,
    proof_message,
    sha256_text,
)
from fleetgate.core.events import Event
from fleetgate.core.model import DEVICE_ID_RE, NAME_RE, Device, DeviceState
from fleetgate.errors import FleetgateError, InputError, ValidationError
from fleetgate.registry.facts import ReportedFacts, read_facts
from fleetgate.registry.fields import ADDRESS_HINT, ADDRESS_SCHEMES
from fleetgate.store.enrolment import EnrolToken

MAX_TTL_S = 30 * 86400
_CREDENTIAL_RE = re.compile(r"^[\x21-\x7e]{32,512}$")  # printable, no spaces


class EnrolRefused(FleetgateError):
    """An enrolment the controller refuses: the HTTP status, a code and the field to name."""

    def __init__(self, status: int, code: str, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.status, self.code, self.field = status, code, field


def new_enrol_token() -> str:
    return ENROL_TOKEN_PREFIX + secrets.token_urlsafe(32)


async def create_token(
    store: Any,
    *,
    group: str,
    ttl_s: float,
    auto_accept: bool,
    actor: str,
    now: str,
) -> tuple[str, EnrolToken]:
    """A new token (returned once, never stored) and its record."""
    if not NAME_RE.match(group):
        raise InputError(f"--group: {group!r}: expected 1-128 characters of A-Z a-z 0-9 . _ -")
    if not 0 < ttl_s <= MAX_TTL_S:
        raise InputError(f"--expires: must be more than 0 and at most {MAX_TTL_S // 86400} days")
    token = new_enrol_token()
    rec = EnrolToken(
        id="enr-" + secrets.token_hex(4),
        token_hash=sha256_text(token),
        group=group,
        auto_accept=auto_accept,
        created_by=actor,
        created_at=normalise_iso(now),
        expires_at=add_seconds(now, ttl_s),
    )
    async with store.transaction():
        await store.add_enrol_token(rec)
        await store.append(
            Event(
                ts=normalise_iso(now),
                deployment_id=None,
                action="enrolment.token_created",
                actor=actor,
                details=rec.to_dict(),
            )
        )
    return token, rec


async def revoke_token(store: Any, token_id: str, *, actor: str, now: str) -> None:
    async with store.transaction():
        if not await store.revoke_enrol_token(token_id, now):
            raise InputError(f"enroll revoke: no unused enrolment token {token_id!r}")
        await store.append(
            Event(
                ts=normalise_iso(now),
                deployment_id=None,
                action="enrolment.token_revoked",
                actor=actor,
                details={"id": token_id},
            )
        )


# -- the device's request ---------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class EnrolRequest:
    device_id: str
    address: str
    public_key: str  # base64 of the 32 raw Ed25519 bytes
    credential: str
    facts: ReportedFacts
    group: str | None
    signature: bytes


def _text(body: Mapping[str, Any], key: str, limit: int = 2048) -> str:
    value = body.get(key)
    if not isinstance(value, str) or not value.strip():
        got = "nothing" if value is None else type(value).__name__
        raise EnrolRefused(400, "invalid", f"{key}: expected text, got {got}", key)
    if len(value) > limit:
        raise EnrolRefused(400, "invalid", f"{key}: longer than {limit} characters", key)
    return value.strip()


def _b64(text: str, key: str) -> bytes:
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise EnrolRefused(400, "invalid", f"{key}: not base64", key) from None


def check_address(address: str) -> str | None:
    """Why ``address`` is not a device address (None: it is one)."""
    try:
        parsed = urlparse(address)
        parsed.port  # noqa: B018 - raises ValueError on a malformed port
    except ValueError as exc:
        return f"{address!r} is not a valid URL ({exc})"
    if parsed.scheme not in ADDRESS_SCHEMES or not parsed.hostname:
        return f"{address!r} must be an {ADDRESS_HINT} URL with a host"
    return None


def parse_request(body: object) -> EnrolRequest:
    """The request body, or ``EnrolRefused`` (400) naming the first bad field."""
    if not isinstance(body, Mapping):
        raise EnrolRefused(400, "invalid", "body: expected a JSON object", "body")
    unknown = sorted(
        set(body) - {"id", "address", "public_key", "credential", "facts", "group", "signature"}
    )
    if unknown:
        raise EnrolRefused(400, "invalid", f"{unknown[0]}: unknown field", unknown[0])
    device_id = _text(body, "id", 128)
    if not DEVICE_ID_RE.match(device_id):
        raise EnrolRefused(400, "invalid", f"id: {device_id!r} must match [A-Za-z0-9._-]", "id")
    address = _text(body, "address")
    why = check_address(address)
    if why is not None:
        raise EnrolRefused(400, "invalid", f"address: {why}", "address")
    public_key = _text(body, "public_key", 100)
    if len(_b64(public_key, "public_key")) != 32:
        raise EnrolRefused(400, "invalid", "public_key: expected 32 bytes (Ed25519)", "public_key")
    credential = _text(body, "credential", 512)
    if not _CREDENTIAL_RE.match(credential):
        raise EnrolRefused(
            400, "invalid", "credential: expected 32-512 printable characters", "credential"
        )
    group = body.get("group")
    if group is not None and (not isinstance(group, str) or not NAME_RE.match(group)):
        raise EnrolRefused(400, "invalid", "group: expected a group name", "group")
    signature = _b64(_text(body, "signature", 200), "signature")
    try:
        facts = read_facts(body.get("facts"), "facts")
    except ValidationError as exc:
        first = exc.problems[0]
        field = first.split(":", 1)[0]
        raise EnrolRefused(400, "invalid", first, field) from None
    return EnrolRequest(device_id, address, public_key, credential, facts, group, signature)


def _verify(req: EnrolRequest, token: str) -> None:
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    key = Ed25519PublicKey.from_public_bytes(base64.b64decode(req.public_key))
    message = proof_message(
        token=token, device_id=req.device_id, address=req.address, credential=req.credential
    )
    try:
        key.verify(req.signature, message)
    except InvalidSignature:
        raise EnrolRefused(
            400, "invalid", "signature: does not verify with public_key", "signature"
        ) from None


def _write_credential(directory: Path, device_id: str, credential: str) -> Path:
    """A new file (never an overwrite), 0600 from its first byte."""
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    path = directory / f"{device_id}.{sha256_text(credential)[:16]}.token"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(credential + "\n")
    return path


def _remove_old(old: Path, credentials_dir: Path) -> None:
    if old.parent == credentials_dir:  # only a file this controller wrote
        with contextlib.suppress(OSError):
            old.unlink()


# -- enrolment --------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Enrolled:
    device: Device
    token_id: str
    again: bool  # the same device (same key) enrolled before


async def check_token(store: Any, token: str, now: str) -> EnrolToken:
    """The usable token, or ``EnrolRefused``: 401 unknown, 403 used / revoked / expired."""
    rec: EnrolToken | None = await store.enrol_token_by_hash(sha256_text(token))
    if rec is None:
        raise EnrolRefused(401, "unauthorized", "token: unknown enrolment token", "token")
    status = rec.status(now)
    if status != "usable":
        why = {
            "used": "already used (enrolment tokens are single-use)",
            "revoked": "revoked",
            "expired": f"expired at {rec.expires_at}",
        }[status]
        msg = f"token: enrolment token {rec.id} {why}"
        raise EnrolRefused(403, f"token-{status}", msg, "token")
    return rec


async def enrol(
    store: Any, token: str, body: object, *, credentials_dir: Path, now: str
) -> Enrolled:
    tok = await check_token(store, token, now)
    req = parse_request(body)
    _verify(req, token)
    if req.group is not None and req.group != tok.group:
        raise EnrolRefused(
            403,
            "forbidden",
            f"group: this token admits to {tok.group!r}, not {req.group!r}",
            "group",
        )
    path = _write_credential(credentials_dir, req.device_id, req.credential)
    try:
        async with store.transaction():
            existing: Device | None = await store.get_device(req.device_id)
            known_key: str | None = await store.device_key(req.device_id)
            # An id belongs to its key, even after an import removed the device.
            if (existing is not None or known_key is not None) and known_key != req.public_key:
                whose = "another device's key" if known_key else "a device of the inventory"
                raise EnrolRefused(
                    409, "conflict", f"id: {req.device_id!r} already belongs to {whose}", "id"
                )
            if existing is not None and existing.group != tok.group:
                raise EnrolRefused(
                    403,
                    "forbidden",
                    f"group: {req.device_id!r} is in group "
                    f"{existing.group!r}; this token admits to {tok.group!r}",
                    "group",
                )
            if not await store.consume_enrol_token(tok.token_hash, req.device_id, now):
                # Lost a race with another use of the same token since check_token.
                raise EnrolRefused(
                    403, "token-used", f"token: enrolment token {tok.id} already used", "token"
                )
            device = _device(existing, req, tok, path)
            await store.upsert_devices([device], now=now)
            await store.record_facts({device.id: req.facts}, now)  # last_seen
            await store.set_device_key(req.device_id, req.public_key, now)
            await store.append(
                Event(
                    ts=normalise_iso(now),
                    deployment_id=None,
                    device_id=device.id,
                    action="device.enrolled",
                    actor=f"enrolment:{tok.id}",
                    details={
                        "token": tok.id,
                        "group": device.group,
                        "state": device.state.value,
                        "address": device.address,
                        "again": existing is not None,
                        "key_sha256": sha256_text(req.public_key),
                        "hardware": device.hardware,
                        "arch": device.arch.value if device.arch else None,
                    },
                )
            )
    except BaseException:
        path.unlink(missing_ok=True)
        raise
    if existing is not None and existing.token_file not in (None, str(path)):
        _remove_old(Path(existing.token_file or ""), credentials_dir)
    return Enrolled(device, tok.id, existing is not None)


def _device(existing: Device | None, req: EnrolRequest, tok: EnrolToken, path: Path) -> Device:
    facts = req.facts
    if existing is not None:  # same key: a re-enrolment refreshes; the state stays
        state, reason = existing.state, existing.state_reason
        if state is DeviceState.PENDING and tok.auto_accept:
            state, reason = DeviceState.ACTIVE, ""
        return replace(
            existing,
            address=req.address,
            hardware=facts.hardware,
            arch=facts.arch,
            resources=facts.resources,
            software={**existing.software, **facts.software},
            token_env=None,
            token_file=str(path),
            state=state,
            state_reason=reason,
        )
    return Device(
        id=req.device_id,
        hardware=facts.hardware,
        arch=facts.arch,
        group=tok.group,
        address=req.address,
        resources=facts.resources,
        token_file=str(path),
        software=dict(facts.software),
        state=DeviceState.ACTIVE if tok.auto_accept else DeviceState.PENDING,
        state_reason="" if tok.auto_accept else f"enrolled with {tok.id}: registry accept",
    )


async def accept(
    store: Any, ids: Sequence[str], *, all_pending: bool, actor: str, now: str
) -> list[str]:
    """Pending -> active; returns the ids accepted. An id that is not pending is an error
    (nothing is changed)."""
    async with store.transaction():
        fleet = {d.id: d for d in await store.list_devices()}
        if all_pending:
            chosen = [d for d in fleet.values() if d.state is DeviceState.PENDING]
        else:
            chosen = []
            for ident in ids:
                dev = fleet.get(ident)
                if dev is None:
                    raise InputError(f"registry accept: no device {ident!r} in the inventory")
                if dev.state is not DeviceState.PENDING:
                    raise InputError(f"registry accept: {ident} is {dev.state.value}, not pending")
                chosen.append(dev)
        done = [replace(d, state=DeviceState.ACTIVE, state_reason="") for d in chosen]
        await store.upsert_devices(done, now=now)
        await store.append_many(
            [
                Event(
                    ts=normalise_iso(now),
                    deployment_id=None,
                    device_id=d.id,
                    action="registry.accepted",
                    actor=actor,
                    details={"group": d.group, "was": "pending"},
                )
                for d in done
            ]
        )
    return [d.id for d in done]


async def receive_facts(store: Any, raw: bytes, signature: str, *, now: datetime) -> Device:
    """An enrolled device re-sends its facts, signed with its key (``core.enrolment
    .facts_message``): unknown device or key, a bad signature or a stale ``ts`` -> 401; bad facts
    -> 400; then the facts and ``last_seen`` are written to its current record."""
    import json

    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    try:
        doc = json.loads(raw)
    except ValueError:
        raise EnrolRefused(400, "invalid", "body: not JSON", "body") from None
    if not isinstance(doc, Mapping):
        raise EnrolRefused(400, "invalid", "body: expected a JSON object", "body")
    device_id, ts = _text(doc, "id", 128), _text(doc, "ts", 64)
    known = await store.device_key(device_id)
    if known is None:
        raise EnrolRefused(401, "unauthorized", f"id: {device_id!r} has not enrolled", "id")
    key = Ed25519PublicKey.from_public_bytes(base64.b64decode(known))
    message = facts_message(device_id=device_id, ts=ts, body_sha256=hashlib.sha256(raw).hexdigest())
    try:
        key.verify(_b64(signature, "signature"), message)
    except InvalidSignature:
        raise EnrolRefused(
            401, "unauthorized", "signature: does not verify with the device's key", "signature"
        ) from None
    try:
        skew = abs((parse_iso(ts) - now).total_seconds())
    except ValueError:
        raise EnrolRefused(
            400, "invalid", "ts: not an ISO-8601 time with an offset", "ts"
        ) from None
    if skew > FACTS_MAX_SKEW_S:
        raise EnrolRefused(
            401, "unauthorized", f"ts: {skew:.0f} s from the controller's clock (replay?)", "ts"
        )
    try:
        facts = read_facts(doc.get("facts"), "facts")
    except ValidationError as exc:
        first = exc.problems[0]
        raise EnrolRefused(400, "invalid", first, first.split(":", 1)[0]) from None
    written: list[Device] = await store.record_facts({device_id: facts}, to_iso(now))
    if not written:
        raise EnrolRefused(404, "not-found", f"id: {device_id!r} is not in the inventory", "id")
    return written[0]
