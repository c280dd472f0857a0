"""Fixtures for the artifact tests: a signing key pair and a source-tree factory."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest
from artifact_helpers import Keys, toml_for

from fleetgate.artifacts.keys import generate_keypair, load_private_key, load_public_key


@pytest.fixture
def keys(tmp_path: Path) -> Keys:
    key_path, pub_path = generate_keypair(tmp_path / "keys")
    return Keys(load_private_key(key_path), load_public_key(pub_path), key_path, pub_path)


@pytest.fixture
def other_keys(tmp_path: Path) -> Keys:
    key_path, pub_path = generate_keypair(tmp_path / "other-keys")
    return Keys(load_private_key(key_path), load_public_key(pub_path), key_path, pub_path)


MakeSrc = Callable[..., Path]


@pytest.fixture
def make_src(tmp_path: Path) -> MakeSrc:
    """``make_src(files, kind=…, name="src")``: a source dir with ``fleetgate.toml`` + files.

    ``files`` maps a relative path to text (mode 0644) or ``(text, mode)``."""

    def make(
        files: dict[str, str | tuple[str, int]],
        kind: str = "bundle",
        name: str = "src",
        toml: str | None = None,
    ) -> Path:
        root = tmp_path / name
        root.mkdir(parents=True)
        (root / "fleetgate.toml").write_text(toml if toml is not None else toml_for(kind))
        for rel, spec in files.items():
            text, mode = spec if isinstance(spec, tuple) else (spec, 0o644)
            path = root / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
            os.chmod(path, mode)
        return root

    return make
