"""The data directory: release slots, the ``current`` link, reconciliation after a crash.

Layout (docs/protocol.md §5)::

    <data_dir>/current -> releases/<release_id>     the single source of truth for what is live
    <data_dir>/releases/<release_id>/               complete, fsynced releases only
    <data_dir>/releases/<release_id>/.fleetgate/    manifest.json + manifest.sig as staged
    <data_dir>/releases/.staging-<release_id>*      partial work, deleted on start-up (except
                                                    a recent ``.blob.part``: resumed by a retry)

Invariants:
- A directory named ``releases/<id>`` (no leading dot) is complete: it only appears by
  ``rename`` of a fully written and fsynced staging directory.
- ``switch_current`` is atomic: a new symlink ``current.tmp-*`` is ``os.replace``d onto
  ``current`` and the directory fsynced; a crash leaves the old or the new link.
- ``prune`` never deletes the releases it is told to keep (current and previous).

All functions block (fsync, rmtree): the agent calls them through ``asyncio.to_thread``.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import shutil
import time
from pathlib import Path

from fleetgate.agent.state import fsync_dir
from fleetgate.core.manifest import manifest_from_dict
from fleetgate.core.model import Manifest

RELEASE_ID_RE = re.compile(r"^[A-Za-z0-9_-][A-Za-z0-9._-]{0,200}$")
META_DIR = ".fleetgate"
MANIFEST_FILE = "manifest.json"
SIGNATURE_FILE = "manifest.sig"
STAGING_PREFIX = ".staging-"
PART_SUFFIX = ".part"
PART_MAX_AGE_S = 24 * 3600  # a partial download older than this is not worth resuming


def valid_release_id(value: object) -> bool:
    """A release id is a plain directory name: no separators, no leading dot."""
    return isinstance(value, str) and bool(RELEASE_ID_RE.match(value)) and ".." not in value


class ReleaseStore:
    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.releases_dir = data_dir / "releases"
        self.current_link = data_dir / "current"

    def ensure_layout(self) -> None:
        self.releases_dir.mkdir(parents=True, exist_ok=True)

    # -- reading ---------------------------------------------------------------------------
    def release_dir(self, release_id: str) -> Path:
        return self.releases_dir / release_id

    def exists(self, release_id: str | None) -> bool:
        return (
            release_id is not None
            and valid_release_id(release_id)
            and (self.releases_dir / release_id / META_DIR / MANIFEST_FILE).is_file()
        )

    def list_releases(self) -> list[str]:
        try:
            names = [p.name for p in self.releases_dir.iterdir()]
        except FileNotFoundError:
            return []
        return sorted(n for n in names if not n.startswith(".") and self.exists(n))

    def read_current(self) -> str | None:
        """The release ``current`` points at, if the link exists and names a complete release."""
        try:
            target = self.current_link.readlink()
        except OSError:
            return None
        name = target.name
        return name if self.exists(name) else None

    def link_target_name(self) -> str | None:
        """What ``current`` names, complete or not (``None`` if there is no link)."""
        try:
            return self.current_link.readlink().name
        except OSError:
            return None

    def load_manifest(self, release_id: str) -> tuple[Manifest, bytes, str]:
        """The staged release's manifest, its exact bytes and its signature."""
        meta = self.release_dir(release_id) / META_DIR
        raw = (meta / MANIFEST_FILE).read_bytes()
        signature = (meta / SIGNATURE_FILE).read_text(encoding="ascii").strip()
        manifest = manifest_from_dict(json.loads(raw), where=f"{release_id}/{MANIFEST_FILE}")
        return manifest, raw, signature

    # -- writing ---------------------------------------------------------------------------
    def staging_dir(self, release_id: str) -> Path:
        return self.releases_dir / f"{STAGING_PREFIX}{release_id}"

    def blob_path(self, release_id: str) -> Path:
        return self.releases_dir / f"{STAGING_PREFIX}{release_id}.blob"

    def discard_staging(self, release_id: str, *, keep_part: bool = False) -> None:
        """Delete a stage's partial work; ``keep_part`` keeps a download to resume later."""
        shutil.rmtree(self.staging_dir(release_id), ignore_errors=True)
        blob = self.blob_path(release_id)
        blob.unlink(missing_ok=True)
        if not keep_part:
            blob.with_name(blob.name + PART_SUFFIX).unlink(missing_ok=True)

    def commit_staging(self, release_id: str, manifest_raw: bytes, signature: str) -> Path:
        """Write the manifest beside the extracted payload, fsync everything, rename into place."""
        staging = self.staging_dir(release_id)
        meta = staging / META_DIR
        meta.mkdir(exist_ok=True)
        (meta / MANIFEST_FILE).write_bytes(manifest_raw)
        (meta / SIGNATURE_FILE).write_text(signature + "\n", encoding="ascii")
        _fsync_tree(staging)
        final = self.release_dir(release_id)
        staging.rename(final)
        fsync_dir(self.releases_dir)
        return final

    def switch_current(self, release_id: str) -> None:
        """Point ``current`` at ``releases/<release_id>`` atomically."""
        tmp = self.data_dir / f"current.tmp-{secrets.token_hex(4)}"
        tmp.symlink_to(Path("releases") / release_id)
        try:
            tmp.replace(self.current_link)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        fsync_dir(self.data_dir)

    def clear_current(self) -> None:
        self.current_link.unlink(missing_ok=True)
        fsync_dir(self.data_dir)

    def cleanup_leftovers(self) -> list[str]:
        """Delete partial work a crash left behind; returns what was removed."""
        removed: list[str] = []
        now = time.time()
        for path in list(self.releases_dir.iterdir()):
            if path.name.endswith(".blob" + PART_SUFFIX) and ".tmp" not in path.name:
                with contextlib.suppress(OSError):
                    if now - path.stat().st_mtime < PART_MAX_AGE_S:
                        continue  # kept: the next stage of this release resumes it
            if path.name.startswith(STAGING_PREFIX) or ".tmp" in path.name:
                _remove(path)
                removed.append(f"releases/{path.name}")
        for path in list(self.data_dir.iterdir()):
            if ".tmp" in path.name:
                _remove(path)
                removed.append(path.name)
        return removed

    def prune(self, keep: set[str | None], extra: int) -> list[str]:
        """Delete releases outside ``keep`` except the ``extra`` most recently staged ones."""
        others = [r for r in self.list_releases() if r not in keep]
        others.sort(key=self._staged_at, reverse=True)
        doomed = others[max(extra, 0) :]
        for release_id in doomed:
            # Rename first so a crash mid-delete never leaves a half release under its real name.
            victim = self.releases_dir / f"{STAGING_PREFIX}{release_id}.tmp-prune"
            self.release_dir(release_id).rename(victim)
            shutil.rmtree(victim, ignore_errors=True)
        if doomed:
            fsync_dir(self.releases_dir)
        return doomed

    def _staged_at(self, release_id: str) -> float:
        try:
            return (self.release_dir(release_id) / META_DIR / MANIFEST_FILE).stat().st_mtime
        except OSError:
            return 0.0


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def _fsync_tree(root: Path) -> None:
    """fsync every regular file and directory under ``root`` (so a rename publishes data that
    is on disk, not only in the page cache)."""
    for dirpath, _dirnames, filenames in os.walk(root):
        for name in filenames:
            path = Path(dirpath) / name
            if path.is_symlink() or not path.is_file():
                continue
            fd = os.open(path, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        fsync_dir(Path(dirpath))
