"""The MQTT channel against real Mosquitto brokers, devices played by ``DeviceLink``s in-process.

Our own broker (generated password file + ACL) proves the credentials: a wrong device password
is refused at connect, a wrong controller password fails the call in one line, a device cannot
write another device's reply topic. The system broker (anonymous, no ACL) proves the
controller's own lock: a reply on the wrong device's topic, or with a correlation it does not
know, is counted and ignored, never taken as an answer. The device checks the token as over
HTTP. Presence (retained status, last will) tells the controller who is online without polling.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiomqtt
import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from fleetgate.agent.mqtt_link import DeviceLink, LinkSettings, backoff_delays
from fleetgate.core import mqttwire as wire
from fleetgate.core.model import Arch, Device, Resources
from fleetgate.transports.base import CallTimeouts, DeviceRefusal, TransportUnavailable
from fleetgate.transports.client import DeviceClient
from fleetgate.transports.mqtt import MqttChannel, MqttCredentials
from fleetgate.transports.router import Router
from fleetgate.transports.tokens import TokenSource
from mqtt_harness import SYSTEM_BROKER, OwnBroker, clear_retained, eventually, unique

TOKEN = "mqtt-test-token"
# Generous: the machine is shared; only the test that expects a timeout uses SHORT.
CALLS = CallTimeouts(ping=15, facts=15, health=15, stage=15, activate=15, commit=15, connect=3)
SHORT = CallTimeouts(ping=1.5, connect=3)


def device(dev_id: str, broker: str) -> Device:
    return Device(
        id=dev_id,
        hardware="board",
        arch=Arch.ARM64,
        group="g",
        address=f"{broker}/{dev_id}",
        resources=Resources(512, 4096),
    )


class FakeDevice:
    """A device's dispatcher: answers pings, records commands, can be held."""

    def __init__(self, dev_id: str) -> None:
        self.dev_id = dev_id
        self.calls: list[tuple[str, Any]] = []
        self.gate: asyncio.Event | None = None

    async def execute(self, command: str, body: Any) -> tuple[int, Any]:
        self.calls.append((command, body))
        if self.gate is not None:
            await self.gate.wait()
        if command == "ping":
            return 200, {"id": self.dev_id, "ok": True, "agent_version": "t", "uptime_s": 1.0}
        return 200, {"status": "staged", "release": "demo-1.0.0", "replayed": False}


@contextlib.asynccontextmanager
async def linked(
    broker: str, dev_id: str, *, password: str | None = None, token: str = TOKEN
) -> AsyncIterator[tuple[DeviceLink, FakeDevice]]:
    fake = FakeDevice(dev_id)
    link = DeviceLink(
        LinkSettings(
            broker,
            dev_id,
            username=dev_id if password else None,
            password=password,
            session_expiry_s=30,
            backoff_initial_s=0.1,
            backoff_max_s=0.5,
        ),
        fake.execute,
        token=token,
    )
    task = asyncio.create_task(link.run())
    try:
        yield link, fake
    finally:
        await link.stop()
        await asyncio.wait_for(task, 10)


def client(channel: MqttChannel, timeouts: CallTimeouts = CALLS) -> DeviceClient:
    return DeviceClient(Router({"mqtt": channel}), timeouts=timeouts)


@pytest.fixture
def own(tmp_path: Path) -> Iterator[OwnBroker]:
    broker = OwnBroker(tmp_path / "broker", ["dev-a", "dev-b"]).start()
    yield broker
    broker.stop()


def controller(own: OwnBroker, password: str | None = None) -> MqttChannel:
    creds = MqttCredentials(
        "fleetgate-controller", password or own.password("fleetgate-controller")
    )
    return MqttChannel(TokenSource(overrides={"dev-a": TOKEN, "dev-b": TOKEN}), credentials=creds)


async def test_commands_round_trip_with_per_device_credentials(own: OwnBroker) -> None:
    a = device("dev-a", own.url)
    async with linked(own.url, "dev-a", password=own.password("dev-a")) as (link, fake):
        await asyncio.wait_for(link.connected.wait(), 5)
        channel = controller(own)
        async with client(channel) as c:
            ping = await c.ping(a)
            staged = await c.stage(
                a, deployment_id="d1", seq=7, manifest_json="{}", signature="s", url="http://x/b"
            )
            assert ping.id == "dev-a"
            assert staged.status == "staged"
            assert [cmd for cmd, _ in fake.calls] == ["ping", "stage"]
            assert fake.calls[1][1]["seq"] == 7  # the body AgentService.execute takes
            presence = channel.presence("dev-a")
            assert presence is not None and presence.online is True
            assert presence.last_seen is not None
            assert sum(channel.counters.values()) == 0


