"""``MqttFleet``: a ``SimFleet`` whose devices each hold their own connection to an MQTT broker.

Every virtual device is a ``DeviceLink`` (agent/mqtt_link.py, the real agent's) with its own
client id, its own last will and its own retained ``status`` (docs/adr/0015): the broker sees
N devices, exactly as it would see N real agents, and the controller's ``MqttChannel`` cannot
tell them apart. What that costs: docs/performance.md "MQTT channel".

Contract:
- Addresses are ``<broker>/<device-id>`` (``mqtt://127.0.0.1:1883/orin-a-01``), the form the
  controller's MQTT channel routes; the link authenticates every command message with the
  fleet's token and checks the device id (as the agent does), then the device's network faults
  act (``SimLink``), then ``sim.dispatch.answer`` — the read/command path, seq record and
  idempotency that the HTTP and memory front ends share.
- Network faults over MQTT: ``flaky`` and ``unreachable`` drop the message (no reply: the
  controller's call times out); while a device is ``away`` (``offline`` after its moment,
  ``late`` before it) or ``unreachable`` applies, its connection is down: cut without a clean
  DISCONNECT, so the broker publishes its last will (``{"online": false, "reason":
  "connection-lost"}``), and opened again (a new session) once the fault no longer holds. A
  watcher checks the devices that carry faults every ``WATCH_S`` seconds.
- ``start`` first connects once itself: a broker that is not there or refuses is an
  ``InputError`` naming it, at once (the links would otherwise knock with back-off forever).
  It returns once every device that is not away at start-up is connected (at most
  ``CONNECT_GATE`` connects in flight: a burst of 10,000 at once makes the broker time some out);
  leaving the block stops every link (retained status ``offline``/``shutdown``) and then clears
  the retained status topics of the whole fleet, so a shared broker keeps nothing of a fleet
  that is gone. Sessions expire ``SESSION_EXPIRY_S`` after a device goes away.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

from fleetgate.agent.mqtt_link import DeviceLink, LinkSettings
from fleetgate.core import mqttwire as wire
from fleetgate.errors import InputError
from fleetgate.sim.device import VirtualDevice
from fleetgate.sim.dispatch import answer
from fleetgate.sim.fleet import RunningFleet, SimFleet
from fleetgate.sim.fleetspec import FleetSpec

CONNECT_GATE = 256
SESSION_EXPIRY_S = 60  # the broker queues commands for an away device this long
WATCH_S = 0.2
READY_TIMEOUT_S = 300.0
PROBE_S = 10.0


class SimLink(DeviceLink):
    """A virtual device's link: the device's network faults act on each command message."""

    def __init__(self, settings: LinkSettings, dev: VirtualDevice, token: str) -> None:
        async def execute(command: str, body: Any) -> tuple[int, Any]:
            reply = await answer(dev, command, body)
            return reply.status, reply.body

        super().__init__(settings, execute, token=token)
        self.dev = dev

    async def _handle(self, message: Any) -> None:
        admission = self.dev.admit()
        if admission.drop is not None:
            return  # the network ate it: no reply, as a dead peer gives none
        if admission.delay_s > 0:
            await asyncio.sleep(admission.delay_s)
        await super()._handle(message)


class Connection:
    """One virtual device's connection over time: a ``DeviceLink`` runs once, so each
    (re)connection the watcher makes is a fresh link (and a fresh broker session id)."""

    def __init__(self, settings: LinkSettings, dev: VirtualDevice, token: str) -> None:
        self.settings, self.dev, self._token = settings, dev, token
        self.link: SimLink | None = None
        self.task: asyncio.Task[None] | None = None

    @property
    def up(self) -> bool:
        return self.task is not None and not self.task.done()

    @property
    def connected(self) -> bool:
        return self.link is not None and self.link.connected.is_set()

    @property
    def last_error(self) -> str | None:
        return self.link.last_error if self.link is not None else None

    def open(self) -> None:
        if not self.up:
            self.link = SimLink(self.settings, self.dev, self._token)
            self.task = asyncio.create_task(self.link.run(), name=f"sim-{self.dev.device.id}")

    async def wait_connected(self) -> None:
        assert self.link is not None
        await self.link.connected.wait()

    async def stop(self) -> None:
        """A clean stop: retained ``offline``/``shutdown``, DISCONNECT (no will)."""
        if self.link is not None and self.up:
            await self.link.stop()
        await self._join()

    async def cut(self) -> None:
        """Drop the connection as a crash or a lost network would: no DISCONNECT, so the broker
        publishes the last will; it stays down until ``open()``."""
        link = self.link
        client = link._client if link is not None else None
        paho = getattr(client, "_client", None)  # aiomqtt's paho client: its socket
        sock = paho.socket() if paho is not None else None
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)  # before stop(): its goodbye cannot go out
        if link is not None:
            await link.stop()
        await self._join()
        lost = getattr(client, "_disconnected", None)  # aiomqtt keeps the loss's exception
        if isinstance(lost, asyncio.Future) and lost.done() and not lost.cancelled():
            lost.exception()  # retrieved: asyncio does not log it as forgotten

    async def _join(self) -> None:
        task, self.task = self.task, None
        if task is not None:
            with contextlib.suppress(Exception):  # on a timeout wait_for cancels it
                await asyncio.wait_for(task, 10)


class MqttFleet(RunningFleet):
    """A running virtual fleet on a broker. Build with ``MqttFleet.start(spec, broker)``."""

    def __init__(
        self, model: SimFleet, broker: wire.BrokerAddress, links: dict[str, Connection]
    ) -> None:
        self.model = model
        self.broker = broker
        self.url = broker.key
        self.links = links

    def connected(self) -> int:
        """How many devices are connected to the broker now."""
        return sum(1 for link in self.links.values() if link.connected)

    @classmethod
    @asynccontextmanager
    async def start(
        cls,
        spec: FleetSpec,
        broker: str = "mqtt://127.0.0.1:1883",
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> AsyncIterator[MqttFleet]:
        try:
            address, path = wire.parse_broker(broker)
        except wire.WireError as exc:
            raise InputError(f"--broker: {exc}") from None
        if path:
            raise InputError(f"--broker {broker!r}: expected mqtt://HOST[:PORT] without a path")
        model = SimFleet(spec, lambda _i, dev_id: f"{address.key}/{dev_id}", clock=clock)
        links = {
            dev_id: Connection(
                LinkSettings(
                    broker=address.key,
                    device_id=dev_id,
                    session_expiry_s=SESSION_EXPIRY_S,
                    status={"agent_version": "sim"},
                ),
                dev,
                model.token,
            )
            for dev_id, dev in model.by_id.items()
        }
        await _probe(address)
        fleet = cls(model, address, links)
        watcher: asyncio.Task[None] | None = None
        try:
            await fleet._connect_all()
            watcher = asyncio.create_task(fleet._watch(), name="sim-mqtt-watch")
            yield fleet
        finally:
            if watcher is not None:
                watcher.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await watcher
            await fleet._close()

    def _down(self, dev: VirtualDevice) -> bool:
        return dev.away() or dev.first_fault("unreachable") is not None

    async def _connect_all(self) -> None:
        gate = asyncio.Semaphore(CONNECT_GATE)

        async def connect(link: Connection) -> None:
            async with gate:
                link.open()
                await link.wait_connected()

        starting = [connect(link) for link in self.links.values() if not self._down(link.dev)]
        try:
            await asyncio.wait_for(asyncio.gather(*starting), READY_TIMEOUT_S)
        except asyncio.TimeoutError:
            down = len(starting) - self.connected()
            why = next((x.last_error for x in self.links.values() if x.last_error), "no answer")
            raise InputError(
                f"--broker {self.url}: {down} device(s) could not connect in "
                f"{READY_TIMEOUT_S:.0f} s ({why})"
            ) from None

    async def _watch(self) -> None:
        """Apply connection faults: cut a device that should be away, reopen one that is back."""
        while True:
            await asyncio.sleep(WATCH_S)
            for dev_id, dev in self.model.by_id.items():
                link = self.links[dev_id]
                if not dev.faults:
                    if not link.up:
                        link.open()  # faults cleared
                    continue
                down = self._down(dev)
                if down and link.up:
                    await link.cut()
                elif not down and not link.up:
                    link.open()

    async def _close(self) -> None:
        up = [link for link in self.links.values() if link.up]
        gate = asyncio.Semaphore(CONNECT_GATE)

        async def stop(link: Connection) -> None:
            async with gate:
                await link.stop()

        await asyncio.gather(*(stop(link) for link in up))
        await self._clear_retained()

    async def _clear_retained(self) -> None:
        """Empty retained payloads on every status topic: nothing of this fleet stays behind."""
        import aiomqtt

        with contextlib.suppress(Exception):
            async with aiomqtt.Client(
                self.broker.host,
                self.broker.port,
                protocol=aiomqtt.ProtocolVersion.V5,
            ) as client:
                for dev_id in self.links:
                    await client.publish(wire.status_topic(dev_id), b"", qos=1, retain=True)


async def _probe(broker: wire.BrokerAddress) -> None:
    import aiomqtt

    try:
        async with aiomqtt.Client(
            broker.host, broker.port, protocol=aiomqtt.ProtocolVersion.V5, timeout=PROBE_S
        ):
            pass
    except (aiomqtt.MqttError, OSError) as exc:
        raise InputError(f"--broker {broker.key}: cannot connect: {exc}") from None
