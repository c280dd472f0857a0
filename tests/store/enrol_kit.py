"""A device's side of an enrolment, for tests: a key pair, a credential and a signed body."""

from __future__ import annotations

import base64
import secrets
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from fleetgate.core.enrolment import proof_message

FACTS = {
    "hardware": "rpi4",
    "arch": "arm64",
    "ram_mb": 3796.0,
    "disk_mb": 29000.0,
    "disk_free_mb": 20000.0,
    "gpu": False,
    "software": {"python": "3.11.2"},
}


def new_key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


def body(
    token: str,
    device_id: str,
    key: Ed25519PrivateKey | None = None,
    *,
    address: str = "http://127.0.0.1:7601",
    facts: Any = None,
    **extra: Any,
) -> dict[str, Any]:
    key = key or new_key()
    credential = "fgd_" + secrets.token_urlsafe(32)
    raw = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    message = proof_message(
        token=token, device_id=device_id, address=address, credential=credential
    )
    return {
        "id": device_id,
        "address": address,
        "public_key": base64.b64encode(raw).decode(),
        "credential": credential,
        "signature": base64.b64encode(key.sign(message)).decode(),
        "facts": FACTS if facts is None else facts,
        **extra,
    }