async def test_wrong_device_password_is_refused_by_the_broker_and_the_call_fails_cleanly(
    own: OwnBroker,
) -> None:
    a = device("dev-a", own.url)
    async with linked(own.url, "dev-a", password="not-the-password") as (link, fake):
        await eventually(lambda: link.last_error is not None, what="a refused connect")
        assert "authori" in (link.last_error or "").lower()
        assert link.state in ("waiting", "connecting") and not link.connected.is_set()
        async with client(controller(own), SHORT) as c:
            with pytest.raises(TransportUnavailable) as err:
                await c.ping(a)
        assert err.value.code == "timeout"
        assert fake.calls == []
        assert link.connections == 0


async def test_wrong_controller_password_is_a_one_line_non_retryable_refusal(
    own: OwnBroker,
) -> None:
    a = device("dev-a", own.url)
    async with client(controller(own, password="wrong")) as c:
        with pytest.raises(DeviceRefusal) as err:
            await c.ping(a)
    assert err.value.code == "broker-auth" and not err.value.retryable
    assert "wrong" not in str(err.value)  # the password is never in a message


async def test_wrong_controller_token_is_refused_by_the_device(own: OwnBroker) -> None:
    a = device("dev-a", own.url)
    async with linked(own.url, "dev-a", password=own.password("dev-a"), token="other") as (
        link,
        fake,
    ):
        await asyncio.wait_for(link.connected.wait(), 5)
        async with client(controller(own)) as c:
            with pytest.raises(DeviceRefusal) as err:
                await c.stage(
                    a, deployment_id="d", seq=1, manifest_json="{}", signature="s", url="u"
                )
        assert err.value.code == "unauthorized" and err.value.status == 401
        assert fake.calls == []  # refused before anything ran


async def test_a_device_cannot_write_another_devices_reply_topic(own: OwnBroker) -> None:
    """dev-b (its own valid credential) answers on dev-a's reply topic: the broker drops it."""
    a = device("dev-a", own.url)
    async with linked(own.url, "dev-a", password=own.password("dev-a")) as (link, fake):
        await asyncio.wait_for(link.connected.wait(), 5)
        fake.gate = asyncio.Event()
        channel = controller(own)
        async with client(channel) as c:
            call = asyncio.create_task(c.ping(a))
            await eventually(lambda: fake.calls, what="the command at dev-a")
            (correlation,) = next(iter(channel._brokers.values())).pending.keys()
            async with aiomqtt.Client(
                "127.0.0.1",
                own.port,
                username="dev-b",
                password=own.password("dev-b"),
                protocol=aiomqtt.ProtocolVersion.V5,
            ) as intruder:
                forged = Properties(PacketTypes.PUBLISH)
                forged.CorrelationData = correlation
                payload = wire.encode_reply(200, {"id": "dev-a", "ok": True, "uptime_s": 0})
                await intruder.publish(wire.reply_topic("dev-a"), payload, 1, properties=forged)
                await intruder.publish(wire.reply_topic("dev-b"), payload, 1, properties=forged)
            await asyncio.sleep(0.3)
            assert not call.done()  # neither forgery answered the call
            fake.gate.set()
            assert (await call).agent_version == "t"  # the real device's answer
        # The ACL dropped the first; the second reached the controller, which refused it.
        assert channel.counters["wrong-topic"] == 1


async def test_an_open_broker_still_cannot_make_the_controller_take_a_wrong_answer() -> None:
    """On the system broker (anonymous, no ACL) an intruder sees the command and answers with
    its correlation on another device's topic, and with an unknown correlation: both are
    counted and ignored; the call gets the real device's answer."""
    dev_id, other = unique("mq-a"), unique("mq-b")
    a = device(dev_id, SYSTEM_BROKER)
    channel = MqttChannel(TokenSource(overrides={dev_id: TOKEN}))
    try:
        async with linked(SYSTEM_BROKER, dev_id) as (link, fake):
            await asyncio.wait_for(link.connected.wait(), 5)
            fake.gate = asyncio.Event()
            async with aiomqtt.Client(
                "127.0.0.1", 1883, protocol=aiomqtt.ProtocolVersion.V5
            ) as intruder:
                await intruder.subscribe(wire.cmd_topic(dev_id), qos=1)
                async with client(channel) as c:
                    call = asyncio.create_task(c.ping(a))
                    seen = await asyncio.wait_for(anext(aiter(intruder.messages)), 5)
                    correlation = seen.properties.CorrelationData  # type: ignore[union-attr]
                    forged = Properties(PacketTypes.PUBLISH)
                    forged.CorrelationData = correlation
                    payload = wire.encode_reply(200, {"id": dev_id, "ok": True, "uptime_s": 0})
                    await intruder.publish(wire.reply_topic(other), payload, 1, properties=forged)
                    unknown = Properties(PacketTypes.PUBLISH)
                    unknown.CorrelationData = b"not-a-pending-call"
                    await intruder.publish(wire.reply_topic(dev_id), payload, 1, properties=unknown)
                    await eventually(
                        lambda: (
                            channel.counters["wrong-topic"] == 1
                            and channel.counters["unknown-correlation"] == 1
                        ),
                        what="both forgeries counted",
                    )
                    assert not call.done()
                    fake.gate.set()
                    assert (await call).agent_version == "t"
    finally:
        await clear_retained(SYSTEM_BROKER, wire.status_topic(dev_id))


