"""HttpTransport over real loopback HTTP: headers, path prefixes, pooling, error mapping."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import web
from sim_helpers import TOKEN, make_manifest, stage_args

from fleetgate.core.model import Arch, Device, HealthSample, Resources
from fleetgate.sim.fleetspec import FleetSpec
from fleetgate.sim.server import VirtualFleet
from fleetgate.transports.base import CallTimeouts, DeviceRefusal, TransportUnavailable
from fleetgate.transports.http import HttpTransport
from fleetgate.transports.tokens import TokenSource
from ports import free_port


def device(address: str, dev_id: str = "rpi-07", **kw: Any) -> Device:
    return Device(
        id=dev_id,
        hardware="rpi4",
        arch=Arch.ARM64,
        group="plant-a",
        address=address,
        resources=Resources(4096, 32000),
        token_env="FG_TEST_TOKEN",
        **kw,
    )


def tokens(value: str = "t0k") -> TokenSource:
    return TokenSource(environ={"FG_TEST_TOKEN": value})


class Recorder:
    """A scripted HTTP server: records each request, answers what the test sets."""

    def __init__(self) -> None:
        self.seen: list[dict[str, Any]] = []
        self.status = 200
        self.body: bytes = b'{"id": "rpi-07", "ok": true, "agent_version": "x", "uptime_s": 1}'
        self.in_flight = 0
        self.max_in_flight = 0
        self.hold = 0.0
        self.url = ""

    async def handle(self, request: web.Request) -> web.Response:
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            self.seen.append(
                {
                    "path": request.path,
                    "query": dict(request.query),
                    "auth": request.headers.get("Authorization"),
                    "device": request.headers.get("X-Fleetgate-Device"),
                    "body": await request.json() if request.can_read_body else None,
                }
            )
            if self.hold:
                await asyncio.sleep(self.hold)
            return web.Response(status=self.status, body=self.body, content_type="application/json")
        finally:
            self.in_flight -= 1


@pytest.fixture
async def recorder() -> AsyncIterator[Recorder]:
    rec = Recorder()
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", rec.handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    rec.url = f"http://127.0.0.1:{port}"
    yield rec
    await runner.cleanup()


async def test_headers_and_path_prefix(recorder):
    async with HttpTransport(tokens("t0k")) as t:
        await t.ping(device(recorder.url + "/d/rpi-07"))
        await t.ping(device(recorder.url + "/d/rpi-07/"))  # a trailing slash changes nothing
        recorder.body = b'{"app": ["a"], "agent": []}'
        logs = await t.logs(device(recorder.url), lines=7)
        recorder.body = b'{"status": "active", "release": "r", "previous": null}'
        await t.activate(device(recorder.url + "/x"), deployment_id="d1", seq=700_003, release="r")
    assert [s["path"] for s in recorder.seen] == [
        "/d/rpi-07/v1/ping",
        "/d/rpi-07/v1/ping",
        "/v1/logs",
        "/x/v1/activate",
    ]
    assert all(s["auth"] == "Bearer t0k" and s["device"] == "rpi-07" for s in recorder.seen)
    assert recorder.seen[2]["query"] == {"lines": "7"} and logs.app == ("a",)
    # The seq's block travels with it: the agent checks the seq against it (protocol §4).
    assert recorder.seen[3]["body"] == {
        "deployment_id": "d1",
        "seq": 700_003,
        "seq_base": 7,
        "release": "r",
        "with_health": True,  # issue 12: the answer carries the smoke test's sample
    }


async def test_calls_in_flight_are_bounded_by_concurrency(recorder):
    recorder.hold = 0.05
    async with HttpTransport(tokens(), concurrency=4) as t:
        results = await asyncio.gather(*(t.ping(device(recorder.url)) for _ in range(20)))
    assert len(results) == 20 and recorder.max_in_flight == 4


@pytest.mark.parametrize(
    ("status", "raw", "cls", "code"),
    [
        (503, b"<html>proxy</html>", TransportUnavailable, "http-503"),
        (200, b"not json", TransportUnavailable, "bad-response"),
        (200, b'{"id": 3}', DeviceRefusal, "bad-response"),
        (507, b'{"error": "insufficient-disk", "message": "full"}', DeviceRefusal, None),
    ],
)
async def test_odd_answers_map_to_errors(recorder, status, raw, cls, code):
    recorder.status, recorder.body = status, raw
    async with HttpTransport(tokens()) as t:
        with pytest.raises(cls) as info:
            await t.ping(device(recorder.url))
    assert info.value.device_id == "rpi-07"
    assert info.value.code == (code or "insufficient-disk")


async def test_closed_port_is_a_retryable_transport_error():
    async with HttpTransport(tokens(), connect_timeout=2) as t:
        with pytest.raises(TransportUnavailable) as info:
            await t.health(device(f"http://127.0.0.1:{free_port()}"))
    exc = info.value
    assert exc.retryable and exc.code == "connection-refused" and exc.device_id == "rpi-07"
    assert exc.status is None


async def test_missing_token_fails_before_any_request(recorder):
    async with HttpTransport(TokenSource(environ={})) as t:
        with pytest.raises(DeviceRefusal) as info:
            await t.ping(device(recorder.url))
    assert info.value.code == "no-token" and "FG_TEST_TOKEN" in str(info.value)
    assert recorder.seen == []


async def test_closed_transport_refuses_calls(recorder):
    t = HttpTransport(tokens())
    await t.ping(device(recorder.url))
    await t.aclose()
    await t.aclose()  # idempotent
    with pytest.raises(RuntimeError):
        await t.ping(device(recorder.url))


# -- against the simulator -------------------------------------------------------------------------
@pytest.fixture
async def fleet() -> AsyncIterator[VirtualFleet]:
    async with VirtualFleet.start(FleetSpec(devices=9, seed=5, token=TOKEN)) as f:
        yield f


def sim_tokens(fleet: VirtualFleet) -> TokenSource:
    return TokenSource(overrides={d.id: fleet.token for d in fleet.devices})


async def test_full_command_cycle_against_the_simulator(fleet):
    d = fleet.devices[0]
    m = make_manifest("2.0.0")
    async with HttpTransport(sim_tokens(fleet)) as t:
        assert (await t.ping(d)).id == d.id
        facts = await t.facts(d)
        assert facts.current == "app-1.0.0-00000000" and not facts.rollback_available
        staged = await t.stage(d, **stage_args(m, "dep-1", 1))
        assert (staged.status, staged.release, staged.replayed) == ("staged", m.release_id, False)
        assert (await t.stage(d, **stage_args(m, "dep-1", 1))).replayed
        active = await t.activate(d, deployment_id="dep-1", seq=2, release=m.release_id)
        assert active.ok and active.previous == "app-1.0.0-00000000"
        sample = await t.health(d)
        assert isinstance(sample, HealthSample) and sample.release == m.release_id
        logs = await t.logs(d, lines=5)
        assert len(logs.agent) <= 5 and any("activate seq=2" in line for line in logs.agent)
        back = await t.rollback(d, deployment_id="dep-1", seq=3)
        assert back.ok and back.release == "app-1.0.0-00000000"
        assert back.from_release == m.release_id
        with pytest.raises(DeviceRefusal) as info:
            await t.rollback(d, deployment_id="dep-1", seq=4)
    assert info.value.code == "no-rollback-copy" and info.value.status == 409


async def test_wrong_token_and_wrong_device_are_refusals(fleet):
    a, b = fleet.devices[0], fleet.devices[1]
    async with HttpTransport(TokenSource(overrides={a.id: "wrong"})) as t:
        with pytest.raises(DeviceRefusal) as info:
            await t.facts(a)
    assert (info.value.status, info.value.code, info.value.retryable) == (
        401,
        "unauthorized",
        False,
    )
    # b's id and credentials sent to a's address: refused as the wrong device.
    b_at_a = dataclasses.replace(b, address=a.address)
    async with HttpTransport(sim_tokens(fleet)) as t:
        with pytest.raises(DeviceRefusal) as info:
            await t.facts(b_at_a)
    assert (info.value.status, info.value.code) == (403, "wrong-device")
    assert info.value.device_id == b.id


async def test_insufficient_disk_is_a_non_retryable_device_error(fleet):
    d = fleet.devices[2]
    fleet.inject(f"low-disk:free_mb=50,device={d.id}")
    async with HttpTransport(sim_tokens(fleet)) as t:
        assert (await t.facts(d)).disk_free_mb == 50
        with pytest.raises(DeviceRefusal) as info:
            await t.stage(d, **stage_args(make_manifest(), "dep-1", 1))
    exc = info.value
    assert (exc.status, exc.code, exc.retryable, exc.device_id) == (
        507,
        "insufficient-disk",
        False,
        d.id,
    )


async def test_slow_answer_times_out_as_retryable_transport_error(fleet):
    d = fleet.devices[3]
    fleet.inject(f"latency:factor=1,delay=1,device={d.id}")
    timeouts = CallTimeouts(health=0.3)
    async with HttpTransport(sim_tokens(fleet), timeouts=timeouts) as t:
        with pytest.raises(TransportUnavailable) as info:
            await t.health(d)
        assert (await t.health(fleet.devices[4])).app_up  # others unaffected
    assert info.value.code == "timeout" and info.value.retryable and info.value.device_id == d.id


async def test_dropped_connection_is_a_retryable_transport_error(fleet):
    d = fleet.devices[5]
    fleet.inject(f"unreachable:device={d.id}")
    async with HttpTransport(sim_tokens(fleet)) as t:
        with pytest.raises(TransportUnavailable) as info:
            await t.ping(d)
    assert info.value.retryable and info.value.code == "connection-reset"


async def test_busy_device_is_a_retryable_transport_error(fleet):
    d = fleet.devices[6]
    fleet.inject(f"slow-link:kbps=2000,device={d.id}")  # 100 kB: 0.4 s of transfer
    m = make_manifest("2.0.0")
    async with HttpTransport(sim_tokens(fleet)) as t:
        first = asyncio.create_task(t.stage(d, **stage_args(m, "dep-1", 1)))
        while (await t.facts(d)).state != "staging":
            await asyncio.sleep(0.01)
        with pytest.raises(TransportUnavailable) as same:
            await t.stage(d, **stage_args(m, "dep-1", 1))
        with pytest.raises(TransportUnavailable) as other:
            await t.activate(d, deployment_id="dep-1", seq=2, release="app-1.0.0-00000000")
        assert (await first).status == "staged"
    assert same.value.code == "in-progress" and same.value.status == 409
    assert other.value.code == "busy" and other.value.retryable


async def test_one_host_port_serves_a_large_fleet_without_per_host_throttling():
    spec = FleetSpec(devices=2000, seed=9, token=TOKEN)
    async with VirtualFleet.start(spec) as fleet, HttpTransport(sim_tokens(fleet)) as t:
        samples = await asyncio.gather(*(t.health(d) for d in fleet.devices))
        assert t.http.pool == 256 and t.http.limit_per_host == 0
    assert [s.device_id for s in samples] == [d.id for d in fleet.devices]
    assert all(s.app_up for s in samples)
