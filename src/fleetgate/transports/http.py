"""``HttpTransport``: the client the CLI, the server and the benchmarks open, over
``LeanHttpChannel`` (transports/lean.py); ``HttpChannel``: the same protocol over aiohttp, the
baseline ``bench/client_bench.py`` measures the lean channel against (docs/adr/0012) and a
drop-in ``Channel`` should the lean one ever need to be set aside.

Contract (on top of ``Channel``'s, transports/channel.py):
- ONE pooled ``aiohttp.ClientSession`` for all devices, created on first use inside the running
  loop and closed by ``aclose()`` (after which ``send`` raises ``RuntimeError``). Its connector
  allows ``pool`` connections in total and ``limit_per_host`` per host:port (0 = no per-host
  cap): the simulator serves thousands of devices on one host:port with per-device path
  prefixes, so a small per-host cap would serialise a whole virtual fleet.
- URL = the device's ``address`` (which may carry a path prefix such as
  ``http://127.0.0.1:9100/d/rpi-07``) + ``/v1/<command>``. Reads (``ping``, ``facts``,
  ``health``, ``logs``) are GETs whose body becomes the query string; commands are POSTs of the
  JSON body.
- Headers: ``Authorization: Bearer <token>`` and ``X-Fleetgate-Device: <device id>``. Tokens come
  from ``TokenSource``; they never appear in a log line or an exception message.
- TLS: a device whose ``address`` is ``https://…`` is reached over TLS, verified against the
  system trust store or ``tls`` (an ``ssl.SSLContext``; ``controller_tls`` builds it from a CA
  bundle and, for agents that require mutual TLS, the controller's client certificate and key;
  the CLI and ``serve`` read them from ``FLEETGATE_CA_BUNDLE``, ``FLEETGATE_CLIENT_CERT``,
  ``FLEETGATE_CLIENT_KEY``). A certificate that does not verify is ``DeviceRefusal``
  ``tls-error``, not retryable: a misconfiguration or someone in the middle, and asking again
  changes neither.
- Failures: connection refused or a connect timeout (``connect`` seconds) →
  ``ChannelDown("connection-refused" | "timeout")``, reset/closed without an answer →
  ``connection-reset``, other client errors → ``transport``; an address that is not a URL →
  ``DeviceRefusal`` ``bad-address``. The call's own timeout is the client's.
- No retries of its own. (aiohttp itself repeats an idempotent GET once when the server closes
  the connection without answering — the keep-alive race; commands are POSTs and never are.)
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import aiohttp

from fleetgate.core.model import Device
from fleetgate.errors import InputError
from fleetgate.transports.base import CallTimeouts, DeviceRefusal
from fleetgate.transports.channel import READS, ChannelDown, Reply
from fleetgate.transports.client import DeviceClient, OnCall
from fleetgate.transports.lean import DEVICE_HEADER, LeanHttpChannel
from fleetgate.transports.router import Router
from fleetgate.transports.tokens import TokenSource

if TYPE_CHECKING:
    import ssl

    from fleetgate.transports.mqtt import MqttCredentials

__all__ = ["DEVICE_HEADER", "HttpChannel", "HttpTransport", "LeanHttpChannel", "controller_tls"]
HTTP_SCHEMES = ("http", "https")


def controller_tls(
    ca_bundle: str | None = None, client_cert: str | None = None, client_key: str | None = None
) -> ssl.SSLContext | None:
    """The context for ``https://`` devices: ``ca_bundle`` instead of the system store, and the
    controller's certificate for agents that require mutual TLS. None: nothing configured."""
    if ca_bundle is None and client_cert is None:
        return None
    import ssl

    try:
        ctx = ssl.create_default_context(cafile=ca_bundle)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        if client_cert is not None:
            ctx.load_cert_chain(client_cert, client_key)
    except (OSError, ssl.SSLError) as exc:
        raise InputError(f"controller TLS files unusable: {exc}") from exc
    return ctx


def controller_tls_from_env(env: Mapping[str, str] | None = None) -> ssl.SSLContext | None:
    """``controller_tls`` from ``FLEETGATE_CA_BUNDLE``, ``FLEETGATE_CLIENT_CERT`` and
    ``FLEETGATE_CLIENT_KEY`` (the key may live in the certificate file)."""
    env = os.environ if env is None else env
    cert = env.get("FLEETGATE_CLIENT_CERT") or None
    key = env.get("FLEETGATE_CLIENT_KEY") or None
    if key is not None and cert is None:
        raise InputError("FLEETGATE_CLIENT_KEY is set without FLEETGATE_CLIENT_CERT")
    return controller_tls(env.get("FLEETGATE_CA_BUNDLE") or None, cert, key)


def device_url(device: Device, path: str) -> str:
    """``address`` + ``path``, keeping any path prefix of the address."""
    return device.address.rstrip("/") + path


