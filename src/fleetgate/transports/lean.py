"""``LeanHttpChannel``: the agent protocol over HTTP/1.1 keep-alive connections, built for many
small JSON requests to many hosts (issue 12; why not aiohttp or httpx: docs/adr/0012).

Contract (on top of ``Channel``'s, transports/channel.py; the wire is transports/http1.py):
- Same requests as ``HttpChannel`` (http.py): URL = the device's ``address`` (a path prefix is
  kept) + ``/v1/<command>``; reads are GETs whose body becomes the query string, commands POST
  the JSON body; headers ``Authorization: Bearer <token>`` and ``X-Fleetgate-Device``. An
  address that is not an ``http(s)://host[:port][/prefix]`` URL, or a token that would break
  a header line, is ``DeviceRefusal`` ``bad-address`` / ``bad-header`` before any byte is sent
  (device ids are ``[A-Za-z0-9._-]`` by the model).
- A pool of keep-alive connections keyed by (scheme, host, port): at most ``pool`` carrying a
  request or connecting (more callers wait), at most ``max_idle`` idle (beyond it the least
  recently used is closed; default: half the process's file-descriptor limit, at most 10,000 —
  a real fleet is one host per device, and a deployment's next call to a device comes after a
  call to every other device of its wave), and ``limit_per_host`` open per key (0 = no cap: the
  simulator serves a whole fleet on one port). An idle connection is reused only while younger
  than ``keepalive`` seconds and not closed by the server (checked with a non-blocking peek
  before anything is written).
- Connecting (TCP and TLS) is bounded by ``connect`` seconds → ``ChannelDown("timeout")``;
  refused or unreachable → ``connection-refused``. The call's own deadline is the client's: a
  cancelled ``send`` closes its connection (its state is unknown), never returns it to the pool.
- TLS for ``https://``: ``tls`` (``controller_tls``: CA bundle and client certificate) or the
  system trust store; the certificate must match the address's host (SNI for names). A
  certificate that does not verify is ``DeviceRefusal`` ``tls-error`` (not retryable).
- Resending: never for a command (POST). A read (GET) is sent again, once, on a new
  connection only when a reused connection closed before a single byte of the answer
  arrived — the keep-alive race a peer closing idle connections causes. A connection lost
  after that is ``ChannelDown("connection-reset")``; an answer that is not HTTP/1.1 we read,
  or larger than ``max_body``, is ``ChannelDown("bad-response")``.
- ``aclose()`` closes every connection; afterwards ``send`` raises ``RuntimeError``.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import socket
import ssl
from collections import OrderedDict
from dataclasses import dataclass
from functools import lru_cache
from typing import Any
from urllib.parse import quote, urlencode, urlsplit

from fleetgate.core.model import Device
from fleetgate.transports.base import DeviceRefusal
from fleetgate.transports.channel import READS, ChannelDown, Reply
from fleetgate.transports.http1 import (
    DEFAULT_MAX_BODY,
    BadResponse,
    ConnectionLost,
    Http1Connection,
)
from fleetgate.transports.tokens import TokenSource

DEVICE_HEADER = "X-Fleetgate-Device"
_PATH_SAFE = "/%:@!$&'()*+,;=-._~"


@dataclass(frozen=True, slots=True)
class Target:
    """Where an address points: the pool key and the request's fixed parts."""

    key: tuple[str, str, int]  # scheme, host, port
    host: str
    port: int
    tls: bool
    numeric: bool  # an IP literal: no name lookup, no SNI
    host_header: bytes
    prefix: str  # path prefix, percent-encoded, no trailing slash


# One entry per device address, so a deployment's every call after the first finds its device's
# here: a cache smaller than the fleet misses on *every* call (a deployment calls each device of
# a wave once before it calls the first again), 3.8 parses per device at 30,000 devices with
# 16,384 entries, ~10 µs each — per-device cost that grew with the fleet (issue 12). 2**17
# entries hold a 100,000-device fleet: ~35 MiB when full (the address strings are the devices').
@lru_cache(maxsize=1 << 17)
def parse_address(address: str) -> Target | str:
    """The ``Target`` of an address, or a one-line reason it has none."""
    if any(ord(c) <= 0x20 or ord(c) == 0x7F for c in address):
        return "contains spaces or control characters"
    try:
        parts = urlsplit(address)
        port = parts.port
    except ValueError as exc:
        return str(exc)
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https"):
        return f"scheme {parts.scheme!r} is not http or https"
    host = parts.hostname
    if not host or parts.username is not None or parts.password is not None:
        return "no host (or credentials in the URL)"
    if parts.query or parts.fragment:
        return "a query or fragment has no place in a device address"
    try:
        ipaddress.ip_address(host)
        numeric = True
    except ValueError:
        numeric = False
    tls = scheme == "https"
    port = port if port is not None else (443 if tls else 80)
    shown = f"[{host}]" if ":" in host else host
    default = 443 if tls else 80
    host_header = (shown if port == default else f"{shown}:{port}").encode("ascii")
    prefix = quote(parts.path.rstrip("/"), safe=_PATH_SAFE)
    return Target((scheme, host, port), host, port, tls, numeric, host_header, prefix)


