"""``HttpTransport``: the agent protocol over HTTP/JSON with aiohttp.

Contract (on top of ``DeviceTransport``'s):
- ONE pooled ``aiohttp.ClientSession`` for all devices, created on first use inside the running
  loop and closed by ``aclose()``. Its connector allows ``concurrency`` connections in total and
  ``limit_per_host`` per host:port (0 = no per-host cap): the simulator serves thousands of
  devices on one host:port with per-device path prefixes, so a small per-host cap would
  serialise a whole virtual fleet.
- An ``asyncio.Semaphore(concurrency)`` bounds calls in flight; a call's timeout
  (``CallTimeouts``) starts once it holds a slot, so a burst of 10,000 health checks queues
  instead of timing out.
- URL = the device's ``address`` (which may carry a path prefix such as
  ``http://127.0.0.1:9100/d/rpi-07``) + ``/v1/<call>``.
- Headers: ``Authorization: Bearer <token>`` and ``X-Fleetgate-Device: <device id>``. Tokens come
  from ``TokenSource``; they never appear in a log line or an exception message.
- Mapping of failures: see ``transports/errors.py``. Connection refused →
  ``connection-refused``, reset/closed without an answer → ``connection-reset``, timeout →
  ``timeout``; all retryable.
- TLS: a device whose ``address`` is ``https://…`` is reached over TLS, verified against the
  system trust store or ``tls`` (an ``ssl.SSLContext``; ``controller_tls`` builds it from a CA
  bundle and, for agents that require mutual TLS, the controller's client certificate and key;
  the CLI reads them from ``FLEETGATE_CA_BUNDLE``, ``FLEETGATE_CLIENT_CERT``,
  ``FLEETGATE_CLIENT_KEY``). A certificate that does not verify is ``tls-error``, not
  retryable: it is a misconfiguration or someone in the middle, and asking again changes
  neither.
- No retries of its own. (aiohttp itself repeats an idempotent GET once when the server closes
  the connection without answering — the keep-alive race; commands are POSTs and never are.)
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import os
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, TypeVar

import aiohttp

from fleetgate.core.model import Device, HealthSample
from fleetgate.errors import InputError
from fleetgate.transports.base import (
    ActivateResult,
    CallTimeouts,
    CommitResult,
    DeviceLogs,
    DeviceRefusal,
    DeviceTransport,
    Facts,
    PingResult,
    RollbackResult,
    StageResult,
    TransportUnavailable,
    activate_body,
    commit_body,
    error_from_reply,
    parse_health,
    rollback_body,
    stage_body,
)
from fleetgate.transports.tokens import TokenSource

if TYPE_CHECKING:
    import ssl

log = logging.getLogger("fleetgate.transport")

T = TypeVar("T")
DEVICE_HEADER = "X-Fleetgate-Device"


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


class HttpTransport(DeviceTransport):
    def __init__(
        self,
        tokens: TokenSource,
        *,
        concurrency: int = 256,
        limit_per_host: int = 0,
        connect_timeout: float | None = None,
        timeouts: CallTimeouts | None = None,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        if concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        self.tokens = tokens
        self.concurrency = concurrency
        self.limit_per_host = limit_per_host
        base = timeouts or CallTimeouts()
        if connect_timeout is not None:
            base = dataclasses.replace(base, connect=connect_timeout)
        self.timeouts = base
        self.tls = tls
        self._session: aiohttp.ClientSession | None = None
        self._slots = asyncio.Semaphore(concurrency)
        self._closed = False

    def _get_session(self) -> aiohttp.ClientSession:
        if self._closed:
            raise RuntimeError("HttpTransport is closed")
        if self._session is None:
            connector = aiohttp.TCPConnector(
                limit=self.concurrency,
                limit_per_host=self.limit_per_host,
                ttl_dns_cache=300,
                ssl=self.tls if self.tls is not None else True,
            )
            self._session = aiohttp.ClientSession(connector=connector)
        return self._session

    async def __aenter__(self) -> HttpTransport:
        self._get_session()
        return self

    async def aclose(self) -> None:
        self._closed = True
        if self._session is not None:
            session, self._session = self._session, None
            await session.close()

    # -- one request ---------------------------------------------------------------------------
    async def _call(
        self,
        device: Device,
        call: str,
        method: str,
        path: str,
        parse: Callable[[str, Any], T],
        *,
        body: dict[str, Any] | None = None,
        params: dict[str, str] | None = None,
    ) -> T:
        token = self.tokens.token_for(device)
        headers = {"Authorization": f"Bearer {token}", DEVICE_HEADER: device.id}
        url = device_url(device, path)
        timeout = aiohttp.ClientTimeout(
            total=self.timeouts.for_call(call), sock_connect=self.timeouts.connect
        )
        session = self._get_session()
        async with self._slots:
            try:
                async with session.request(
                    method, url, json=body, params=params, headers=headers, timeout=timeout
                ) as resp:
                    status = resp.status
                    raw = await resp.read()
            except asyncio.TimeoutError:
                raise self._unavailable(
                    device, call, "timeout", f"no answer within {self.timeouts.for_call(call):g}s"
                ) from None
            except aiohttp.InvalidURL:
                raise DeviceRefusal(
                    f"{device.id}: address {device.address!r} is not a valid URL",
                    device_id=device.id,
                    code="bad-address",
                    status=None,
                    retryable=False,
                ) from None
            except aiohttp.ClientSSLError as exc:
                raise DeviceRefusal(
                    f"{device.id}: TLS with {device.address} failed: {exc}",
                    device_id=device.id,
                    code="tls-error",
                    status=None,
                    retryable=False,
                ) from None
            except aiohttp.ClientConnectorError as exc:
                raise self._unavailable(
                    device, call, "connection-refused", f"cannot connect: {exc.os_error}"
                ) from None
            except (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError) as exc:
                raise self._unavailable(
                    device, call, "connection-reset", f"connection lost: {exc}"
                ) from None
            except aiohttp.ClientError as exc:
                raise self._unavailable(
                    device, call, "transport", f"{type(exc).__name__}: {exc}"
                ) from None
        data = _decode(raw)
        if not 200 <= status < 300:
            log.debug("%s %s %s -> %d", device.id, method, path, status)
            raise error_from_reply(device.id, status, data)
        if data is None:
            raise TransportUnavailable(
                f"{device.id}: {call}: HTTP {status} with a body that is not JSON",
                device_id=device.id,
                code="bad-response",
                status=status,
            )
        return parse(device.id, data)

    def _unavailable(self, device: Device, call: str, code: str, what: str) -> TransportUnavailable:
        log.debug("%s %s: %s", device.id, call, code)
        return TransportUnavailable(
            f"{device.id}: {call} at {device.address}: {what}", device_id=device.id, code=code
        )

    # -- the protocol --------------------------------------------------------------------------
    async def ping(self, device: Device) -> PingResult:
        return await self._call(device, "ping", "GET", "/v1/ping", PingResult.parse)

    async def facts(self, device: Device) -> Facts:
        return await self._call(device, "facts", "GET", "/v1/facts", Facts.parse)

    async def health(self, device: Device) -> HealthSample:
        return await self._call(device, "health", "GET", "/v1/health", parse_health)

    async def logs(self, device: Device, lines: int = 200) -> DeviceLogs:
        return await self._call(
            device, "logs", "GET", "/v1/logs", DeviceLogs.parse, params={"lines": str(lines)}
        )

    async def stage(
        self,
        device: Device,
        *,
        deployment_id: str,
        seq: int,
        manifest_json: str,
        signature: str,
        url: str,
        downgrade_authorization: Mapping[str, str] | None = None,
    ) -> StageResult:
        body = stage_body(
            deployment_id, seq, manifest_json, signature, url, downgrade_authorization
        )
        return await self._call(device, "stage", "POST", "/v1/stage", StageResult.parse, body=body)

    async def activate(
        self, device: Device, *, deployment_id: str, seq: int, release: str
    ) -> ActivateResult:
        body = activate_body(deployment_id, seq, release)
        return await self._call(
            device, "activate", "POST", "/v1/activate", ActivateResult.parse, body=body
        )

    async def commit(
        self, device: Device, *, deployment_id: str, seq: int, release: str
    ) -> CommitResult:
        body = commit_body(deployment_id, seq, release)
        return await self._call(
            device, "commit", "POST", "/v1/commit", CommitResult.parse, body=body
        )

    async def rollback(
        self, device: Device, *, deployment_id: str, seq: int, to: str | None = None
    ) -> RollbackResult:
        body = rollback_body(deployment_id, seq, to)
        return await self._call(
            device, "rollback", "POST", "/v1/rollback", RollbackResult.parse, body=body
        )


def _decode(raw: bytes) -> Any:
    if not raw:
        return None
    try:
        return json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        return None
