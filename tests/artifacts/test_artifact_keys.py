"""Signing keys: generation, file modes, refusal to overwrite, clear errors for bad key files."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from fleetgate.artifacts.keys import (
    PRIVATE_KEY_NAME,
    PUBLIC_KEY_NAME,
    generate_keypair,
    load_private_key,
    load_public_key,
)
from fleetgate.errors import InputError


def test_generate_writes_pem_pair_that_signs_and_verifies(tmp_path: Path) -> None:
    key_path, pub_path = generate_keypair(tmp_path / "k")
    assert key_path == tmp_path / "k" / PRIVATE_KEY_NAME
    assert pub_path == tmp_path / "k" / PUBLIC_KEY_NAME
    assert key_path.read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")
    assert pub_path.read_bytes().startswith(b"-----BEGIN PUBLIC KEY-----")
    private, public = load_private_key(key_path), load_public_key(pub_path)
    public.verify(private.sign(b"hello"), b"hello")  # raises if the halves do not match


def test_private_key_is_0600_even_with_a_permissive_umask(tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        key_path, pub_path = generate_keypair(tmp_path)
    finally:
        os.umask(old)
    assert stat.S_IMODE(key_path.stat().st_mode) == 0o600
    assert stat.S_IMODE(pub_path.stat().st_mode) == 0o644


@pytest.mark.parametrize("existing", [PRIVATE_KEY_NAME, PUBLIC_KEY_NAME])
def test_refuses_to_overwrite_and_writes_nothing(tmp_path: Path, existing: str) -> None:
    (tmp_path / existing).write_text("precious")
    with pytest.raises(InputError, match="refusing to overwrite"):
        generate_keypair(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == [existing]
    assert (tmp_path / existing).read_text() == "precious"


def test_bad_key_files_name_the_file(tmp_path: Path) -> None:
    key_path, pub_path = generate_keypair(tmp_path / "k")
    garbage = tmp_path / "garbage.pem"
    garbage.write_bytes(b"not a key at all")
    missing = tmp_path / "missing.pem"
    ec_key = tmp_path / "ec.pem"
    ec_key.write_bytes(
        ec.generate_private_key(ec.SECP256R1()).private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    cases = [
        (load_private_key, garbage, "not a PEM private key"),
        (load_private_key, missing, "cannot read"),
        (load_private_key, pub_path, "not a PEM private key"),
        (load_private_key, ec_key, "not an Ed25519 private key"),
        (load_public_key, garbage, "not a PEM public key"),
        (load_public_key, key_path, "not a PEM public key"),
    ]
    for loader, path, reason in cases:
        with pytest.raises(InputError) as info:
            loader(path)
        assert str(info.value).startswith(f"{path}: ")
        assert reason in str(info.value)


def test_encrypted_private_key_is_refused_clearly(tmp_path: Path) -> None:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    path = tmp_path / "enc.pem"
    path.write_bytes(
        Ed25519PrivateKey.generate().private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"pw"),
        )
    )
    with pytest.raises(InputError, match="encrypted private keys are not supported"):
        load_private_key(path)
