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

Trust: ``verify_*`` take either one Ed25519 public key (the one-key trust of earlier configs) or
a ``root.Root``; then a threshold of the root's release keys must have signed (``root.py``).
A bundle may carry several signatures (``sign_manifest`` with several keys).

Agent-importable: standard library, ``cryptography`` and ``fleetgate.core`` only.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from fleetgate.artifacts.container import payload_digest, read_bundle
from fleetgate.artifacts.root import (
    SIGNATURE_BYTES,
    Root,
    format_signatures,
    implicit_root,
    key_id,
    verify_release_signatures,
)
from fleetgate.core.manifest import canonical_manifest, manifest_from_dict
from fleetgate.core.model import Manifest
from fleetgate.errors import IntegrityError, ValidationError

__all__ = ["SIGNATURE_BYTES", "Trust", "sign_manifest", "verify_bundle", "verify_manifest"]

Trust = Ed25519PublicKey | Root


def _as_root(trust: Trust) -> Root:
    return trust if isinstance(trust, Root) else implicit_root(trust)


def sign_manifest(
    manifest: Manifest, key: Ed25519PrivateKey | Sequence[Ed25519PrivateKey]
) -> tuple[bytes, str]:
    """Return ``(manifest_json, signature_text)`` for a manifest bound to its payload, signed by
    ``key`` (or by each of several keys: ``keyid:base64`` lines)."""
    if manifest.size is None or manifest.sha256 is None:
        raise ValueError("refusing to sign a manifest without payload size and sha256")
    keys = [key] if isinstance(key, Ed25519PrivateKey) else list(key)
    if not keys:
        raise ValueError("refusing to sign with no key")
    manifest_json = canonical_manifest(manifest)
    sigs = {key_id(k.public_key()): k.sign(manifest_json) for k in keys}
    return manifest_json, format_signatures(sigs)


def verify_manifest_keys(
    manifest_json: bytes, signature: str | bytes, trust: Trust
) -> tuple[Manifest, list[str]]:
    """``verify_manifest`` that also returns the ids of the release keys that signed."""
    keyids = verify_release_signatures(_as_root(trust), bytes(manifest_json), signature)
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
    return manifest, keyids


def verify_manifest(manifest_json: bytes, signature: str | bytes, trust: Trust) -> Manifest:
    """Authenticate ``manifest_json`` (signatures first, on the raw bytes) and decode it.
    ``IntegrityError`` on any failure."""
    return verify_manifest_keys(manifest_json, signature, trust)[0]


def verify_bundle(path: str | os.PathLike[str], trust: Trust) -> Manifest:
    """Verify a ``.fgb`` file end to end; return its authenticated manifest."""
    contents = read_bundle(path)
    where = str(contents.path)
    try:
        manifest = verify_manifest(contents.manifest_json, contents.signature, trust)
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
