"""``MqttChannel``: the agent protocol through MQTT 5 brokers (aiomqtt), for devices that dial out.

Contract (on top of ``Channel``'s, transports/channel.py; wire format: core/mqttwire.py and
docs/transports.md "MQTT"):
- Address ``mqtt://HOST[:PORT]/<topic id>`` or ``mqtts://…`` (TLS); no path = the device id.
  A malformed address is ``DeviceRefusal`` ``bad-address`` (not retryable).
- ONE connection per broker, opened on first use inside the running loop (MQTT 5, a fresh
  client id, clean session), subscribed to ``fleetgate/v1/+/reply`` and
  ``fleetgate/v1/+/status``. ``send`` publishes the command (QoS 1, Response Topic = the
  device's reply topic, Correlation Data = 16 fresh random bytes, the device's token from
  ``TokenSource``) and waits for the reply with that Correlation Data.
- A reply is accepted only from the addressed device's reply topic with a pending
  Correlation Data: one on another topic (a device answering for another) or with an
  unknown/expired Correlation Data is ignored and counted in ``counters`` (``wrong-topic``,
  ``unknown-correlation``, ``malformed``) — never taken as anyone's answer.
- "No answer": broker unreachable → ``ChannelDown("connection-refused")`` (a failed connect
  is remembered for ``retry_after`` seconds so a burst of calls does not hammer a dead
  broker); connection lost with calls pending → each fails ``ChannelDown("connection-reset")``;
  a device whose retained status says offline → ``ChannelDown("offline")`` at once. All are
  retryable (the client maps them to ``TransportUnavailable``); the engine resends the same
  seq and the device answers from its record.
- The broker refusing the controller's own credential (CONNACK "bad user name or password"
  / "not authorized") is ``DeviceRefusal`` ``broker-auth``, not retryable: asking again will not
  fix the configuration. Credentials: ``MqttCredentials`` (``from_env``:
  ``FLEETGATE_MQTT_USERNAME`` and ``FLEETGATE_MQTT_PASSWORD`` or ``FLEETGATE_MQTT_PASSWORD_FILE``);
  TLS for ``mqtts``: ``FLEETGATE_MQTT_CA_BUNDLE``, else ``controller_tls_from_env``'s context,
  else the system store. Neither a password nor a token ever reaches a log line or a message.
- Heartbeat without polling: ``presence(device_topic_id)`` → ``Presence(online, at,
  last_seen, reason)`` from the retained status and the last will; ``last_seen`` is refreshed
  by every status and reply the device sends. ``watch(device)`` connects to its broker
  without sending anything, so the retained statuses of a fleet arrive before a first call.
- ``aclose()`` disconnects every broker and fails pending calls; idempotent.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
import uuid
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fleetgate.core import mqttwire as wire
from fleetgate.core.model import Device
from fleetgate.errors import InputError
from fleetgate.transports.channel import ChannelDown, Reply
from fleetgate.transports.errors import DeviceRefusal
from fleetgate.transports.tokens import TokenSource

if TYPE_CHECKING:
    import ssl

    import aiomqtt

log = logging.getLogger("fleetgate.transports.mqtt")

MQTT_SCHEMES = ("mqtt", "mqtts")
# CONNACK reason codes meaning "your credential is refused" (MQTT 5 §3.2.2.2; 4/5 in 3.1.1).
_AUTH_CODES = frozenset({4, 5, 134, 135})
_NO_OWN_DEADLINE = 24 * 3600.0


@dataclass(frozen=True, slots=True)
class MqttCredentials:
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    tls: ssl.SSLContext | None = None

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> MqttCredentials:
        env = os.environ if env is None else env
        username = env.get("FLEETGATE_MQTT_USERNAME") or None
        password = env.get("FLEETGATE_MQTT_PASSWORD") or None
        pw_file = env.get("FLEETGATE_MQTT_PASSWORD_FILE") or None
        if password is not None and pw_file is not None:
            raise InputError(
                "set one of FLEETGATE_MQTT_PASSWORD or FLEETGATE_MQTT_PASSWORD_FILE, not both"
            )
        if pw_file is not None:
            try:
                password = Path(pw_file).read_text(encoding="utf-8").strip() or None
            except OSError as exc:
                raise InputError(
                    f"FLEETGATE_MQTT_PASSWORD_FILE: cannot read {pw_file}: {exc.strerror}"
                ) from None
            if password is None:
                raise InputError(f"FLEETGATE_MQTT_PASSWORD_FILE: {pw_file} is empty")
        if password is not None and username is None:
            raise InputError("FLEETGATE_MQTT_PASSWORD is set without FLEETGATE_MQTT_USERNAME")
        return cls(username, password, _tls_from_env(env))


def _tls_from_env(env: Mapping[str, str]) -> ssl.SSLContext | None:
    ca = env.get("FLEETGATE_MQTT_CA_BUNDLE") or None
    if ca is not None:
        import ssl

        try:
            ctx = ssl.create_default_context(cafile=ca)
        except (OSError, ssl.SSLError) as exc:
            raise InputError(f"FLEETGATE_MQTT_CA_BUNDLE: unusable: {exc}") from exc
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        return ctx
    from fleetgate.transports.http import controller_tls_from_env

    return controller_tls_from_env(env)


@dataclass(slots=True)
class Presence:
    """What the broker last told us about a device, without asking it."""

    online: bool | None = None  # None: no status seen yet
    at: float | None = None  # the status's own timestamp (device clock)
    last_seen: float | None = None  # our clock: the last status or reply from it
    reason: str | None = None  # offline: connection-lost (will) | shutdown


@dataclass(slots=True)
class _Pending:
    topic: str  # the only reply topic accepted for it
    future: asyncio.Future[Reply]


class _BrokerLink:
    """The controller's one connection to one broker."""

    def __init__(self, channel: MqttChannel, broker: wire.BrokerAddress) -> None:
        self.channel = channel
        self.broker = broker
        self.client: aiomqtt.Client | None = None
        self._lock = asyncio.Lock()
        self._reader: asyncio.Task[None] | None = None
        self._failed: tuple[float, Exception] | None = None
        self.pending: dict[bytes, _Pending] = {}
        self.seen: set[str] = set()  # topic ids whose status came through this broker

    async def ready(self, device: Device) -> aiomqtt.Client:
        client = self.client
        if client is not None:
            return client
        async with self._lock:
            if self.client is not None:
                return self.client
            now = time.monotonic()
            if self._failed is not None and now - self._failed[0] < self.channel.retry_after:
                raise self._failed[1]
            try:
                self.client = await self._connect(device)
            except (ChannelDown, DeviceRefusal) as exc:
                self._failed = (now, exc)
                raise
            self._failed = None
            return self.client

    async def _connect(self, device: Device) -> aiomqtt.Client:
        import aiomqtt

        creds = self.channel.credentials
        tls = None
        if self.broker.tls:
            import ssl

            tls = creds.tls or ssl.create_default_context()
        from paho.mqtt.packettypes import PacketTypes
        from paho.mqtt.properties import Properties

        # Receive Maximum: how many QoS 1 messages the broker may have in flight to us. Left
        # to the library, Mosquitto sends 20 and queues 1,000 more, and DROPS the rest: a
        # fleet's retained statuses on subscribe (or a wave's replies at once) beyond 1,020
        # would vanish. The MQTT 5 maximum lets a 10,000-device fleet through.
        connect = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        connect.ReceiveMaximum = 65535
        client = aiomqtt.Client(
            self.broker.host,
            self.broker.port,
            username=creds.username,
            password=creds.password,
            identifier=f"fleetgate-controller-{uuid.uuid4().hex[:12]}",
            protocol=aiomqtt.ProtocolVersion.V5,
            properties=connect,
            clean_start=True,
            keepalive=self.channel.keepalive,
            tls_context=tls,
            timeout=self.channel.connect,
            max_inflight_messages=self.channel.inflight,
        )
        # aiomqtt logs a warning for every publish while more than 10 are pending: a deployment
        # step publishes to `concurrency` devices at once by design (the demo printed hundreds).
        client.pending_calls_threshold = 1_000_000
        try:
            await asyncio.wait_for(client.__aenter__(), self.channel.connect)
        except asyncio.TimeoutError:
            raise ChannelDown(
                "timeout",
                f"broker {self.broker.key}: no connection within {self.channel.connect:g}s",
            ) from None
        except aiomqtt.MqttCodeError as exc:
            if _rc(exc) in _AUTH_CODES:
                raise DeviceRefusal(
                    f"{device.id}: broker {self.broker.key} refused the controller's "
                    f"credential ({exc}); check FLEETGATE_MQTT_USERNAME/PASSWORD",
                    device_id=device.id,
                    code="broker-auth",
                    status=None,
                    retryable=False,
                ) from None
            raise ChannelDown("connection-refused", f"broker {self.broker.key}: {exc}") from None
        except aiomqtt.MqttError as exc:
            raise ChannelDown("connection-refused", f"broker {self.broker.key}: {exc}") from None
        try:
            await client.subscribe(wire.ALL_REPLIES, qos=wire.QOS)
            await client.subscribe(wire.ALL_STATUS, qos=wire.QOS)
        except aiomqtt.MqttError as exc:
            with contextlib.suppress(Exception):
                await client.__aexit__(None, None, None)
            raise ChannelDown("connection-reset", f"broker {self.broker.key}: {exc}") from None
        self._reader = asyncio.create_task(self._read(client))
        return client

    async def _read(self, client: aiomqtt.Client) -> None:
        try:
            async for message in client.messages:
                self.channel._on_message(self, str(message.topic), message)
        except Exception as exc:  # MqttError: the connection is gone
            log.warning("mqtt broker %s: connection lost: %s", self.broker.key, exc)
        finally:
            self._lost(client, "connection lost")

    def _lost(self, client: aiomqtt.Client, why: str) -> None:
        if self.client is client:
            self.client = None
        # What we knew of these devices came through this connection: it is not current any
        # more (a restarted broker may have forgotten every retained status).
        for topic_id in self.seen:
            presence = self.channel._presence.get(topic_id)
            if presence is not None:
                presence.online, presence.reason = None, None
        pending, self.pending = self.pending, {}
        for p in pending.values():
            if not p.future.done():
                p.future.set_exception(
                    ChannelDown("connection-reset", f"broker {self.broker.key}: {why}")
                )

    async def close(self) -> None:
        client, self.client = self.client, None
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(BaseException):
                await self._reader
        if client is not None:
            self._lost(client, "channel closed")
            with contextlib.suppress(Exception):
                await client.__aexit__(None, None, None)