class HttpChannel:
    def __init__(
        self,
        tokens: TokenSource,
        *,
        pool: int = 256,
        limit_per_host: int = 0,
        connect: float = 3.0,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        self.tokens = tokens
        self.pool = pool
        self.limit_per_host = limit_per_host
        self.connect = connect
        self.tls = tls
        # The whole call's deadline is the client's (asyncio.timeout); aiohttp bounds connecting.
        self._timeout = aiohttp.ClientTimeout(total=None, sock_connect=connect)
        self._session: aiohttp.ClientSession | None = None
        self._closed = False

    def _get_session(self) -> aiohttp.ClientSession:
        if self._closed:
            raise RuntimeError("HttpChannel is closed")
        if self._session is None:
            connector = aiohttp.TCPConnector(
                limit=self.pool,
                limit_per_host=self.limit_per_host,
                ttl_dns_cache=300,
                ssl=self.tls if self.tls is not None else True,
            )
            self._session = aiohttp.ClientSession(connector=connector, timeout=self._timeout)
        return self._session

    async def aclose(self) -> None:
        self._closed = True
        if self._session is not None:
            session, self._session = self._session, None
            await session.close()

    async def send(self, device: Device, command: str, body: dict[str, Any] | None) -> Reply:
        token = self.tokens.token_for(device)
        headers = {"Authorization": f"Bearer {token}", DEVICE_HEADER: device.id}
        url = device_url(device, "/v1/" + command)
        session = self._get_session()
        if command in READS:
            method, json_body = "GET", None
            params = {k: str(v) for k, v in body.items()} if body else None
        else:
            method, json_body, params = "POST", body, None
        try:
            async with session.request(
                method, url, json=json_body, params=params, headers=headers
            ) as resp:
                status = resp.status
                raw = await resp.read()
        except asyncio.TimeoutError:
            raise ChannelDown("timeout", f"no connection within {self.connect:g}s") from None
        except aiohttp.InvalidURL:
            raise DeviceRefusal(
                f"{device.id}: address {device.address!r} is not a valid URL",
                device_id=device.id,
                code="bad-address",
                status=None,
                retryable=False,
            ) from None
        except aiohttp.ClientSSLError as exc:  # before ClientConnectorError, its base class
            raise DeviceRefusal(
                f"{device.id}: TLS with {device.address} failed: {exc}",
                device_id=device.id,
                code="tls-error",
                status=None,
                retryable=False,
            ) from None
        except aiohttp.ClientConnectorError as exc:
            raise ChannelDown("connection-refused", f"cannot connect: {exc.os_error}") from None
        except (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError) as exc:
            raise ChannelDown("connection-reset", f"connection lost: {exc}") from None
        except aiohttp.ClientError as exc:
            raise ChannelDown("transport", f"{type(exc).__name__}: {exc}") from None
        return Reply(status, _decode(raw))


class HttpTransport(DeviceClient):
    """``DeviceClient`` over a ``Router`` whose ``http``/``https`` go to one ``LeanHttpChannel``
    (``self.http``) and ``mqtt``/``mqtts`` to one ``MqttChannel`` (``self.mqtt``; it connects
    to a broker only when a device's address names one, with ``mqtt_credentials`` or, by
    default, ``MqttCredentials.from_env()``, read here). ``concurrency`` bounds calls in
    flight and connections in use alike (idle connections: ``LeanHttpChannel.max_idle``)."""

    def __init__(
        self,
        tokens: TokenSource,
        *,
        concurrency: int = 256,
        limit_per_host: int = 0,
        connect_timeout: float | None = None,
        timeouts: CallTimeouts | None = None,
        on_call: OnCall | None = None,
        tls: ssl.SSLContext | None = None,
        mqtt_credentials: MqttCredentials | None = None,
    ) -> None:
        from fleetgate.transports.mqtt import MQTT_SCHEMES, MqttChannel, MqttCredentials

        if concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        base = timeouts or CallTimeouts()
        if connect_timeout is not None:
            base = dataclasses.replace(base, connect=connect_timeout)
        self.tokens = tokens
        self.http = LeanHttpChannel(
            tokens,
            pool=concurrency,
            limit_per_host=limit_per_host,
            connect=base.connect,
            tls=tls,
        )
        # Read now: a bad FLEETGATE_MQTT_* setting is a one-line error before anything runs.
        creds = mqtt_credentials if mqtt_credentials is not None else MqttCredentials.from_env()
        self.mqtt = MqttChannel(tokens, credentials=creds, connect=base.connect)
        self.router = Router(dict.fromkeys(HTTP_SCHEMES, self.http))
        for scheme in MQTT_SCHEMES:
            self.router.register(scheme, self.mqtt)
        super().__init__(self.router, timeouts=base, concurrency=concurrency, on_call=on_call)


def _decode(raw: bytes) -> Any:
    if not raw:
        return None
    try:
        return json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        return None