class LeanHttpChannel:
    def __init__(
        self,
        tokens: TokenSource,
        *,
        pool: int = 256,
        max_idle: int | None = None,
        limit_per_host: int = 0,
        connect: float = 3.0,
        keepalive: float = 15.0,
        max_body: int = DEFAULT_MAX_BODY,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        if pool < 1:
            raise ValueError("pool must be at least 1")
        self.tokens = tokens
        self.pool = pool
        self.max_idle = default_max_idle(pool) if max_idle is None else max_idle
        self.limit_per_host = limit_per_host
        self.connect = connect
        self.keepalive = keepalive
        self.max_body = max_body
        self.tls = tls
        self.opened = 0  # connections ever opened (tests and benchmarks read it)
        self._active = 0  # connections carrying a request or connecting: at most ``pool``
        self._per_key: dict[object, int] = {}  # open connections per key (busy and idle)
        self._free: dict[object, list[Http1Connection]] = {}  # idle, most recent last
        self._idle: OrderedDict[Http1Connection, None] = OrderedDict()  # idle, oldest first
        self._busy: set[Http1Connection] = set()
        self._waiters: list[asyncio.Future[None]] = []
        self._default_tls: ssl.SSLContext | None = None
        self._closed = False

    # -- the seam ----------------------------------------------------------------------------------
    async def send(self, device: Device, command: str, body: dict[str, Any] | None) -> Reply:
        if self._closed:
            raise RuntimeError("LeanHttpChannel is closed")
        target = parse_address(device.address)
        if isinstance(target, str):
            raise DeviceRefusal(
                f"{device.id}: address {device.address!r} is not a valid URL: {target}",
                device_id=device.id,
                code="bad-address",
                status=None,
                retryable=False,
            )
        token = self.tokens.token_for(device)
        if not (token.isascii() and token.isprintable()):  # ids: the model's [A-Za-z0-9._-]
            raise DeviceRefusal(
                f"{device.id}: its token cannot be sent in a header (control or non-ASCII "
                "characters)",
                device_id=device.id,
                code="bad-header",
                status=None,
                retryable=False,
            )
        path = target.prefix + "/v1/" + command
        if command in READS:
            read = True
            if body:
                path += "?" + urlencode({k: str(v) for k, v in body.items()})
            head = f"GET {path} HTTP/1.1\r\n"
            payload = b""
        else:
            read = False
            payload = json.dumps(body).encode() if body is not None else b""
            head = (
                f"POST {path} HTTP/1.1\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(payload)}\r\n"
            )
        data = (
            head.encode("ascii")
            + b"Host: "
            + target.host_header
            + f"\r\nAuthorization: Bearer {token}\r\n{DEVICE_HEADER}: {device.id}\r\n"
            "Accept: application/json\r\n\r\n".encode("ascii")
            + payload
        )
        retried = False
        while True:
            conn, reused = await self._acquire(device, target, fresh=retried)
            reusable = False
            try:
                status, raw, reusable = await conn.request(data)
            except ConnectionLost as lost:
                if read and reused and not lost.answered and not retried:
                    retried = True  # the keep-alive race: nothing was answered, ask again
                    continue
                raise ChannelDown("connection-reset", f"connection lost: {lost}") from None
            except BadResponse as exc:
                raise ChannelDown("bad-response", str(exc)) from None
            finally:
                self._release(conn, reusable)
            return Reply(status, _decode(raw))

    async def aclose(self) -> None:
        self._closed = True
        for conn in [*self._idle, *self._busy]:
            self._drop(conn)
        for waiter in self._waiters:
            if not waiter.done():
                waiter.set_result(None)
        self._waiters.clear()

    # -- the pool ----------------------------------------------------------------------------------
    async def _acquire(
        self, device: Device, target: Target, fresh: bool
    ) -> tuple[Http1Connection, bool]:
        """A connection to ``target`` and whether it was reused (``fresh``: a new one)."""
        key = target.key
        cap = self.limit_per_host
        while True:
            if self._active < self.pool:
                free = None if fresh else self._free.get(key)
                while free:
                    conn = free.pop()
                    del self._idle[conn]
                    if conn.stale() or self._now() - conn.idle_since > self.keepalive:
                        self._drop(conn)
                        continue
                    self._busy.add(conn)
                    self._active += 1
                    return conn, True
                if not cap or self._per_key.get(key, 0) < cap:
                    break
            if self._closed:
                raise RuntimeError("LeanHttpChannel is closed")
            waiter = asyncio.get_running_loop().create_future()
            self._waiters.append(waiter)
            await waiter
        self._active += 1
        self._per_key[key] = self._per_key.get(key, 0) + 1
        try:
            conn = await self._connect(device, target)
        except BaseException:
            self._active -= 1
            left = self._per_key[key] - 1
            if left:
                self._per_key[key] = left
            else:
                del self._per_key[key]
            self._wake()
            raise
        self._busy.add(conn)
        return conn, False

    def _release(self, conn: Http1Connection, reusable: bool) -> None:
        self._busy.discard(conn)
        self._active -= 1
        if not reusable or conn.closed or self._closed or not self.max_idle:
            self._drop(conn)
        else:
            conn.idle_since = self._now()
            self._free.setdefault(conn.key, []).append(conn)
            self._idle[conn] = None
            if len(self._idle) > self.max_idle:
                self._drop(next(iter(self._idle)))  # the least recently used idle connection
        self._wake()

    def _drop(self, conn: Http1Connection) -> None:
        """Close ``conn`` and give its place back (once, however often it is called)."""
        if conn in self._idle:
            del self._idle[conn]
            self._free[conn.key].remove(conn)
        self._busy.discard(conn)
        conn.close()
        if conn.counted:
            conn.counted = False
            left = self._per_key[conn.key] - 1
            if left:
                self._per_key[conn.key] = left
            else:
                del self._per_key[conn.key]
                self._free.pop(conn.key, None)
            self._wake()

    def _lost(self, conn: Http1Connection) -> None:
        if conn in self._idle:  # an idle connection the server closed
            self._drop(conn)

    def _wake(self) -> None:
        if self._waiters:
            waiters, self._waiters = self._waiters, []
            for waiter in waiters:
                if not waiter.done():
                    waiter.set_result(None)

    @staticmethod
    def _now() -> float:
        return asyncio.get_running_loop().time()

    # -- connecting --------------------------------------------------------------------------------
    async def _connect(self, device: Device, target: Target) -> Http1Connection:
        loop = asyncio.get_running_loop()
        ctx = self._tls_context() if target.tls else None
        try:
            async with asyncio.timeout(self.connect):
                addrs: list[tuple[int, Any]]
                if target.numeric:
                    v6 = ":" in target.host
                    addrs = [
                        (socket.AF_INET6 if v6 else socket.AF_INET, (target.host, target.port))
                    ]
                else:
                    infos = await loop.getaddrinfo(
                        target.host, target.port, type=socket.SOCK_STREAM
                    )
                    addrs = [(info[0], info[4]) for info in infos]
                error: OSError | None = None
                for family, addr in addrs:  # in the resolver's order
                    sock = socket.socket(family, socket.SOCK_STREAM)
                    try:
                        sock.setblocking(False)
                        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                        await loop.sock_connect(sock, addr)
                    except OSError as exc:
                        sock.close()
                        error = exc
                        continue
                    except BaseException:
                        sock.close()
                        raise
                    conn = Http1Connection(target.key, sock, self.max_body)
                    try:
                        await loop.create_connection(
                            lambda c=conn: c,
                            sock=sock,
                            ssl=ctx,
                            server_hostname=target.host if ctx is not None else None,
                        )
                    except BaseException:
                        sock.close()
                        raise
                    conn.on_lost = self._lost
                    self.opened += 1
                    return conn
                assert error is not None
                raise error
        except TimeoutError:
            raise ChannelDown("timeout", f"no connection within {self.connect:g}s") from None
        except ssl.SSLError as exc:  # before OSError, its base class
            raise DeviceRefusal(
                f"{device.id}: TLS with {device.address} failed: {exc}",
                device_id=device.id,
                code="tls-error",
                status=None,
                retryable=False,
            ) from None
        except OSError as exc:
            raise ChannelDown("connection-refused", f"cannot connect: {exc}") from None

    def _tls_context(self) -> ssl.SSLContext:
        if self.tls is not None:
            return self.tls
        if self._default_tls is None:
            self._default_tls = ssl.create_default_context()
        return self._default_tls


def default_max_idle(pool: int) -> int:
    """Idle connections worth keeping: one per device of a wave is what lets a deployment's
    later calls reuse them, but each is a file descriptor: half the soft limit, at most
    10,000, at least ``pool``."""
    try:
        import resource

        soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        if soft == resource.RLIM_INFINITY:
            soft = 20_000
    except (ImportError, OSError, ValueError):
        soft = 1024
    return max(pool, min(soft // 2, 10_000))


def _decode(raw: bytes) -> Any:
    if not raw:
        return None
    try:
        return json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        return None
