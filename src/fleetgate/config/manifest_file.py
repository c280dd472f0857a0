"""Read an artifact's manifest from what the user names on the command line.

``ARTIFACT`` may be a built bundle (``*.fgb``, its signed manifest is read), an app directory
(its ``fleetgate.toml``) or the ``fleetgate.toml`` file itself. Import-light: the agent never
calls this, but nothing here needs controller dependencies either.
"""

from __future__ import annotations

import tarfile
from pathlib import Path

from fleetgate.config.toml_file import read_toml
from fleetgate.core.manifest import manifest_from_dict
from fleetgate.core.model import Manifest
from fleetgate.errors import InputError

MANIFEST_NAME = "fleetgate.toml"


def load_manifest_toml(path: Path) -> Manifest:
    data = read_toml(path)
    return manifest_from_dict(data, where=str(path))


def load_artifact_manifest(artifact: Path) -> Manifest:
    """The manifest of a bundle, an app directory or a ``fleetgate.toml``."""
    if artifact.is_dir():
        return load_manifest_toml(artifact / MANIFEST_NAME)
    if artifact.name.endswith(".toml"):
        return load_manifest_toml(artifact)
    if not artifact.exists():
        raise InputError(f"{artifact}: no such artifact (a bundle, an app dir or fleetgate.toml)")
    try:
        with tarfile.open(artifact, "r:") as tar:
            member = tar.extractfile("manifest.json")
            if member is None:
                raise KeyError("manifest.json")
            import json

            data = json.loads(member.read())
    except (tarfile.TarError, KeyError, ValueError, OSError) as exc:
        raise InputError(f"{artifact}: not a fleetgate bundle ({exc})") from None
    return manifest_from_dict(data, where=f"{artifact}:manifest.json")
