"""Build a signed, reproducible ``NAME-VERSION.fgb`` bundle from a source directory.

``build_bundle(src_dir, private_key, out_dir)``:
1. reads ``SRC_DIR/fleetgate.toml`` (``InputError``/``ValidationError`` naming the file and the
   field for anything malformed; ``size``/``sha256`` in the file are ignored, they are computed);
2. packs the payload for the manifest's kind (``payload.py``) into a deterministic tar.gz,
   hashing it as it is written;
3. binds the manifest to the payload (``size``, ``sha256``, the ``files`` list) and to an expiry
   (``valid_until``: given, or ``valid_days`` — default 365 — after the build day), signs the
   canonical manifest with one key or several (``keyid:base64`` lines);
4. writes the container (``container.py``) to a temporary file in ``OUT_DIR`` and renames it into
   place, so a reader never sees a half-written bundle.

Reproducible: the same source tree, keys and expiry give a byte-identical bundle (Ed25519
signatures are deterministic), regardless of file mtimes, owners, umask or directory listing
order. The default expiry counts from the start of the build's UTC day — or of
``SOURCE_DATE_EPOCH`` when set, the reproducible-builds convention — so two builds on the same
day agree; pass ``valid_until`` to pin it.

``read_bundle`` and ``BundleContents`` are re-exported from ``container.py`` for callers that
think of "the bundle module". The device agent imports this module; standard library,
``cryptography``, ``tomllib``/``tomli`` and ``fleetgate.core`` only.
"""

from __future__ import annotations

import dataclasses
import os
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from fleetgate.artifacts.container import (
    BUNDLE_SUFFIX,
    BundleContents,
    file_sha256,
    read_bundle,
    write_bundle,
)
from fleetgate.artifacts.payload import MANIFEST_FILE, collect_entries, write_payload
from fleetgate.artifacts.signing import sign_manifest
from fleetgate.core.manifest import manifest_from_dict, parse_utc
from fleetgate.core.model import Manifest
from fleetgate.errors import InputError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on the devices' Python 3.10
    import tomli as tomllib

__all__ = ["BuiltBundle", "BundleContents", "build_bundle", "load_source_manifest", "read_bundle"]


@dataclass(frozen=True, slots=True)
class BuiltBundle:
    """A bundle on disk: ``sha256`` is the digest of the whole ``.fgb`` file; the payload's own
    size and digest are in ``manifest``."""

    path: Path
    sha256: str
    manifest: Manifest


def load_source_manifest(src_dir: str | os.PathLike[str]) -> Manifest:
    """Parse ``SRC_DIR/fleetgate.toml`` into an unbound manifest (no size/sha256)."""
    toml_path = Path(src_dir) / MANIFEST_FILE
    try:
        raw = toml_path.read_bytes()
    except FileNotFoundError as exc:
        raise InputError(f"{toml_path}: not found (an artifact needs a {MANIFEST_FILE})") from exc
    except OSError as exc:
        raise InputError(f"{toml_path}: cannot read: {exc.strerror or exc}") from exc
    try:
        data: dict[str, Any] = tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise InputError(f"{toml_path}: not UTF-8 text") from exc
    except tomllib.TOMLDecodeError as exc:
        raise InputError(f"{toml_path}: invalid TOML: {exc}") from exc
    manifest = manifest_from_dict(data, where=str(toml_path))
    return dataclasses.replace(manifest, size=None, sha256=None, files=None, valid_until=None)


DEFAULT_VALID_DAYS = 365


def default_valid_until(valid_days: int = DEFAULT_VALID_DAYS, now: datetime | None = None) -> str:
    """``valid_days`` after the start of today (UTC), or of ``SOURCE_DATE_EPOCH``'s day."""
    if now is None:
        epoch = os.environ.get("SOURCE_DATE_EPOCH", "").strip()
        if epoch.isdigit():
            now = datetime.fromtimestamp(int(epoch), timezone.utc)
        else:
            now = datetime.now(timezone.utc)
    day = now.astimezone(timezone.utc).replace(hour=0, minute=0, second=0, microsecond=0)
    return (day + timedelta(days=valid_days)).strftime("%Y-%m-%dT%H:%M:%SZ")


def build_bundle(
    src_dir: str | os.PathLike[str],
    private_key: Ed25519PrivateKey | Sequence[Ed25519PrivateKey],
    out_dir: str | os.PathLike[str],
    *,
    valid_until: str | None = None,
    valid_days: int = DEFAULT_VALID_DAYS,
) -> BuiltBundle:
    """Build, sign and write ``OUT_DIR/NAME-VERSION.fgb``; see the module docstring."""
    if valid_until is None:
        valid_until = default_valid_until(valid_days)
    elif parse_utc(valid_until) is None:
        raise InputError(f"valid_until {valid_until!r}: expected YYYY-MM-DDTHH:MM:SSZ (UTC)")
    src = Path(src_dir)
    if not src.is_dir():
        raise InputError(f"{src}: not a directory")
    manifest = load_source_manifest(src)
    entries = collect_entries(src, manifest.kind)

    out = Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError(f"{out}: cannot create output directory: {exc.strerror}") from exc
    final = out / f"{manifest.name}-{manifest.version}{BUNDLE_SUFFIX}"

    payload_fd, payload_name = tempfile.mkstemp(dir=out, prefix=".payload-", suffix=".tmp")
    payload_tmp = Path(payload_name)
    bundle_tmp: Path | None = None
    try:
        with os.fdopen(payload_fd, "wb") as fh:
            size, sha256, files = write_payload(entries, fh)
        bound = dataclasses.replace(
            manifest, size=size, sha256=sha256, files=files, valid_until=valid_until
        )
        manifest_json, signature_b64 = sign_manifest(bound, private_key)
        bundle_fd, bundle_name = tempfile.mkstemp(dir=out, prefix=".bundle-", suffix=".tmp")
        bundle_tmp = Path(bundle_name)
        with os.fdopen(bundle_fd, "wb") as fh:
            write_bundle(fh, manifest_json, signature_b64, payload_tmp)
            fh.flush()
            os.fsync(fh.fileno())
        # mkstemp makes 0600; a bundle is public material and is copied around by operators.
        bundle_tmp.chmod(0o644)
        bundle_tmp.replace(final)
    except BaseException:
        if bundle_tmp is not None:
            bundle_tmp.unlink(missing_ok=True)
        raise
    finally:
        payload_tmp.unlink(missing_ok=True)
    return BuiltBundle(path=final, sha256=file_sha256(final), manifest=bound)
