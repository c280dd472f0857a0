"""Collect a source directory into payload entries, and write them as a deterministic tar.gz.

What goes into the payload, by ``[artifact] kind``:
- ``bundle``: the whole source directory, ``fleetgate.toml`` included (it documents the release);
- ``binary``: the one regular file next to ``fleetgate.toml`` (anything else is refused), packed
  under its own name with mode 0755;
- ``config``: every file except ``fleetgate.toml`` (sub-directories kept).
Always skipped: ``.git`` and ``__pycache__`` directories, ``*.pyc`` files.

Refused with ``InputError`` naming the path: symlinks that are absolute or resolve outside the
source directory, and anything that is not a regular file, directory or symlink (FIFOs, sockets,
devices). Directories are walked without following symlinks, so a symlinked directory is stored
as a link, never as its contents.

Determinism (same tree → same bytes, whatever the file mtimes, owners or umask): members sorted
by path, mtime 0, uid/gid 0, empty owner names, modes normalised (dirs and files with the owner
exec bit 0755, other files 0644, links 0777), PAX format; gzip header with mtime 0, no file name,
fixed compression level. The bytes depend on the zlib version only through the deflate output,
which is stable across the zlib releases in practice.

Controller side in use, but dependency-free (standard library).
"""

from __future__ import annotations

import gzip
import hashlib
import os
import posixpath
import stat
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import BinaryIO, cast

from fleetgate.core.manifest import META_DIR
from fleetgate.core.model import ArtifactKind, PayloadFile
from fleetgate.errors import InputError

MANIFEST_FILE = "fleetgate.toml"
SKIP_DIRS = frozenset({".git", "__pycache__"})
SKIP_SUFFIXES = (".pyc",)
GZIP_LEVEL = 9


@dataclass(frozen=True, slots=True)
class Entry:
    """One payload member: ``arcname`` is the POSIX path inside the payload."""

    arcname: str
    kind: str  # "dir" | "file" | "link"
    source: Path
    mode: int
    linkname: str = ""


def _check_link(src_root: Path, path: Path, arcname: str) -> str:
    target = str(path.readlink())
    if PurePosixPath(target).is_absolute():
        raise InputError(f"{path}: symlink to an absolute path ({target}); use a relative link")
    # Both views must stay inside: the lexical one (what the extractor checks) and the real one
    # (what the link means on this machine, through any intermediate links).
    lexical = posixpath.normpath(posixpath.join(posixpath.dirname(arcname), target))
    real = path.resolve()
    root = src_root.resolve()
    if lexical == ".." or lexical.startswith("../") or not (real == root or root in real.parents):
        raise InputError(f"{path}: symlink points outside the source directory ({target})")
    return target


def _walk(src_root: Path) -> Iterator[Entry]:
    """Every member under ``src_root`` (excluding skipped names), unsorted."""
    for dirpath, dirnames, filenames in os.walk(src_root, followlinks=False):
        base = Path(dirpath)
        dirnames[:] = [d for d in dirnames if d not in SKIP_DIRS]
        for name in [*dirnames, *(f for f in filenames if not f.endswith(SKIP_SUFFIXES))]:
            path = base / name
            arcname = path.relative_to(src_root).as_posix()
            try:
                arcname.encode("utf-8")
            except UnicodeEncodeError as exc:
                raise InputError(f"{path}: file name is not valid UTF-8") from exc
            if arcname == META_DIR:
                raise InputError(f"{path}: the name {META_DIR} is reserved for the device agent")
            st = path.lstat()
            if stat.S_ISLNK(st.st_mode):
                yield Entry(arcname, "link", path, 0o777, _check_link(src_root, path, arcname))
            elif stat.S_ISDIR(st.st_mode):
                yield Entry(arcname, "dir", path, 0o755)
            elif stat.S_ISREG(st.st_mode):
                mode = 0o755 if st.st_mode & stat.S_IXUSR else 0o644
                yield Entry(arcname, "file", path, mode)
            else:
                raise InputError(f"{path}: not a regular file, directory or symlink")


