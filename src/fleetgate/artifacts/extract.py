"""Extract an untrusted ``.tar.gz`` into a fresh staging directory, or write nothing at all.

``safe_extract(tar_gz_path, dest_dir, *, max_members, max_bytes)`` works in two passes over the
archive:

1. **Inspect every member before anything is written.** Rejected: absolute paths, ``..``
   components, duplicate names, paths that pass through a symlink member or a file member,
   symlinks that are absolute or whose target — resolved through the archive's own symlinks, like
   ``realpath`` would — leaves the root (or loops), hard links to anything but an earlier regular
   file member, character/block devices, FIFOs, and every other member type (sparse, contiguous,
   …). More than ``max_members`` members, or a declared total of regular-file bytes above
   ``max_bytes``, is a decompression bomb and rejected as soon as the offending header is read.
2. **Extract** into ``dest_dir``, which must not exist and is created here, with
   ``filter="data"`` where this Python has extraction filters (3.10.12+, 3.11.4+, 3.12+); on
   older Pythons the pass-1 checks stand alone and modes are normalised by hand (files 0644, or
   0755 with the owner exec bit; directories 0755; owners never applied).

Both passes read the decompressed stream through a cap on how far it may go: each header may
take at most ``HEADER_ALLOWANCE`` bytes beyond the previous member's declared data, so the real
stream can never run past what the headers declared (this also bounds PAX headers, which
``tarfile`` would otherwise read into memory whole).

Any rejection raises ``IntegrityError`` naming the archive, the member and the reason; any
failure after ``dest_dir`` was created (including disk full, which stays an ``OSError``, and
cancellation) removes ``dest_dir`` completely. ``FileExistsError`` if ``dest_dir`` exists.

Synchronous and CPU-bound: async callers run it with ``asyncio.to_thread``. Agent-importable:
standard library only.
"""

from __future__ import annotations

import gzip
import os
import shutil
import tarfile
import zlib
from dataclasses import dataclass
from pathlib import Path

from fleetgate.errors import IntegrityError

DEFAULT_MAX_MEMBERS = 10_000
DEFAULT_MAX_BYTES = 2 * 1024**3
# Room for one member's headers (ustar block, PAX/GNU long-name records, data padding) and the
# end-of-archive blocks plus record padding. Generous for real archives, tiny next to a bomb.
HEADER_ALLOWANCE = 64 * 1024
MAX_LINK_DEPTH = 40
HAS_DATA_FILTER = hasattr(tarfile, "data_filter")

_FILE_TYPES = (tarfile.REGTYPE, tarfile.AREGTYPE)


class _Overflow(Exception):
    """The decompressed stream went past what the headers declared."""


class _CappedReader:
    """Read-only view of the decompressed tar stream that refuses to go past ``cap``."""

    def __init__(self, raw: gzip.GzipFile) -> None:
        self._raw = raw
        self.cap = HEADER_ALLOWANCE
        self.high_water = 0

    def read(self, size: int | None = -1) -> bytes:
        pos = self._raw.tell()
        if size is None or size < 0 or pos + size > self.cap:
            size = max(self.cap - pos + 1, 0)  # one byte past the cap tells "more" from "end"
        data = self._raw.read(size)
        end = pos + len(data)
        if end > self.cap:
            raise _Overflow(end)
        self.high_water = max(self.high_water, end)
        return data

    def seek(self, offset: int, whence: int = 0) -> int:
        if whence != 0:
            raise OSError("only absolute seeks are supported")
        if offset > self.cap:
            raise _Overflow(offset)
        return self._raw.seek(offset)

    def tell(self) -> int:
        return self._raw.tell()


@dataclass(slots=True)
class _Node:
    kind: str  # "file" | "dir" | "symlink" | "hardlink"
    linkname: str = ""


def _reject(where: str, name: str, reason: str) -> IntegrityError:
    return IntegrityError(f"{where}: member {name!r}: {reason}")


def _normalise(name: str, where: str, what: str = "path") -> str:
    if name.startswith("/") or name.startswith("\\"):
        raise _reject(where, name, f"absolute {what}")
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise _reject(where, name, f"'..' component in {what}")
    return "/".join(parts)


