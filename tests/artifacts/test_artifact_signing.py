"""Manifest signatures: round trip, and every way a signed manifest can be wrong."""

from __future__ import annotations

import base64

import pytest
from artifact_helpers import Keys

from fleetgate.artifacts.signing import sign_manifest, verify_manifest
from fleetgate.core.model import ArtifactKind, Manifest, Requirements, RunSpec
from fleetgate.errors import IntegrityError

SHA = "ab" * 32


def bound_manifest() -> Manifest:
    return Manifest(
        name="vision",
        version="2.4.1",
        kind=ArtifactKind.BUNDLE,
        requires=Requirements(ram_mb=512, software={"jetpack": ">=6.0"}),
        run=RunSpec(command=("python3", "app.py"), health_url="http://127.0.0.1:8080/healthz"),
        size=1234,
        sha256=SHA,
    )


def test_round_trip_returns_the_same_manifest(keys: Keys) -> None:
    manifest_json, sig = sign_manifest(bound_manifest(), keys.private)
    assert verify_manifest(manifest_json, sig, keys.public) == bound_manifest()
    # bytes and a trailing newline (as stored in a file) are accepted too
    assert verify_manifest(manifest_json, sig.encode() + b"\n", keys.public) == bound_manifest()


def test_signing_is_deterministic(keys: Keys) -> None:
    assert sign_manifest(bound_manifest(), keys.private) == sign_manifest(
        bound_manifest(), keys.private
    )


def test_every_flipped_manifest_byte_is_rejected(keys: Keys) -> None:
    manifest_json, sig = sign_manifest(bound_manifest(), keys.private)
    for i in range(0, len(manifest_json), 7):
        tampered = bytearray(manifest_json)
        tampered[i] ^= 0x01
        with pytest.raises(IntegrityError, match="bad signature"):
            verify_manifest(bytes(tampered), sig, keys.public)


def test_changed_digest_is_rejected(keys: Keys) -> None:
    manifest_json, sig = sign_manifest(bound_manifest(), keys.private)
    forged = manifest_json.replace(SHA.encode(), b"cd" * 32)
    with pytest.raises(IntegrityError, match="bad signature"):
        verify_manifest(forged, sig, keys.public)


def test_wrong_public_key_is_rejected(keys: Keys, other_keys: Keys) -> None:
    manifest_json, sig = sign_manifest(bound_manifest(), keys.private)
    with pytest.raises(IntegrityError, match="not signed by the trusted key"):
        verify_manifest(manifest_json, sig, other_keys.public)


@pytest.mark.parametrize(
    ("sig", "reason"),
    [
        ("%%% not base64 %%%", "not base64"),
        (base64.b64encode(b"short").decode(), "5 bytes, expected 64"),
        ("", "0 bytes"),
    ],
)
def test_garbage_signature_is_rejected(keys: Keys, sig: str, reason: str) -> None:
    manifest_json, _ = sign_manifest(bound_manifest(), keys.private)
    with pytest.raises(IntegrityError, match=reason):
        verify_manifest(manifest_json, sig, keys.public)


def test_refuses_to_sign_a_manifest_without_digest(keys: Keys) -> None:
    unbound = Manifest(name="x", version="1", kind=ArtifactKind.CONFIG)
    with pytest.raises(ValueError, match="without payload size and sha256"):
        sign_manifest(unbound, keys.private)


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (b"\xff\xfe not json", "not valid JSON"),
        (b"[1, 2]", "not a JSON object"),
        (b'{"artifact": {"name": "x", "version": "1", "kind": "config"}}', "size and sha256"),
        (b'{"artifact": {"name": "x"}}', "signed manifest is invalid"),
    ],
)
def test_validly_signed_garbage_is_still_rejected(keys: Keys, payload: bytes, reason: str) -> None:
    sig = base64.b64encode(keys.private.sign(payload)).decode()
    with pytest.raises(IntegrityError, match=reason):
        verify_manifest(payload, sig, keys.public)
