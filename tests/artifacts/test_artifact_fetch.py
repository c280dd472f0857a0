"""download_blob against a scripted HTTP server on 127.0.0.1: dropped connections are resumed with
Range, and a blob that is tampered with, too long or too short is never kept."""

from __future__ import annotations

import asyncio
import hashlib
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import pytest

from fleetgate.artifacts.fetch import download_blob
from fleetgate.errors import IntegrityError, TransportError

BLOB = os.urandom(1_000_000)
SHA = hashlib.sha256(BLOB).hexdigest()


@dataclass
class Reply:
    status: int = 200
    body: bytes = b""
    length: int | None = None  # Content-Length to announce; None: close-delimited body
    headers: dict[str, str] = field(default_factory=dict)
    cut_after: int | None = None  # close the connection after this many body bytes


Script = Callable[[int, dict[str, str]], Reply]


def honest(data: bytes = BLOB) -> Script:
    """A server that serves ``data`` and honours single ``bytes=a-`` ranges."""

    def reply(_n: int, headers: dict[str, str]) -> Reply:
        rng = headers.get("range")
        if rng:
            start = int(rng.removeprefix("bytes=").rstrip("-"))
            if start >= len(data):
                return Reply(416, headers={"Content-Range": f"bytes */{len(data)}"}, length=0)
            part = data[start:]
            cr = f"bytes {start}-{len(data) - 1}/{len(data)}"
            return Reply(206, part, len(part), {"Content-Range": cr})
        return Reply(200, data, len(data))

    return reply


class ScriptedServer:
    """Minimal HTTP/1.1 server: one request per connection, replies chosen by ``script``."""

    def __init__(self, script: Script) -> None:
        self.script = script
        self.requests: list[dict[str, str]] = []
        self.url = ""

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")[1:]
            pairs = (ln.partition(":") for ln in lines if ln)
            headers = {k.strip().lower(): v.strip() for k, _, v in pairs}
            self.requests.append(headers)
            r = self.script(len(self.requests), headers)
            out = [f"HTTP/1.1 {r.status} X", "Connection: close"]
            out += [f"{k}: {v}" for k, v in r.headers.items()]
            if r.length is not None:
                out.append(f"Content-Length: {r.length}")
            writer.write(("\r\n".join(out) + "\r\n\r\n").encode())
            body = r.body if r.cut_after is None else r.body[: r.cut_after]
            writer.write(body)
            await writer.drain()
        finally:
            writer.close()


@pytest.fixture
async def server_for() -> AsyncIterator[Callable[[Script], Awaitable[ScriptedServer]]]:
    running: list[asyncio.AbstractServer] = []

    async def start(script: Script) -> ScriptedServer:
        scripted = ScriptedServer(script)
        srv = await asyncio.start_server(scripted.handle, "127.0.0.1", 0)
        running.append(srv)
        port = srv.sockets[0].getsockname()[1]
        scripted.url = f"http://127.0.0.1:{port}/v1/blobs/{SHA}"
        return scripted

    yield start
    for srv in running:
        srv.close()
        await srv.wait_closed()


async def fetch(url: str, dest: Path, **kw: object) -> Path:
    kw.setdefault("backoff", 0.01)
    async with aiohttp.ClientSession() as http:
        return await download_blob(http, url, dest, size=len(BLOB), sha256=SHA, **kw)  # type: ignore[arg-type]


def leftovers(dest: Path) -> list[str]:
    return sorted(p.name for p in dest.parent.iterdir())


async def test_clean_download(server_for, tmp_path: Path) -> None:
    srv = await server_for(honest())
    dest = await fetch(srv.url, tmp_path / "dl" / SHA)
    assert dest.read_bytes() == BLOB
    assert leftovers(dest) == [SHA]
    assert "range" not in srv.requests[0]


async def test_dropped_connection_is_resumed_with_range(server_for, tmp_path: Path) -> None:
    def script(n: int, headers: dict[str, str]) -> Reply:
        reply = honest()(n, headers)
        if n == 1:
            reply.cut_after = 300_000  # announce the full length, then hang up
        return reply

    srv = await server_for(script)
    dest = await fetch(srv.url, tmp_path / SHA)
    assert dest.read_bytes() == BLOB
    assert len(srv.requests) == 2
    assert srv.requests[1]["range"] == "bytes=300000-"
    assert not (tmp_path / f"{SHA}.part").exists()


async def test_part_survives_a_failed_call_and_the_next_call_resumes(
    server_for, tmp_path: Path
) -> None:
    def always_cut(n: int, headers: dict[str, str]) -> Reply:
        reply = honest()(n, headers)
        reply.cut_after = 250_000
        return reply

    srv = await server_for(always_cut)
    with pytest.raises(TransportError) as info:
        await fetch(srv.url, tmp_path / SHA, attempts=2)
    assert info.value.retryable
    assert (tmp_path / f"{SHA}.part").stat().st_size == 500_000
    assert [r.get("range") for r in srv.requests] == [None, "bytes=250000-"]

    srv2 = await server_for(honest())
    dest = await fetch(srv2.url, tmp_path / SHA)
    assert dest.read_bytes() == BLOB
    assert srv2.requests[0]["range"] == "bytes=500000-"  # the old part was re-hashed and kept