async def test_presence_follows_the_last_will_and_an_offline_device_fails_fast(
    own: OwnBroker,
) -> None:
    a = device("dev-a", own.url)
    channel = controller(own)
    async with client(channel) as c:
        async with linked(own.url, "dev-a", password=own.password("dev-a")) as (link, _):
            await asyncio.wait_for(link.connected.wait(), 5)
            await c.ping(a)
            # The connection dies without a DISCONNECT: the broker publishes the will.
            assert link._client is not None
            sock = link._client._client.socket()
            sock.shutdown(socket.SHUT_RDWR)  # type: ignore[union-attr]
            await eventually(
                lambda: (p := channel.presence("dev-a")) is not None and p.online is False,
                what="the last will",
            )
            assert channel.presence("dev-a").reason == "connection-lost"  # type: ignore[union-attr]
            # ... and the link comes back by itself, saying so.
            await eventually(
                lambda: channel.presence("dev-a").online is True,  # type: ignore[union-attr]
                what="online again",
            )
            assert link.connections == 2
            assert (await c.ping(a)).id == "dev-a"
        await eventually(
            lambda: channel.presence("dev-a").online is False,  # type: ignore[union-attr]
            what="offline after stop",
        )
        assert channel.presence("dev-a").reason == "shutdown"  # type: ignore[union-attr]
        with pytest.raises(TransportUnavailable) as err:
            await c.ping(a)
        assert err.value.code == "offline"


async def test_an_unreachable_broker_is_retryable_and_a_bad_address_is_not(tmp_path: Path) -> None:
    broker = OwnBroker(tmp_path / "nobroker", ["dev-a"])  # never started: its port is closed
    async with client(controller(broker)) as c:
        with pytest.raises(TransportUnavailable) as down:
            await c.ping(device("dev-a", broker.url))
        assert down.value.code == "connection-refused"
        with pytest.raises(DeviceRefusal) as bad:
            await c.ping(device("dev-a", "mqtt://127.0.0.1:notaport"))
        assert bad.value.code == "bad-address" and not bad.value.retryable


async def test_a_link_backs_off_and_stops_even_before_it_ever_connected() -> None:
    """A broker that is not there: the link waits a jittered, growing delay between attempts
    (no busy loop) and ``stop()`` ends it at once, connected or not."""
    delay = backoff_delays(0.5, 30.0)
    for n, ceiling in ((0, 0.5), (1, 1.0), (3, 4.0), (10, 30.0), (500, 30.0)):
        waits = [delay(n) for _ in range(50)]
        assert all(ceiling / 2 <= w <= ceiling for w in waits)
        assert len(set(waits)) > 1  # jittered: a fleet does not come back in lockstep
    link = DeviceLink(
        LinkSettings("mqtt://127.0.0.1:1", "dev-x"), FakeDevice("x").execute, token="t"
    )
    task = asyncio.create_task(link.run())
    await eventually(lambda: link.state == "waiting", what="a failed attempt")
    assert link.last_error is not None and not link.connected.is_set()
    await link.stop()
    await asyncio.wait_for(task, 5)
    assert link.state == "stopped" and link.connections == 0


async def test_a_fleets_retained_statuses_all_arrive(own: OwnBroker) -> None:
    """Past Mosquitto's default in-flight window and queue (20 + 1,000 QoS 1 messages per
    client, the rest dropped), the controller still learns every device's status: 1,500."""
    user = "fleetgate-controller"
    async with aiomqtt.Client(
        "127.0.0.1",
        own.port,
        username=user,
        password=own.password(user),
        protocol=aiomqtt.ProtocolVersion.V5,
    ) as fleet:
        for i in range(1500):
            payload = wire.encode_status(f"v-{i}", True, 1.0)
            await fleet.publish(wire.status_topic(f"v-{i}"), payload, qos=1, retain=True)
    channel = controller(own)
    try:
        await channel.watch(device("dev-a", own.url))
        await eventually(lambda: len(channel.presences) == 1500, what="1500 presences")
        assert all(p.online for p in channel.presences.values())
    finally:
        await channel.aclose()
