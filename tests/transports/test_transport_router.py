"""The seam: one ``Channel.send`` under one client layer, and a router by address scheme.

A fake ``mqtt://`` channel registered next to real loopback HTTP (the virtual fleet) must get
exactly its own devices and the same protocol messages the HTTP channel carries; schemes without
a channel are refused in one line; failures are mapped once, by the client, whatever the
channel; and the memory channel does not drag the simulator in.
"""

from __future__ import annotations

import asyncio
import dataclasses
import subprocess
import sys
from typing import Any

import pytest
from sim_helpers import TOKEN, make_manifest, stage_args

from fleetgate.core.model import Device
from fleetgate.sim.fleetspec import FleetSpec
from fleetgate.sim.server import VirtualFleet
from fleetgate.transports.base import CallTimeouts, DeviceRefusal, TransportUnavailable
from fleetgate.transports.channel import ChannelDown, Reply
from fleetgate.transports.client import DeviceClient
from fleetgate.transports.http import HttpTransport
from fleetgate.transports.router import Router, scheme_of
from fleetgate.transports.tokens import TokenSource


class FakeChannel:
    """Answers every ping as the device it was sent to; records what it carried."""

    def __init__(self, answer: Any = None) -> None:
        self.seen: list[tuple[str, str, Any]] = []
        self.answer = answer
        self.closed = 0

    async def send(self, device: Device, command: str, body: dict[str, Any] | None) -> Reply:
        self.seen.append((device.id, command, body))
        if isinstance(self.answer, BaseException):
            raise self.answer
        if self.answer == "hang":
            await asyncio.sleep(30)
        if isinstance(self.answer, Reply):
            return self.answer
        if command == "ping":
            return Reply(200, {"id": device.id, "ok": True, "agent_version": "mq", "uptime_s": 1})
        return Reply(200, {"status": "staged", "release": "r", "replayed": False})

    async def aclose(self) -> None:
        self.closed += 1


def on(address: str, dev: Device) -> Device:
    return dataclasses.replace(dev, address=address)


async def test_a_registered_mqtt_channel_gets_exactly_its_devices_next_to_http() -> None:
    async with VirtualFleet.start(FleetSpec(devices=6, seed=4, token=TOKEN)) as fleet:
        http_devs = fleet.devices[:3]
        mqtt_devs = [on(f"mqtt://127.0.0.1:1883/{d.id}", d) for d in fleet.devices[3:5]]
        mqtts_dev = on(f"MQTTS://broker.example:8883/{fleet.devices[5].id}", fleet.devices[5])
        tokens = TokenSource(overrides={d.id: fleet.token for d in fleet.devices})
        fake = FakeChannel()
        async with HttpTransport(tokens) as t:
            t.router.register("mqtt", fake)
            t.router.register("mqtts", fake)
            mixed = [*http_devs, *mqtt_devs, mqtts_dev]
            pings = await asyncio.gather(*(t.ping(d) for d in mixed))
            m = make_manifest("2.0.0")
            await t.stage(mqtt_devs[0], **stage_args(m, "dep", 7))
        assert [p.id for p in pings] == [d.id for d in mixed]
        assert [p.agent_version for p in pings[3:]] == ["mq"] * 3
        assert all(p.agent_version.endswith("+sim") for p in pings[:3])
        assert sorted(dev for dev, _, _ in fake.seen) == sorted(
            [d.id for d in mqtt_devs] + [mqtts_dev.id, mqtt_devs[0].id]
        )
        # The same protocol message the HTTP channel posts: command name and body.
        _, command, body = fake.seen[-1]
        assert command == "stage" and body["seq"] == 7 and body["deployment_id"] == "dep"
        assert body["manifest"] == stage_args(m, "dep", 7)["manifest_json"]
        assert fake.closed == 1  # registered twice, closed once
        # The stage went to the mqtt channel, not to the virtual device behind HTTP.
        assert not fleet.model.device(mqtt_devs[0].id).snapshot().history