class MqttChannel:
    def __init__(
        self,
        tokens: TokenSource,
        *,
        credentials: MqttCredentials | None = None,
        connect: float = 3.0,
        keepalive: int = 30,
        retry_after: float = 1.0,
        inflight: int = 1000,
        command_expiry_s: int = 3600,
    ) -> None:
        self.tokens = tokens
        self._credentials = credentials
        self.connect = connect
        self.keepalive = keepalive
        self.retry_after = retry_after
        self.inflight = inflight
        # A command nobody picked up within this long is dropped by the broker (MQTT 5 Message
        # Expiry): a device back after a week must not run a week-old stage. The engine
        # resends what it still wants, with the same seq.
        self.command_expiry_s = command_expiry_s
        self.counters: Counter[str] = Counter()
        self._presence: dict[str, Presence] = {}
        self._brokers: dict[str, _BrokerLink] = {}
        self._closed = False

    @property
    def credentials(self) -> MqttCredentials:
        if self._credentials is None:  # read at first connect: an export after start counts
            self._credentials = MqttCredentials.from_env()
        return self._credentials

    async def watch(self, device: Device) -> None:
        """Connect to ``device``'s broker now (without sending anything), so its devices'
        retained statuses arrive: presence for a fleet before the first call."""
        broker, _ = self._address(device)
        await self._link(broker).ready(device)

    def _link(self, broker: wire.BrokerAddress) -> _BrokerLink:
        link = self._brokers.get(broker.key)
        if link is None:
            link = self._brokers[broker.key] = _BrokerLink(self, broker)
        return link

    def presence(self, topic_id: str) -> Presence | None:
        return self._presence.get(topic_id)

    @property
    def presences(self) -> Mapping[str, Presence]:
        return self._presence

    async def aclose(self) -> None:
        self._closed = True
        brokers, self._brokers = self._brokers, {}
        for link in brokers.values():
            await link.close()

    def _address(self, device: Device) -> tuple[wire.BrokerAddress, str]:
        try:
            broker, segment = wire.parse_broker(device.address)
        except wire.WireError as exc:
            raise DeviceRefusal(
                f"{device.id}: address {exc}",
                device_id=device.id,
                code="bad-address",
                status=None,
                retryable=False,
            ) from None
        segment = segment or device.id
        if not wire.valid_segment(segment):
            raise DeviceRefusal(
                f"{device.id}: {device.id!r} cannot be an MQTT topic segment",
                device_id=device.id,
                code="bad-address",
                status=None,
                retryable=False,
            )
        return broker, segment

    async def send(self, device: Device, command: str, body: dict[str, Any] | None) -> Reply:
        if self._closed:
            raise RuntimeError("MqttChannel is closed")
        broker, topic_id = self._address(device)
        token = self.tokens.token_for(device)
        link = self._link(broker)
        client = await link.ready(device)
        seen = self._presence.get(topic_id)
        if seen is not None and seen.online is False:  # as of this connection (see _lost)
            raise ChannelDown("offline", f"the broker says it is offline ({seen.reason})")

        from paho.mqtt.packettypes import PacketTypes
        from paho.mqtt.properties import Properties

        correlation = os.urandom(16)
        future: asyncio.Future[Reply] = asyncio.get_running_loop().create_future()
        link.pending[correlation] = _Pending(wire.reply_topic(topic_id), future)
        props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
        props.ResponseTopic = wire.reply_topic(topic_id)
        props.CorrelationData = correlation
        props.MessageExpiryInterval = self.command_expiry_s
        try:
            try:
                await client.publish(
                    wire.cmd_topic(topic_id),
                    wire.encode_command(command, device.id, token, body),
                    qos=wire.QOS,
                    properties=props,
                    # The broker's PUBACK may queue behind thousands of others; the whole
                    # call's deadline is the client's (its timeout cancels this).
                    timeout=_NO_OWN_DEADLINE,
                )
            except Exception as exc:  # aiomqtt.MqttError: not (surely) handed to the broker
                raise ChannelDown(
                    "connection-reset", f"broker {broker.key}: publish failed: {type(exc).__name__}"
                ) from None
            return await future
        finally:
            link.pending.pop(correlation, None)

    # -- incoming --------------------------------------------------------------------------------
    def _on_message(self, link: _BrokerLink, topic: str, message: aiomqtt.Message) -> None:
        parts = wire.split_topic(topic)
        if parts is None:
            self.counters["foreign-topic"] += 1
            return
        topic_id, kind = parts
        payload = message.payload if isinstance(message.payload, bytes) else b""
        if kind == "status":
            link.seen.add(topic_id)
            came_online = self._on_status(topic_id, payload)
            if came_online and not message.retain:
                self._device_reconnected(link, topic_id)
        elif kind == "reply":
            self._on_reply(link, topic, topic_id, payload, message)

    def _device_reconnected(self, link: _BrokerLink, topic_id: str) -> None:
        """A device said "online" live: it (re)connected just now. A command published before
        may have found no subscription (a restarted broker forgot its session) and would wait
        for the whole call timeout; fail those calls now, retryably — the resend with the same
        seq is answered from the device's record if the first one did arrive."""
        topic = wire.reply_topic(topic_id)
        for p in link.pending.values():
            if p.topic == topic and not p.future.done():
                p.future.set_exception(
                    ChannelDown("connection-reset", "the device reconnected meanwhile; resend")
                )

    def _on_status(self, topic_id: str, payload: bytes) -> bool:
        """Record a status; True when it says online."""
        if not payload:  # a cleared retained status: forget the device's presence
            self._presence.pop(topic_id, None)
            return False
        try:
            doc = wire.parse_status(payload)
        except wire.WireError:
            self.counters["malformed"] += 1
            return False
        p = self._presence.setdefault(topic_id, Presence())
        p.online = bool(doc["online"])
        p.at = float(doc["at"])
        reason = doc.get("reason")
        p.reason = reason if isinstance(reason, str) and not p.online else None
        p.last_seen = time.time()
        return p.online

    def _on_reply(
        self,
        link: _BrokerLink,
        topic: str,
        topic_id: str,
        payload: bytes,
        message: aiomqtt.Message,
    ) -> None:
        correlation = getattr(message.properties, "CorrelationData", None)
        pending = link.pending.get(correlation) if isinstance(correlation, bytes) else None
        if pending is None:
            self.counters["unknown-correlation"] += 1
            return
        if topic != pending.topic:
            # Someone else's topic answering our question: never accepted (the broker's ACL
            # should have stopped it; this is the second lock).
            self.counters["wrong-topic"] += 1
            log.warning("mqtt: a reply on %s for a call to another device: ignored", topic)
            return
        p = self._presence.setdefault(topic_id, Presence())
        p.last_seen = time.time()
        p.online, p.reason = True, None
        link.seen.add(topic_id)
        try:
            status, body = wire.parse_reply(payload)
        except wire.WireError:
            self.counters["malformed"] += 1
            status, body = 502, None  # a broken answer: retryable, never a success
        if not pending.future.done():
            pending.future.set_result(Reply(status, body))


def _rc(exc: Any) -> int | None:
    rc = getattr(exc, "rc", None)
    value = getattr(rc, "value", rc)
    return value if isinstance(value, int) else None
