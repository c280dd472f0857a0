"""The floor: controller-side CPU per agent call for the leanest HTTP client we could write.

    .venv/bin/python bench/floor_bench.py [--requests 40000] [--concurrency 200] [--repeat 3]

A minimal HTTP/1.1 keep-alive server (raw asyncio protocol, one small JSON answer with
Content-Length) runs in ANOTHER process on 127.0.0.1, so its CPU never counts. In this process,
each client makes ``--requests`` small JSON GETs (``/d/<device>/v1/health`` with the bearer and
device headers the real transport sends, the body decoded with ``json.loads``) with at most
``--concurrency`` in flight (the engine's default: 200), over reused connections, and the CPU this
process spends (``time.process_time()``) is divided by the number of requests:

- ``raw``: a small ``asyncio.Protocol`` speaking HTTP/1.1 (Content-Length bodies only), one
  connection per worker, kept alive — the floor. Printed as ``floor_us_per_call=<µs>`` (one line,
  exact spelling: scripts grep it);
- ``raw_reconnect12``: the same client opening a new connection every 12 requests — real devices
  are one host each, so a deployment's ~12 calls to a device share at most one connection, while
  the sim serves every device on one port and the engine reuses 200 connections throughout;
  connection set-up is part of the real per-call cost (not of the floor line);
- ``lean``: fleetgate's ``LeanHttpChannel.send`` (issue 12; bench/client_bench.py compares it
  with the other clients against many hosts, POSTs included, and through ``DeviceClient``);
- ``aiohttp``: one ``aiohttp.ClientSession`` with a reused ``TCPConnector(limit=concurrency)``;
- ``httpx``: one ``httpx.AsyncClient`` (limits = concurrency), if httpx is installed (it is not a
  fleetgate dependency: ``pip install httpx`` into the venv to measure it); skipped with a note
  otherwise. It gets ``--httpx-requests`` (default 4,000): at 200 connections its pool costs
  milliseconds of CPU per request (encode/httpx#3215: the pool re-checks every connection on each
  assignment), so 40,000 would take minutes per run; CPU per request is what is compared.

Each client runs ``--repeat`` times (interleaved, so load changes hit all alike); the figure is the
minimum (the least disturbed run), the others are shown. Issue 12 compares the controller's CPU
per agent call (``bench/engine_bench.py``: ``ctl_us_per_call_deploy``) with the floor.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Coroutine, Iterator
from typing import Any

from fleetgate.core.model import Arch, Device, Resources
from fleetgate.transports.lean import LeanHttpChannel
from fleetgate.transports.tokens import TokenSource

BODY = json.dumps(
    {"device_id": "dev-00000", "status": "ok", "app_up": True, "cpu": 0.12, "mem_mb": 41.5}
).encode()
TOKEN = "bench-token-0123456789abcdef"


# -- the server (its own process) ----------------------------------------------------------------
class _ServerProtocol(asyncio.Protocol):
    """Answers every complete request head with BODY; GETs only (no request bodies)."""

    RESPONSE = (
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
        + f"Content-Length: {len(BODY)}\r\n\r\n".encode()
        + BODY
    )

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.buf = b""

    def data_received(self, data: bytes) -> None:
        self.buf += data
        n = self.buf.count(b"\r\n\r\n")
        if n:
            self.buf = self.buf.rpartition(b"\r\n\r\n")[2]
            self.transport.write(self.RESPONSE * n)


async def _serve() -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(_ServerProtocol, "127.0.0.1", 0, backlog=1024)
    print(server.sockets[0].getsockname()[1], flush=True)
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()
    server.close()


# -- the raw client --------------------------------------------------------------------------------
class _ClientProtocol(asyncio.Protocol):
    """One keep-alive connection; one request at a time; Content-Length bodies only."""

    def __init__(self) -> None:
        self.buf = bytearray()
        self.waiter: asyncio.Future[tuple[int, bytes]] | None = None
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.buf += data
        end = self.buf.find(b"\r\n\r\n")
        if end < 0 or self.waiter is None:
            return
        head = bytes(self.buf[:end]).lower()
        at = head.find(b"content-length:")
        if at < 0:
            raise ValueError("response without Content-Length: this client reads no other kind")
        eol = head.find(b"\r\n", at)
        length = int(head[at + 15 : eol if eol >= 0 else len(head)])
        if len(self.buf) < end + 4 + length:
            return
        status = int(head[9:12])
        body = bytes(self.buf[end + 4 : end + 4 + length])
        del self.buf[: end + 4 + length]
        waiter, self.waiter = self.waiter, None
        waiter.set_result((status, body))

    def connection_lost(self, exc: Exception | None) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(exc or ConnectionError("connection closed"))

    async def get(self, host: str, path: str, headers: bytes) -> tuple[int, bytes]:
        assert self.transport is not None
        self.waiter = asyncio.get_running_loop().create_future()
        self.transport.write(
            b"GET " + path.encode() + b" HTTP/1.1\r\nHost: " + host.encode() + b"\r\n" + headers
        )
        return await self.waiter


async def run_raw(port: int, requests: int, concurrency: int, per_connection: int = 0) -> int:
    """``per_connection`` > 0: a new connection after that many requests (one host per device)."""
    loop = asyncio.get_running_loop()
    host = f"127.0.0.1:{port}"
    headers = (
        f"Authorization: Bearer {TOKEN}\r\nAccept: application/json\r\n"
        "Connection: keep-alive\r\n\r\n"
    ).encode()
    todo = iter(range(requests))
    done = 0

    async def worker() -> None:
        nonlocal done
        _, proto = await loop.create_connection(_ClientProtocol, "127.0.0.1", port)
        try:
            for n, i in enumerate(todo, 1):
                if per_connection and n % per_connection == 0:
                    assert proto.transport is not None
                    proto.transport.close()
                    _, proto = await loop.create_connection(_ClientProtocol, "127.0.0.1", port)
                dev = f"dev-{i % 10_000:05d}"
                status, body = await proto.get(
                    host, f"/d/{dev}/v1/health", f"X-Fleetgate-Device: {dev}\r\n".encode() + headers
                )
                if status == 200 and json.loads(body)["status"] == "ok":
                    done += 1
        finally:
            if proto.transport is not None:
                proto.transport.close()

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return done


# -- aiohttp and httpx -----------------------------------------------------------------------------
async def _bounded(requests: int, concurrency: int, one: Callable[[int], Awaitable[bool]]) -> int:
    todo = iter(range(requests))
    done = 0

    async def worker() -> None:
        nonlocal done
        for i in todo:
            ok = await one(i)  # not ``done += await …``: that reads ``done`` before the await
            done += ok

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return done


async def run_aiohttp(port: int, requests: int, concurrency: int) -> int:
    import aiohttp

    base = f"http://127.0.0.1:{port}"
    auth = {"Authorization": f"Bearer {TOKEN}", "Accept": "application/json"}
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector, headers=auth) as session:

        async def one(i: int) -> bool:
            dev = f"dev-{i % 10_000:05d}"
            async with session.get(
                f"{base}/d/{dev}/v1/health", headers={"X-Fleetgate-Device": dev}
            ) as r:
                body = await r.read()
                return r.status == 200 and json.loads(body)["status"] == "ok"

        return await _bounded(requests, concurrency, one)


async def run_httpx(port: int, requests: int, concurrency: int) -> int:
    import httpx

    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    auth = {"Authorization": f"Bearer {TOKEN}", "Accept": "application/json"}
    async with httpx.AsyncClient(
        base_url=f"http://127.0.0.1:{port}", limits=limits, headers=auth
    ) as client:

        async def one(i: int) -> bool:
            dev = f"dev-{i % 10_000:05d}"
            r = await client.get(f"/d/{dev}/v1/health", headers={"X-Fleetgate-Device": dev})
            return r.status_code == 200 and json.loads(r.content)["status"] == "ok"

        return await _bounded(requests, concurrency, one)


@functools.cache
def lean_devices(port: int) -> list[Device]:
    """Built once, before any client is timed."""
    return [
        Device(
            id=f"dev-{i:05d}",
            hardware="rpi4",
            arch=Arch.ARM64,
            group="bench",
            address=f"http://127.0.0.1:{port}/d/dev-{i:05d}",
            resources=Resources(4096, 32000),
            token_env="FG_BENCH_TOKEN",
        )
        for i in range(10_000)
    ]


async def run_lean(port: int, requests: int, concurrency: int) -> int:
    """fleetgate's own channel (transports/lean.py), ``send`` alone: the same GETs."""
    devices = lean_devices(port)
    channel = LeanHttpChannel(TokenSource(environ={"FG_BENCH_TOKEN": TOKEN}), pool=concurrency)

    async def one(i: int) -> bool:
        reply = await channel.send(devices[i % 10_000], "health", None)
        return reply.status == 200 and reply.body["status"] == "ok"

    try:
        return await _bounded(requests, concurrency, one)
    finally:
        await channel.aclose()


