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
from collections.abc import Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import Any

from fleetgate.core.model import Device, HealthSample
from fleetgate.core.seqwindow import seq_base_of
from fleetgate.transports.errors import (
    PROTOCOL_RETRYABLE,
    UNAVAILABLE_CODES,
    DeviceRefusal,
    TransportUnavailable,
    bad_response,
    error_from_reply,
)
from fleetgate.transports.results import (
    ActivateResult,
    CommitResult,
    DeviceLogs,
    Facts,
    PingResult,
    RollbackResult,
    StageResult,
    parse_health,
)

# Everything the engine needs is importable from here; errors.py and results.py hold the parts.
__all__ = [
    "PROTOCOL_RETRYABLE",
    "UNAVAILABLE_CODES",
    "ActivateResult",
    "CallTimeouts",
    "CommitResult",
    "DeviceLogs",
    "DeviceRefusal",
    "DeviceTransport",
    "Facts",
    "PingResult",
    "RollbackResult",
    "StageResult",
    "TransportUnavailable",
    "activate_body",
    "bad_response",
    "commit_body",
    "error_from_reply",
    "parse_health",
    "rollback_body",
    "stage_body",
]


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
    commit: float = 30.0
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
        downgrade_authorization: Mapping[str, str] | None = None,
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
    async def commit(
        self, device: Device, *, deployment_id: str, seq: int, release: str
    ) -> CommitResult: ...

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


# Every command body names the deployment's seq block next to the seq (docs/protocol.md §4):
# the controller numbers seq = seq_base * SEQ_BLOCK + n (engine.context.next_seq), so the block
# is the seq's quotient, and the device checks the seq against it and against its history.
def stage_body(
    deployment_id: str,
    seq: int,
    manifest_json: str,
    signature: str,
    url: str,
    downgrade_authorization: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "deployment_id": deployment_id,
        "seq": seq,
        "seq_base": seq_base_of(seq),
        "manifest": manifest_json,
        "signature": signature,
        "url": url,
    }
    if downgrade_authorization is not None:
        body["downgrade_authorization"] = dict(downgrade_authorization)
    return body


def activate_body(deployment_id: str, seq: int, release: str) -> dict[str, Any]:
    return {
        "deployment_id": deployment_id,
        "seq": seq,
        "seq_base": seq_base_of(seq),
        "release": release,
    }


def commit_body(deployment_id: str, seq: int, release: str) -> dict[str, Any]:
    return {
        "deployment_id": deployment_id,
        "seq": seq,
        "seq_base": seq_base_of(seq),
        "release": release,
    }


def rollback_body(deployment_id: str, seq: int, to: str | None) -> dict[str, Any]:
    body: dict[str, Any] = {
        "deployment_id": deployment_id,
        "seq": seq,
        "seq_base": seq_base_of(seq),
    }
    if to is not None:
        body["to"] = to
    return body
