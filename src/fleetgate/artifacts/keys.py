"""Ed25519 signing keys: generate a pair, load either half from PEM.

Contract:
- ``generate_keypair(out_dir)`` writes ``fleetgate-signing.key`` (PEM, PKCS#8, unencrypted, mode
  0600) and ``fleetgate-signing.pub`` (PEM, SubjectPublicKeyInfo) and returns both paths. It never
  overwrites: if either file exists, nothing is written and ``InputError`` is raised. The private
  key file is created with ``O_EXCL`` and mode 0600 from the first byte, so it is never readable
  by others, not even for an instant.
- ``load_private_key`` / ``load_public_key`` raise ``InputError`` naming the file for anything
  that is not a readable, unencrypted PEM Ed25519 key.

The device agent imports this module (to load its public key): standard library and
``cryptography`` only.
"""

from __future__ import annotations

import os
from pathlib import Path

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from fleetgate.errors import InputError

PRIVATE_KEY_NAME = "fleetgate-signing.key"
PUBLIC_KEY_NAME = "fleetgate-signing.pub"

# PEM files are tiny; a cap keeps a mistaken `--key /dev/zero` or a huge file from hanging us.
_MAX_KEY_FILE = 64 * 1024


def generate_keypair(out_dir: str | os.PathLike[str]) -> tuple[Path, Path]:
    """Create a new key pair in ``out_dir`` (created if missing). Returns (key_path, pub_path)."""
    out = Path(out_dir)
    key_path = out / PRIVATE_KEY_NAME
    pub_path = out / PUBLIC_KEY_NAME
    for existing in (key_path, pub_path):
        if existing.exists() or existing.is_symlink():
            raise InputError(f"{existing}: already exists; refusing to overwrite a signing key")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError(f"{out}: cannot create directory: {exc.strerror}") from exc

    key = Ed25519PrivateKey.generate()
    private_pem = key.private_bytes(
        encoding=serialization.Encoding.PEM,
        format=serialization.PrivateFormat.PKCS8,
        encryption_algorithm=serialization.NoEncryption(),
    )
    public_pem = key.public_key().public_bytes(
        encoding=serialization.Encoding.PEM,
        format=serialization.PublicFormat.SubjectPublicKeyInfo,
    )
    _write_new(key_path, private_pem, 0o600)
    try:
        _write_new(pub_path, public_pem, 0o644)
    except BaseException:
        # A half-written pair is worse than none: the user would keep a key without its pub.
        key_path.unlink(missing_ok=True)
        raise
    return key_path, pub_path


def _write_new(path: Path, data: bytes, mode: int) -> None:
    try:
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
        fd = os.open(path, flags, mode)
    except FileExistsError as exc:
        raise InputError(f"{path}: already exists; refusing to overwrite a signing key") from exc
    except OSError as exc:
        raise InputError(f"{path}: cannot create: {exc.strerror}") from exc
    try:
        os.fchmod(fd, mode)  # the umask may have removed bits we want (0644 for the pub)
        os.write(fd, data)
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        path.unlink(missing_ok=True)
        raise
    os.close(fd)


def _read_key_file(path: Path) -> bytes:
    try:
        with path.open("rb") as fh:
            data = fh.read(_MAX_KEY_FILE + 1)
    except OSError as exc:
        raise InputError(f"{path}: cannot read key file: {exc.strerror or exc}") from exc
    if len(data) > _MAX_KEY_FILE:
        raise InputError(f"{path}: not a PEM key (file too large)")
    return data


def load_private_key(path: str | os.PathLike[str]) -> Ed25519PrivateKey:
    """Load an unencrypted PEM Ed25519 private key; ``InputError`` naming the file otherwise."""
    p = Path(path)
    data = _read_key_file(p)
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except TypeError as exc:  # cryptography says "password was not given" for encrypted keys
        raise InputError(f"{p}: encrypted private keys are not supported") from exc
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise InputError(f"{p}: not a PEM private key") from exc
    if not isinstance(key, Ed25519PrivateKey):
        raise InputError(f"{p}: not an Ed25519 private key")
    return key


def load_public_key(path: str | os.PathLike[str]) -> Ed25519PublicKey:
    """Load a PEM Ed25519 public key; ``InputError`` naming the file otherwise."""
    p = Path(path)
    data = _read_key_file(p)
    try:
        key = serialization.load_pem_public_key(data)
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise InputError(f"{p}: not a PEM public key") from exc
    if not isinstance(key, Ed25519PublicKey):
        raise InputError(f"{p}: not an Ed25519 public key")
    return key
