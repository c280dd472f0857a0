"""What an enrolling device signs, shared by the agent (``agent enroll``) and the controller.

Pure and standard library only: the agent imports it. The device proves it holds the private
key of the public key it registers by signing ``proof_message`` with Ed25519; the message binds
the key to this enrolment (the token's hash, so a signature cannot be replayed with another
token), to the device id, the address and the credential's hash (so none can be swapped by a
party in the middle that lacks the key).
"""

from __future__ import annotations

import hashlib

ENROL_TOKEN_PREFIX = "fge_"  # noqa: S105 - a marker, not a secret
CREDENTIAL_PREFIX = "fgd_"
PROOF_DOMAIN = b"fleetgate-enrol-v1"


def sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def proof_message(*, token: str, device_id: str, address: str, credential: str) -> bytes:
    return b"\n".join(
        [
            PROOF_DOMAIN,
            sha256_text(token).encode(),
            device_id.encode("utf-8"),
            address.encode("utf-8"),
            sha256_text(credential).encode(),
        ]
    )


FACTS_DOMAIN = b"fleetgate-facts-v1"
FACTS_MAX_SKEW_S = 300.0


def facts_message(*, device_id: str, ts: str, body_sha256: str) -> bytes:
    """What an enrolled device signs to re-send its facts (``POST /api/v1/enroll/facts``):
    its id, the time it claims (the controller refuses one off by more than
    ``FACTS_MAX_SKEW_S`` from its store clock) and the body's SHA-256."""
    return b"\n".join(
        [FACTS_DOMAIN, device_id.encode("utf-8"), ts.encode("utf-8"), body_sha256.encode()]
    )
