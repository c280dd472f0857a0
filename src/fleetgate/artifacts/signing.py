"""Ed25519 signatures over the canonical manifest, and bundle verification.

What is signed: the exact bytes of ``manifest.json``, which are
``fleetgate.core.manifest.canonical_manifest(m)`` — name, version, kind, requirements, run spec,
and the payload's ``size`` and ``sha256``. Because the digest is inside the signed bytes, one
signature check plus one digest check authenticates the whole payload.

Contract:
- ``sign_manifest(m, key)`` refuses a manifest without ``size``/``sha256`` (``ValueError``: a
  caller bug, signing an unbound manifest would authorise any payload).
- ``verify_manifest(json, sig, pub)`` checks the signature *first*, on the raw bytes, and only then
  parses them; it returns a ``Manifest`` that is guaranteed to carry ``size`` and ``sha256``.
  Anything wrong — bad base64, wrong length, wrong key, a flipped byte, unparsable JSON, a signed
  manifest without a digest — raises ``IntegrityError`` with a one-line reason.
- ``verify_bundle(path, pub)`` = container check, manifest signature, then payload length and
  sha256. Order matters: the payload is never hashed on behalf of an unauthenticated manifest.

Agent-importable: standard library, ``cryptography`` and ``fleetgate.core`` only.
"""

from __future__ import annotations

import base64
import binascii
import json
import os

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from fleetgate.artifacts.container import payload_digest, read_bundle
from fleetgate.core.manifest import canonical_manifest, manifest_from_dict
from fleetgate.core.model import Manifest
from fleetgate.errors import IntegrityError, ValidationError

SIGNATURE_BYTES = 64  # Ed25519


def sign_manifest(manifest: Manifest, key: Ed25519PrivateKey) -> tuple[bytes, str]:
    """Return ``(manifest_json, signature_b64)`` for a manifest bound to its payload."""
    if manifest.size is None or manifest.sha256 is None:
        raise ValueError("refusing to sign a manifest without payload size and sha256")
    manifest_json = canonical_manifest(manifest)
    signature = key.sign(manifest_json)
    return manifest_json, base64.b64encode(signature).decode("ascii")


def _decode_signature(signature_b64: str | bytes) -> bytes:
    raw = signature_b64
    if isinstance(raw, str):
        raw = raw.encode("ascii", "replace")
    try:
        sig = base64.b64decode(raw.strip(), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise IntegrityError("bad signature: not base64") from exc
    if len(sig) != SIGNATURE_BYTES:
        raise IntegrityError(f"bad signature: {len(sig)} bytes, expected {SIGNATURE_BYTES}")
    return sig


def verify_manifest(
    manifest_json: bytes, signature_b64: str | bytes, public_key: Ed25519PublicKey
) -> Manifest:
    """Authenticate ``manifest_json`` and decode it. ``IntegrityError`` on any failure."""
    sig = _decode_signature(signature_b64)
    try:
        public_key.verify(sig, bytes(manifest_json))
    except InvalidSignature as exc:
        raise IntegrityError("bad signature: manifest not signed by the trusted key") from exc
    try:
        data = json.loads(manifest_json.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise IntegrityError("signed manifest is not valid JSON") from exc
    if not isinstance(data, dict):
        raise IntegrityError("signed manifest is not a JSON object")
    try:
        manifest = manifest_from_dict(data, where="signed manifest")
    except ValidationError as exc:
        first = exc.problems[0] if exc.problems else str(exc)
        raise IntegrityError(f"signed manifest is invalid: {first}") from exc
    if manifest.size is None or manifest.sha256 is None:
        raise IntegrityError("signed manifest does not state the payload size and sha256")
    return manifest


def verify_bundle(path: str | os.PathLike[str], public_key: Ed25519PublicKey) -> Manifest:
    """Verify a ``.fgb`` file end to end; return its authenticated manifest."""
    contents = read_bundle(path)
    where = str(contents.path)
    try:
        manifest = verify_manifest(contents.manifest_json, contents.signature, public_key)
    except IntegrityError as exc:
        raise IntegrityError(f"{where}: {exc}") from exc
    if contents.payload_size != manifest.size:
        raise IntegrityError(
            f"{where}: payload is {contents.payload_size} bytes, signed size is {manifest.size}"
        )
    digest = payload_digest(contents)
    if digest != manifest.sha256:
        raise IntegrityError(
            f"{where}: payload digest mismatch (sha256 {digest}, signed {manifest.sha256})"
        )
    return manifest
