"""LeanHttpChannel against scripted servers on loopback that misbehave the ways peers do:
keep-alive closes, answers cut short, chunked and oversized answers, silence, bad TLS.
Each server counts the connections it accepted and the requests it read, so "no resend" and
"connections are reused" are facts the tests read, not assumptions."""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import json
import socket
import ssl
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from fleetgate.core.model import Arch, Device, Resources
from fleetgate.transports.base import CallTimeouts, DeviceRefusal, TransportUnavailable
from fleetgate.transports.channel import ChannelDown
from fleetgate.transports.http import HttpTransport, controller_tls
from fleetgate.transports.lean import LeanHttpChannel
from fleetgate.transports.tokens import TokenSource

HEALTH = {"app_up": True, "restarts": 0}
COMMIT = {"status": "committed", "release": "r", "floor": {}}


def device(address: str, dev_id: str = "rpi-07") -> Device:
    return Device(
        id=dev_id,
        hardware="rpi4",
        arch=Arch.ARM64,
        group="plant-a",
        address=address,
        resources=Resources(4096, 32000),
        token_env="FG_TEST_TOKEN",
    )


def tokens(value: str = "t0k") -> TokenSource:
    return TokenSource(environ={"FG_TEST_TOKEN": value})


def answer(body: Any, *extra: str) -> bytes:
    raw = json.dumps(body).encode()
    head = ["HTTP/1.1 200 OK", "Content-Type: application/json", f"Content-Length: {len(raw)}"]
    return ("\r\n".join([*head, *extra]) + "\r\n\r\n").encode() + raw


@dataclass
class Request:
    conn: int  # which accepted connection (1-based)
    nth: int  # which request on that connection (1-based)
    method: str
    target: str
    headers: dict[str, str]
    body: bytes


# script(server, request, writer) -> keep the connection open for another request?
Script = Callable[["Server", Request, asyncio.StreamWriter], Awaitable[bool]]


async def ok(server: Server, req: Request, w: asyncio.StreamWriter) -> bool:
    w.write(answer(COMMIT if req.method == "POST" else HEALTH))
    return True


@dataclass
class Server:
    script: Script
    accepted: int = 0
    open: int = 0
    max_open: int = 0
    requests: list[Request] = field(default_factory=list)
    spans: list[tuple[float, int]] = field(default_factory=list)  # (time, +1 start / -1 end)

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        conn = self.accepted
        self.open += 1
        self.max_open = max(self.max_open, self.open)
        try:
            for nth in range(1, 1_000_000):
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, ConnectionError):
                    return
                lines = head.decode("latin-1").split("\r\n")
                method, target, _ = lines[0].split(" ")
                headers = {}
                for line in lines[1:]:
                    if line:
                        name, _, value = line.partition(":")
                        headers[name.lower()] = value.strip()
                body = await reader.readexactly(int(headers.get("content-length", "0")))
                req = Request(conn, nth, method, target, headers, body)
                self.requests.append(req)
                loop = asyncio.get_running_loop()
                self.spans.append((loop.time(), 1))
                try:
                    if not await self.script(self, req, writer):
                        return
                    await writer.drain()
                finally:
                    self.spans.append((loop.time(), -1))
        finally:
            self.open -= 1
            writer.close()


@asynccontextmanager
async def serving(
    script: Script = ok, tls: ssl.SSLContext | None = None
) -> AsyncIterator[tuple[Server, str]]:
    server = Server(script)
    srv = await asyncio.start_server(server.handle, "127.0.0.1", 0, ssl=tls)
    port = srv.sockets[0].getsockname()[1]
    try:
        yield server, f"{'https' if tls else 'http'}://127.0.0.1:{port}"
    finally:
        srv.close()