async def run_raw_reconnect(port: int, requests: int, concurrency: int) -> int:
    return await run_raw(port, requests, concurrency, RECONNECT_EVERY)


RECONNECT_EVERY = 12  # ≈ a deployment's calls to one device today (12.5)
CLIENTS: dict[str, Callable[[int, int, int], Coroutine[Any, Any, int]]] = {
    "raw": run_raw,
    "raw_reconnect12": run_raw_reconnect,
    "lean": run_lean,
    "aiohttp": run_aiohttp,
    "httpx": run_httpx,
}


def measure(name: str, port: int, requests: int, concurrency: int) -> tuple[float, float]:
    """(controller CPU µs per request, wall s) of one client run in this process."""
    c0, w0 = time.process_time(), time.perf_counter()
    done = asyncio.run(CLIENTS[name](port, requests, concurrency))
    cpu, wall = time.process_time() - c0, time.perf_counter() - w0
    if done != requests:
        raise SystemExit(f"{name}: {done} of {requests} requests answered 200/ok")
    return cpu / requests * 1e6, wall


@contextlib.contextmanager
def floor_server() -> Iterator[int]:
    """The minimal server in its own process (its CPU never counts); yields its port."""
    server = subprocess.Popen(
        [sys.executable, __file__, "--serve"], stdout=subprocess.PIPE, start_new_session=True
    )
    try:
        assert server.stdout is not None
        yield int(server.stdout.readline())
    finally:
        os.kill(server.pid, signal.SIGTERM)
        server.wait(10)


