"""The distribution point: payloads stored and served content-addressed by sha256.

Controller side (the agent never imports this module).

Store layout (one flat directory, ``blob_dir``)::

    <sha256>                 the payload (payload.tar.gz of a bundle), named by its own digest
    <sha256>.manifest.json   the bundle's signed canonical manifest
    <sha256>.sig             its signature(s)
    roots/<N>.root.json      the root metadata chain (``publish_roots``)

``publish_bundle(bundle, blob_dir)`` copies the payload out of a bundle, checking as it copies that
its length and sha256 are the ones the manifest states (and, given ``public_key``, that the
manifest is signed by it), then stores the three files — each through a temporary file, fsync and
rename, so a concurrent reader sees either nothing or the complete file. Publishing the same bundle
twice is harmless (same names, same bytes).

``DistributionServer`` (``async with``) serves ``GET``/``HEAD /v1/blobs/<sha256>`` on loopback by
default:
- 200 with the whole blob, or 206 + ``Content-Range`` for one range ``bytes=a-b``, ``bytes=a-`` or
  ``bytes=-n``; 416 + ``Content-Range: bytes */size`` when the range starts past the end. A
  malformed or multi-range header is ignored (whole blob, 200), as RFC 9110 allows.
- 404 for unknown or malformed digests: the path is built only from 64 hex digits, so no request
  can name a file outside ``blob_dir`` (nor a ``.manifest.json``/``.sig`` side file).
- ``GET /v1/roots/<N>.root.json``: the root metadata chain (``publish_roots``), 404 past the
  newest; devices walk it from the version they trust at each stage (agent/trust.py).
- With ``token=...``, every request needs ``Authorization: Bearer <token>`` (constant-time
  compare), else 401.
File reads run in a thread, one chunk at a time, so large blobs never block the event loop.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import os
import re
import tempfile
from pathlib import Path
from types import TracebackType

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from fleetgate.artifacts.container import iter_payload, read_bundle
from fleetgate.artifacts.root import Root
from fleetgate.artifacts.signing import verify_manifest
from fleetgate.core.model import SHA256_RE
from fleetgate.errors import InputError, IntegrityError

CHUNK = 256 * 1024


def _write_atomic(directory: Path, name: str, chunks: list[bytes] | None = None) -> Path:
    fd, tmp_name = tempfile.mkstemp(dir=directory, prefix=f".{name}.", suffix=".tmp")
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as fh:
            for data in chunks or []:
                fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        tmp.chmod(0o644)
        return tmp.replace(directory / name)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _unverified_digest(manifest_json: bytes) -> tuple[int, str]:
    try:
        art = json.loads(manifest_json)["artifact"]
        size, sha256 = int(art["size"]), str(art["sha256"])
    except (ValueError, KeyError, TypeError) as exc:
        raise IntegrityError("bundle manifest does not state the payload size and sha256") from exc
    if not SHA256_RE.match(sha256) or size < 0:
        raise IntegrityError("bundle manifest has a malformed payload size or sha256")
    return size, sha256


def publish_bundle(
    bundle_path: str | os.PathLike[str],
    store_dir: str | os.PathLike[str],
    *,
    public_key: Ed25519PublicKey | Root | None = None,
) -> tuple[str, int]:
    """Store a bundle's payload (and signed manifest) under its digest; return (sha256, size)."""
    contents = read_bundle(bundle_path)
    where = str(contents.path)
    if public_key is not None:
        try:
            m = verify_manifest(contents.manifest_json, contents.signature, public_key)
        except IntegrityError as exc:
            raise IntegrityError(f"{where}: {exc}") from exc
        assert m.size is not None and m.sha256 is not None  # guaranteed by verify_manifest
        size, sha256 = m.size, m.sha256
    else:
        size, sha256 = _unverified_digest(contents.manifest_json)
    if contents.payload_size != size:
        raise IntegrityError(f"{where}: payload is {contents.payload_size} bytes, signed {size}")

    store = Path(store_dir)
    try:
        store.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError(f"{store}: cannot create blob directory: {exc.strerror}") from exc
    fd, tmp_name = tempfile.mkstemp(dir=store, prefix=f".{sha256}.", suffix=".tmp")
    tmp = Path(tmp_name)
    try:
        hasher = hashlib.sha256()
        with os.fdopen(fd, "wb") as fh:
            for data in iter_payload(contents):
                hasher.update(data)
                fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        if hasher.hexdigest() != sha256:
            raise IntegrityError(f"{where}: payload digest mismatch; not published")
        tmp.chmod(0o644)
        tmp.replace(store / sha256)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _write_atomic(store, f"{sha256}.manifest.json", [contents.manifest_json])
    _write_atomic(store, f"{sha256}.sig", [contents.signature.strip()])
    return sha256, size