# -- keep-alive --------------------------------------------------------------------------------
async def test_many_calls_reuse_a_handful_of_connections():
    async with serving() as (server, url), HttpTransport(tokens(), concurrency=8) as t:
        d = device(url + "/d/rpi-07")
        samples = await asyncio.gather(*(t.health(d) for _ in range(10_000)))
    assert len(samples) == 10_000 and all(s.app_up for s in samples)
    assert len(server.requests) == 10_000 and server.accepted <= 8
    first = server.requests[0]
    assert first.target == "/d/rpi-07/v1/health" and first.headers["host"] == url[7:]
    assert first.headers["authorization"] == "Bearer t0k"
    assert first.headers["x-fleetgate-device"] == "rpi-07"


@pytest.mark.parametrize("command", ["health", "commit"])
async def test_a_server_closing_an_idle_connection_costs_nothing(command):
    async def answer_then_close(server: Server, req: Request, w: asyncio.StreamWriter) -> bool:
        await ok(server, req, w)
        return False  # no Connection: close: the client learns only when the socket closes

    body = None if command == "health" else {"deployment_id": "d", "seq": 1, "release": "r"}
    async with serving(answer_then_close) as (server, url):
        ch = LeanHttpChannel(tokens())
        try:
            first = await ch.send(device(url), command, body)
            await asyncio.sleep(0.05)  # the server's FIN arrives while the connection idles
            second = await ch.send(device(url), command, body)
        finally:
            await ch.aclose()
    assert first.status == second.status == 200
    assert [(r.conn, r.nth) for r in server.requests] == [(1, 1), (2, 1)]  # each sent once


async def test_a_close_the_event_loop_has_not_seen_yet_does_not_cost_a_command():
    """The server closes right after answering; the controller's loop is busy (a blocking sleep)
    and has not read the FIN when the next command goes out: the command must still go on a new
    connection, once, and be answered — not be written into the dead one."""
    seen: list[bytes] = []
    listener = socket.create_server(("127.0.0.1", 0))

    def serve() -> None:
        for _ in range(2):
            conn, _ = listener.accept()
            with conn:
                data = b""
                while b"\r\n\r\n" not in data or not data.endswith(b"}"):
                    data += conn.recv(65536)
                seen.append(data)
                conn.sendall(answer(COMMIT))

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{listener.getsockname()[1]}"
    body = {"deployment_id": "d", "seq": 1, "release": "r"}
    ch = LeanHttpChannel(tokens())
    try:
        first = await ch.send(device(url), "commit", body)
        time.sleep(0.2)  # blocking on purpose: the loop must not notice the close
        second = await ch.send(device(url), "commit", body)
    finally:
        await ch.aclose()
        listener.close()
    thread.join(5)
    assert first.body == second.body == COMMIT and len(seen) == 2


async def test_a_stale_connection_that_eats_a_read_is_asked_again_once_on_a_new_one():
    async def drop_second(server: Server, req: Request, w: asyncio.StreamWriter) -> bool:
        if req.nth == 2:
            return False  # read the request, close without a byte of answer
        return await ok(server, req, w)

    async with serving(drop_second) as (server, url):
        ch = LeanHttpChannel(tokens())
        try:
            await ch.send(device(url), "health", None)
            reply = await ch.send(device(url), "health", None)
        finally:
            await ch.aclose()
    assert reply.status == 200 and reply.body == HEALTH
    assert [(r.conn, r.nth) for r in server.requests] == [(1, 1), (1, 2), (2, 1)]


async def test_a_command_whose_connection_dies_is_never_sent_again():
    async def drop_second(server: Server, req: Request, w: asyncio.StreamWriter) -> bool:
        if req.nth == 2:
            return False
        return await ok(server, req, w)

    body = {"deployment_id": "d", "seq": 1, "release": "r"}
    async with serving(drop_second) as (server, url):
        ch = LeanHttpChannel(tokens())
        try:
            await ch.send(device(url), "commit", body)
            with pytest.raises(ChannelDown) as info:
                await ch.send(device(url), "commit", body)
        finally:
            await ch.aclose()
    assert info.value.code == "connection-reset"
    assert [(r.method, r.conn, r.nth) for r in server.requests] == [("POST", 1, 1), ("POST", 1, 2)]


