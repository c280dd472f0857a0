"""Audit events and the hash chain that makes the log tamper-evident.

Every action fleetgate takes is an ``Event``; the event log *is* the audit log. Each stored event
carries the hash of the one before it (``prev_hash``) and its own ``hash`` over its canonical
content plus ``prev_hash``. Editing, deleting or reordering any event, or cutting events out of
the middle, breaks the chain at the first affected sequence number — ``verify_chain`` names it.

The chain is global (one per store), ordered by ``seq`` which the store assigns densely from 1,
so a deleted event shows as a gap even if someone recomputes later hashes.

Pure: hashing is deterministic over canonical JSON; timestamps come in from the caller.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from fleetgate.core.manifest import canonical_json

GENESIS_HASH = "0" * 64


@dataclass(frozen=True, slots=True)
class Event:
    """An event before the store gives it a sequence number and a place in the chain.

    ``ts`` is an ISO-8601 UTC timestamp string (``2026-11-26T08:30:00.123456+00:00``), supplied by
    the caller's injected clock. ``details`` must be JSON-serialisable.
    """

    ts: str
    deployment_id: str | None
    action: str
    outcome: str = "ok"
    device_id: str | None = None
    actor: str = "fleetgate"
    details: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class StoredEvent:
    seq: int
    ts: str
    deployment_id: str | None
    device_id: str | None
    actor: str
    action: str
    outcome: str
    details: Mapping[str, Any]
    prev_hash: str
    hash: str


def event_to_dict(ev: StoredEvent) -> dict[str, Any]:
    """A stored event as JSON (``audit show --json``, the API's events and stream)."""
    return {
        "seq": ev.seq,
        "ts": ev.ts,
        "deployment_id": ev.deployment_id,
        "device_id": ev.device_id,
        "actor": ev.actor,
        "action": ev.action,
        "outcome": ev.outcome,
        "details": dict(ev.details),
        "prev_hash": ev.prev_hash,
        "hash": ev.hash,
    }


# Stands for the details in the canonical JSON of an event's other fields; ``event_hash``
# splices the details' own canonical JSON in its place. A NUL never occurs in the other fields
# (ids, times, names), so the first occurrence is the placeholder.
_DETAILS_SLOT = "\x00details\x00"
_DETAILS_SLOT_JSON = canonical_json(_DETAILS_SLOT)


def event_hash(
    seq: int, event: Event | StoredEvent, prev_hash: str, details_json: bytes | None = None
) -> str:
    """SHA-256 over the canonical JSON of the event's content, its ``seq`` and ``prev_hash``.

    ``details_json``: ``canonical_json(event.details)`` when the caller already has it (the
    store serialises the details once for the row): the bytes hashed are the same, because a
    canonical object's JSON is made of its members' canonical JSON."""
    body = {
        "seq": seq,
        "ts": event.ts,
        "deployment_id": event.deployment_id,
        "device_id": event.device_id,
        "actor": event.actor,
        "action": event.action,
        "outcome": event.outcome,
        "details": _DETAILS_SLOT,
        "prev_hash": prev_hash,
    }
    if details_json is None:
        details_json = canonical_json(dict(event.details))
    text = canonical_json(body).replace(_DETAILS_SLOT_JSON, details_json, 1)
    return hashlib.sha256(text).hexdigest()


def seal(seq: int, event: Event, prev_hash: str, details_json: bytes | None = None) -> StoredEvent:
    """Give an event its place in the chain (``details_json``: see ``event_hash``)."""
    digest = event_hash(seq, event, prev_hash, details_json)
    return placed(event, seq, prev_hash, digest, dict(event.details))


def placed(
    event: Event, seq: int, prev_hash: str, digest: str, details: dict[str, Any]
) -> StoredEvent:
    """``event`` at its place in the chain, its hash already computed (``seal`` computes it;
    the store's append computes a batch's hashes first, then builds only what it returns)."""
    return StoredEvent(
        seq=seq,
        ts=event.ts,
        deployment_id=event.deployment_id,
        device_id=event.device_id,
        actor=event.actor,
        action=event.action,
        outcome=event.outcome,
        details=details,
        prev_hash=prev_hash,
        hash=digest,
    )


@dataclass(frozen=True, slots=True)
class ChainReport:
    ok: bool
    checked: int
    first_bad_seq: int | None = None
    reason: str = ""


def verify_chain(events: Iterable[StoredEvent]) -> ChainReport:
    """Walk the chain in ``seq`` order; report the first event that does not fit.

    Detects: an edited event (its hash no longer matches), a deleted or truncated-in-the-middle
    event (a gap in ``seq`` or a ``prev_hash`` that is not the previous event's hash), a reordered
    event (``seq`` going backwards, or a wrong ``prev_hash``).
    """
    expected_seq = 1
    prev = GENESIS_HASH
    checked = 0
    for ev in events:
        if ev.seq != expected_seq:
            return ChainReport(
                False,
                checked,
                expected_seq if ev.seq > expected_seq else ev.seq,
                f"expected seq {expected_seq}, found {ev.seq} (event missing or moved)",
            )
        if ev.prev_hash != prev:
            return ChainReport(
                False, checked, ev.seq, "prev_hash does not match the previous event's hash"
            )
        if event_hash(ev.seq, ev, ev.prev_hash) != ev.hash:
            return ChainReport(False, checked, ev.seq, "content does not match its hash (edited)")
        prev = ev.hash
        expected_seq += 1
        checked += 1
    return ChainReport(True, checked)


# -- the vocabulary --------------------------------------------------------------------------------
# Every action a deployment's log may hold (docs/events.md documents each one's details). The
# state machine refuses any other: a typo in the engine, or an event from a newer fleetgate,
# is an error, never silently folded as "informational".
DEPLOYMENT_EVENTS: frozenset[str] = frozenset(
    {
        "deployment.created",
        "deployment.downgrade_authorized",
        "policy.short_soak_allowed",
        "prepare.passed",
        "prepare.failed",
        "distribution.started",
        "stage.started",
        "stage.preflight",
        "stage.deployed",
        "soak.started",
        "soak.sampled",
        "soak.stopped",
        "soak.completed",
        "canary.controls",
        "canary.verdict",
        "canary.replaced",
        "drill.started",
        "drill.checked",
        "drill.completed",
        "approval.requested",
        "approval.granted",
        "approval.rejected",
        "wave.evaluated",
        "rollback.requested",
        "rollback.started",
        "rollback.capability_checked",
        "rollback.completed",
        "deployment.halted",
        "deployment.resumed",
        "deployment.aborted",
        "confirm.failed",
        "confirm.checked",
        "confirm.completed",
        "registry.quarantined",
        # device level (device_id set)
        "health.recovered",
        "device.preflight",
        "device.unreachable",
        "device.skipped",
        "device.baseline",
        "device.stage_requested",
        "device.staged",
        "device.activate_requested",
        "device.activated",
        "device.commit_requested",
        "device.committed",
        "device.commit_failed",
        "device.deploy_failed",
        "device.health",
        "device.logs_captured",
        "device.rollback_requested",
        "device.rolled_back",
        "device.rollback_failed",
        "device.quarantined",
        "device.recovered",
    }
)
# Actions of the log that belong to no deployment (``deployment_id`` null).
GLOBAL_EVENTS: frozenset[str] = frozenset(
    {
        "registry.imported",
        "registry.released",
        "release.uploaded",
        "user.added",
        "user.token_rotated",
        "user.revoked",
        "api.refused",
        "enrolment.token_created",
        "enrolment.token_revoked",
        "device.enrolled",
        "registry.accepted",
        "registry.refreshed",
    }
)
