"""Root metadata: which keys may sign releases, and which may sign the next root (TUF-style).

A ``root.json`` has the layout of a TUF root (python-tuf's ``Metadata[Root]`` reads it, see
docs/adr/0007-verified-slots-and-rotating-keys.md)::

    {"signed": {"_type": "root", "spec_version": "1.0.31", "version": 3,
                "expires": "2027-11-29T00:00:00Z", "consistent_snapshot": false,
                "keys": {"<keyid>": {"keytype": "ed25519", "scheme": "ed25519",
                                     "keyval": {"public": "<64 hex>"}}},
                "roles": {"root":      {"keyids": [...], "threshold": 1},
                          "targets":   {"keyids": [...], "threshold": 1},
                          "snapshot":  {...}, "timestamp": {...}}},
     "signatures": [{"keyid": "<keyid>", "sig": "<128 hex>"}]}

- ``roles.targets`` are the **release keys**: a manifest needs signatures from ``threshold`` of
  them. ``roles.root`` are the keys that sign the next root. ``snapshot``/``timestamp`` are not
  used by fleetgate (they mirror ``root`` so that the document stays a valid TUF root).
- A key id is the sha256 of the canonical JSON of the key object, as TUF computes it.
- What is signed: the canonical JSON (sorted keys, no whitespace) of ``signed``. For the ASCII
  documents this module writes, that is byte for byte OLPC canonical JSON, TUF's encoding.
- **Chain rule** (``verify_next``): root N+1 is trusted only if its version is exactly N+1, it is
  signed by a threshold of root N's root keys *and* by a threshold of its own root keys. Revoking
  a key is a new root without it; a root with a lower or equal version, or a gap, is refused.
- ``expires`` stops new stages (checked by the agent there), never a rollback.

Manifest signatures (``manifest.sig``, the stage body's ``signature``) are lines
``<keyid>:<base64 Ed25519 signature>``; a bare base64 line is the one-key format of earlier
bundles (still written when a bundle is signed by a single key, so older agents keep reading
it) and is tried against every release key.

Agent-importable but imported lazily (``cryptography``): standard library, ``cryptography`` and
``fleetgate.core`` only.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from fleetgate.core.manifest import canonical_json, parse_utc
from fleetgate.errors import InputError, IntegrityError

SPEC_VERSION = "1.0.31"
ROOT_ROLE = "root"
RELEASE_ROLE = "targets"  # TUF's name for the role whose keys sign what gets installed
ROLES = ("root", "snapshot", "targets", "timestamp")
SIGNATURE_BYTES = 64
MAX_ROOT_BYTES = 64 * 1024
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
# The one-key root a ``public_key`` config stands for: version 0, so that the first published
# root (version 1, signed by that key) chains from it. It never expires.
IMPLICIT_EXPIRES = "9999-12-31T23:59:59Z"


@dataclass(frozen=True, slots=True)
class Role:
    keyids: tuple[str, ...]
    threshold: int


@dataclass(frozen=True, slots=True)
class Root:
    """A parsed root (signatures not yet checked: see ``verify_self`` / ``verify_next``)."""

    version: int
    expires: str
    keys: Mapping[str, Ed25519PublicKey]
    roles: Mapping[str, Role]
    signed: Mapping[str, Any]  # the ``signed`` object as parsed
    signatures: Mapping[str, bytes]  # keyid -> raw signature
    raw: bytes  # the document's bytes as stored (b"" for an implicit root)

    @property
    def signed_bytes(self) -> bytes:
        return canonical_json(self.signed)

    @property
    def release_keyids(self) -> tuple[str, ...]:
        return self.roles[RELEASE_ROLE].keyids

    def expired(self, now: datetime) -> bool:
        when = parse_utc(self.expires)
        return when is None or now >= when


# -- keys -----------------------------------------------------------------------------------------
def public_hex(key: Ed25519PublicKey) -> str:
    raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return raw.hex()


def _key_object(public: str) -> dict[str, Any]:
    return {"keytype": "ed25519", "scheme": "ed25519", "keyval": {"public": public}}


def key_id(key: Ed25519PublicKey) -> str:
    """TUF's key id: sha256 of the canonical JSON of the key object."""
    return hashlib.sha256(canonical_json(_key_object(public_hex(key)))).hexdigest()