@pytest.mark.parametrize("command", ["health", "commit"])
async def test_an_answer_cut_short_is_connection_reset_and_not_resent(command):
    async def cut(server: Server, req: Request, w: asyncio.StreamWriter) -> bool:
        w.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n" + b'{"status": "comm')
        return False

    body = None if command == "health" else {"deployment_id": "d", "seq": 1, "release": "r"}
    async with serving(cut) as (server, url):
        ch = LeanHttpChannel(tokens())
        try:
            with pytest.raises(ChannelDown) as info:
                await ch.send(device(url), command, body)
        finally:
            await ch.aclose()
    assert info.value.code == "connection-reset" and len(server.requests) == 1


async def test_connection_close_answers_are_not_reused():
    async def close_header(server: Server, req: Request, w: asyncio.StreamWriter) -> bool:
        w.write(answer(HEALTH, "Connection: close"))
        await w.drain()
        await asyncio.sleep(0.2)  # keep the socket open: the header alone must decide
        return False

    async with serving(close_header) as (server, url):
        ch = LeanHttpChannel(tokens())
        try:
            for _ in range(3):
                assert (await ch.send(device(url), "health", None)).body == HEALTH
        finally:
            await ch.aclose()
    assert server.accepted == 3


# -- framing -----------------------------------------------------------------------------------
async def test_a_chunked_answer_in_pieces_with_extensions_and_trailers():
    payload = json.dumps({"app": ["x" * 50] * 40, "agent": ["started"]}).encode()

    async def chunked(server: Server, req: Request, w: asyncio.StreamWriter) -> bool:
        out = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
        for at in range(0, len(payload), 700):
            part = payload[at : at + 700]
            out += f"{len(part):x};ext=1\r\n".encode() + part + b"\r\n"
        out += b"0\r\nX-Trailer: yes\r\n\r\n"
        for at in range(0, len(out), 97):  # in pieces that split every kind of line
            w.write(out[at : at + 97])
            await w.drain()
            await asyncio.sleep(0)
        return True

    async with serving(chunked) as (server, url), HttpTransport(tokens()) as t:
        logs = await t.logs(device(url), lines=40)
        again = await t.logs(device(url), lines=40)  # the connection is still good
    assert len(logs.app) == 40 and logs.agent == ("started",) and again == logs
    assert server.accepted == 1 and server.requests[0].target == "/v1/logs?lines=40"


@pytest.mark.parametrize("how", ["content-length", "chunked"])
async def test_an_oversized_answer_is_refused_without_reading_it_all(how):
    async def huge(server: Server, req: Request, w: asyncio.StreamWriter) -> bool:
        if how == "content-length":
            w.write(b"HTTP/1.1 200 OK\r\nContent-Length: 1000000000\r\n\r\n{")
        else:
            w.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
            for _ in range(100):  # 100 x 64 KiB: well over the limit
                w.write(b"10000\r\n" + b"x" * 0x10000 + b"\r\n")
                try:
                    await w.drain()
                except ConnectionError:
                    break
        return False

    async with serving(huge) as (_, url):
        ch = LeanHttpChannel(tokens(), max_body=256 * 1024)
        try:
            with pytest.raises(ChannelDown) as info:
                await ch.send(device(url), "logs", {"lines": 10})
        finally:
            await ch.aclose()
    assert info.value.code == "bad-response" and "over 262144" in info.value.what


@pytest.mark.parametrize(
    "raw",
    [
        b"HTTP/2 200\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
        b"HTTP/1.1 200 OK\r\n folded: header\r\nContent-Length: 0\r\n\r\n",
    ],
)
async def test_answers_that_are_not_http_we_read_are_bad_responses(raw):
    async def bad(server: Server, req: Request, w: asyncio.StreamWriter) -> bool:
        w.write(raw)
        await w.drain()
        await asyncio.sleep(0.5)  # the client must not wait for the close to decide
        return False

    async with serving(bad) as (_, url):
        ch = LeanHttpChannel(tokens())
        try:
            with pytest.raises(ChannelDown) as info:
                await asyncio.wait_for(ch.send(device(url), "health", None), 0.4)
        finally:
            await ch.aclose()
    assert info.value.code == "bad-response"


