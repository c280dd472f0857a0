"""Shared helpers for the artifact tests (imported by conftest and the test modules)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey


@dataclass
class Keys:
    private: Ed25519PrivateKey
    public: Ed25519PublicKey
    key_path: Path
    pub_path: Path


def toml_for(kind: str = "bundle", name: str = "vision", version: str = "2.4.1") -> str:
    run = {
        "bundle": 'command = ["python3", "app.py"]\nhealth_url = "http://127.0.0.1:8080/healthz"',
        "binary": 'command = ["./tool"]',
        "config": 'reload_command = ["systemctl", "reload", "vision"]',
    }[kind]
    return (
        f'[artifact]\nname = "{name}"\nversion = "{version}"\nkind = "{kind}"\n'
        '[requires]\narch = ["arm64"]\nram_mb = 512\nsoftware = { jetpack = ">=6.0" }\n'
        f"[run]\n{run}\n"
    )