# -- building and signing -----------------------------------------------------------------------
def make_root(
    version: int,
    expires: str,
    root_keys: Iterable[Ed25519PublicKey],
    root_threshold: int,
    release_keys: Iterable[Ed25519PublicKey],
    release_threshold: int,
) -> dict[str, Any]:
    """The ``signed`` object of a root. ``ValueError`` for an impossible threshold."""
    rk = {key_id(k): k for k in root_keys}
    tk = {key_id(k): k for k in release_keys}
    for name, keys, threshold in (("root", rk, root_threshold), ("release", tk, release_threshold)):
        if not 1 <= threshold <= len(keys):
            raise ValueError(f"{name} threshold {threshold} needs 1..{len(keys)} keys")
    if version < 1 or parse_utc(expires) is None:
        raise ValueError("a root needs a version >= 1 and an expiry YYYY-MM-DDTHH:MM:SSZ")
    root_role = {"keyids": sorted(rk), "threshold": root_threshold}
    return {
        "_type": "root",
        "spec_version": SPEC_VERSION,
        "version": version,
        "expires": expires,
        "consistent_snapshot": False,
        "keys": {kid: _key_object(public_hex(k)) for kid, k in sorted({**rk, **tk}.items())},
        "roles": {
            "root": root_role,
            "targets": {"keyids": sorted(tk), "threshold": release_threshold},
            "snapshot": dict(root_role),
            "timestamp": dict(root_role),
        },
    }


def sign_root(signed: Mapping[str, Any], keys: Iterable[Ed25519PrivateKey]) -> bytes:
    """The root document (pretty JSON, what ``root.json`` holds), signed by ``keys``."""
    payload = canonical_json(signed)
    sigs = {key_id(k.public_key()): k.sign(payload).hex() for k in keys}
    doc = {
        "signed": signed,
        "signatures": [{"keyid": kid, "sig": sig} for kid, sig in sorted(sigs.items())],
    }
    return (json.dumps(doc, indent=2, sort_keys=True) + "\n").encode()


def implicit_root(key: Ed25519PublicKey) -> Root:
    """The one-key root that a bare ``public_key`` (an agent config or ``FLEETGATE_PUBKEY``)
    stands for."""
    kid = key_id(key)
    role = Role((kid,), 1)
    signed = {"_type": "root", "version": 0, "expires": IMPLICIT_EXPIRES}
    return Root(0, IMPLICIT_EXPIRES, {kid: key}, dict.fromkeys(ROLES, role), signed, {}, b"")


# -- parsing --------------------------------------------------------------------------------------
def _fail(where: str, reason: str) -> IntegrityError:
    return IntegrityError(f"{where}: {reason}")


def _role(data: Any, name: str, keys: Mapping[str, Any], where: str) -> Role:
    if not isinstance(data, Mapping):
        raise _fail(where, f"roles.{name}: missing")
    keyids, threshold = data.get("keyids"), data.get("threshold")
    if not isinstance(keyids, list) or not all(isinstance(k, str) for k in keyids):
        raise _fail(where, f"roles.{name}.keyids: expected a list of key ids")
    if len(set(keyids)) != len(keyids) or any(k not in keys for k in keyids):
        raise _fail(where, f"roles.{name}.keyids: duplicate or unknown key id")
    if isinstance(threshold, bool) or not isinstance(threshold, int):
        raise _fail(where, f"roles.{name}.threshold: expected an integer")
    if not 1 <= threshold <= len(keyids):
        raise _fail(where, f"roles.{name}.threshold: {threshold} of {len(keyids)} keys")
    return Role(tuple(keyids), threshold)