async def test_server_ignoring_range_restarts_from_zero(server_for, tmp_path: Path) -> None:
    def no_ranges(n: int, _headers: dict[str, str]) -> Reply:
        return Reply(200, BLOB, len(BLOB), cut_after=100_000 if n == 1 else None)

    srv = await server_for(no_ranges)
    dest = await fetch(srv.url, tmp_path / SHA)
    assert dest.read_bytes() == BLOB
    assert srv.requests[1]["range"] == "bytes=100000-"  # asked, got 200, started over


async def test_tampered_byte_is_deleted_and_raises(server_for, tmp_path: Path) -> None:
    bad = bytearray(BLOB)
    bad[123_456] ^= 0x01
    srv = await server_for(honest(bytes(bad)))
    with pytest.raises(IntegrityError, match="sha256 mismatch"):
        await fetch(srv.url, tmp_path / SHA)
    assert leftovers(tmp_path / SHA) == []


async def test_tampered_byte_after_resume_is_caught(server_for, tmp_path: Path) -> None:
    bad = bytearray(BLOB)
    bad[900_000] ^= 0x01

    def script(n: int, headers: dict[str, str]) -> Reply:
        reply = honest(BLOB if n == 1 else bytes(bad))(n, headers)
        reply.cut_after = 400_000 if n == 1 else None
        return reply

    srv = await server_for(script)
    with pytest.raises(IntegrityError, match="sha256 mismatch"):
        await fetch(srv.url, tmp_path / SHA)
    assert leftovers(tmp_path / SHA) == []


@pytest.mark.parametrize("announce", [True, False], ids=["content-length", "close-delimited"])
async def test_oversize_is_aborted_and_deleted(server_for, tmp_path: Path, announce: bool) -> None:
    big = BLOB + b"EXTRA" * 1000
    srv = await server_for(lambda n, h: Reply(200, big, len(big) if announce else None))
    with pytest.raises(IntegrityError, match="signed size"):
        await fetch(srv.url, tmp_path / SHA)
    assert leftovers(tmp_path / SHA) == []


async def test_oversize_range_answer_is_aborted(server_for, tmp_path: Path) -> None:
    (tmp_path / f"{SHA}.part").write_bytes(BLOB[:1000])

    def script(_n: int, _h: dict[str, str]) -> Reply:
        body = BLOB[1000:] + b"more"
        return Reply(206, body, None, {"Content-Range": f"bytes 1000-{len(BLOB) + 3}/{len(BLOB)}"})

    srv = await server_for(script)
    with pytest.raises(IntegrityError, match="more than the signed size"):
        await fetch(srv.url, tmp_path / SHA)
    assert leftovers(tmp_path / SHA) == []


async def test_truncated_blob_on_server_is_an_integrity_error(server_for, tmp_path: Path) -> None:
    short = BLOB[:-10]
    srv = await server_for(honest(short))
    with pytest.raises(IntegrityError, match="signed size"):
        await fetch(srv.url, tmp_path / SHA)
    assert leftovers(tmp_path / SHA) == []


async def test_short_resume_target_gives_416_and_integrity_error(
    server_for, tmp_path: Path
) -> None:
    (tmp_path / f"{SHA}.part").write_bytes(BLOB[:999_995])
    srv = await server_for(honest(BLOB[:999_990]))  # the server holds a shorter blob
    with pytest.raises(IntegrityError, match="999990 bytes"):
        await fetch(srv.url, tmp_path / SHA)
    assert leftovers(tmp_path / SHA) == []


async def test_close_delimited_short_body_retries_then_gives_up(server_for, tmp_path: Path) -> None:
    srv = await server_for(lambda n, h: Reply(200, BLOB[:5000], None))
    with pytest.raises(TransportError, match="incomplete after 3 attempts"):
        await fetch(srv.url, tmp_path / SHA, attempts=3)
    assert len(srv.requests) == 3


async def test_http_errors(server_for, tmp_path: Path) -> None:
    srv = await server_for(lambda n, h: Reply(404, b"no", 2))
    with pytest.raises(TransportError, match="HTTP 404") as info:
        await fetch(srv.url, tmp_path / SHA)
    assert not info.value.retryable
    assert len(srv.requests) == 1  # not retried

    flaky = await server_for(lambda n, h: Reply(503, b"", 0) if n == 1 else honest()(n, h))
    dest = await fetch(flaky.url, tmp_path / SHA)
    assert dest.read_bytes() == BLOB and len(flaky.requests) == 2


async def test_overlong_stale_part_is_discarded(server_for, tmp_path: Path) -> None:
    (tmp_path / f"{SHA}.part").write_bytes(b"x" * (len(BLOB) + 1))
    srv = await server_for(honest())
    assert (await fetch(srv.url, tmp_path / SHA)).read_bytes() == BLOB
    assert "range" not in srv.requests[0]


async def test_connection_refused_is_retryable(tmp_path: Path) -> None:
    srv = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = srv.sockets[0].getsockname()[1]
    srv.close()
    await srv.wait_closed()
    with pytest.raises(TransportError) as info:
        await fetch(f"http://127.0.0.1:{port}/v1/blobs/{SHA}", tmp_path / SHA, attempts=2)
    assert info.value.retryable