ROOTS_DIR = "roots"
ROOT_NAME_RE = re.compile(r"^[1-9][0-9]{0,8}\.root\.json$")


def publish_roots(roots: str | os.PathLike[str], store_dir: str | os.PathLike[str]) -> list[int]:
    """Copy the root chain into the store: ``roots`` is a root file (every ``N.root.json``
    beside it is copied) or a directory of them. Each must parse and the versions must run
    1..N without a gap (a device walks them one by one). Returns the versions published."""
    from fleetgate.artifacts.root import parse_root

    src = Path(roots)
    folder = src if src.is_dir() else src.parent
    files = sorted(
        (p for p in folder.iterdir() if ROOT_NAME_RE.match(p.name)),
        key=lambda p: int(p.name.split(".")[0]),
    )
    versions: list[int] = []
    docs: list[tuple[str, bytes]] = []
    for path in files:
        raw = path.read_bytes()
        root = parse_root(raw, str(path))
        if f"{root.version}.root.json" != path.name:
            raise IntegrityError(f"{path}: holds root v{root.version}")
        versions.append(root.version)
        docs.append((path.name, raw))
    if not versions or versions != list(range(versions[0], versions[0] + len(versions))):
        raise InputError(f"{folder}: expected N.root.json files without gaps, found {versions}")
    out = Path(store_dir) / ROOTS_DIR
    out.mkdir(parents=True, exist_ok=True)
    for name, raw in docs:
        _write_atomic(out, name, [raw])
    return versions


def load_published(store_dir: str | os.PathLike[str], sha256: str) -> tuple[bytes, str]:
    """The signed manifest and signature stored next to blob ``sha256`` (for ``stage``)."""
    if not SHA256_RE.match(sha256):
        raise InputError(f"{sha256!r}: not a sha256 digest")
    store = Path(store_dir)
    try:
        manifest_json = (store / f"{sha256}.manifest.json").read_bytes()
        signature = (store / f"{sha256}.sig").read_text("ascii").strip()
    except OSError as exc:
        raise InputError(f"{store}: blob {sha256} is not published ({exc.strerror})") from exc
    return manifest_json, signature


def parse_range(header: str, size: int) -> tuple[int, int] | None:
    """``(first, last)`` inclusive for a single satisfiable range; ``None`` to ignore the header.
    Raises ``ValueError`` for a well-formed but unsatisfiable range (answer 416)."""
    unit, _, spec = header.strip().partition("=")
    if unit.strip().lower() != "bytes" or "," in spec:
        return None
    first_s, dash, last_s = spec.strip().partition("-")
    if (
        not dash
        or not (first_s.isdigit() or first_s == "")
        or not (last_s.isdigit() or last_s == "")
    ):
        return None
    if first_s == "":
        if last_s == "":
            return None
        suffix = int(last_s)
        if suffix == 0 or size == 0:
            raise ValueError("empty suffix range")
        return max(size - suffix, 0), size - 1
    first = int(first_s)
    if last_s and int(last_s) < first:
        return None  # syntactically invalid: ignored, not unsatisfiable
    if first >= size:
        raise ValueError("range starts past the end")
    last = int(last_s) if last_s else size - 1
    return first, min(last, size - 1)