async def test_an_answer_delimited_by_close_is_read_to_the_end():
    async def until_close(server: Server, req: Request, w: asyncio.StreamWriter) -> bool:
        w.write(b"HTTP/1.0 200 OK\r\nContent-Type: application/json\r\n\r\n" + b'{"app_up": ')
        await w.drain()
        w.write(b"true}")
        return False

    async with serving(until_close) as (_, url):
        ch = LeanHttpChannel(tokens())
        try:
            reply = await ch.send(device(url), "health", None)
        finally:
            await ch.aclose()
    assert reply.body == {"app_up": True}


# -- deadlines, refusals, bad input --------------------------------------------------------------
async def test_a_silent_server_times_out_and_its_connection_is_not_reused():
    async def silent_first(server: Server, req: Request, w: asyncio.StreamWriter) -> bool:
        if req.conn == 1:
            await asyncio.sleep(5)
            return False
        return await ok(server, req, w)

    timeouts = CallTimeouts(health=0.2)
    async with (
        serving(silent_first) as (server, url),
        HttpTransport(tokens(), timeouts=timeouts) as t,
    ):
        with pytest.raises(TransportUnavailable) as info:
            await t.health(device(url))
        assert (await t.health(device(url))).app_up
    assert info.value.code == "timeout" and info.value.retryable
    assert [(r.conn, r.nth) for r in server.requests] == [(1, 1), (2, 1)]


async def test_a_closed_port_is_connection_refused():
    srv = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = srv.sockets[0].getsockname()[1]
    srv.close()
    await srv.wait_closed()
    ch = LeanHttpChannel(tokens())
    try:
        with pytest.raises(ChannelDown) as info:
            await ch.send(device(f"http://127.0.0.1:{port}"), "ping", None)
    finally:
        await ch.aclose()
    assert info.value.code == "connection-refused"


@pytest.mark.parametrize(
    ("address", "token", "code"),
    [
        ("http://127.0.0.1:{port}/d/x\r\nX-Evil: 1", "t0k", "bad-address"),
        ("http://127.0.0.1:{port}/d x", "t0k", "bad-address"),
        ("ftp://127.0.0.1:{port}", "t0k", "bad-address"),
        ("http://127.0.0.1:99999", "t0k", "bad-address"),
        ("http://user:pw@127.0.0.1:{port}", "t0k", "bad-address"),
        ("http://127.0.0.1:{port}", "t0k\r\nX-Evil: 1", "bad-header"),
    ],
)
async def test_addresses_and_tokens_that_would_break_the_request_are_refused_unsent(
    address, token, code
):
    async with serving() as (server, url):
        port = url.rsplit(":", 1)[1]
        ch = LeanHttpChannel(tokens(token))
        try:
            with pytest.raises(DeviceRefusal) as info:
                await ch.send(device(address.format(port=port)), "ping", None)
        finally:
            await ch.aclose()
    assert info.value.code == code and not info.value.retryable and server.accepted == 0


async def test_the_pool_bounds_connections_in_use_and_idle():
    async def slow(server: Server, req: Request, w: asyncio.StreamWriter) -> bool:
        await asyncio.sleep(0.02)
        return await ok(server, req, w)

    async with (
        serving(slow) as (a, url_a),
        serving(slow) as (b, url_b),
        serving(slow) as (c, url_c),
    ):
        servers = [a, b, c]
        ch = LeanHttpChannel(tokens(), pool=2, max_idle=1)
        try:
            for _ in range(3):
                for url in (url_a, url_b, url_c):
                    assert (await ch.send(device(url), "health", None)).status == 200
                    await asyncio.sleep(0.01)  # let closes land server-side
                    assert sum(s.open for s in servers) <= 1  # only the idle one stays
            replies = await asyncio.gather(
                *(ch.send(device(u), "health", None) for u in (url_a, url_b, url_c) * 4)
            )
        finally:
            await ch.aclose()
    assert all(r.status == 200 for r in replies)
    in_flight = [0]
    peak = 0
    for event in sorted(e for s in servers for e in s.spans):
        in_flight[0] += event[1]
        peak = max(peak, in_flight[0])
    assert peak <= 2  # never more than ``pool`` requests open at once, across hosts