def _public_key(kid: str, obj: Any, where: str) -> Ed25519PublicKey:
    public = obj.get("keyval", {}).get("public") if isinstance(obj, Mapping) else None
    if (
        not isinstance(obj, Mapping)
        or obj.get("keytype") != "ed25519"
        or obj.get("scheme") != "ed25519"
        or not isinstance(public, str)
        or not _HEX64.match(public)
    ):
        raise _fail(where, f"keys.{kid[:12]}: expected an ed25519 key (64 hex digits)")
    key = Ed25519PublicKey.from_public_bytes(bytes.fromhex(public))
    if key_id(key) != kid:
        raise _fail(where, f"keys.{kid[:12]}: key id is not the sha256 of the key")
    return key


def parse_root(raw: bytes, where: str = "root.json") -> Root:
    """Decode a root document; ``IntegrityError`` naming the field for any malformation.
    Signatures are decoded, not checked."""
    if len(raw) > MAX_ROOT_BYTES:
        raise _fail(where, f"implausibly large root ({len(raw)} bytes)")
    try:
        doc = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise _fail(where, "not JSON") from exc
    signed = doc.get("signed") if isinstance(doc, dict) else None
    sigs = doc.get("signatures") if isinstance(doc, dict) else None
    if not isinstance(signed, dict) or not isinstance(sigs, list):
        raise _fail(where, "expected {signed, signatures}")
    if signed.get("_type") != "root":
        raise _fail(where, "signed._type: expected 'root'")
    version, expires = signed.get("version"), signed.get("expires")
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise _fail(where, "signed.version: expected an integer >= 1")
    if not isinstance(expires, str) or parse_utc(expires) is None:
        raise _fail(where, "signed.expires: expected YYYY-MM-DDTHH:MM:SSZ")
    key_objs = signed.get("keys")
    roles_obj = signed.get("roles")
    if not isinstance(key_objs, dict) or not isinstance(roles_obj, dict):
        raise _fail(where, "signed.keys / signed.roles: expected objects")
    keys = {kid: _public_key(kid, obj, where) for kid, obj in key_objs.items()}
    roles = {name: _role(roles_obj.get(name), name, keys, where) for name in ROLES}
    signatures: dict[str, bytes] = {}
    for item in sigs:
        kid = item.get("keyid") if isinstance(item, dict) else None
        sig = item.get("sig") if isinstance(item, dict) else None
        if not isinstance(kid, str) or not isinstance(sig, str):
            raise _fail(where, "signatures: expected [{keyid, sig}]")
        try:
            raw_sig = bytes.fromhex(sig)
        except ValueError as exc:
            raise _fail(where, f"signature by {kid[:12]} is not hex") from exc
        if kid in signatures:
            raise _fail(where, f"two signatures by key {kid[:12]}")
        signatures[kid] = raw_sig
    return Root(version, expires, keys, roles, signed, signatures, raw)


# -- verifying ------------------------------------------------------------------------------------
def _signed_by(
    root: Root, role: str, payload: bytes, signatures: Mapping[str | None, list[bytes]]
) -> set[str]:
    """The key ids of ``root``'s ``role`` with a valid signature over ``payload``. Signatures
    under the key ``None`` (no key id given) are tried against every key of the role."""
    good: set[str] = set()
    for kid in root.roles[role].keyids:
        for sig in [*signatures.get(kid, []), *signatures.get(None, [])]:
            try:
                root.keys[kid].verify(sig, payload)
            except InvalidSignature:
                continue
            good.add(kid)
            break
    return good


def _check_threshold(root: Root, role: str, payload: bytes, signed_root: Root, what: str) -> None:
    sigs: dict[str | None, list[bytes]] = {k: [v] for k, v in signed_root.signatures.items()}
    good = _signed_by(root, role, payload, sigs)
    need = root.roles[role].threshold
    if len(good) < need:
        raise IntegrityError(
            f"root v{signed_root.version}: signed by {len(good)} of the {need} {what} it needs"
        )


def verify_self(root: Root) -> None:
    """A root must be signed by a threshold of its own root keys (an initial root, trusted
    because an operator installed it, is checked this way too)."""
    _check_threshold(root, ROOT_ROLE, root.signed_bytes, root, "of its own root keys")