def _auth_middleware(token: str) -> Middleware:
    expected = f"Bearer {token}".encode()

    @web.middleware
    async def check(request: web.Request, handler: Handler) -> web.StreamResponse:
        given = request.headers.get("Authorization", "").encode("utf-8", "replace")
        if not hmac.compare_digest(given, expected):
            raise web.HTTPUnauthorized(headers={"WWW-Authenticate": 'Bearer realm="fleetgate"'})
        return await handler(request)

    return check


def create_app(blob_dir: str | os.PathLike[str], *, token: str | None = None) -> web.Application:
    """The aiohttp application serving ``blob_dir`` (exposed for embedding in a larger app)."""
    root = Path(blob_dir)

    async def blob(request: web.Request) -> web.StreamResponse:
        digest = request.match_info["sha256"]
        if not SHA256_RE.match(digest):
            raise web.HTTPNotFound()
        path = root / digest
        try:
            fh = await asyncio.to_thread(path.open, "rb")
        except (FileNotFoundError, IsADirectoryError):
            raise web.HTTPNotFound() from None
        try:
            size = os.fstat(fh.fileno()).st_size
            first, last, status = 0, size - 1, 200
            headers = {
                "Accept-Ranges": "bytes",
                "ETag": f'"{digest}"',
                "Content-Type": "application/octet-stream",
            }
            range_header = request.headers.get("Range")
            if range_header:
                try:
                    parsed = parse_range(range_header, size)
                except ValueError:
                    raise web.HTTPRequestRangeNotSatisfiable(
                        headers={"Content-Range": f"bytes */{size}", "Accept-Ranges": "bytes"}
                    ) from None
                if parsed is not None:
                    first, last, status = parsed[0], parsed[1], 206
                    headers["Content-Range"] = f"bytes {first}-{last}/{size}"
            resp = web.StreamResponse(status=status, headers=headers)
            resp.content_length = last - first + 1
            await resp.prepare(request)
            if request.method == "HEAD":
                return resp
            await asyncio.to_thread(fh.seek, first)
            left = last - first + 1
            while left > 0:
                data = await asyncio.to_thread(fh.read, min(CHUNK, left))
                if not data:
                    break  # the file shrank under us; the client sees a short body and retries
                left -= len(data)
                await resp.write(data)
            await resp.write_eof()
            return resp
        finally:
            fh.close()

    async def root_doc(request: web.Request) -> web.StreamResponse:
        name = request.match_info["name"]
        if not ROOT_NAME_RE.match(name):
            raise web.HTTPNotFound()
        try:
            raw = await asyncio.to_thread((root / ROOTS_DIR / name).read_bytes)
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            raise web.HTTPNotFound() from None
        return web.Response(body=raw, content_type="application/json")

    middlewares = [_auth_middleware(token)] if token is not None else []
    app = web.Application(middlewares=middlewares)
    app.router.add_get("/v1/blobs/{sha256}", blob)  # HEAD is registered along with GET
    app.router.add_get("/v1/roots/{name}", root_doc)
    return app


class DistributionServer:
    """``async with DistributionServer(blob_dir) as srv: srv.url`` — an HTTP blob server."""

    def __init__(
        self,
        blob_dir: str | os.PathLike[str],
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        token: str | None = None,
    ) -> None:
        self.blob_dir = Path(blob_dir)
        self.host = host
        self.port = port
        self.token = token
        self.url = ""
        self._runner: web.AppRunner | None = None

    def blob_url(self, sha256: str) -> str:
        return f"{self.url}/v1/blobs/{sha256}"

    @property
    def roots_url(self) -> str:
        return f"{self.url}/v1/roots/"

    async def __aenter__(self) -> DistributionServer:
        runner = web.AppRunner(create_app(self.blob_dir, token=self.token), access_log=None)
        await runner.setup()
        try:
            site = web.TCPSite(runner, self.host, self.port)
            await site.start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        self.port = int(runner.addresses[0][1])
        host = f"[{self.host}]" if ":" in self.host else self.host
        self.url = f"http://{host}:{self.port}"
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
