"""No silent downgrade (issue 10): the floor of committed versions and signed authorisations.

The device keeps, per release *name*, the highest version it ever committed
(``state.committed``, PEP 440 order). A release below that floor is refused
(``409 downgrade-refused``) at ``stage`` and at ``activate``, unless

- it is the rollback copy the device holds (``previous``): rollback is never blocked; or
- the stage carries a **downgrade authorisation** signed with the release key: a small JSON
  document naming the devices (a list of ids, or ``"*"``), the release name, the exact target
  version and ``valid_until`` (checked against the device's clock). An authorised stage is
  remembered (``state.downgrades``: release id → valid until) so its activate passes too.

A version that PEP 440 cannot order against the floor is refused the same way (fail closed):
the authorisation is the way through.

Every signed document the agent accepts besides manifests is verified by
``verify_signed_document``: a threshold of the trusted root's release keys, like a manifest
(TUF-style root metadata, issue 10 part 4).
"""

from __future__ import annotations

import json
import time
from datetime import datetime
from typing import TYPE_CHECKING, Any

from fleetgate.agent.reply import CommandError

if TYPE_CHECKING:
    from fleetgate.agent.service import AgentService
    from fleetgate.core.model import Manifest

KIND = "fleetgate.downgrade-authorization"
MAX_DOCUMENT_BYTES = 16 * 1024


def refused(message: str) -> CommandError:
    return CommandError(409, "downgrade-refused", message)


def is_below(version: str, floor: str | None) -> bool:
    """True when ``version`` is lower than ``floor`` or cannot be ordered against it."""
    if floor is None or version == floor:
        return False
    from packaging.version import InvalidVersion, Version  # on first use: idle RSS

    try:
        return Version(version) < Version(floor)
    except InvalidVersion:
        return True


def raise_floor(committed: dict[str, str], name: str, version: str) -> str:
    """Record a commit; returns the floor of ``name`` afterwards (the highest committed)."""
    floor = committed.get(name)
    if floor is None or not is_below(version, floor) or _unorderable(version, floor):
        # Higher, or a version scheme PEP 440 cannot order: the new commit is the floor.
        floor = version
    committed[name] = floor
    return floor


def _unorderable(a: str, b: str) -> bool:
    from packaging.version import InvalidVersion, Version

    try:
        Version(a), Version(b)
    except InvalidVersion:
        return True
    return False


def verify_signed_document(svc: AgentService, raw: bytes, signature: str) -> Any:
    """Authenticate ``raw`` with the trusted root's release keys (the same threshold as a
    manifest, artifacts/root.py), then parse it as JSON.

    The one function through which a signed document other than a manifest is trusted.
    Raises ``IntegrityError``/``ValueError``."""
    from fleetgate.artifacts.root import verify_release_signatures

    verify_release_signatures(svc.trusted_root(), raw, signature, what="document")
    return json.loads(raw.decode("utf-8"))


def check_stage(svc: AgentService, manifest: Manifest, auth: Any) -> float | None:
    """Refuse a stage below the floor unless it is the rollback copy or authorised. Returns the
    authorisation's expiry (epoch seconds) when one was needed and accepted."""
    floor = svc.state.committed.get(manifest.name)
    rid = manifest.release_id
    if not is_below(manifest.version, floor) or rid == svc.state.previous:
        return None
    what = f"{rid}: version {manifest.version} is below {floor}, the highest committed"
    if auth is None:
        raise refused(f"{what}; a signed downgrade authorisation is required")
    return verify_authorization(svc, manifest, auth, what)


def check_activate(svc: AgentService, manifest: Manifest) -> None:
    """Refuse switching to a release below the floor unless its stage was authorised and the
    authorisation has not expired (the rollback copy is the caller's exception)."""
    floor = svc.state.committed.get(manifest.name)
    if not is_below(manifest.version, floor):
        return
    rid = manifest.release_id
    until = svc.state.downgrades.get(rid)
    what = f"{rid}: version {manifest.version} is below {floor}, the highest committed"
    if until is None:
        raise refused(f"{what}; it was not staged with a downgrade authorisation")
    if time.time() > until:
        raise refused(f"{what}; its downgrade authorisation expired")


def verify_authorization(svc: AgentService, manifest: Manifest, auth: Any, what: str) -> float:
    from fleetgate.errors import FleetgateError

    document = auth["document"]
    raw = document.encode("utf-8")
    if len(raw) > MAX_DOCUMENT_BYTES:
        raise refused(f"{what}; downgrade authorisation: document over {MAX_DOCUMENT_BYTES} bytes")
    try:
        doc = verify_signed_document(svc, raw, auth["signature"])
    except (FleetgateError, ValueError) as exc:
        raise refused(f"{what}; downgrade authorisation: {exc}") from exc
    problem = authorization_problem(
        doc, svc.config.device_id, manifest.name, manifest.version, time.time()
    )
    if problem is not None:
        raise refused(f"{what}; downgrade authorisation: {problem}")
    return parse_valid_until(doc["valid_until"])


def authorization_problem(
    doc: Any, device_id: str, name: str, version: str, now: float
) -> str | None:
    """Why a (signature-checked) authorisation does not allow this downgrade, or None."""
    if not isinstance(doc, dict) or doc.get("kind") != KIND:
        return f"kind: expected {KIND!r}"
    if doc.get("name") != name:
        return f"name: authorises {doc.get('name')!r}, not {name!r}"
    if doc.get("version") != version:
        return f"version: authorises {doc.get('version')!r}, not {version!r}"
    devices = doc.get("devices")
    if devices != "*" and not (
        isinstance(devices, list) and all(isinstance(d, str) for d in devices)
    ):
        return 'devices: expected a list of device ids or "*"'
    if devices != "*" and device_id not in devices:
        return f"devices: does not name this device ({device_id})"
    try:
        until = parse_valid_until(doc.get("valid_until"))
    except ValueError as exc:
        return f"valid_until: {exc}"
    if now > until:
        return f"valid_until: expired at {doc['valid_until']} (device clock)"
    return None


def parse_valid_until(value: Any) -> float:
    """ISO 8601 with a timezone (``...Z`` or ``+00:00``) → epoch seconds."""
    if not isinstance(value, str):
        raise ValueError("expected an ISO 8601 timestamp")
    text = value[:-1] + "+00:00" if value.endswith("Z") else value
    try:
        ts = datetime.fromisoformat(text)
    except ValueError as exc:
        raise ValueError(f"{value!r} is not an ISO 8601 timestamp") from exc
    if ts.tzinfo is None:
        raise ValueError(f"{value!r} has no timezone")
    return ts.timestamp()
