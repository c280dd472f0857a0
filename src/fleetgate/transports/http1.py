"""HTTP/1.1 on one keep-alive connection: the wire half of ``LeanHttpChannel`` (lean.py).

Contract:
- ``Http1Connection`` is an ``asyncio.Protocol`` carrying one request at a time
  (``request(data)`` → ``(status, body, keep_alive)``); no pipelining.
- It reads what the agent protocol's answers are (RFC 9112 §6): a ``Content-Length`` body, a
  ``chunked`` body (trailers skipped), or a body delimited by the server closing the
  connection; ``1xx`` interim answers are skipped; ``204``/``304`` have no body. Anything else
  (an unknown transfer coding, conflicting lengths, a malformed status line or chunk size, a
  folded header) is ``BadResponse``: the connection is not reused.
- Bounded: a head over ``MAX_HEAD`` bytes or a body over ``max_body`` bytes is ``BadResponse``
  and the connection is closed at once — a broken or hostile device cannot make the controller
  buffer without end.
- The answer says whether the connection may carry another request: not after
  ``Connection: close``, an HTTP/1.0 answer, a close-delimited body, or bytes past the answer.
- A connection that closes before its answer is complete raises ``ConnectionLost`` whose
  ``answered`` says whether any byte of the answer had arrived (the channel only ever retries
  a read that got none, on a connection it had reused: the keep-alive race).
- Bytes arriving on an idle connection mean it is no longer in a known state: it closes.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable

MAX_HEAD = 64 * 1024  # status line + headers
DEFAULT_MAX_BODY = 8 * 1024 * 1024  # logs are the largest answer: 200 lines


class BadResponse(Exception):
    """The peer's bytes are not an HTTP/1.1 answer we read, or are too large."""


class ConnectionLost(Exception):
    """The connection closed before the answer was complete."""

    def __init__(self, answered: bool, exc: BaseException | None) -> None:
        super().__init__(f"connection closed{': ' + str(exc) if exc else ''}")
        self.answered = answered


Answer = tuple[int, bytes, bool]  # status, body, connection reusable

# Body framing states.
_HEAD, _LENGTH, _CHUNK_SIZE, _CHUNK_DATA, _TRAILERS, _UNTIL_CLOSE = range(6)


