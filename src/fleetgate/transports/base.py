"""The controller's channel to one device: the abstract ``DeviceTransport`` and its results.

Contract (docs/protocol.md is the wire contract; this is what the engine codes against):
- Every call names the target ``Device`` and either returns a typed result parsed from the
  protocol's JSON or raises. It never returns half-parsed data and never retries by itself:
  retry policy belongs to the engine, which knows the deployment's ``[retries]``.
- Every failure is a ``FleetgateError`` with ``device_id`` set:
  - ``TransportUnavailable`` (a ``TransportError``, ``retryable=True``): connection refused or
    reset, timeout, a 5xx that carries no protocol error body (a proxy, a crashed handler),
    ``409 busy`` / ``409 in-progress`` — "ask again later, nothing was decided";
  - ``DeviceRefusal`` (a ``DeviceError``): the device answered with a protocol error body and
    means it (401/403/404/409 stale-seq, seq-conflict, no-rollback-copy, incompatible, 422
    integrity-error, 507 insufficient-disk, 500 internal, 502 download-failed); ``retryable``
    comes from the protocol table, not from the body, so a confused device cannot talk the
    engine into retrying a tampered artifact.
  Both carry ``code`` (the protocol ``error`` code, or a transport code such as ``timeout``)
  and ``status`` (the HTTP status, ``None`` when there was no answer).
- A ``200`` is never an exception: ``activate`` answering ``start-failed`` and ``rollback``
  answering ``app_healthy: false`` are results the engine must judge (``ActivateResult.ok``).
- Lifecycle: ``async with transport:`` … ``aclose()`` releases pooled connections.
"""

from __future__ import annotations

import abc
import math
from collections.abc import Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import Any

from fleetgate.core.model import Device, HealthSample
from fleetgate.errors import DeviceError, FleetgateError, TransportError

# Protocol error code -> retryable (docs/protocol.md §2). Codes not listed are not retryable.
PROTOCOL_RETRYABLE: Mapping[str, bool] = {
    "bad-request": False,
    "unauthorized": False,
    "wrong-device": False,
    "unknown-release": False,
    "not-found": False,
    "stale-seq": False,
    "seq-conflict": False,
    "in-progress": True,
    "busy": True,
    "no-rollback-copy": False,
    "incompatible": False,
    "integrity-error": False,
    "download-failed": True,
    "insufficient-disk": False,
    "internal": False,
}
# "Nothing was decided, ask again": transport-level, whatever the status code says.
UNAVAILABLE_CODES = frozenset({"busy", "in-progress"})


class TransportUnavailable(TransportError):
    """The device did not answer usefully (no connection, timeout, busy). Retryable."""

    def __init__(
        self, message: str, *, device_id: str, code: str, status: int | None = None
    ) -> None:
        super().__init__(message, device_id=device_id, retryable=True)
        self.code = code
        self.status = status


class DeviceRefusal(DeviceError):
    """The device answered with a protocol error it means (``code`` = the protocol code)."""

    def __init__(
        self, message: str, *, device_id: str, code: str, status: int | None, retryable: bool
    ) -> None:
        super().__init__(message, device_id=device_id, retryable=retryable)
        self.code = code
        self.status = status


def error_from_reply(device_id: str, status: int, body: Any) -> FleetgateError:
    """The exception for a non-2xx answer (``body`` = parsed JSON, or None if unparsable)."""
    code = body.get("error") if isinstance(body, dict) else None
    message = body.get("message") if isinstance(body, dict) else None
    if not isinstance(code, str) or not code:
        # No protocol body: not the agent speaking (proxy, crash, wrong service on the port).
        what = f"HTTP {status} without a protocol error body"
        if status >= 500:
            return TransportUnavailable(
                f"{device_id}: {what}", device_id=device_id, code=f"http-{status}", status=status
            )
        return DeviceRefusal(
            f"{device_id}: {what}",
            device_id=device_id,
            code=f"http-{status}",
            status=status,
            retryable=False,
        )
    text = f"{device_id}: {code} (HTTP {status})"
    if isinstance(message, str) and message:
        text += f": {message}"
    if code in UNAVAILABLE_CODES:
        return TransportUnavailable(text, device_id=device_id, code=code, status=status)
    return DeviceRefusal(
        text,
        device_id=device_id,
        code=code,
        status=status,
        retryable=PROTOCOL_RETRYABLE.get(code, False),
    )


def bad_response(device_id: str, what: str) -> DeviceRefusal:
    """A 2xx answer whose JSON does not have the protocol's shape: the device is broken."""
    return DeviceRefusal(
        f"{device_id}: malformed answer: {what}",
        device_id=device_id,
        code="bad-response",
        status=None,
        retryable=False,
    )