def collect_entries(src_root: Path, kind: ArtifactKind) -> list[Entry]:
    """The sorted payload members for ``kind``. ``InputError`` if the tree does not fit it."""
    entries = list(_walk(src_root))
    if kind is ArtifactKind.BINARY:
        others = [e for e in entries if e.arcname != MANIFEST_FILE]
        files = [e for e in others if e.kind == "file"]
        if len(others) != 1 or len(files) != 1:
            names = ", ".join(sorted(e.arcname for e in others)) or "nothing"
            raise InputError(
                f"{src_root}: kind binary needs exactly one regular file besides {MANIFEST_FILE} "
                f"(found: {names})"
            )
        entries = [Entry(files[0].arcname, "file", files[0].source, 0o755)]
    elif kind is ArtifactKind.CONFIG:
        entries = [e for e in entries if e.arcname != MANIFEST_FILE]
        if not any(e.kind == "file" for e in entries):
            raise InputError(f"{src_root}: kind config needs at least one file to place")
    return sorted(entries, key=lambda e: e.arcname)


def _tarinfo(entry: Entry) -> tarfile.TarInfo:
    info = tarfile.TarInfo(entry.arcname)
    info.mtime = 0
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    info.mode = entry.mode
    if entry.kind == "dir":
        info.type = tarfile.DIRTYPE
    elif entry.kind == "link":
        info.type = tarfile.SYMTYPE
        info.linkname = entry.linkname
    else:
        info.type = tarfile.REGTYPE
    return info


class _HashingReader:
    """A read-only file wrapper that hashes what ``tarfile`` copies out of it: the digest in
    the file list is of the very bytes packed, even if the source changes meanwhile."""

    def __init__(self, raw: BinaryIO) -> None:
        self.raw = raw
        self.sha256 = hashlib.sha256()

    def read(self, size: int = -1) -> bytes:
        data = self.raw.read(size)
        self.sha256.update(data)
        return data


class _HashingWriter:
    """A write-only file wrapper that counts and hashes what passes through."""

    def __init__(self, raw: BinaryIO) -> None:
        self.raw = raw
        self.size = 0
        self.sha256 = hashlib.sha256()

    def write(self, data: bytes) -> int:
        self.raw.write(data)
        self.size += len(data)
        self.sha256.update(data)
        return len(data)

    def flush(self) -> None:
        self.raw.flush()


def write_payload(entries: list[Entry], out: BinaryIO) -> tuple[int, str, tuple[PayloadFile, ...]]:
    """Write the deterministic tar.gz of ``entries`` to ``out``; return (size, sha256 hex, the
    file list the manifest signs: each member's size and sha256, or link target)."""
    sink = _HashingWriter(out)
    gz_target = cast(BinaryIO, sink)
    files: list[PayloadFile] = []
    # filename="" keeps the source path out of the gzip header; mtime=0 keeps the clock out.
    with (
        gzip.GzipFile(
            filename="", mode="wb", fileobj=gz_target, mtime=0, compresslevel=GZIP_LEVEL
        ) as gz,
        tarfile.open(fileobj=gz, mode="w:", format=tarfile.PAX_FORMAT) as tf,
    ):
        for entry in entries:
            info = _tarinfo(entry)
            if entry.kind == "dir":
                files.append(PayloadFile(entry.arcname, "dir"))
            elif entry.kind == "link":
                files.append(PayloadFile(entry.arcname, "link", target=entry.linkname))
            if entry.kind != "file":
                tf.addfile(info)
                continue
            try:
                with entry.source.open("rb") as fh:
                    info.size = os.fstat(fh.fileno()).st_size
                    reader = _HashingReader(cast(BinaryIO, fh))
                    tf.addfile(info, cast(BinaryIO, reader))
            except OSError as exc:
                raise InputError(f"{entry.source}: cannot read: {exc.strerror or exc}") from exc
            files.append(
                PayloadFile(
                    entry.arcname,
                    "file",
                    size=info.size,
                    sha256=reader.sha256.hexdigest(),
                    executable=entry.mode == 0o755,
                )
            )
    return sink.size, sink.sha256.hexdigest(), tuple(files)
