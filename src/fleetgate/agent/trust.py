"""What the agent trusts: the chain of root metadata, and under which root each slot was accepted.

Layout (``<data_dir>/trust/``)::

    roots/<N>.root.json        every root the agent has accepted after its initial one, as fetched
    accepted/<release_id>.json {"manifest_sha256", "root_version", "keyids"}: the stage's verdict

- The **initial root** comes from the config: ``[agent] root`` (a ``root.json`` the operator
  installed, checked against its own root keys) or ``[agent] public_key`` (the one-key root
  version 0 that a bare key stands for, ``artifacts.root.implicit_root``).
- ``chain()`` re-verifies, on first use, the stored roots from the initial one up (each step by
  ``root.verify_next``): the files in ``roots/`` are a cache of what was verified, not a source of
  trust. A gap or a bad step ends the chain there (and is logged).
- ``refresh(session, base_url)`` walks the distribution point: ``GET <base>/<N+1>.root.json``
  until 404, verifying each step before writing it (temp file, fsync, rename, fsync dir). A root
  that does not chain — lower version, gap, missing signatures — is refused with
  ``IntegrityError``; nothing is written.
- ``accepted/<id>.json`` is written when a stage commits a slot: a rollback verifies the slot's
  manifest against the root it was accepted under (even after a rotation), and start-up checks
  the stored manifest's bytes against ``manifest_sha256`` without any cryptography.

``cryptography`` (through ``artifacts.root``) is imported on first use of ``chain()``, never at
start-up; ``accepted``/``record`` are standard library only.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fleetgate.agent.state import fsync_dir
from fleetgate.errors import IntegrityError, TransportError

if TYPE_CHECKING:
    import aiohttp

    from fleetgate.artifacts.root import Root

log = logging.getLogger("fleetgate.agent")

MAX_STEPS = 100  # roots fetched per refresh: a hostile server cannot keep the agent walking
_ROOT_FILE_RE = re.compile(r"^([1-9][0-9]{0,8})\.root\.json$")


def write_bytes_atomic(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        tmp.replace(path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


class TrustStore:
    def __init__(self, data_dir: Path, root_path: Path | None, public_key: Path | None) -> None:
        self.dir = data_dir / "trust"
        self.roots_dir = self.dir / "roots"
        self.accepted_dir = self.dir / "accepted"
        self.root_path = root_path
        self.public_key = public_key
        self._chain: list[Root] | None = None

    # -- accepted slots (standard library only) ----------------------------------------------
    def accepted(self, release_id: str) -> dict[str, Any] | None:
        try:
            data = json.loads((self.accepted_dir / f"{release_id}.json").read_bytes())
        except (OSError, ValueError):
            return None
        return data if isinstance(data, dict) else None

    def record(
        self, release_id: str, manifest_raw: bytes, root_version: int, keyids: list[str]
    ) -> None:
        doc = {
            "manifest_sha256": hashlib.sha256(manifest_raw).hexdigest(),
            "root_version": root_version,
            "keyids": keyids,
        }
        raw = json.dumps(doc, sort_keys=True).encode()
        write_bytes_atomic(self.accepted_dir / f"{release_id}.json", raw)

    def forget(self, release_id: str) -> None:
        with contextlib.suppress(OSError):
            (self.accepted_dir / f"{release_id}.json").unlink()

    # -- the chain of roots (cryptography, imported here on first use) ------------------------
    def _initial(self) -> Root:
        from fleetgate.artifacts.root import implicit_root, parse_root, verify_self

        if self.root_path is not None:
            where = str(self.root_path)
            try:
                raw = self.root_path.read_bytes()
            except OSError as exc:
                raise IntegrityError(f"{where}: cannot read: {exc.strerror or exc}") from exc
            root = parse_root(raw, where)
            try:
                verify_self(root)
            except IntegrityError as exc:
                raise IntegrityError(f"{where}: {exc}") from exc
            return root
        from fleetgate.artifacts.keys import load_public_key

        assert self.public_key is not None
        return implicit_root(load_public_key(self.public_key))

    def chain(self) -> list[Root]:
        """The verified roots, oldest (the initial one) first."""
        if self._chain is not None:
            return self._chain
        from fleetgate.artifacts.root import parse_root, verify_next

        chain = [self._initial()]
        stored: dict[int, Path] = {}
        with contextlib.suppress(OSError):
            for path in self.roots_dir.iterdir():
                m = _ROOT_FILE_RE.match(path.name)
                if m:
                    stored[int(m.group(1))] = path
        version = chain[0].version + 1
        while version in stored:
            try:
                nxt = parse_root(stored[version].read_bytes(), str(stored[version]))
                verify_next(chain[-1], nxt)
            except (OSError, IntegrityError) as exc:
                log.error("stored root v%d does not chain, ignored: %s", version, exc)
                break
            chain.append(nxt)
            version += 1
        self._chain = chain
        return chain

    def current(self) -> Root:
        return self.chain()[-1]

    def root_at(self, version: int) -> Root | None:
        return next((r for r in self.chain() if r.version == version), None)

    def accept(self, raw: bytes, where: str) -> Root:
        """Verify ``raw`` as the successor of the current root; persist it; return it."""
        from fleetgate.artifacts.root import parse_root, verify_next

        new = parse_root(raw, where)
        verify_next(self.current(), new)
        write_bytes_atomic(self.roots_dir / f"{new.version}.root.json", raw)
        self.chain().append(new)
        log.info("trusted root is now v%d (from %s)", new.version, where)
        return new

    async def refresh(self, session: aiohttp.ClientSession, base_url: str) -> Root:
        """Walk the distribution point's roots from the current version up (module docstring).
        ``TransportError`` (retryable) if it cannot be reached; ``IntegrityError`` for a root
        that does not chain."""
        import aiohttp

        from fleetgate.artifacts.root import MAX_ROOT_BYTES

        for _ in range(MAX_STEPS):
            url = f"{base_url}{self.current().version + 1}.root.json"
            try:
                async with session.get(url, allow_redirects=False) as resp:
                    if resp.status == 404:
                        break
                    if resp.status != 200:
                        raise TransportError(f"{url}: HTTP {resp.status}")
                    raw = await resp.content.read(MAX_ROOT_BYTES + 1)
            except (aiohttp.ClientError, TimeoutError) as exc:
                raise TransportError(f"{url}: {exc}") from exc
            if len(raw) > MAX_ROOT_BYTES:
                raise IntegrityError(f"{url}: root larger than {MAX_ROOT_BYTES} bytes")
            self.accept(raw, url)
        return self.current()


def roots_url(body: dict[str, Any]) -> str | None:
    """Where this stage's roots are: the body's ``root_url`` (a directory URL), else
    ``<prefix>/roots/`` beside a ``<prefix>/blobs/<sha256>`` URL (the distribution point serves
    both); ``None`` if neither applies."""
    given = body.get("root_url")
    if isinstance(given, str) and given.startswith(("http://", "https://")):
        return given if given.endswith("/") else given + "/"
    url = body.get("url", "")
    head, sep, digest = url.rpartition("/blobs/")
    if sep and re.fullmatch(r"[0-9a-f]{64}", digest):
        return f"{head}/roots/"
    return None
