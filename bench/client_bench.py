"""Controller CPU per agent call of candidate HTTP clients, many hosts, keep-alive (issue 12).

    .venv/bin/python bench/client_bench.py [--hosts 1000] [--requests 20000] [--concurrency 200]
                                           [--repeat 2] [--httpx-requests 500]

A small HTTP/1.1 server runs in ANOTHER process (its CPU never counts) and listens on ``--hosts``
distinct loopback addresses (127.0.x.y, one port): each is one device's host, the way a real fleet
is one host per device. In this process each candidate makes ``--requests`` agent calls — four
``GET /v1/health`` for every ``POST /v1/commit`` (JSON body), round robin over the devices, with
the bearer and device headers — at most ``--concurrency`` in flight, and the CPU this process
spends (``time.process_time()``, not wall time) is divided by the number of calls:

- ``floor``: bench/floor_bench.py's raw asyncio client (GETs on 200 reused connections to one
  host), in the same run: the issue's target is ≤ 3x this;
- ``channel_aiohttp`` / ``channel_lean``: ``HttpChannel`` (aiohttp, one pooled session: what
  fleetgate used until issue 12) and ``LeanHttpChannel`` (transports/lean.py), ``send`` alone;
- ``client_aiohttp`` / ``client_lean``: the full ``DeviceClient`` path over each (concurrency
  slot, timeout, error mapping, strict parsing of the answer) — what the engine pays per call;
- ``aiohttp_tuned``: aiohttp used as well as we could (one session, default headers set once,
  pre-encoded bodies, no auto headers), the answer read and ``json.loads``-ed;
- ``httpx``: ``httpx.AsyncClient`` with limits (``pip install httpx`` into the venv; skipped
  otherwise; fewer calls, and 20 in flight: at 200 it failed with ``httpx.ReadError`` here, and
  its pool's CPU per call grows with the number of connections, encode/httpx#3215);
- ``h11_protocol``: the lean channel's design (asyncio Protocol, per-host keep-alive pool) with
  the response parsed by ``h11`` instead of the built-in reader: is a parser of our own worth it;
- ``shard2``: the calls handed to 2 worker processes (each running ``LeanHttpChannel``) over a Unix
  socket, pickled: this process's CPU per call is what sharding device calls would leave on the
  controller's core (issue 12 item 5). The workers' CPU (after their start-up) is printed too.

The channels are configured as ``HttpTransport`` configures them (connections in use capped at
the concurrency; idle ones kept: aiohttp's ``limit`` counts only connections in use, the lean
channel keeps up to ``max_idle``, default 10,000 here), so each host's first call connects and
the rest reuse its connection: ``--requests`` / ``--hosts`` calls per host (20 by default; with
``--hosts 5000``, 4 — about a rollback's calls per device — so connecting weighs more).

Each candidate runs ``--repeat`` times, interleaved; the figure is the minimum. Output, one per
line (scripts grep them): ``client=<name> us_per_call=<µs>``, then ``floor_us_per_call=<µs>``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import pickle
import resource
import signal
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import floor_bench

from fleetgate.core.model import Arch, Device, Resources
from fleetgate.transports.base import CallTimeouts
from fleetgate.transports.channel import Channel
from fleetgate.transports.client import DeviceClient
from fleetgate.transports.http import HttpChannel
from fleetgate.transports.lean import LeanHttpChannel
from fleetgate.transports.router import Router
from fleetgate.transports.tokens import TokenSource

TOKEN = floor_bench.TOKEN
POST_EVERY = 5  # one commit for four health reads
# httpx 0.28 at 200 in flight against this server: httpx.ReadError on the first run; at 20 it
# completes (and its CPU per call is what is compared).
HTTPX_CONCURRENCY = 20
HEALTH = {
    "device_id": "dev-00000",
    "status": "ok",
    "app_up": True,
    "cpu_percent": 12.5,
    "mem_used_mb": 41.5,
    "mem_total_mb": 3900,
    "latency_ms": 3.2,
    "error_rate": 0.0,
    "restarts": 0,
    "release": "app-1.0.0-0123abcd",
}
COMMIT = {"status": "committed", "release": "app-1.0.0-0123abcd", "floor": {"app": "1.0.0"}}


def host_of(i: int) -> str:
    return f"127.0.{i // 250}.{i % 250 + 1}"


# -- the server (its own process) ----------------------------------------------------------------
def _response(body: dict[str, Any]) -> bytes:
    raw = json.dumps(body).encode()
    return (
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
        + f"Content-Length: {len(raw)}\r\n\r\n".encode()
        + raw
    )


class _Server(asyncio.Protocol):
    GET = _response(HEALTH)
    POST = _response(COMMIT)
    accepted = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        _Server.accepted += 1
        self.transport = transport
        self.buf = bytearray()

    def data_received(self, data: bytes) -> None:
        self.buf += data
        out = []
        while True:
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                break
            need = 0
            if self.buf.startswith(b"POST"):
                head = bytes(self.buf[:end]).lower()
                at = head.find(b"content-length:")
                eol = head.find(b"\r\n", at)
                need = int(head[at + 15 : eol if eol >= 0 else len(head)])
            if len(self.buf) < end + 4 + need:
                break
            out.append(self.POST if need else self.GET)
            del self.buf[: end + 4 + need]
        if out:
            self.transport.write(b"".join(out))


async def _serve(hosts: int) -> None:
    loop = asyncio.get_running_loop()
    first = await loop.create_server(_Server, "127.0.0.1", 0, backlog=1024)
    port = first.sockets[0].getsockname()[1]
    rest = [host_of(i) for i in range(1, hosts)]
    servers = [first]
    if rest:
        servers.append(await loop.create_server(_Server, rest, port, backlog=128))
    print(port, flush=True)
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()
    for s in servers:
        s.close()


# -- the work ------------------------------------------------------------------------------------
def devices(port: int, hosts: int) -> list[Device]:
    return [
        Device(
            id=f"dev-{i:05d}",
            hardware="rpi4",
            arch=Arch.ARM64,
            group="bench",
            address=f"http://{host_of(i)}:{port}",
            resources=Resources(4096, 32000),
            token_env="FG_BENCH_TOKEN",
        )
        for i in range(hosts)
    ]


def tokens() -> TokenSource:
    return TokenSource(environ={"FG_BENCH_TOKEN": TOKEN})


def commit_body(i: int) -> dict[str, Any]:
    return {"deployment_id": "dep-1", "seq": 7_000_000 + i, "release": "app-1.0.0-0123abcd"}


async def bounded(n: int, concurrency: int, one: Callable[[int], Awaitable[bool]]) -> int:
    todo = iter(range(n))
    done = 0

    async def worker() -> None:
        nonlocal done
        for i in todo:
            ok = await one(i)
            done += ok

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return done


async def via_channel(channel: Channel, devs: list[Device], n: int, concurrency: int) -> int:
    async def one(i: int) -> bool:
        d = devs[i % len(devs)]
        if i % POST_EVERY == POST_EVERY - 1:
            r = await channel.send(d, "commit", commit_body(i))
            return r.status == 200 and r.body["status"] == "committed"
        r = await channel.send(d, "health", None)
        return r.status == 200 and r.body["app_up"] is True

    try:
        return await bounded(n, concurrency, one)
    finally:
        await channel.aclose()


async def via_client(channel: Channel, devs: list[Device], n: int, concurrency: int) -> int:
    router = Router({"http": channel, "https": channel})
    client = DeviceClient(router, timeouts=CallTimeouts(), concurrency=concurrency)

    async def one(i: int) -> bool:
        d = devs[i % len(devs)]
        if i % POST_EVERY == POST_EVERY - 1:
            c = await client.commit(d, deployment_id="dep-1", seq=7_000_000 + i, release="r")
            return c.status == "committed"
        return (await client.health(d)).app_up

    async with client:
        return await bounded(n, concurrency, one)


def aiohttp_channel(pool: int) -> HttpChannel:
    return HttpChannel(tokens(), pool=pool)


def lean_channel(pool: int) -> LeanHttpChannel:
    return LeanHttpChannel(tokens(), pool=pool)


async def run_aiohttp_tuned(devs: list[Device], n: int, concurrency: int, pool: int) -> int:
    import aiohttp

    connector = aiohttp.TCPConnector(limit=pool, limit_per_host=0)
    headers = {"Authorization": f"Bearer {TOKEN}", "Accept": "application/json"}
    async with aiohttp.ClientSession(
        connector=connector, headers=headers, skip_auto_headers=("User-Agent",)
    ) as session:
        post_headers = {"Content-Type": "application/json"}
        urls = [(d.address + "/v1/health", d.address + "/v1/commit", d.id) for d in devs]

        async def one(i: int) -> bool:
            health, commit, dev = urls[i % len(urls)]
            if i % POST_EVERY == POST_EVERY - 1:
                data = json.dumps(commit_body(i)).encode()
                h = {**post_headers, "X-Fleetgate-Device": dev}
                async with session.post(commit, data=data, headers=h) as r:
                    return r.status == 200 and json.loads(await r.read())["status"] == "committed"
            async with session.get(health, headers={"X-Fleetgate-Device": dev}) as r:
                return r.status == 200 and json.loads(await r.read())["app_up"] is True

        return await bounded(n, concurrency, one)


async def run_httpx(devs: list[Device], n: int, concurrency: int, pool: int) -> int:
    import httpx

    limits = httpx.Limits(max_connections=pool, max_keepalive_connections=pool)
    headers = {"Authorization": f"Bearer {TOKEN}", "Accept": "application/json"}
    async with httpx.AsyncClient(limits=limits, headers=headers) as client:
        urls = [(d.address + "/v1/health", d.address + "/v1/commit", d.id) for d in devs]

        async def one(i: int) -> bool:
            health, commit, dev = urls[i % len(urls)]
            h = {"X-Fleetgate-Device": dev}
            if i % POST_EVERY == POST_EVERY - 1:
                r = await client.post(commit, content=json.dumps(commit_body(i)), headers=h)
                return r.status_code == 200 and json.loads(r.content)["status"] == "committed"
            r = await client.get(health, headers=h)
            return r.status_code == 200 and json.loads(r.content)["app_up"] is True

        return await bounded(n, concurrency, one)


# -- h11 behind the same design ------------------------------------------------------------------
class _H11Protocol(asyncio.Protocol):
    def __init__(self) -> None:
        import h11

        self.h11 = h11
        self.conn = h11.Connection(h11.CLIENT)
        self.waiter: asyncio.Future[tuple[int, bytes]] | None = None
        self.body = bytearray()
        self.status = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        h11 = self.h11
        self.conn.receive_data(data)
        while True:
            ev = self.conn.next_event()
            if ev is h11.NEED_DATA:
                return
            if isinstance(ev, h11.Response):
                self.status = ev.status_code
            elif isinstance(ev, h11.Data):
                self.body += ev.data
            elif isinstance(ev, h11.EndOfMessage):
                assert self.waiter is not None
                self.waiter.set_result((self.status, bytes(self.body)))
                self.body = bytearray()
                self.conn.start_next_cycle()
                return

    async def request(self, method: str, target: str, headers: list[tuple[str, str]], body: bytes):
        h11 = self.h11
        self.waiter = asyncio.get_running_loop().create_future()
        out = self.conn.send(h11.Request(method=method, target=target, headers=headers))
        if body:
            out += self.conn.send(h11.Data(data=body))
        out += self.conn.send(h11.EndOfMessage())
        self.transport.write(out)
        return await self.waiter


async def run_h11(devs: list[Device], n: int, concurrency: int, pool: int) -> int:
    """Connections in use are bounded by ``concurrency``; idle ones are all kept."""
    loop = asyncio.get_running_loop()
    free: dict[str, list[_H11Protocol]] = {}
    port = int(devs[0].address.rsplit(":", 1)[1])
    opened: list[_H11Protocol] = []

    async def one(i: int) -> bool:
        d = devs[i % len(devs)]
        host = d.address[7:].rsplit(":", 1)[0]
        conns = free.get(host)
        if conns:
            proto = conns.pop()
        else:
            _, proto = await loop.create_connection(_H11Protocol, host, port)
            opened.append(proto)
        headers = [
            ("Host", f"{host}:{port}"),
            ("Authorization", f"Bearer {TOKEN}"),
            ("X-Fleetgate-Device", d.id),
            ("Accept", "application/json"),
        ]
        if i % POST_EVERY == POST_EVERY - 1:
            body = json.dumps(commit_body(i)).encode()
            headers += [("Content-Type", "application/json"), ("Content-Length", str(len(body)))]
            status, raw = await proto.request("POST", "/v1/commit", headers, body)
            ok = status == 200 and json.loads(raw)["status"] == "committed"
        else:
            status, raw = await proto.request("GET", "/v1/health", headers, b"")
            ok = status == 200 and json.loads(raw)["app_up"] is True
        free.setdefault(host, []).append(proto)
        return ok

    try:
        return await bounded(n, concurrency, one)
    finally:
        for p in opened:
            p.transport.close()


# -- shard2: calls handed to worker processes ------------------------------------------------------
_FRAME = struct.Struct("!I")


async def _read_frame(reader: asyncio.StreamReader) -> Any:
    (size,) = _FRAME.unpack(await reader.readexactly(4))
    return pickle.loads(await reader.readexactly(size))


def _frame(obj: Any) -> bytes:
    raw = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
    return _FRAME.pack(len(raw)) + raw


async def _shard_worker(path: str, port: int, hosts: int, pool: int) -> None:
    """One worker: reads (id, device index, command, body) frames, answers (id, status, body)."""
    devs = devices(port, hosts)
    channel = LeanHttpChannel(tokens(), pool=pool)
    reader, writer = await asyncio.open_unix_connection(path)
    start = resource.getrusage(resource.RUSAGE_SELF)  # after start-up and imports

    async def one(req: tuple[int, int, str, Any]) -> None:
        rid, idx, command, body = req
        reply = await channel.send(devs[idx], command, body)
        writer.write(_frame((rid, reply.status, reply.body)))

    tasks: set[asyncio.Task[None]] = set()
    try:
        while True:
            req = await _read_frame(reader)
            if req is None:
                break
            t = asyncio.create_task(one(req))
            tasks.add(t)
            t.add_done_callback(tasks.discard)
    except asyncio.IncompleteReadError:
        pass
    if tasks:
        await asyncio.gather(*tasks)
    usage = resource.getrusage(resource.RUSAGE_SELF)
    cpu = usage.ru_utime + usage.ru_stime - start.ru_utime - start.ru_stime
    writer.write(_frame(("cpu", cpu)))
    await writer.drain()
    writer.close()
    await channel.aclose()


async def run_shard2(
    port: int, hosts: int, n: int, concurrency: int, pool: int
) -> tuple[int, float]:
    """(answered, worker CPU s). Each worker keeps its own pool (devices split by index)."""
    loop = asyncio.get_running_loop()
    with tempfile.TemporaryDirectory() as tmp:
        path = str(Path(tmp) / "shard.sock")
        conns: asyncio.Queue[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = asyncio.Queue()

        async def accepted(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            await conns.put((r, w))

        server = await asyncio.start_unix_server(accepted, path)
        argv = [sys.executable, __file__, "--shard-worker", path, str(port), str(hosts)]
        procs = [
            subprocess.Popen([*argv, "--pool", str(pool)], start_new_session=True) for _ in range(2)
        ]
        try:
            links = [await asyncio.wait_for(conns.get(), 30) for _ in procs]
            pending: dict[int, asyncio.Future[tuple[int, Any]]] = {}
            worker_cpu = 0.0

            async def pump(reader: asyncio.StreamReader) -> None:
                nonlocal worker_cpu
                while True:
                    msg = await _read_frame(reader)
                    if msg[0] == "cpu":
                        worker_cpu += msg[1]
                        return
                    pending.pop(msg[0]).set_result((msg[1], msg[2]))

            pumps = [asyncio.create_task(pump(r)) for r, _ in links]

            async def one(i: int) -> bool:
                idx = i % hosts
                _, w = links[idx % 2]
                fut = loop.create_future()
                pending[i] = fut
                if i % POST_EVERY == POST_EVERY - 1:
                    w.write(_frame((i, idx, "commit", commit_body(i))))
                    status, body = await fut
                    return status == 200 and body["status"] == "committed"
                w.write(_frame((i, idx, "health", None)))
                status, body = await fut
                return status == 200 and body["app_up"] is True

            done = await bounded(n, concurrency, one)
            for _, w in links:
                w.write(_frame(None))
            await asyncio.gather(*pumps)
            for _, w in links:
                w.close()
        finally:
            for p in procs:
                if p.poll() is None:
                    try:
                        p.wait(30)
                    except subprocess.TimeoutExpired:
                        os.kill(p.pid, signal.SIGKILL)
                        p.wait()
            server.close()
    return done, worker_cpu


# -- measuring -----------------------------------------------------------------------------------
def measure(name: str, port: int, hosts: int, n: int, concurrency: int, pool: int) -> float:
    devs = devices(port, hosts)
    extra = ""
    c0 = time.process_time()
    w0 = time.perf_counter()
    if name == "floor":
        done = asyncio.run(floor_bench.run_raw(port, n, concurrency))
    elif name == "channel_aiohttp":
        done = asyncio.run(via_channel(aiohttp_channel(pool), devs, n, concurrency))
    elif name == "channel_lean":
        done = asyncio.run(via_channel(lean_channel(pool), devs, n, concurrency))
    elif name == "client_aiohttp":
        done = asyncio.run(via_client(aiohttp_channel(pool), devs, n, concurrency))
    elif name == "client_lean":
        done = asyncio.run(via_client(lean_channel(pool), devs, n, concurrency))
    elif name == "aiohttp_tuned":
        done = asyncio.run(run_aiohttp_tuned(devs, n, concurrency, pool))
    elif name == "httpx":
        done = asyncio.run(run_httpx(devs, n, min(concurrency, HTTPX_CONCURRENCY), hosts))
    elif name == "h11_protocol":
        done = asyncio.run(run_h11(devs, n, concurrency, pool))
    elif name == "shard2":
        done, worker_cpu = asyncio.run(run_shard2(port, hosts, n, concurrency, pool))
        extra = f", workers {worker_cpu / n * 1e6:.1f} µs CPU per call"
    else:
        raise SystemExit(f"unknown client {name}")
    cpu = time.process_time() - c0
    wall = time.perf_counter() - w0
    if done != n:
        raise SystemExit(f"{name}: {done} of {n} calls answered 200 as expected")
    us = cpu / n * 1e6
    print(f"  {name}: {us:.1f} µs CPU per call, {wall:.2f} s wall{extra}", flush=True)
    return us


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    ap.add_argument("--hosts", type=int, default=1000)
    ap.add_argument("--requests", type=int, default=20_000)
    ap.add_argument("--concurrency", type=int, default=200)
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--httpx-requests", type=int, default=500)
    ap.add_argument("--only", help="comma-separated candidates")
    ap.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--shard-worker", nargs=3, help=argparse.SUPPRESS)
    ap.add_argument("--pool", type=int, default=0, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.serve:
        asyncio.run(_serve(args.hosts))
        return
    if args.shard_worker:
        path, port, hosts = args.shard_worker
        asyncio.run(_shard_worker(path, int(port), int(hosts), args.pool))
        return
    names = [
        "floor",
        "channel_lean",
        "client_lean",
        "channel_aiohttp",
        "client_aiohttp",
        "aiohttp_tuned",
        "h11_protocol",
        "shard2",
    ]
    try:
        import httpx  # noqa: F401
    except ImportError:
        print("httpx: not installed, skipped (pip install httpx into the venv to measure it)")
    else:
        names.append("httpx")
    pool = args.concurrency
    if args.only:
        names = ["floor", *(n for n in args.only.split(",") if n != "floor")]
    server = subprocess.Popen(
        [sys.executable, __file__, "--serve", "--hosts", str(args.hosts)],
        stdout=subprocess.PIPE,
        start_new_session=True,
    )
    try:
        assert server.stdout is not None
        port = int(server.stdout.readline())
        print(
            f"client bench: {os.cpu_count()} CPUs, Python {sys.version.split()[0]}, load average "
            f"{os.getloadavg()[0]:.2f}; {args.hosts} hosts, {args.requests:,} calls "
            f"per run (1 POST in {POST_EVERY}), concurrency {args.concurrency}, server pid "
            f"{server.pid} (its CPU not counted)",
            flush=True,
        )
        best: dict[str, float] = {}
        for r in range(args.repeat):
            print(f"run {r + 1}:", flush=True)
            for name in names:
                n = args.httpx_requests if name == "httpx" else args.requests
                us = measure(name, port, args.hosts, n, args.concurrency, pool)
                best[name] = min(us, best.get(name, us))
    finally:
        os.kill(server.pid, signal.SIGTERM)
        server.wait(10)
    floor = best["floor"]
    for name in names[1:]:
        print(f"client={name} us_per_call={best[name]:.1f} ratio_to_floor={best[name] / floor:.1f}")
    print(f"floor_us_per_call={floor:.1f}")
    print(f"load average at the end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