class _Namespace:
    """The archive's paths as a tree of integer nodes (0 is the root), so that walking and
    resolving costs O(1) per path component — a hostile archive cannot make the checks
    quadratic or exponential (link results are memoised; chains are bounded)."""

    def __init__(self) -> None:
        self.parent: list[int] = [0]
        self.depth: list[int] = [0]
        self._kids: dict[tuple[int, str], int] = {}
        self.links: dict[int, str] = {}  # symlink node -> its target text
        self._resolved: dict[int, int] = {}
        self._active: set[int] = set()

    def child(self, node: int, name: str) -> int:
        key = (node, name)
        kid = self._kids.get(key)
        if kid is None:
            kid = len(self.parent)
            self._kids[key] = kid
            self.parent.append(node)
            self.depth.append(self.depth[node] + 1)
        return kid

    def add(self, name: str) -> int:
        node = 0
        for part in name.split("/"):
            node = self.child(node, part)
        return node

    def resolve_link(self, node: int) -> int:
        """Where symlink ``node`` really points (like ``realpath``); ``ValueError`` if that
        leaves the root, loops or chains deeper than ``MAX_LINK_DEPTH``."""
        done = self._resolved.get(node)
        if done is not None:
            return done
        if node in self._active:
            raise ValueError("symlink loop")
        if len(self._active) >= MAX_LINK_DEPTH:
            raise ValueError("symlink chain too deep")
        self._active.add(node)
        target = self.links[node]
        cur = self.parent[node]
        for comp in target.split("/"):
            if comp in ("", "."):
                continue
            if comp == "..":
                if cur == 0:
                    raise ValueError(f"symlink target {target!r} leaves the archive root")
                cur = self.parent[cur]
                continue
            cur = self.child(cur, comp)
            if cur in self.links:
                cur = self.resolve_link(cur)
        self._active.discard(node)
        self._resolved[node] = cur
        return cur


def _inspect(
    tf: tarfile.TarFile, reader: _CappedReader, where: str, max_members: int, max_bytes: int
) -> list[tarfile.TarInfo]:
    nodes: dict[str, _Node] = {}
    members: list[tarfile.TarInfo] = []
    total = 0
    count = 0
    while True:
        info = tf.next()
        if info is None:
            break
        count += 1
        if count > max_members:
            raise _reject(where, info.name, f"more than {max_members} members")
        if info.ischr() or info.isblk():
            raise _reject(where, info.name, "device file")
        if info.isfifo():
            raise _reject(where, info.name, "FIFO")
        name = _normalise(info.name, where)
        if getattr(info, "sparse", None) is not None:
            raise _reject(where, info.name, "sparse file")
        if info.type in _FILE_TYPES:
            total += info.size
            if total > max_bytes:
                raise _reject(
                    where,
                    info.name,
                    f"unpacked size exceeds the cap of {max_bytes} bytes (decompression bomb)",
                )
            node = _Node("file")
        elif info.type == tarfile.DIRTYPE:
            node = _Node("dir")
        elif info.type == tarfile.SYMTYPE:
            if not info.linkname or info.linkname.startswith("/"):
                raise _reject(where, info.name, f"symlink to absolute path {info.linkname!r}")
            node = _Node("symlink", info.linkname)
        elif info.type == tarfile.LNKTYPE:
            target = _normalise(info.linkname, where, "hard link target")
            if nodes.get(target, _Node("")).kind != "file":
                raise _reject(
                    where,
                    info.name,
                    f"hard link to {info.linkname!r}, which is not an earlier regular file member",
                )
            info.linkname = target
            node = _Node("hardlink", target)
        else:
            raise _reject(where, info.name, f"unsupported member type {info.type!r}")
        # The next header may only take a small allowance beyond where this member ends.
        # ``tf.offset`` is where tarfile will read that header: past the data for regular files
        # only, so a directory "declaring" a huge size cannot buy room for a huge PAX header.
        reader.cap = tf.offset + HEADER_ALLOWANCE
        if not name:
            if node.kind != "dir":
                raise _reject(where, info.name, "empty name")
            continue  # the archive root itself ("./"): nothing to create
        if name in nodes:
            raise _reject(where, info.name, "duplicate member")
        info.name = name
        nodes[name] = node
        members.append(info)

    tree = _Namespace()
    ids = {name: tree.add(name) for name in nodes}
    kinds = {ids[name]: node.kind for name, node in nodes.items()}
    tree.links = {
        ids[name]: node.linkname for name, node in nodes.items() if node.kind == "symlink"
    }
    for name, nid in ids.items():
        up = tree.parent[nid]
        while up != 0:
            kind = kinds.get(up, "dir")
            if kind != "dir":
                prefix = "/".join(name.split("/")[: tree.depth[up]])
                raise _reject(where, name, f"path goes through {kind} member {prefix!r}")
            up = tree.parent[up]
    for name, nid in ids.items():
        if nid in tree.links:
            try:
                tree.resolve_link(nid)
            except ValueError as exc:
                raise _reject(where, name, str(exc)) from None
    return members


