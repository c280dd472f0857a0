"""The ``.fgb`` bundle file: an uncompressed POSIX tar with exactly three members.

Layout (members in this order, which is also sorted order)::

    manifest.json    canonical JSON manifest; ``size``/``sha256`` describe the payload
    manifest.sig     base64 Ed25519 signature over the exact bytes of manifest.json
    payload.tar.gz   the payload (deterministic tar.gz, see ``payload.py``)

Writing is deterministic: members in fixed order, mtime 0, uid/gid 0, empty owner names, mode
0644, PAX format. The same three inputs always give byte-identical files.

Reading (``read_bundle``) trusts nothing: it accepts exactly those three regular-file members,
each at most once, caps the sizes of the manifest and the signature, and checks that the payload
lies entirely inside the file (a cut-off download is "truncated", not a short payload). It does not
verify anything cryptographic — that is ``signing.verify_bundle``. Every rejection is an
``IntegrityError`` with a one-line reason.

Agent-importable: standard library only.
"""

from __future__ import annotations

import hashlib
import io
import os
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from fleetgate.errors import IntegrityError

MANIFEST_MEMBER = "manifest.json"
SIGNATURE_MEMBER = "manifest.sig"
PAYLOAD_MEMBER = "payload.tar.gz"
MEMBERS = (MANIFEST_MEMBER, SIGNATURE_MEMBER, PAYLOAD_MEMBER)
BUNDLE_SUFFIX = ".fgb"

MAX_MANIFEST_BYTES = 4 * 1024 * 1024  # the file list: ~130 bytes a file
MAX_SIGNATURE_BYTES = 16 * 1024  # up to 32 `keyid:base64` lines
CHUNK = 1024 * 1024


@dataclass(frozen=True, slots=True)
class BundleContents:
    """What ``read_bundle`` found. The payload is not copied: it is the byte range
    ``[payload_offset, payload_offset + payload_size)`` of ``path``."""

    path: Path
    manifest_json: bytes
    signature: bytes
    payload_offset: int
    payload_size: int


def _member(name: str, size: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size = size
    info.mtime = 0
    info.mode = 0o644
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    info.type = tarfile.REGTYPE
    return info


def write_bundle(out: BinaryIO, manifest_json: bytes, signature_b64: str, payload: Path) -> None:
    """Write the bundle tar to ``out`` (an open, writable binary file)."""
    sig = signature_b64.encode("ascii")
    with tarfile.open(fileobj=out, mode="w:", format=tarfile.PAX_FORMAT) as tf:
        tf.addfile(_member(MANIFEST_MEMBER, len(manifest_json)), io.BytesIO(manifest_json))
        tf.addfile(_member(SIGNATURE_MEMBER, len(sig)), io.BytesIO(sig))
        size = payload.stat().st_size
        with payload.open("rb") as fh:
            tf.addfile(_member(PAYLOAD_MEMBER, size), fh)


def read_bundle(path: str | os.PathLike[str]) -> BundleContents:
    """Parse a bundle's container structure. ``IntegrityError`` if it is not a well-formed
    bundle (not a tar, wrong members, oversized manifest/signature, truncated)."""
    p = Path(path)
    where = str(p)
    try:
        file_size = p.stat().st_size
        fh = p.open("rb")
    except OSError as exc:
        raise IntegrityError(f"{where}: cannot read bundle: {exc.strerror or exc}") from exc
    with fh:
        if file_size == 0:
            raise IntegrityError(f"{where}: not a bundle (empty file)")
        found: dict[str, tarfile.TarInfo] = {}
        try:
            with tarfile.open(fileobj=fh, mode="r:") as tf:
                while True:
                    info = tf.next()
                    if info is None:
                        break
                    if info.name not in MEMBERS:
                        raise IntegrityError(
                            f"{where}: not a bundle (unexpected member {info.name!r})"
                        )
                    if info.name in found:
                        raise IntegrityError(f"{where}: not a bundle (duplicate {info.name!r})")
                    if not info.isfile() or info.type not in (tarfile.REGTYPE, tarfile.AREGTYPE):
                        raise IntegrityError(f"{where}: not a bundle ({info.name!r} is not a file)")
                    found[info.name] = info
        except (tarfile.TarError, EOFError, UnicodeError) as exc:
            raise IntegrityError(f"{where}: not a bundle or truncated ({exc})") from exc
        missing = [m for m in MEMBERS if m not in found]
        if missing:
            names = ", ".join(missing)
            raise IntegrityError(f"{where}: not a bundle or truncated (missing {names})")
        for info in found.values():
            if info.offset_data + info.size > file_size:
                raise IntegrityError(
                    f"{where}: truncated ({info.name} needs {info.offset_data + info.size} bytes, "
                    f"file has {file_size})"
                )
        man, sig = found[MANIFEST_MEMBER], found[SIGNATURE_MEMBER]
        if man.size > MAX_MANIFEST_BYTES:
            raise IntegrityError(f"{where}: manifest.json is implausibly large ({man.size} bytes)")
        if sig.size > MAX_SIGNATURE_BYTES:
            raise IntegrityError(f"{where}: manifest.sig is implausibly large ({sig.size} bytes)")
        manifest_json = _read_range(fh, man.offset_data, man.size)
        signature = _read_range(fh, sig.offset_data, sig.size)
        payload = found[PAYLOAD_MEMBER]
        return BundleContents(
            path=p,
            manifest_json=manifest_json,
            signature=signature,
            payload_offset=payload.offset_data,
            payload_size=payload.size,
        )


def _read_range(fh: BinaryIO, offset: int, size: int) -> bytes:
    fh.seek(offset)
    data = fh.read(size)
    if len(data) != size:
        raise IntegrityError(f"{getattr(fh, 'name', 'bundle')}: truncated")
    return data


def iter_payload(contents: BundleContents, chunk: int = CHUNK) -> Iterator[bytes]:
    """Yield the payload bytes in chunks, straight from the bundle file."""
    with contents.path.open("rb") as fh:
        fh.seek(contents.payload_offset)
        left = contents.payload_size
        while left > 0:
            data = fh.read(min(chunk, left))
            if not data:
                raise IntegrityError(f"{contents.path}: truncated payload")
            left -= len(data)
            yield data


def payload_digest(contents: BundleContents) -> str:
    """The sha256 (hex) of the payload as stored in the bundle."""
    h = hashlib.sha256()
    for data in iter_payload(contents):
        h.update(data)
    return h.hexdigest()


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        while data := fh.read(CHUNK):
            h.update(data)
    return h.hexdigest()
