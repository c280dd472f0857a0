"""Signed downgrade authorisations: the controller's emergency path past a device's floor.

A device refuses to stage a release older than the highest version it committed
(agent/downgrade.py). An operator holding the release key can authorise one downgrade:

    {"kind": "fleetgate.downgrade-authorization", "name": "demo", "version": "0.9.0",
     "devices": ["rpi-07", "rpi-08"] | "*", "valid_until": "2026-11-30T08:00:00Z",
     "issued_at": "2026-11-29T08:00:00Z"}

signed (Ed25519, the release key, the same primitive as manifests) over the document's exact
bytes. The file ``fleetgate artifact authorize-downgrade`` writes, and ``deploy start
--downgrade-authorization`` reads, is ``{"document": "<that JSON text>", "signature": "<b64>"}``;
the controller passes it unchanged in the stage body and records it in ``deployment.created``.

Contract: ``make_authorization`` builds and signs; ``load_authorization`` reads a file and
checks its shape and (with a public key) its signature, raising ``InputError`` with one line
naming the file. The device checks everything again: this module is for operators' mistakes,
the device's check is the security boundary.
"""

from __future__ import annotations

import base64
import json
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from fleetgate.errors import InputError

KIND = "fleetgate.downgrade-authorization"
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(text: str) -> timedelta:
    """``90s``, ``30m``, ``24h``, ``7d`` → a timedelta (at most 30 days: an authorisation is an
    emergency measure, not a standing exception)."""
    unit = text[-1:].lower()
    if unit not in _UNITS or not text[:-1].isdigit() or int(text[:-1]) <= 0:
        raise InputError(f"--expires: expected a duration like 30m, 24h or 7d, got {text!r}")
    delta = timedelta(seconds=int(text[:-1]) * _UNITS[unit])
    if delta > timedelta(days=30):
        raise InputError(f"--expires: {text} is longer than 30 days")
    return delta


def iso(ts: datetime) -> str:
    return ts.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def make_authorization(
    key: Ed25519PrivateKey,
    *,
    name: str,
    version: str,
    devices: list[str] | str,
    valid_until: datetime,
    issued_at: datetime | None = None,
) -> dict[str, str]:
    if devices != "*" and (not isinstance(devices, list) or not devices):
        raise InputError('--devices: name at least one device id, or "*" for every device')
    doc: dict[str, Any] = {
        "kind": KIND,
        "name": name,
        "version": version,
        "devices": devices,
        "valid_until": iso(valid_until),
        "issued_at": iso(issued_at or datetime.now(timezone.utc)),
    }
    raw = json.dumps(doc, sort_keys=True, separators=(",", ":"))
    signature = base64.b64encode(key.sign(raw.encode("utf-8"))).decode("ascii")
    return {"document": raw, "signature": signature}


def load_authorization(path: Path, public_key: Ed25519PublicKey | None = None) -> dict[str, str]:
    """Read an authorisation file; with ``public_key``, refuse one it did not sign."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise InputError(f"{path}: not a readable JSON downgrade authorisation: {exc}") from exc
    if (
        not isinstance(data, dict)
        or not isinstance(data.get("document"), str)
        or not isinstance(data.get("signature"), str)
    ):
        raise InputError(f"{path}: expected {{document, signature}} strings")
    try:
        doc = json.loads(data["document"])
    except ValueError as exc:
        raise InputError(f"{path}: document is not JSON: {exc}") from exc
    if not isinstance(doc, dict) or doc.get("kind") != KIND:
        raise InputError(f"{path}: document kind is not {KIND!r}")
    if public_key is not None:
        try:
            sig = base64.b64decode(data["signature"], validate=True)
            public_key.verify(sig, data["document"].encode("utf-8"))
        except (ValueError, InvalidSignature) as exc:
            raise InputError(f"{path}: signature does not verify with the release key") from exc
    return {"document": data["document"], "signature": data["signature"]}


def describe(auth: dict[str, str]) -> dict[str, Any]:
    """The document's fields, for the audit log (with the signature)."""
    doc = json.loads(auth["document"])
    return {**doc, "signature": auth["signature"]}
