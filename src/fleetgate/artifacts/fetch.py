"""Download a content-addressed blob: resumable, capped at the signed size, digest-checked.

``download_blob(session, url, dest, *, size, sha256, ...)`` is the agent's only way to bring an
artifact onto the device. ``size`` and ``sha256`` come from a manifest whose signature was already
verified (TUF-like order: authenticate the metadata, then fetch the data it describes), so:

- Data streams into ``dest.part``. An existing ``.part`` (from a dropped connection or an earlier
  call) is re-hashed and resumed with ``Range: bytes=<have>-``; a ``.part`` larger than ``size``
  is discarded. A server that ignores the range (200) restarts the file from byte 0.
- Never more than ``size`` bytes are accepted: a ``Content-Length``/``Content-Range`` promising
  more, or a body that runs past it, aborts the download, deletes the part and raises
  ``IntegrityError``. A server whose blob has a different total length (``Content-Range: */N``,
  416) is an ``IntegrityError`` too — the blob is not the one that was signed.
- Slow retrieval: with ``min_rate`` (bytes/s), a request whose average rate since it started
  falls below it once ``rate_window`` seconds have passed is abandoned like a dropped
  connection (retried, resumed); a server that trickles can no longer hold a stage for ever
  (``read_timeout`` alone only bounds the silence between two bytes).
- Dropped connections, timeouts, short bodies, 408/429/5xx are retried up to ``attempts`` times in
  total, with exponential backoff; each retry resumes where the part ends. Running out of attempts
  raises ``TransportError(retryable=True)`` and *keeps* the part for a later resume. Other HTTP
  errors (401, 403, 404 …) and TLS failures (untrusted or unpinned certificate) raise
  ``TransportError(retryable=False)`` at once.
- When ``size`` bytes are in, the sha256 (computed incrementally while streaming) must match;
  otherwise the part is deleted and ``IntegrityError`` raised. On success the part is fsynced and
  renamed to ``dest`` atomically (and the directory fsynced): ``dest`` either does not exist or is
  the verified blob.

Hashing of an existing part runs in a thread, streaming data is hashed chunk by chunk, so the event
loop is never blocked for long. Agent-importable: standard library and ``aiohttp`` only.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import re
import time
from pathlib import Path
from typing import Any

import aiohttp

from fleetgate.errors import IntegrityError, TransportError

CHUNK = 64 * 1024
MAX_BACKOFF = 5.0
_CONTENT_RANGE = re.compile(r"^bytes (?:(\d+)-(\d+)|\*)/(\d+|\*)$")


def _rehash_part(part: Path, size: int) -> tuple[Any, int]:
    """Hash what an existing part holds; discard a part that is already too long."""
    hasher = hashlib.sha256()
    try:
        have = part.stat().st_size
    except FileNotFoundError:
        return hasher, 0
    if have > size:
        part.unlink()
        return hasher, 0
    with part.open("rb") as fh:
        while data := fh.read(1024 * 1024):
            hasher.update(data)
    return hasher, have


def _content_range(value: str | None) -> tuple[int | None, int | None]:
    """(start, total) of a ``Content-Range`` header; ``None`` where absent or ``*``."""
    if not value:
        return None, None
    m = _CONTENT_RANGE.match(value.strip())
    if not m:
        return None, None
    start = int(m.group(1)) if m.group(1) is not None else None
    total = int(m.group(3)) if m.group(3) != "*" else None
    return start, total


def _finish(part: Path, dest: Path) -> None:
    with part.open("rb+") as fh:
        os.fsync(fh.fileno())
    part.replace(dest)
    try:
        dir_fd = os.open(dest.parent, os.O_RDONLY)
    except OSError:  # pragma: no cover - some filesystems refuse opening directories
        return
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


class _Retry(Exception):
    """A failure worth another attempt (the part stays consistent with the hasher)."""


async def _fetch_once(
    session: aiohttp.ClientSession,
    url: str,
    part: Path,
    state: list[Any],
    size: int,
    headers: dict[str, str] | None,
    read_timeout: float,
    min_rate: float = 0.0,
    rate_window: float = 60.0,
) -> None:
    """One request; appends to ``part`` and advances ``state = [hasher, have]``."""
    hasher, have = state
    req_headers = dict(headers or {})
    if have:
        req_headers["Range"] = f"bytes={have}-"
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=read_timeout, sock_read=read_timeout)
    async with session.get(url, headers=req_headers, timeout=timeout) as resp:
        start, total = _content_range(resp.headers.get("Content-Range"))
        if resp.status == 416:
            if total is not None and total != size:
                raise IntegrityError(
                    f"{url}: blob on the server is {total} bytes, signed size {size}"
                )
            state[0], state[1] = hashlib.sha256(), 0  # start over from byte 0 next time
            raise _Retry(f"{url}: range {have}- not satisfiable")
        if resp.status == 200:
            if have:  # the server ignored our Range: start the file over
                hasher, have = hashlib.sha256(), 0
            if resp.content_length is not None and resp.content_length != size:
                raise IntegrityError(
                    f"{url}: server offers {resp.content_length} bytes, signed size is {size}"
                )
        elif resp.status == 206:
            if total is not None and total != size:
                raise IntegrityError(
                    f"{url}: blob on the server is {total} bytes, signed size {size}"
                )
            if start != have:
                state[0], state[1] = hashlib.sha256(), 0
                raise _Retry(f"{url}: server answered range {start}-, asked for {have}-")
            if resp.content_length is not None and have + resp.content_length > size:
                raise IntegrityError(f"{url}: server offers more than the signed size {size}")
        elif resp.status in (408, 429) or resp.status >= 500:
            raise _Retry(f"{url}: HTTP {resp.status}")
        else:
            raise TransportError(
                f"{url}: HTTP {resp.status} {resp.reason or ''}".rstrip(), retryable=False
            )
        state[0], state[1] = hasher, have
        started, got = time.monotonic(), 0
        with part.open("ab" if have else "wb") as fh:
            async for chunk in resp.content.iter_chunked(CHUNK):
                if state[1] + len(chunk) > size:
                    raise IntegrityError(f"{url}: server sent more than the signed size {size}")
                fh.write(chunk)
                hasher.update(chunk)
                state[1] += len(chunk)
                got += len(chunk)
                elapsed = time.monotonic() - started
                if min_rate and elapsed > rate_window and got < min_rate * elapsed:
                    raise _Retry(
                        f"{url}: slow retrieval: {got} bytes in {elapsed:.1f}s, below the "
                        f"minimum {min_rate / 1024:g} KiB/s"
                    )


async def download_blob(
    session: aiohttp.ClientSession,
    url: str,
    dest: Path,
    *,
    size: int,
    sha256: str,
    headers: dict[str, str] | None = None,
    attempts: int = 5,
    backoff: float = 0.2,
    read_timeout: float = 30.0,
    min_rate: float = 0.0,
    rate_window: float = 60.0,
) -> Path:
    """Fetch ``url`` into ``dest``; see the module docstring for the guarantees."""
    dest = Path(dest)
    part = dest.with_name(dest.name + ".part")
    dest.parent.mkdir(parents=True, exist_ok=True)
    hasher, have = await asyncio.to_thread(_rehash_part, part, size)
    state: list[Any] = [hasher, have]
    last_error: BaseException | None = None
    for attempt in range(max(attempts, 1)):
        if state[1] == size:
            break
        if attempt:
            await asyncio.sleep(min(backoff * 2 ** (attempt - 1), MAX_BACKOFF))
        try:
            await _fetch_once(
                session, url, part, state, size, headers, read_timeout, min_rate, rate_window
            )
        except IntegrityError:
            part.unlink(missing_ok=True)
            raise
        except aiohttp.ClientSSLError as exc:
            # An untrusted or unpinned certificate does not get better by asking again.
            raise TransportError(f"{url}: TLS: {exc}", retryable=False) from exc
        except (_Retry, aiohttp.ClientError, asyncio.TimeoutError, ConnectionError) as exc:
            last_error = exc
    hasher, have = state
    if have != size:
        reason = f": {last_error}" if last_error else ""
        raise TransportError(
            f"{url}: incomplete after {attempts} attempts ({have} of {size} bytes){reason}",
            retryable=True,
        )
    if not part.exists():  # a zero-byte blob never needed a request
        part.touch()
    digest = hasher.hexdigest()
    if digest != sha256:
        part.unlink(missing_ok=True)
        raise IntegrityError(f"{url}: sha256 mismatch (got {digest}, signed {sha256}); deleted")
    await asyncio.to_thread(_finish, part, dest)
    return dest