def _normalise_modes(dest: Path, members: list[tarfile.TarInfo], files: bool) -> None:
    """Files 0644/0755 (fallback path only: the data filter already does it); every directory,
    including ones created implicitly for ``a/b/c``, 0755 whatever the umask."""
    if files:
        for info in members:
            if info.type in _FILE_TYPES:
                (dest / info.name).chmod(0o755 if info.mode & 0o100 else 0o644)
    dest.chmod(0o755)
    for root, dirnames, _ in os.walk(dest):  # does not follow symlinked directories
        for name in dirnames:
            path = Path(root) / name
            if not path.is_symlink():
                path.chmod(0o755)


def safe_extract(
    tar_gz_path: str | os.PathLike[str],
    dest_dir: str | os.PathLike[str],
    *,
    max_members: int = DEFAULT_MAX_MEMBERS,
    max_bytes: int = DEFAULT_MAX_BYTES,
) -> Path:
    """Inspect, then extract ``tar_gz_path`` into the new directory ``dest_dir``; return it."""
    src = Path(tar_gz_path)
    dest = Path(dest_dir)
    where = str(src)
    if dest.exists() or dest.is_symlink():
        raise FileExistsError(f"{dest}: staging directory already exists")
    created = False
    try:
        with gzip.GzipFile(filename=src, mode="rb") as gz:
            reader = _CappedReader(gz)
            with tarfile.open(fileobj=reader, mode="r:") as tf:  # type: ignore[call-overload]
                members = _inspect(tf, reader, where, max_members, max_bytes)
                reader.cap = reader.high_water
                dest.parent.mkdir(parents=True, exist_ok=True)
                dest.mkdir()
                created = True
                if HAS_DATA_FILTER:
                    tf.extractall(dest, members=members, filter="data")
                    _normalise_modes(dest, members, files=False)
                else:  # Pythons without extraction filters: the pass-1 checks stand alone
                    # (when forced on a Python that has filters, say so rather than be warned)
                    legacy: dict[str, str] = {}
                    if hasattr(tarfile, "fully_trusted_filter"):
                        legacy["filter"] = "fully_trusted"
                    for info in members:
                        tf.extract(info, dest, set_attrs=False, **legacy)
                    _normalise_modes(dest, members, files=True)
    except BaseException as exc:
        if created:
            shutil.rmtree(dest, ignore_errors=True)
        translated = _translate(exc, where)
        if translated is exc:
            raise
        raise translated from exc
    return dest


def _translate(exc: BaseException, where: str) -> BaseException:
    """Map archive-format failures to ``IntegrityError``; pass everything else through."""
    if isinstance(exc, IntegrityError):
        return exc
    if isinstance(exc, _Overflow):
        return IntegrityError(
            f"{where}: decompressed data runs past what the headers declare "
            f"(stopped at {exc.args[0]} bytes)"
        )
    filter_error = getattr(tarfile, "FilterError", None)
    if filter_error is not None and isinstance(exc, filter_error):
        name = getattr(getattr(exc, "tarinfo", None), "name", "?")
        return IntegrityError(f"{where}: member {name!r}: rejected by the data filter: {exc}")
    if isinstance(exc, (tarfile.TarError, EOFError, zlib.error, gzip.BadGzipFile, UnicodeError)):
        return IntegrityError(f"{where}: corrupt or truncated archive ({exc})")
    return exc
