"""``DeviceLink``: a device's one outbound MQTT 5 connection that carries the agent protocol.

Used by the real agent (``agent/server.py`` when ``[mqtt]`` is configured) and by the
simulator's virtual devices alike: it knows topics, credentials and reconnection, nothing
about what a command does. The wire format is ``core/mqttwire.py`` (docs/transports.md "MQTT").

Contract:
- ``DeviceLink(settings, execute, token=...)``; ``await link.run()`` holds ONE connection to
  ``settings.broker`` until ``await link.stop()``. ``execute(command, body) -> (status, body)``
  is the device's dispatcher (the agent's: ``agent/mqtt_serve.py`` ``agent_dispatcher``).
- Connecting: MQTT 5, client id ``settings.client_id`` (default: the device id), username and
  password from the settings (the broker's per-device credential), ``clean_start=False`` with
  a session expiry of ``session_expiry_s``: the broker keeps the subscription and queues the
  QoS 1 commands published while the device is away, and delivers them on reconnect. Its last
  will is the retained ``status`` ``{"online": false, "reason": "connection-lost"}``; once
  connected it subscribes to its ``cmd`` topic (QoS 1) and publishes the retained ``status``
  ``{"online": true, ...}``. ``stop()`` publishes ``{"online": false, "reason": "shutdown"}``
  and disconnects cleanly (no will).
- Every command message is authenticated before it is executed, as over HTTP
  (docs/protocol.md §1): its ``token`` is compared to ``token`` with ``hmac.compare_digest``
  (wrong or missing → 401 ``unauthorized``), then its ``device`` must be this device (else
  403 ``wrong-device``). A message that is not the protocol's shape is 400 ``bad-request``;
  one without a Response Topic and Correlation Data cannot be answered and is dropped (logged).
- Commands run concurrently as tasks (reads must not wait for a stage; the agent serialises
  its commands itself). The reply goes to this device's own reply topic — the only one the
  broker lets it write — with the command's Correlation Data; a Response Topic naming any
  other topic is answered there too, never elsewhere. A reply that cannot be published
  (connection lost) is kept (at most ``OUTBOX_MAX``) and published after the reconnection.
- Lost connection or refused connect (wrong credential, broker down): it waits a jittered
  exponential back-off (``backoff_initial_s`` doubling to ``backoff_max_s``, each wait drawn
  from [½, 1] of it) and connects again; never a busy loop. ``state`` says ``connecting``,
  ``online``, ``waiting`` or ``stopped``; ``last_error`` why the last attempt failed (never
  the password). A link runs once: after ``stop()`` (even one called before ``run()``
  started) ``run()`` returns.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import random
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from fleetgate.core import mqttwire as wire

if TYPE_CHECKING:
    import ssl

    import aiomqtt

log = logging.getLogger("fleetgate.agent")

Execute = Callable[[str, Any], Awaitable[tuple[int, Any]]]
OUTBOX_MAX = 256


@dataclass(frozen=True, slots=True)
class LinkSettings:
    broker: str  # mqtt://host[:port] or mqtts://host[:port]
    device_id: str
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    client_id: str | None = None  # default: the device id (the broker keys the session by it)
    tls: ssl.SSLContext | None = None  # mqtts: None = the system trust store
    session_expiry_s: int = 7 * 24 * 3600
    keepalive_s: int = 30
    connect_timeout_s: float = 10.0
    backoff_initial_s: float = 0.5
    backoff_max_s: float = 30.0
    # Fields added to every online status message (agent_version, kind, …).
    status: Mapping[str, Any] = field(default_factory=dict)


def backoff_delays(initial: float, maximum: float) -> Callable[[int], float]:
    """The wait before attempt ``n`` (0-based) after a failure: full-range jitter on [½, 1]."""

    def delay(n: int) -> float:
        ceiling: float = min(maximum, initial * 2.0 ** min(n, 30))
        return ceiling * random.uniform(0.5, 1.0)

    return delay


class DeviceLink:
    def __init__(self, settings: LinkSettings, execute: Execute, *, token: str) -> None:
        if not wire.valid_segment(settings.device_id):
            raise ValueError(f"device id {settings.device_id!r} cannot be a topic segment")
        self.settings = settings
        self.broker, _ = wire.parse_broker(settings.broker)
        self._execute = execute
        self._token = token.encode()
        self.device_id = settings.device_id
        self.state = "stopped"
        self.last_error: str | None = None
        self.connections = 0  # successful connects (tests, status)
        self.connected = asyncio.Event()
        self._client: aiomqtt.Client | None = None
        self._stop = asyncio.Event()
        self._wake = asyncio.Event()  # set by stop(): leave the message loop
        self._tasks: set[asyncio.Task[None]] = set()
        self._outbox: list[tuple[str, bytes, bytes]] = []  # (topic, payload, correlation)
        self._delay = backoff_delays(settings.backoff_initial_s, settings.backoff_max_s)

    def __repr__(self) -> str:  # the token and password stay out of logs
        return f"DeviceLink({self.device_id!r}, {self.broker.key}, {self.state})"

    # -- lifecycle -------------------------------------------------------------------------------
    async def run(self) -> None:
        """Connect, serve, reconnect after any loss, until ``stop()``."""
        failures = 0
        while not self._stop.is_set():  # (one run per link: a stopped link stays stopped)
            self.state = "connecting"
            try:
                await self._session()
                failures = 0  # it was up: start the back-off over
            except Exception as exc:
                # aiomqtt.MqttError (refused, lost), OSError, a connect timeout: all mean "not
                # connected now"; the back-off below keeps retrying bounded.
                why = _describe(exc)
                if why != self.last_error:
                    log.warning("mqtt %s: %s", self.broker.key, why)
                self.last_error = why
            finally:
                self.connected.clear()
                self._client = None
            if self._stop.is_set():
                break
            self.state = "waiting"
            wait = self._delay(failures)
            failures += 1
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._stop.wait(), wait)
        self.state = "stopped"

    async def stop(self) -> None:
        """Leave the message loop: the connection says ``offline`` (retained) and disconnects
        without the will; ``run()`` then returns. Commands in flight finish on their own."""
        self._stop.set()
        self._wake.set()

    # -- one connection --------------------------------------------------------------------------
    def _make_client(self) -> aiomqtt.Client:
        import aiomqtt
        from paho.mqtt.packettypes import PacketTypes
        from paho.mqtt.properties import Properties

        s = self.settings
        connect = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        connect.SessionExpiryInterval = s.session_expiry_s
        will = aiomqtt.Will(
            wire.status_topic(self.device_id),
            wire.encode_status(self.device_id, False, time.time(), reason="connection-lost"),
            qos=wire.QOS,
            retain=True,
        )
        tls = s.tls
        if self.broker.tls and tls is None:
            import ssl

            tls = ssl.create_default_context()
        return aiomqtt.Client(
            self.broker.host,
            self.broker.port,
            username=s.username,
            password=s.password,
            identifier=s.client_id or self.device_id,
            protocol=aiomqtt.ProtocolVersion.V5,
            will=will,
            clean_start=False,
            properties=connect,
            keepalive=s.keepalive_s,
            tls_context=tls if self.broker.tls else None,
            timeout=s.connect_timeout_s,
            max_inflight_messages=64,
        )

    async def _session(self) -> None:
        client = self._make_client()
        # (asyncio.timeout is 3.11+; the agent runs on 3.10.)
        await asyncio.wait_for(client.__aenter__(), self.settings.connect_timeout_s)
        try:
            self._client = client
            await client.subscribe(wire.cmd_topic(self.device_id), qos=wire.QOS)
            await client.publish(
                wire.status_topic(self.device_id),
                wire.encode_status(
                    self.device_id,
                    True,
                    time.time(),
                    session=uuid.uuid4().hex[:12],
                    **self.settings.status,
                ),
                qos=wire.QOS,
                retain=True,
            )
            self.connections += 1
            self.state = "online"
            if self.last_error is not None:
                log.info("mqtt %s: connected again", self.broker.key)
            self.last_error = None
            self.connected.set()
            await self._flush_outbox(client)
            await self._serve(client)  # returns only when stop() wakes it
            with contextlib.suppress(Exception):
                await asyncio.wait_for(
                    client.publish(
                        wire.status_topic(self.device_id),
                        wire.encode_status(self.device_id, False, time.time(), reason="shutdown"),
                        qos=wire.QOS,
                        retain=True,
                    ),
                    2.0,
                )
        finally:
            self._client = None
            self.connected.clear()
            with contextlib.suppress(Exception):
                await client.__aexit__(None, None, None)

    async def _serve(self, client: aiomqtt.Client) -> None:
        """Dispatch messages until the connection drops (raises) or ``stop()`` wakes us."""
        messages = client.messages.__aiter__()
        wake = asyncio.ensure_future(self._wake.wait())
        try:
            while True:
                nxt = asyncio.ensure_future(messages.__anext__())
                done, _ = await asyncio.wait({nxt, wake}, return_when=asyncio.FIRST_COMPLETED)
                if nxt not in done:
                    nxt.cancel()
                    with contextlib.suppress(BaseException):
                        await nxt
                    return
                message = nxt.result()  # raises MqttError when the connection is lost
                task = asyncio.create_task(self._handle(message))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
        finally:
            wake.cancel()

    # -- one command -----------------------------------------------------------------------------
    async def _handle(self, message: aiomqtt.Message) -> None:
        props = message.properties
        correlation = getattr(props, "CorrelationData", None) if props is not None else None
        response_topic = getattr(props, "ResponseTopic", None) if props is not None else None
        if not isinstance(correlation, bytes) or not response_topic:
            log.warning("mqtt: a command without response topic or correlation data: dropped")
            return
        status, body = await self._answer(message.payload)
        # Our own reply topic whatever the message says: the broker lets us write nothing else,
        # and a command must not steer a device into publishing elsewhere.
        topic = wire.reply_topic(self.device_id)
        await self._publish_reply(topic, wire.encode_reply(status, body), correlation)

    async def _answer(self, payload: Any) -> tuple[int, Any]:
        from fleetgate.agent.reply import error_body

        if not isinstance(payload, (bytes, bytearray)):
            return 400, error_body("bad-request", "payload is not bytes")
        try:
            cmd = wire.parse_command(bytes(payload))
        except wire.WireError as exc:
            return 400, error_body("bad-request", str(exc))
        if not hmac.compare_digest(cmd.token.encode("utf-8", "replace"), self._token):
            return 401, error_body("unauthorized", "missing or wrong bearer token")
        if cmd.device != self.device_id:
            return 403, error_body("wrong-device", "this agent is not the requested device")
        try:
            return await self._execute(cmd.command, cmd.body)
        except Exception as exc:  # never leave the controller without an answer
            log.exception("mqtt: %s failed", cmd.command)
            return 500, error_body("internal", f"{type(exc).__name__}: {exc}")

    async def _publish_reply(self, topic: str, payload: bytes, correlation: bytes) -> None:
        client = self._client
        if client is not None:
            try:
                await self._publish(client, topic, payload, correlation)
                return
            except Exception as exc:
                log.warning("mqtt: reply not sent (%s): kept for the reconnection", _describe(exc))
        if len(self._outbox) < OUTBOX_MAX:
            self._outbox.append((topic, payload, correlation))

    async def _flush_outbox(self, client: aiomqtt.Client) -> None:
        while self._outbox:
            topic, payload, correlation = self._outbox[0]
            await self._publish(client, topic, payload, correlation)
            self._outbox.pop(0)

    @staticmethod
    async def _publish(
        client: aiomqtt.Client, topic: str, payload: bytes, correlation: bytes
    ) -> None:
        from paho.mqtt.packettypes import PacketTypes
        from paho.mqtt.properties import Properties

        props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
        props.CorrelationData = correlation
        await client.publish(topic, payload, qos=wire.QOS, properties=props)


def _describe(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError | asyncio.TimeoutError):
        return "connect timed out"
    text = str(exc) or type(exc).__name__
    return f"{type(exc).__name__}: {text}"