async def test_one_connection_per_host_when_capped():
    async def slow(server: Server, req: Request, w: asyncio.StreamWriter) -> bool:
        await asyncio.sleep(0.01)
        return await ok(server, req, w)

    async with serving(slow) as (server, url):
        ch = LeanHttpChannel(tokens(), limit_per_host=1)
        try:
            replies = await asyncio.gather(*(ch.send(device(url), "ping", None) for _ in range(10)))
        finally:
            await ch.aclose()
    assert all(r.status == 200 for r in replies) and server.accepted == 1


# -- TLS ---------------------------------------------------------------------------------------
def _cert(
    subject: str,
    key: ec.EllipticCurvePrivateKey,
    issuer: tuple[str, ec.EllipticCurvePrivateKey] | None,
    san: list[x509.GeneralName] | None = None,
) -> x509.Certificate:
    now = datetime.datetime.now(datetime.timezone.utc)
    issuer_name, issuer_key = issuer or (subject, key)
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
        .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer_name)]))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=issuer is None, path_length=None), critical=True)
    )
    if san:
        builder = builder.add_extension(x509.SubjectAlternativeName(san), critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("lean-pki")
    out: dict[str, Path] = {}

    def write(name: str, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey | None) -> None:
        out[name] = root / f"{name}.pem"
        out[name].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        if key is not None:
            out[name + "-key"] = root / f"{name}.key"
            out[name + "-key"].write_bytes(
                key.private_bytes(
                    serialization.Encoding.PEM,
                    serialization.PrivateFormat.PKCS8,
                    serialization.NoEncryption(),
                )
            )

    ca_key, rogue_key = (
        ec.generate_private_key(ec.SECP256R1()),
        ec.generate_private_key(ec.SECP256R1()),
    )
    write("ca", _cert("fleet-ca", ca_key, None), None)
    write("rogue", _cert("rogue-ca", rogue_key, None), None)
    for name, san in [
        ("device", [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
        ("elsewhere", [x509.DNSName("device.example")]),
    ]:
        key = ec.generate_private_key(ec.SECP256R1())
        write(name, _cert(name, key, ("fleet-ca", ca_key), san), key)
    client_key = ec.generate_private_key(ec.SECP256R1())
    write("controller", _cert("controller", client_key, ("fleet-ca", ca_key)), client_key)
    return out


def _server_tls(pki: dict[str, Path], cert: str, *, mutual: bool) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(pki[cert], pki[cert + "-key"])
    if mutual:
        ctx.verify_mode = ssl.CERT_REQUIRED
        ctx.load_verify_locations(pki["ca"])
    return ctx


async def test_mutual_tls_with_the_fleet_ca_works_and_keeps_its_connection(pki):
    tls = controller_tls(str(pki["ca"]), str(pki["controller"]), str(pki["controller-key"]))
    server_tls = _server_tls(pki, "device", mutual=True)
    async with serving(tls=server_tls) as (server, url), HttpTransport(tokens(), tls=tls) as t:
        assert (await t.health(device(url))).app_up
        assert (await t.health(device(url))).app_up
    assert server.accepted == 1 and len(server.requests) == 2


@pytest.mark.parametrize(
    ("ca", "cert"), [("rogue", "device"), ("system", "device"), ("ca", "elsewhere")]
)
async def test_a_certificate_that_does_not_verify_is_a_tls_refusal(pki, ca, cert):
    tls = None if ca == "system" else controller_tls(str(pki[ca]))
    server_tls = _server_tls(pki, cert, mutual=False)
    async with serving(tls=server_tls) as (server, url), HttpTransport(tokens(), tls=tls) as t:
        with pytest.raises(DeviceRefusal) as info:
            await t.health(device(url))
    assert info.value.code == "tls-error" and not info.value.retryable
    assert server.requests == []
