"""Transport failures: what a device's answer (or silence) means for the engine.

Contract:
- ``TransportUnavailable`` (a ``TransportError``, always retryable): no usable answer —
  connection refused or reset, timeout, a 5xx without a protocol error body, ``409 busy`` or
  ``409 in-progress`` ("nothing was decided, ask again").
- ``DeviceRefusal`` (a ``DeviceError``): the device answered with a protocol error it means;
  ``retryable`` comes from the protocol table (docs/protocol.md §2), never from the body, so a
  confused device cannot talk the engine into retrying a tampered artifact.
- Both carry ``device_id``, ``code`` (the protocol ``error`` code, or a transport code such as
  ``timeout``, ``connection-refused``, ``bad-response``, ``no-token``) and ``status`` (HTTP
  status, ``None`` when there was no answer).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

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
    "seq-out-of-range": False,
    "state-lost": False,
    "in-progress": True,
    "busy": True,
    "no-rollback-copy": False,
    "incompatible": False,
    "downgrade-refused": False,  # issue 10: below the device's committed floor
    "not-current": False,  # issue 10: commit of a release the device does not run
    "integrity-error": False,
    "download-failed": True,
    "insufficient-disk": False,
    "too-large": False,
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
