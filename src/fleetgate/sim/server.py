"""``VirtualFleet``: a ``SimFleet`` served over HTTP by one aiohttp server in this process.

Two layouts:
- shared port (default): every device at ``http://HOST:PORT/d/<device-id>`` — one listening
  socket however many devices; scales to 10,000+;
- ``per_device_address``: device *i* at ``http://127.1.X.Y:PORT`` (X = i // 254,
  Y = i % 254 + 1) — each its own address, as real agents would be; Linux routes all of
  127.0.0.0/8 to ``lo``, so binding needs no setup. One socket per device: keep such fleets
  within the open-file limit.

Contract:
- Each request finds its device by a dict lookup (path segment or local address), passes the
  device's network faults (a dropped request gets its connection aborted with no answer; a
  delayed one sleeps), authentication, then the device model; the answer is the model's.
- Handlers are not cancelled when a client gives up (aiohttp's default), like a real agent: a
  stage the controller stopped waiting for still completes.
- Control routes for tests and the demo running the sim in another process (bearer token of
  the fleet): ``GET /_sim/devices/<id>`` (the snapshot as JSON), ``POST /_sim/faults``
  ``{"fault": SPEC}`` (→ ``{"devices": [...]}``), ``DELETE /_sim/faults``, ``GET /_sim/calls``
  (→ ``{"total": N, "by_call": {"ping": n, ...}}``: every request that reached a device's route
  since the fleet started, counted before faults and authentication — a dropped or refused call is
  still a call the controller made; the benchmarks divide it by the fleet size).
- ``async with VirtualFleet.start(spec) as fleet:`` serves until the block ends. ``clock``
  (default ``time.monotonic``) is the device model's: fault windows and leaks run on it.
"""

from __future__ import annotations

import asyncio
import hmac
import socket
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

from aiohttp import web

from fleetgate.errors import FleetgateError, InputError
from fleetgate.sim.device import COMMANDS, VirtualDevice
from fleetgate.sim.device_state import DeviceSnapshot, SimReply, refusal
from fleetgate.sim.fleet import RunningFleet, SimFleet
from fleetgate.sim.fleetspec import FleetSpec

READS = ("ping", "facts", "health", "logs")
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def device_address(index: int) -> str:
    """The loopback address of device ``index`` in per-device-address mode."""
    if index >= 256 * 254:
        raise InputError("per-device addresses: at most 65,024 devices")
    return f"127.1.{index // 254}.{index % 254 + 1}"


def _json(reply: SimReply) -> web.Response:
    return web.json_response(reply.body, status=reply.code)


def snapshot_json(snap: DeviceSnapshot) -> dict[str, Any]:
    def pairs(counts: Any) -> list[dict[str, Any]]:
        return [{"command": c, "release": r, "count": n} for (c, r), n in counts.items()]

    return {
        "id": snap.id,
        "current": snap.current,
        "previous": snap.previous,
        "releases": list(snap.releases),
        "last_seq": snap.last_seq,
        "received": pairs(snap.received),
        "executed": pairs(snap.executed),
        "history": [
            {
                "seq": e.seq,
                "command": e.command,
                "deployment_id": e.deployment_id,
                "release": e.release,
                "outcome": e.outcome,
                "replayed": e.replayed,
            }
            for e in snap.history
        ],
        "faults": list(snap.faults),
        "dropped": snap.dropped,
    }


