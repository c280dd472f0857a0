"""Check a release slot against the file list its signed manifest carries.

``verify_slot(slot_dir, files)`` raises ``SlotMismatch`` with one line naming the first file
that differs; it returns the number of bytes it hashed. What is covered (docs/agent.md,
"Verified slots"):
- the set of paths: nothing missing, nothing added (``.fleetgate/``, the agent's own metadata
  directory, is skipped);
- each path's type: regular file, directory or symlink (``lstat``: a file replaced by a symlink,
  or a directory by a file, is a mismatch);
- files: size, sha256, the owner-exec bit; no group/other write and no setuid/setgid bits;
- directories: no group/other write;
- symlinks: the exact link text.
Not covered: owners, mtimes (extraction sets them to 0), read bits (an operator may tighten them).

Sizes and types are compared for every entry before any byte is hashed, so a truncated or
added file is found without reading 50 MiB first. Files are opened with ``O_NOFOLLOW``.

Blocking and CPU-bound: callers run it with ``asyncio.to_thread``. Standard library only: the
agent calls it at start-up, which must not load ``cryptography``.
"""

from __future__ import annotations

import hashlib
import os
import stat
from collections.abc import Sequence
from pathlib import Path

from fleetgate.core.manifest import META_DIR
from fleetgate.core.model import PayloadFile

CHUNK = 256 * 1024
_BAD_BITS = stat.S_IWGRP | stat.S_IWOTH | stat.S_ISUID | stat.S_ISGID


class SlotMismatch(Exception):
    """The slot differs from its signed file list (the message names the file)."""


def _kind(mode: int) -> str:
    if stat.S_ISREG(mode):
        return "file"
    if stat.S_ISDIR(mode):
        return "dir"
    if stat.S_ISLNK(mode):
        return "link"
    return "special file"


def _observe(slot: Path) -> dict[str, os.stat_result]:
    """Every path under ``slot`` (relative POSIX) → its ``lstat``; never follows a link."""
    seen: dict[str, os.stat_result] = {}
    stack = [""]
    while stack:
        rel = stack.pop()
        with os.scandir(slot / rel if rel else slot) as it:
            for entry in it:
                path = f"{rel}/{entry.name}" if rel else entry.name
                if path == META_DIR:
                    continue
                st = entry.stat(follow_symlinks=False)
                seen[path] = st
                if stat.S_ISDIR(st.st_mode):
                    stack.append(path)
    return seen


def _sha256(path: Path, buf: bytearray) -> str:
    h = hashlib.sha256()
    view = memoryview(buf)
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    with os.fdopen(fd, "rb", buffering=0) as fh:
        while n := fh.readinto(buf):
            h.update(view[:n])
    return h.hexdigest()


def verify_slot(slot: Path, files: Sequence[PayloadFile]) -> int:
    """See the module docstring. Returns the bytes hashed."""
    try:
        seen = _observe(slot)
    except OSError as exc:
        raise SlotMismatch(f"{slot.name}: cannot list the slot: {exc.strerror or exc}") from exc
    to_hash: list[PayloadFile] = []
    for f in files:
        st = seen.pop(f.path, None)
        if st is None:
            raise SlotMismatch(f"{f.path}: missing (signed as a {f.kind})")
        kind = _kind(st.st_mode)
        if kind != f.kind:
            raise SlotMismatch(f"{f.path}: is a {kind}, signed as a {f.kind}")
        if kind == "link":
            target = str((slot / f.path).readlink())
            if target != f.target:
                raise SlotMismatch(f"{f.path}: links to {target!r}, signed {f.target!r}")
            continue
        if st.st_mode & _BAD_BITS:
            raise SlotMismatch(f"{f.path}: mode {stat.S_IMODE(st.st_mode):04o} is not allowed")
        if kind == "file":
            if st.st_size != f.size:
                raise SlotMismatch(f"{f.path}: {st.st_size} bytes, signed {f.size}")
            if bool(st.st_mode & stat.S_IXUSR) != f.executable:
                raise SlotMismatch(
                    f"{f.path}: executable bit {'set' if not f.executable else 'cleared'} "
                    "since it was signed"
                )
            to_hash.append(f)
    if seen:
        extra = min(seen)
        raise SlotMismatch(f"{extra}: not in the signed file list ({len(seen)} extra)")
    hashed = 0
    buf = bytearray(CHUNK)  # one buffer for the whole slot: the agent's heap stays as it was
    for f in to_hash:
        try:
            digest = _sha256(slot / f.path, buf)
        except OSError as exc:
            raise SlotMismatch(f"{f.path}: cannot read: {exc.strerror or exc}") from exc
        if digest != f.sha256:
            raise SlotMismatch(f"{f.path}: sha256 {digest[:16]}…, signed {f.sha256[:16]}…")
        hashed += f.size
    return hashed