# -- results -------------------------------------------------------------------------------------
class _Reader:
    """Typed field access on a JSON object; any mismatch is ``bad_response``."""

    def __init__(self, device_id: str, data: Any, what: str) -> None:
        if not isinstance(data, dict):
            raise bad_response(device_id, f"{what}: expected a JSON object")
        self.device_id, self.data, self.what = device_id, data, what

    def _bad(self, key: str, expected: str) -> DeviceRefusal:
        return bad_response(self.device_id, f"{self.what}.{key}: expected {expected}")

    def text(self, key: str) -> str:
        value = self.data.get(key)
        if not isinstance(value, str):
            raise self._bad(key, "a string")
        return value

    def opt_text(self, key: str) -> str | None:
        value = self.data.get(key)
        if value is not None and not isinstance(value, str):
            raise self._bad(key, "a string or null")
        return value

    def flag(self, key: str, default: bool | None = None) -> bool:
        value = self.data.get(key, default)
        if not isinstance(value, bool):
            raise self._bad(key, "true or false")
        return value

    def number(self, key: str, default: float | None = None) -> float:
        value = self.opt_number(key)
        if value is None:
            if default is None:
                raise self._bad(key, "a number")
            return default
        return value

    def opt_number(self, key: str) -> float | None:
        value = self.data.get(key)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise self._bad(key, "a number or null")
        if not math.isfinite(value):
            raise self._bad(key, "a finite number")
        return float(value)

    def integer(self, key: str, default: int = 0) -> int:
        value = self.data.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int):
            raise self._bad(key, "an integer")
        return value

    def strings(self, key: str) -> tuple[str, ...]:
        value = self.data.get(key, [])
        if not isinstance(value, list) or not all(isinstance(x, str) for x in value):
            raise self._bad(key, "a list of strings")
        return tuple(value)

    def str_map(self, key: str) -> dict[str, str]:
        value = self.data.get(key, {})
        if not isinstance(value, dict):
            raise self._bad(key, "an object")
        return {str(k): str(v) for k, v in value.items()}


@dataclass(frozen=True, slots=True)
class PingResult:
    id: str
    agent_version: str
    uptime_s: float

    @classmethod
    def parse(cls, device_id: str, data: Any) -> PingResult:
        r = _Reader(device_id, data, "ping")
        if not r.flag("ok", False):
            raise bad_response(device_id, "ping.ok is not true")
        return cls(r.text("id"), r.opt_text("agent_version") or "", r.number("uptime_s", 0.0))


@dataclass(frozen=True, slots=True)
class Facts:
    """``GET /v1/facts``: what the device is and holds right now."""

    id: str
    hardware: str
    arch: str
    ram_mb: float
    disk_free_mb: float
    software: Mapping[str, str]
    agent_version: str
    current: str | None
    previous: str | None
    rollback_available: bool
    releases: tuple[str, ...]
    state: str
    last_seq: int
    app_running: bool
    interrupted: Mapping[str, Any] | None = None

    @classmethod
    def parse(cls, device_id: str, data: Any) -> Facts:
        r = _Reader(device_id, data, "facts")
        interrupted = data.get("interrupted")
        if interrupted is not None and not isinstance(interrupted, dict):
            raise bad_response(device_id, "facts.interrupted: expected an object or null")
        return cls(
            id=r.text("id"),
            hardware=r.text("hardware"),
            arch=r.text("arch"),
            ram_mb=r.number("ram_mb", 0.0),
            disk_free_mb=r.number("disk_free_mb"),
            software=r.str_map("software"),
            agent_version=r.opt_text("agent_version") or "",
            current=r.opt_text("current"),
            previous=r.opt_text("previous"),
            rollback_available=r.flag("rollback_available"),
            releases=r.strings("releases"),
            state=r.text("state"),
            last_seq=r.integer("last_seq"),
            app_running=r.flag("app_running", False),
            interrupted=interrupted,
        )


@dataclass(frozen=True, slots=True)
class StageResult:
    """``status``: ``staged`` | ``already-staged`` | ``already-installed``."""

    status: str
    release: str
    replayed: bool = False

    @classmethod
    def parse(cls, device_id: str, data: Any) -> StageResult:
        r = _Reader(device_id, data, "stage")
        return cls(r.text("status"), r.text("release"), r.flag("replayed", False))


@dataclass(frozen=True, slots=True)
class ActivateResult:
    """``status``: ``active`` | ``start-failed`` (then ``error`` and ``logs`` say why)."""

    status: str
    release: str
    previous: str | None
    error: str | None = None
    logs: tuple[str, ...] = ()
    replayed: bool = False

    @property
    def ok(self) -> bool:
        return self.status == "active"

    @classmethod
    def parse(cls, device_id: str, data: Any) -> ActivateResult:
        r = _Reader(device_id, data, "activate")
        return cls(
            status=r.text("status"),
            release=r.text("release"),
            previous=r.opt_text("previous"),
            error=r.opt_text("error"),
            logs=r.strings("logs"),
            replayed=r.flag("replayed", False),
        )