class VirtualFleet(RunningFleet):
    """A running virtual fleet. Build with ``VirtualFleet.start(spec, host=..., port=...)``."""

    def __init__(
        self, model: SimFleet, url: str, runner: web.AppRunner, calls: Counter[str]
    ) -> None:
        self.model = model
        self.url = url
        self._runner = runner
        self.calls = calls  # requests served per call name (``GET /_sim/calls``)

    @classmethod
    @asynccontextmanager
    async def start(
        cls,
        spec: FleetSpec,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> AsyncIterator[VirtualFleet]:
        socks = _bind(spec, host, port)
        runner: web.AppRunner | None = None
        try:
            bound = socks[0].getsockname()[1]
            if spec.per_device_address:
                model = SimFleet(
                    spec, lambda i, _id: f"http://{device_address(i)}:{bound}", clock=clock
                )
                url = f"http://{device_address(0)}:{bound}"
            else:
                shown = f"[{host}]" if ":" in host else host
                url = f"http://{shown}:{bound}"
                model = SimFleet(spec, lambda _i, dev_id: f"{url}/d/{dev_id}", clock=clock)
            calls: Counter[str] = Counter()
            runner = web.AppRunner(
                _make_app(model, calls),
                access_log=None,
                handle_signals=False,
                shutdown_timeout=1.0,
            )
            await runner.setup()
            for sock in socks:
                await web.SockSite(runner, sock).start()
            yield cls(model, url, runner, calls)
        finally:
            if runner is not None:
                await runner.cleanup()
            for sock in socks:
                sock.close()


def _bind(spec: FleetSpec, host: str, port: int) -> list[socket.socket]:
    """Listening sockets: one for the shared port, or one per device address."""
    hosts = [host]
    if spec.per_device_address:
        hosts = [device_address(i) for i in range(spec.devices)]
    socks: list[socket.socket] = []
    try:
        for addr in hosts:
            family = socket.AF_INET6 if ":" in addr else socket.AF_INET
            sock = socket.socket(family, socket.SOCK_STREAM)
            socks.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((addr, port))
            sock.listen(1024)
            sock.setblocking(False)
            port = sock.getsockname()[1]  # every device address shares the first's port
    except OSError as exc:
        for sock in socks:
            sock.close()
        where = f"{addr}:{port}"
        raise InputError(f"sim: cannot listen on {where}: {exc.strerror or exc}") from None
    return socks


def _make_app(model: SimFleet, calls: Counter[str]) -> web.Application:
    by_address = (
        {device_address(i): model.by_id[d.id] for i, d in enumerate(model.devices)}
        if model.spec.per_device_address
        else {}
    )
    fleet_token = model.token.encode()

    def lookup(request: web.Request) -> VirtualDevice | None:
        dev_id = request.match_info.get("device")
        if dev_id is not None:
            return model.by_id.get(dev_id)
        sockname = request.transport.get_extra_info("sockname") if request.transport else None
        return by_address.get(sockname[0]) if sockname else None

    async def handle(request: web.Request) -> web.StreamResponse:
        dev = lookup(request)
        if dev is None:
            return _json(refusal(404, "not-found", f"no virtual device at {request.path}"))
        calls[request.match_info["call"]] += 1
        admission = dev.admit()
        if admission.drop is not None:
            if request.transport is not None:
                request.transport.abort()  # no answer at all: the client sees a dead peer
            return web.Response(status=503)
        if admission.delay_s > 0:
            await asyncio.sleep(admission.delay_s)
        denied = dev.authenticate(
            request.headers.get("Authorization"), request.headers.get("X-Fleetgate-Device")
        )
        if denied is not None:
            return _json(denied)
        call = request.match_info["call"]
        if request.method == "GET" and call in READS:
            if call == "logs":
                try:
                    lines = int(request.query.get("lines", "200"))
                except ValueError:
                    return _json(refusal(400, "bad-request", "lines: expected an integer"))
                return web.json_response(dev.logs(lines))
            body: dict[str, Any] = getattr(dev, call)()
            return web.json_response(body)
        if request.method == "POST" and call in COMMANDS:
            try:
                payload = await request.json()
            except (ValueError, UnicodeDecodeError):
                return _json(refusal(400, "bad-request", "body is not valid JSON"))
            return _json(await dev.command(call, payload))
        return _json(refusal(404, "not-found", f"no such endpoint: {request.method} {call}"))

    def control_auth(request: web.Request) -> web.Response | None:
        scheme, _, presented = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(presented.encode(), fleet_token):
            return _json(refusal(401, "unauthorized", "missing or wrong bearer token"))
        return None

    async def control_state(request: web.Request) -> web.Response:
        denied = control_auth(request)
        if denied is not None:
            return denied
        dev = model.by_id.get(request.match_info["device"])
        if dev is None:
            return _json(refusal(404, "not-found", "no such virtual device"))
        return web.json_response(snapshot_json(dev.snapshot()))

    async def control_faults(request: web.Request) -> web.Response:
        denied = control_auth(request)
        if denied is not None:
            return denied
        if request.method == "DELETE":
            model.clear_faults()
            return web.json_response({"cleared": True})
        try:
            body = await request.json()
            ids = model.inject(str(body["fault"]))
        except (ValueError, KeyError, TypeError):
            return _json(refusal(400, "bad-request", 'expected {"fault": "SPEC"}'))
        except FleetgateError as exc:
            return _json(refusal(400, "bad-request", str(exc)))
        return web.json_response({"devices": ids})

    async def control_calls(request: web.Request) -> web.Response:
        denied = control_auth(request)
        if denied is not None:
            return denied
        return web.json_response({"total": calls.total(), "by_call": dict(calls)})

    app = web.Application(client_max_size=4 * 1024 * 1024)
    app.router.add_get("/_sim/devices/{device}", control_state)
    app.router.add_post("/_sim/faults", control_faults)
    app.router.add_delete("/_sim/faults", control_faults)
    app.router.add_get("/_sim/calls", control_calls)
    app.router.add_route("*", "/d/{device}/v1/{call}", handle)
    if model.spec.per_device_address:
        app.router.add_route("*", "/v1/{call}", handle)
    return app
