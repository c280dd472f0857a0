"""The HTTP/1.1 answer reader (transports/http1.py) on its own: however an answer is framed and
however the network splits it, the reader returns the same status, body and reuse verdict."""

from __future__ import annotations

import asyncio
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from fleetgate.transports.http1 import Http1Connection


class FakeTransport(asyncio.Transport):
    def __init__(self) -> None:
        super().__init__()
        self.written = b""
        self.closing = False

    def write(self, data: Any) -> None:
        self.written += bytes(data)

    def is_closing(self) -> bool:
        return self.closing

    def close(self) -> None:
        self.closing = True

    def abort(self) -> None:
        self.closing = True


def frame(body: bytes, chunks: list[int] | None, extra_headers: list[bytes]) -> bytes:
    head = b"HTTP/1.1 200 OK\r\n" + b"".join(h + b"\r\n" for h in extra_headers)
    if chunks is None:
        return head + b"Content-Length: %d\r\n\r\n" % len(body) + body
    out, at = head + b"Transfer-Encoding: chunked\r\n\r\n", 0
    for size in chunks:
        part = body[at : at + size]
        at += len(part)
        if part:
            out += b"%x;n=v\r\n" % len(part) + part + b"\r\n"
    if at < len(body):
        out += b"%x\r\n" % (len(body) - at) + body[at:] + b"\r\n"
    return out + b"0\r\nX-T: 1\r\n\r\n"


def read(raw: bytes, cuts: list[int]) -> tuple[int, bytes, bool]:
    async def go() -> tuple[int, bytes, bool]:
        conn = Http1Connection(("http", "h", 1), None, 1 << 20)
        conn.connection_made(FakeTransport())
        pending = asyncio.ensure_future(conn.request(b"GET / HTTP/1.1\r\n\r\n"))
        await asyncio.sleep(0)
        at = 0
        for cut in [*sorted({c % (len(raw) + 1) for c in cuts}), len(raw)]:
            if cut > at:
                conn.data_received(raw[at:cut])
                at = cut
        return await pending

    return asyncio.run(go())


@settings(max_examples=150, deadline=None)
@given(
    body=st.binary(max_size=3000),
    chunked=st.booleans(),
    chunks=st.lists(st.integers(1, 700), max_size=8),
    cuts=st.lists(st.integers(0, 10_000), max_size=12),
    interim=st.booleans(),
    close=st.booleans(),
)
def test_any_framing_and_any_split_reads_the_same_answer(
    body, chunked, chunks, cuts, interim, close
):
    raw = frame(body, chunks if chunked else None, [b"Connection: close"] if close else [])
    if interim:
        raw = b"HTTP/1.1 103 Early Hints\r\nLink: </x>\r\n\r\n" + raw
    assert read(raw, cuts) == (200, body, not close)


def test_bytes_past_the_answer_make_the_connection_unusable():
    assert read(frame(b"{}", None, []) + b"HTTP/1.1 200 OK\r\n", []) == (200, b"{}", False)


def test_no_body_for_204():
    assert read(b"HTTP/1.1 204 No Content\r\nContent-Length: 7\r\n\r\n", []) == (204, b"", True)