def verify_next(trusted: Root, new: Root) -> None:
    """The chain rule (module docstring); ``IntegrityError`` naming what is missing."""
    if new.version != trusted.version + 1:
        raise IntegrityError(
            f"root v{new.version} does not follow trusted root v{trusted.version} "
            f"(expected v{trusted.version + 1}): refused (rollback or freeze attack?)"
        )
    _check_threshold(
        trusted, ROOT_ROLE, new.signed_bytes, new, f"root keys of trusted v{trusted.version}"
    )
    verify_self(new)


def parse_signatures(text: str | bytes) -> dict[str | None, list[bytes]]:
    """``manifest.sig`` → {keyid or None: [raw signatures]}; ``IntegrityError`` if malformed."""
    if isinstance(text, bytes):
        text = text.decode("ascii", "replace")
    out: dict[str | None, list[bytes]] = {}
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if not lines:
        raise IntegrityError("bad signature: empty (0 bytes)")
    if len(lines) > 32:
        raise IntegrityError(f"bad signature: {len(lines)} signature lines, at most 32")
    for line in lines:
        kid, sep, b64 = line.rpartition(":")
        if sep and not _HEX64.match(kid):
            raise IntegrityError("bad signature: key id is not 64 hex digits")
        try:
            sig = base64.b64decode(b64.encode("ascii", "replace"), validate=True)
        except (binascii.Error, ValueError) as exc:
            raise IntegrityError("bad signature: not base64") from exc
        if len(sig) != SIGNATURE_BYTES:
            raise IntegrityError(f"bad signature: {len(sig)} bytes, expected {SIGNATURE_BYTES}")
        out.setdefault(kid if sep else None, []).append(sig)
    return out


def format_signatures(sigs: Mapping[str, bytes]) -> str:
    """One signature: the bare base64 line older agents read; several: ``keyid:base64`` lines."""
    if len(sigs) == 1:
        return base64.b64encode(next(iter(sigs.values()))).decode("ascii")
    return "\n".join(
        f"{kid}:{base64.b64encode(s).decode('ascii')}" for kid, s in sorted(sigs.items())
    )


def verify_release_signatures(
    root: Root, payload: bytes, signature: str | bytes, what: str = "manifest"
) -> list[str]:
    """The release keys (ids) whose signatures over ``payload`` (a ``what``) meet ``root``'s
    threshold; ``IntegrityError`` otherwise."""
    good = _signed_by(root, RELEASE_ROLE, payload, parse_signatures(signature))
    need = root.roles[RELEASE_ROLE].threshold
    if len(good) >= need:
        return sorted(good)
    if root.version == 0:  # a bare public key: keep the message operators already know
        raise IntegrityError(f"bad signature: {what} not signed by the trusted key")
    raise IntegrityError(
        f"bad signature: {what} signed by {len(good)} of the {need} release keys "
        f"root v{root.version} requires"
    )


# -- files ----------------------------------------------------------------------------------------
def load_root_file(path: str | os.PathLike[str]) -> Root:
    """Read a ``root.json`` an operator named and check it against its own root keys (that it
    was given is why it is trusted); ``InputError`` naming the file otherwise."""
    p = Path(path)
    try:
        raw = p.read_bytes()
    except OSError as exc:
        raise InputError(f"{p}: cannot read: {exc.strerror or exc}") from exc
    try:
        root = parse_root(raw, str(p))
        verify_self(root)
    except IntegrityError as exc:
        msg = str(exc)
        raise InputError(msg if msg.startswith(str(p)) else f"{p}: {msg}") from exc
    return root


def load_trust(path: str | os.PathLike[str]) -> Ed25519PublicKey | Root:
    """What a controller verifies releases with: a ``root.json`` (JSON) or a PEM public key
    (``--pubkey`` / ``FLEETGATE_PUBKEY`` accept either)."""
    from fleetgate.artifacts.keys import load_public_key

    p = Path(path)
    try:
        with p.open("rb") as fh:
            head = fh.read(64).lstrip()
    except OSError as exc:
        raise InputError(f"{p}: cannot read: {exc.strerror or exc}") from exc
    return load_root_file(p) if head.startswith(b"{") else load_public_key(p)