@dataclass(frozen=True, slots=True)
class RollbackResult:
    """``status`` is ``rolled-back``; ``release`` is now current, ``from_release`` was left."""

    status: str
    release: str
    from_release: str | None
    app_healthy: bool = True
    error: str | None = None
    logs: tuple[str, ...] = ()
    replayed: bool = False

    @property
    def ok(self) -> bool:
        return self.status == "rolled-back" and self.app_healthy

    @classmethod
    def parse(cls, device_id: str, data: Any) -> RollbackResult:
        r = _Reader(device_id, data, "rollback")
        return cls(
            status=r.text("status"),
            release=r.text("release"),
            from_release=r.opt_text("from"),
            app_healthy=r.flag("app_healthy", True),
            error=r.opt_text("error"),
            logs=r.strings("logs"),
            replayed=r.flag("replayed", False),
        )


@dataclass(frozen=True, slots=True)
class DeviceLogs:
    app: tuple[str, ...] = ()
    agent: tuple[str, ...] = ()

    @classmethod
    def parse(cls, device_id: str, data: Any) -> DeviceLogs:
        r = _Reader(device_id, data, "logs")
        return cls(r.strings("app"), r.strings("agent"))


def parse_health(device_id: str, data: Any) -> HealthSample:
    """``GET /v1/health`` -> ``HealthSample``. The sample is attributed to ``device_id`` (the
    device we asked), never to whatever id the body claims."""
    r = _Reader(device_id, data, "health")
    restarts = r.integer("restarts", 0)
    return HealthSample(
        device_id=device_id,
        app_up=r.flag("app_up", False),
        latency_ms=r.opt_number("latency_ms"),
        error_rate=r.opt_number("error_rate"),
        cpu_percent=r.opt_number("cpu_percent"),
        mem_used_mb=r.opt_number("mem_used_mb"),
        mem_total_mb=r.opt_number("mem_total_mb"),
        disk_free_mb=r.opt_number("disk_free_mb"),
        gpu_percent=r.opt_number("gpu_percent"),
        temperature_c=r.opt_number("temperature_c"),
        restarts=restarts,
        crash_loop=r.flag("crash_loop", False),
        release=r.opt_text("release"),
    )


# -- the channel ---------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class CallTimeouts:
    """Seconds each call may take once it has a connection slot (connect time included)."""

    ping: float = 5.0
    facts: float = 5.0
    health: float = 5.0
    logs: float = 10.0
    stage: float = 300.0
    activate: float = 60.0
    rollback: float = 60.0
    connect: float = 3.0

    def for_call(self, call: str) -> float:
        value: float = getattr(self, call)
        return value


class DeviceTransport(abc.ABC):
    """Async channel to devices. Implementations: ``HttpTransport``, ``MemoryTransport``."""

    @abc.abstractmethod
    async def ping(self, device: Device) -> PingResult: ...

    @abc.abstractmethod
    async def facts(self, device: Device) -> Facts: ...

    @abc.abstractmethod
    async def stage(
        self,
        device: Device,
        *,
        deployment_id: str,
        seq: int,
        manifest_json: str,
        signature: str,
        url: str,
    ) -> StageResult: ...

    @abc.abstractmethod
    async def activate(
        self, device: Device, *, deployment_id: str, seq: int, release: str
    ) -> ActivateResult: ...

    @abc.abstractmethod
    async def rollback(
        self, device: Device, *, deployment_id: str, seq: int, to: str | None = None
    ) -> RollbackResult: ...

    @abc.abstractmethod
    async def health(self, device: Device) -> HealthSample: ...

    @abc.abstractmethod
    async def logs(self, device: Device, lines: int = 200) -> DeviceLogs: ...

    async def aclose(self) -> None:  # noqa: B027 - a no-op is right for pool-less transports
        """Release pooled resources. Idempotent."""

    async def __aenter__(self) -> DeviceTransport:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()


def stage_body(
    deployment_id: str, seq: int, manifest_json: str, signature: str, url: str
) -> dict[str, Any]:
    return {
        "deployment_id": deployment_id,
        "seq": seq,
        "manifest": manifest_json,
        "signature": signature,
        "url": url,
    }


def activate_body(deployment_id: str, seq: int, release: str) -> dict[str, Any]:
    return {"deployment_id": deployment_id, "seq": seq, "release": release}


def rollback_body(deployment_id: str, seq: int, to: str | None) -> dict[str, Any]:
    body: dict[str, Any] = {"deployment_id": deployment_id, "seq": seq}
    if to is not None:
        body["to"] = to
    return body