@pytest.mark.parametrize(
    ("address", "scheme"),
    [
        ("mqtt://127.0.0.1:1883/rpi-07", "'mqtt'"),
        ("mqtts://broker:8883/rpi-07", "'mqtts'"),
        ("ssh://pi@10.0.0.7", "'ssh'"),
        ("10.0.0.7:9100", "no scheme"),
    ],
)
async def test_a_scheme_without_a_channel_is_refused_in_one_line(address: str, scheme: str) -> None:
    fake = FakeChannel()
    dev = on(address, _device())
    async with DeviceClient(Router({"http": fake, "https": fake})) as c:
        with pytest.raises(DeviceRefusal) as info:
            await c.ping(dev)
    exc = info.value
    assert exc.code == "no-channel" and not exc.retryable and exc.device_id == "rpi-07"
    text = str(exc)
    assert "\n" not in text and "rpi-07" in text and scheme in text and address in text
    assert "http, https" in text
    assert fake.seen == []


def test_scheme_of() -> None:
    assert scheme_of("HTTPS://x/d/a") == "https"
    assert scheme_of("mqtt://b:1883") == "mqtt"
    assert scheme_of("http:/x") == "" and scheme_of("") == ""


def _device() -> Device:
    from test_transport_http import device

    return device("http://127.0.0.1:9")


@pytest.mark.parametrize(
    ("answer", "cls", "code"),
    [
        (
            ChannelDown("connection-reset", "peer went away"),
            TransportUnavailable,
            "connection-reset",
        ),
        ("hang", TransportUnavailable, "timeout"),
        (Reply(503, None), TransportUnavailable, "http-503"),
        (Reply(200, None), TransportUnavailable, "bad-response"),
        (Reply(409, {"error": "busy", "message": "b"}), TransportUnavailable, "busy"),
        (Reply(422, {"error": "integrity-error", "retryable": True}), DeviceRefusal, None),
        (Reply(200, {"id": "rpi-07"}), DeviceRefusal, "bad-response"),
    ],
)
async def test_the_client_maps_any_channel_s_failures_once(
    answer: Any, cls: type, code: Any
) -> None:
    """Any channel, same mapping: what a future MQTT channel returns means what HTTP's does."""
    calls: list[tuple[str, float]] = []
    fake = FakeChannel(answer)
    client = DeviceClient(
        Router({"mqtt": fake}),
        timeouts=CallTimeouts(ping=0.05),
        on_call=lambda command, s: calls.append((command, s)),
    )
    dev = on("mqtt://127.0.0.1:1883/rpi-07", _device())
    async with client:
        with pytest.raises(cls) as info:
            await client.ping(dev)
    exc = info.value
    assert exc.device_id == "rpi-07" and exc.code == (code or "integrity-error")
    # A tampered artifact is not retryable, whatever the body claims.
    assert exc.retryable is (cls is TransportUnavailable)
    assert [c for c, _ in calls] == ["ping"] and calls[0][1] >= 0
    if answer == "hang":
        assert calls[0][1] >= 0.05


async def test_concurrency_is_bounded_above_the_channel() -> None:
    in_flight = peak = 0

    class Slow(FakeChannel):
        async def send(self, device: Device, command: str, body: Any) -> Reply:
            nonlocal in_flight, peak
            in_flight += 1
            peak = max(peak, in_flight)
            await asyncio.sleep(0.02)
            in_flight -= 1
            return await super().send(device, command, body)

    dev = on("mqtt://b/rpi-07", _device())
    async with DeviceClient(Router({"mqtt": Slow()}), concurrency=3) as c:
        await asyncio.gather(*(c.ping(dev) for _ in range(12)))
    assert peak == 3


def test_the_channels_and_the_client_do_not_import_the_simulator() -> None:
    code = (
        "import sys\n"
        "import fleetgate.transports.memory, fleetgate.transports.http\n"
        "import fleetgate.transports.client, fleetgate.transports.router\n"
        "bad = sorted(m for m in sys.modules if m.startswith('fleetgate.sim'))\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
