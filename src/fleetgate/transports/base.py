"""What the device calls exchange: per-call timeouts, command bodies, and (re-exported from
``errors.py`` and ``results.py``) the typed results and failures.

The seam is ``transports/channel.py`` (``Channel.send``); the typed calls the engine makes live
once in ``transports/client.py`` (``DeviceClient``), whose docstring states the error contract.
Everything the engine needs from a call's result is importable from here.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

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


# -- per-call timeouts ---------------------------------------------------------------------------
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
        # Issue 12: answer with the started release's health too: the controller's smoke test
        # judges that sample instead of asking for one. An agent that does not know the field
        # ignores it (the controller then asks ``health`` apart).
        "with_health": True,
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
        # Issue 12: answer with the restored release's health too (the controller's first
        # recovery check). An agent that does not know the field ignores it.
        "with_health": True,
    }
    if to is not None:
        body["to"] = to
    return body
