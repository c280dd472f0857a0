"""Real agent processes (``fleetgate agent run``) reached through a real Mosquitto.

End to end over the system broker: ping, facts, health, stage, activate, commit through the
controller's ``HttpTransport`` (its router sends ``mqtt://`` devices to the MQTT channel), then
a killed agent's last will. Over our own broker (password file + ACL): the broker killed
(SIGTERM, then SIGKILL) and restarted on the same port in the middle of a stage and of an
activate — the controller gets a retryable error, never a false success, and the resend of the
same seq gets the one execution's answer; an agent SIGSTOPped past the call's timeout answers
the resend after SIGCONT without executing twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import signal
import threading
import urllib.request
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from agent_harness import TOKEN, AgentProc

from fleetgate.core import mqttwire as wire
from fleetgate.core.model import Arch, Device, Resources
from fleetgate.errors import TransportError
from fleetgate.transports.base import CallTimeouts, TransportUnavailable
from fleetgate.transports.client import DeviceClient
from fleetgate.transports.http import HttpTransport
from fleetgate.transports.mqtt import MqttChannel, MqttCredentials
from fleetgate.transports.router import Router
from fleetgate.transports.tokens import TokenSource
from mqtt_harness import SYSTEM_BROKER, OwnBroker, clear_retained, eventually, unique

pytestmark = pytest.mark.slow


def device(dev_id: str, broker: str) -> Device:
    return Device(
        id=dev_id,
        hardware="test-board",
        arch=Arch.X86_64,
        group="g",
        address=f"{broker}/{dev_id}",
        resources=Resources(512, 4096),
    )


def mqtt_agent(make_agent: Any, dev_id: str, broker: str, password_file: Path | None) -> AgentProc:
    extra = f'[mqtt]\nbroker = "{broker}"\nsession_expiry_s = 60\n'
    if password_file is not None:
        extra += f'password_file = "{password_file}"\n'
    return make_agent(dev_id, device_id=dev_id, agent_extra=extra)  # type: ignore[no-any-return]


def executions(agent: AgentProc, command: str, seq: int) -> int:
    """How many times the agent started ``command`` ``seq`` (a replay logs nothing)."""
    return len(re.findall(rf"\b{command} seq={seq} deployment=", agent.log_text()))


async def until_answered(call: Any, timeout: float = 20.0) -> Any:
    """Resend until the device answers (what the engine's retries do with the same seq)."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        try:
            return await call()
        except TransportUnavailable:
            if asyncio.get_running_loop().time() > deadline:
                raise
            await asyncio.sleep(0.2)


async def test_a_real_agent_over_the_system_broker(make_agent: Any, kit: Any) -> None:
    dev_id = unique("mq-agent")
    agent = mqtt_agent(make_agent, dev_id, SYSTEM_BROKER, None)
    dev = device(dev_id, SYSTEM_BROKER)
    transport = HttpTransport(TokenSource(overrides={dev_id: TOKEN}))
    try:
        async with transport as t:
            await t.mqtt.watch(dev)
            # (The system broker is shared with whatever else runs on this machine: be patient.)
            await eventually(
                lambda: (p := t.mqtt.presence(dev_id)) and p.online,
                timeout=30,
                what=lambda: f"online\n{agent.log_text()}",
            )
            assert (await t.ping(dev)).id == dev_id
            facts = await t.facts(dev)
            assert facts.hardware == "test-board"
            staged = await t.stage(
                dev,
                deployment_id="d1",
                seq=1,
                manifest_json=kit.v1.stage["manifest"],
                signature=kit.v1.stage["signature"],
                url=kit.v1.stage["url"],
            )
            assert staged.status == "staged" and staged.release == kit.v1.id
            active = await t.activate(dev, deployment_id="d1", seq=2, release=kit.v1.id)
            assert active.status == "active"
            assert (await t.health(dev)).app_up
            committed = await t.commit(dev, deployment_id="d1", seq=3, release=kit.v1.id)
            assert committed.release == kit.v1.id
            assert agent.app_version() == "1.0.0"
            # Killed without a DISCONNECT: the broker publishes its last will at once, and
            # the controller stops sending to it without waiting for a timeout.
            agent.kill()
            await eventually(lambda: t.mqtt.presence(dev_id).online is False, what="will")
            assert t.mqtt.presence(dev_id).reason == "connection-lost"
            with pytest.raises(TransportUnavailable) as err:
                await t.ping(dev)
            assert err.value.code == "offline"
    finally:
        await clear_retained(SYSTEM_BROKER, wire.status_topic(dev_id))


@contextlib.contextmanager
def gated(url: str) -> Iterator[tuple[str, threading.Event]]:
    """A distribution point in front of ``url`` that answers only once the event is set: a
    stage that stays in the middle of its download for as long as the test wants."""
    gate = threading.Event()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            gate.wait(30)
            with urllib.request.urlopen(url, timeout=10) as resp:
                data = resp.read()
            self.send_response(200)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/blob", gate
    finally:
        gate.set()
        server.shutdown()
        server.server_close()


@pytest.fixture
def own(tmp_path: Path) -> Any:
    broker = OwnBroker(tmp_path / "broker", ["rpi-1"]).start()
    yield broker
    broker.stop()


def own_client(own: OwnBroker, timeouts: CallTimeouts) -> tuple[DeviceClient, MqttChannel]:
    user = "fleetgate-controller"
    channel = MqttChannel(
        TokenSource(overrides={"rpi-1": TOKEN}),
        credentials=MqttCredentials(user, own.password(user)),
        retry_after=0.2,
    )
    return DeviceClient(Router({"mqtt": channel}), timeouts=timeouts), channel


async def test_broker_killed_mid_stage_and_mid_activate_each_runs_once(
    make_agent: Any, kit: Any, own: OwnBroker
) -> None:
    agent = mqtt_agent(make_agent, "rpi-1", own.url, own.creds / "rpi-1.password")
    dev = device("rpi-1", own.url)
    client, channel = own_client(own, CallTimeouts(stage=20, activate=20, ping=5, connect=2))
    # "slow": the app's /healthz takes 300 ms, so the activation (which waits for it) is
    # still running when the broker dies; the stage waits at the gated distribution point.
    slow = kit.release("demo-mqtt", "1.0.0", "slow")  # a name no other test of the kit uses

    with gated(slow.stage["url"]) as (url, gate):

        def do_stage() -> Any:
            return client.stage(
                dev,
                deployment_id="d1",
                seq=1,
                manifest_json=slow.stage["manifest"],
                signature=slow.stage["signature"],
                url=url,
            )

        def do_activate() -> Any:
            return client.activate(dev, deployment_id="d1", seq=2, release=slow.id)

        async with client:
            await channel.watch(dev)
            await eventually(lambda: (p := channel.presence("rpi-1")) and p.online, what="online")
            for call, command, seq, sig in (
                (do_stage, "stage", 1, signal.SIGTERM),
                (do_activate, "activate", 2, signal.SIGKILL),
            ):
                first = asyncio.create_task(call())
                await eventually(
                    lambda c=command, s=seq: executions(agent, c, s) == 1, what=command
                )
                own.kill(sig)  # the broker goes away while the device executes
                with pytest.raises(TransportError) as err:
                    await first
                assert err.value.retryable  # never a false success, never a final failure
                gate.set()
                own.start()  # same port, no persistence: every session is gone
                # The engine resends (same seq) until it gets an answer; a resend published
                # before the device is back finds nobody and fails when the device says online.
                answer = await until_answered(call)
                assert answer.release == slow.id
                assert executions(agent, command, seq) == 1, agent.log_text()
    assert agent.app_version() == "1.0.0"


async def test_a_stopped_agent_times_out_then_answers_the_resend_once(
    make_agent: Any, kit: Any, own: OwnBroker
) -> None:
    agent = mqtt_agent(make_agent, "rpi-1", own.url, own.creds / "rpi-1.password")
    dev = device("rpi-1", own.url)
    client, channel = own_client(own, CallTimeouts(stage=1.5, ping=5, connect=2))
    stage = kit.v1.stage

    def do_stage() -> Any:
        return client.stage(
            dev,
            deployment_id="d1",
            seq=1,
            manifest_json=stage["manifest"],
            signature=stage["signature"],
            url=stage["url"],
        )

    async with client:
        await channel.watch(dev)
        await eventually(lambda: (p := channel.presence("rpi-1")) and p.online, what="online")
        assert agent.proc is not None
        agent.proc.send_signal(signal.SIGSTOP)
        try:
            with pytest.raises(TransportUnavailable) as err:
                await do_stage()
            assert err.value.code == "timeout"
        finally:
            agent.proc.send_signal(signal.SIGCONT)
        # The late answer to the first call arrives for a correlation nobody waits for.
        await eventually(lambda: channel.counters["unknown-correlation"] == 1, what="late reply")
        answer = await until_answered(do_stage)
        assert answer.status == "staged" and answer.replayed
        assert executions(agent, "stage", 1) == 1