class Http1Connection(asyncio.Protocol):
    __slots__ = (
        "_answered",
        "_body",
        "_buf",
        "_keep",
        "_remaining",
        "_state",
        "_status",
        "_waiter",
        "closed",
        "counted",
        "idle_since",
        "key",
        "max_body",
        "on_lost",
        "sock",
        "transport",
    )

    def __init__(self, key: object, sock: socket.socket | None, max_body: int) -> None:
        self.key = key
        self.sock = sock  # the raw socket, for the idle check (``stale``)
        self.transport: asyncio.Transport | None = None
        self.max_body = max_body
        self.closed = False
        self.idle_since = 0.0
        self.counted = True  # held in the pool's count until dropped once
        self._buf = bytearray()
        self._waiter: asyncio.Future[Answer] | None = None
        self._answered = False
        self._state = _HEAD
        self._remaining = 0
        self._status = 0
        self._keep = True
        self._body = bytearray()
        self.on_lost: Callable[[Http1Connection], None] | None = None

    # -- asyncio.Protocol ------------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        if self._waiter is None or self._waiter.done():
            self.close()  # unsolicited bytes: the connection's state is unknown
            return
        self._answered = True
        self._buf += data
        try:
            self._advance()
        except BadResponse as exc:
            self._fail(exc)

    def eof_received(self) -> bool:
        return False  # close our side too; connection_lost completes or fails the answer

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            if self._state == _UNTIL_CLOSE:
                waiter.set_result((self._status, bytes(self._body), False))
            else:
                waiter.set_exception(ConnectionLost(self._answered, exc))
        if self.on_lost is not None:
            self.on_lost(self)

    # -- use ---------------------------------------------------------------------------------------
    def stale(self) -> bool:
        """An idle connection the server has closed (or written to) is not reusable. One
        non-blocking peek closes the window between the server's FIN arriving and the event
        loop noticing it, so a command is not written into a connection that is already gone."""
        if self.closed or self.transport is None or self.transport.is_closing():
            return True
        if self.sock is None:
            return False
        try:
            self.sock.recv(1, socket.MSG_PEEK)
        except BlockingIOError:
            return False
        except OSError:
            return True
        return True  # EOF or unsolicited bytes

    async def request(self, data: bytes) -> Answer:
        assert self.transport is not None
        waiter: asyncio.Future[Answer] = asyncio.get_running_loop().create_future()
        self._waiter = waiter
        self._answered = False
        self._state = _HEAD
        self._keep = True
        self._body = bytearray()
        self.transport.write(data)
        try:
            return await waiter
        finally:
            self._waiter = None

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()

    # -- parsing -----------------------------------------------------------------------------------
    def _fail(self, exc: BaseException) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_exception(exc)
        self.close()
        if self.transport is not None:
            self.transport.abort()

    def _advance(self) -> None:
        buf = self._buf
        while True:
            state = self._state
            if state == _HEAD:
                end = buf.find(b"\r\n\r\n")
                if end < 0:
                    if len(buf) > MAX_HEAD:
                        raise BadResponse(f"response head over {MAX_HEAD} bytes")
                    return
                if end > MAX_HEAD:
                    raise BadResponse(f"response head over {MAX_HEAD} bytes")
                head = bytes(buf[:end])
                del buf[: end + 4]
                self._head(head)
                if self._waiter is None or self._waiter.done():
                    return
            elif state == _LENGTH:
                take = min(self._remaining, len(buf))
                self._add_body(buf, take)
                self._remaining -= take
                if self._remaining:
                    return
                self._finish()
                return
            elif state == _CHUNK_SIZE:
                eol = buf.find(b"\r\n")
                if eol < 0:
                    if len(buf) > 1024:
                        raise BadResponse("chunk size line too long")
                    return
                size_text = bytes(buf[:eol]).split(b";", 1)[0].strip()
                del buf[: eol + 2]
                if not size_text or any(c not in b"0123456789abcdefABCDEF" for c in size_text):
                    raise BadResponse(f"bad chunk size {size_text[:20]!r}")
                size = int(size_text, 16)
                if size == 0:
                    self._state = _TRAILERS
                else:
                    if len(self._body) + size > self.max_body:
                        raise BadResponse(f"response body over {self.max_body} bytes")
                    self._remaining = size + 2  # the chunk and its CRLF
                    self._state = _CHUNK_DATA
            elif state == _CHUNK_DATA:
                if len(buf) < self._remaining:
                    if len(buf) > 2:  # keep the CRLF for the check below
                        take = min(len(buf), self._remaining - 2)
                        self._add_body(buf, take)
                        self._remaining -= take
                    return
                self._add_body(buf, self._remaining - 2)
                if buf[:2] != b"\r\n":
                    raise BadResponse("chunk not followed by CRLF")
                del buf[:2]
                self._state = _CHUNK_SIZE
            elif state == _TRAILERS:
                eol = buf.find(b"\r\n")
                if eol < 0:
                    if len(buf) > MAX_HEAD:
                        raise BadResponse("trailers too long")
                    return
                del buf[: eol + 2]
                if eol == 0:  # the empty line after the trailers
                    self._finish()
                    return
            else:  # _UNTIL_CLOSE: everything until the server closes
                self._add_body(buf, len(buf))
                return

    def _add_body(self, buf: bytearray, n: int) -> None:
        if len(self._body) + n > self.max_body:
            raise BadResponse(f"response body over {self.max_body} bytes")
        self._body += buf[:n]
        del buf[:n]

    def _head(self, head: bytes) -> None:
        lines = head.split(b"\r\n")
        status_line = lines[0]
        version = status_line[:9]
        if version not in (b"HTTP/1.1 ", b"HTTP/1.0 ") or not status_line[9:12].isdigit():
            raise BadResponse(f"bad status line {status_line[:40]!r}")
        status = int(status_line[9:12])
        keep = version == b"HTTP/1.1 "
        length: int | None = None
        chunked = False
        for line in lines[1:]:
            name, colon, value = line.partition(b":")
            if not colon or not name or name[-1:] in b" \t" or line[:1] in b" \t":
                raise BadResponse(f"bad header line {line[:40]!r}")
            name = name.lower()
            if name == b"content-length":
                text = value.strip()
                if not text.isdigit() or (length is not None and int(text) != length):
                    raise BadResponse(f"bad Content-Length {text[:20]!r}")
                length = int(text)
            elif name == b"transfer-encoding":
                codings = [c.strip() for c in value.lower().split(b",")]
                if codings[-1] != b"chunked" or any(c not in (b"chunked", b"") for c in codings):
                    raise BadResponse(f"unsupported Transfer-Encoding {value[:40]!r}")
                chunked = True
            elif name == b"connection":
                tokens = {t.strip() for t in value.lower().split(b",")}
                if b"close" in tokens:
                    keep = False
                elif b"keep-alive" in tokens:
                    keep = True
        if 100 <= status < 200:
            return  # an interim answer: the real one follows
        self._status = status
        self._keep = keep
        if status in (204, 304):
            self._finish()
        elif chunked:  # Transfer-Encoding wins over Content-Length (RFC 9112 §6.3)
            self._keep = False if length is not None else keep
            self._state = _CHUNK_SIZE
        elif length is not None:
            if length > self.max_body:
                raise BadResponse(f"response body of {length} bytes over {self.max_body}")
            self._remaining = length
            self._state = _LENGTH
            if length == 0:
                self._finish()
        else:
            self._keep = False
            self._state = _UNTIL_CLOSE

    def _finish(self) -> None:
        keep = self._keep and not self._buf  # bytes past the answer: not ours to guess at
        waiter = self._waiter
        self._state = _HEAD
        if waiter is not None and not waiter.done():
            waiter.set_result((self._status, bytes(self._body), keep))