def floor_us(requests: int = 40_000, concurrency: int = 200, repeat: int = 3) -> float:
    """``floor_us_per_call``: the raw client's CPU µs per request, the least disturbed of
    ``repeat`` runs (bench/engine_bench.py measures it in the same run as the engine)."""
    with floor_server() as port:
        return min(measure("raw", port, requests, concurrency)[0] for _ in range(repeat))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    ap.add_argument("--requests", type=int, default=40_000)
    ap.add_argument("--concurrency", type=int, default=200)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--httpx-requests", type=int, default=4_000)
    ap.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.serve:
        asyncio.run(_serve())
        return
    clients = ["raw", "raw_reconnect12", "lean", "aiohttp"]
    try:
        import httpx  # noqa: F401
    except ImportError:
        print("httpx: not installed, skipped (pip install httpx into the venv to measure it)")
    else:
        clients.append("httpx")
    with floor_server() as port:
        print(
            f"floor bench: {os.cpu_count()} CPUs, Python {sys.version.split()[0]}, load average "
            f"{os.getloadavg()[0]:.2f}; {args.requests:,} GETs per run, concurrency "
            f"{args.concurrency}, server in its own process (its CPU not counted)"
        )
        lean_devices(port)
        results: dict[str, list[tuple[float, float]]] = {c: [] for c in clients}
        for _ in range(args.repeat):
            for name in clients:
                n = args.httpx_requests if name == "httpx" else args.requests
                results[name].append(measure(name, port, n, args.concurrency))
    best: dict[str, Any] = {}
    for name, runs in results.items():
        us = min(u for u, _ in runs)
        best[name] = us
        shown = ", ".join(f"{u:.1f} µs/{w:.2f} s" for u, w in runs)
        print(f"{name:>15}: {us:7.1f} µs CPU per request (runs: {shown})")
    for name in clients[1:]:
        print(f"{name}_us_per_call={best[name]:.1f} ({best[name] / best['raw']:.1f}x the floor)")
    print(f"floor_us_per_call={best['raw']:.1f}")


if __name__ == "__main__":
    main()
