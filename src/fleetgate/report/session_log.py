"""The session report's view of one deployment's events: normalised, folded, indexed.

``SessionLog.load`` keeps the events of one deployment in log order, reads every ``details`` in
its canonical JSON form (sorted keys, tuples as lists, non-finite numbers as ``None`` = "not
measured") so in-memory and stored events read the same, and folds them with
``core.machine.step`` exactly as ``fold`` does, remembering the phase around each event. An
event the machine refuses is dropped from the view and reported in ``warnings``: a report shows
what the state machine accepted, nothing else. ``at_confirm`` keeps the state as it was when
``confirm.completed`` was recorded (its counts are checked against that, not against what a
later operator rollback changed).
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from fleetgate.core.events import Event, StoredEvent
from fleetgate.core.machine import step
from fleetgate.core.manifest import canonical_json
from fleetgate.core.state import DeploymentState, DeviceStatus, Phase
from fleetgate.errors import IllegalTransition

HUMAN_EXCLUDED = ("", "fleetgate", "system")

_STATUS_TEXT = {
    DeviceStatus.PENDING: "PENDING",
    DeviceStatus.UNREACHABLE: "SKIPPED",
    DeviceStatus.SKIPPED: "SKIPPED",
    DeviceStatus.STAGED: "STAGED",  # on disk, not running: not deployed (invariant 10)
    DeviceStatus.DEPLOYED: "DEPLOYED",
    DeviceStatus.HEALTHY: "HEALTHY",
    DeviceStatus.DEGRADED: "DEGRADED",
    DeviceStatus.FAILED: "FAILED",
    DeviceStatus.DEPLOY_FAILED: "FAILED (NOT DEPLOYED)",
    DeviceStatus.EXCLUDED: "EXCLUDED",
    DeviceStatus.QUARANTINED: "QUARANTINED",
    DeviceStatus.ROLLED_BACK: "ROLLED BACK",
    DeviceStatus.ROLLBACK_FAILED: "ROLLBACK FAILED",
}


def display_status(status: DeviceStatus) -> str:
    """A device status as the report's tables write it (the spec's capitals)."""
    return _STATUS_TEXT[status]


@dataclass(frozen=True, slots=True)
class LogEvent:
    """One accepted event with its position and the phase around it (``EventLike``)."""

    index: int
    ts: str
    deployment_id: str | None
    device_id: str | None
    actor: str
    action: str
    outcome: str
    details: dict[str, Any]
    phase_before: Phase
    phase_after: Phase
    halted_from: Phase | None  # after the event: the phase a rollback/halt started from
    quarantine: bool  # after the event: devices rolled back now end quarantined


def _finite(x: Any) -> Any:
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {k: _finite(v) for k, v in x.items()}
    if isinstance(x, list):
        return [_finite(v) for v in x]
    return x


def canonical_details(details: Mapping[str, Any]) -> dict[str, Any]:
    text = canonical_json(dict(details))
    data = json.loads(text)
    # Only a log holding NaN/Infinity (a failed metrics scrape) needs the walk.
    return dict(_finite(data)) if b"NaN" in text or b"Infinity" in text else dict(data)


@dataclass(slots=True)
class SessionLog:
    deployment_id: str
    events: list[LogEvent] = field(default_factory=list)
    state: DeploymentState = field(default_factory=lambda: DeploymentState.empty(""))
    warnings: list[str] = field(default_factory=list)
    transitions: list[dict[str, str]] = field(default_factory=list)
    at_confirm: DeploymentState | None = None
    # Indexes, so a 10,000-device report does not scan the whole log once per device.
    _by_action: dict[str, list[LogEvent]] = field(default_factory=dict)
    _by_device: dict[tuple[str, str], list[LogEvent]] = field(default_factory=dict)

    @classmethod
    def load(cls, deployment_id: str, events: Sequence[StoredEvent | Event]) -> SessionLog:
        log = cls(deployment_id, state=DeploymentState.empty(deployment_id))
        for n, raw in enumerate(events):
            if raw.deployment_id != deployment_id:
                continue
            before = log.state
            details = canonical_details(raw.details)
            probe = Event(
                ts=raw.ts,
                deployment_id=raw.deployment_id,
                action=raw.action,
                outcome=raw.outcome,
                device_id=raw.device_id,
                actor=raw.actor,
                details=details,
            )
            try:
                after, _ = step(before, probe)
            except IllegalTransition as exc:
                log.warnings.append(f"event #{n + 1} {raw.action} ignored: {exc}")
                continue
            ev = LogEvent(
                index=len(log.events),
                ts=raw.ts,
                deployment_id=raw.deployment_id,
                device_id=raw.device_id,
                actor=raw.actor,
                action=raw.action,
                outcome=raw.outcome,
                details=details,
                phase_before=before.phase,
                phase_after=after.phase,
                halted_from=after.halted_from,
                quarantine=after.quarantine_on_rollback,
            )
            if not log.transitions or after.phase is not before.phase:
                log.transitions.append({"phase": after.phase.value, "ts": ev.ts})
            log.events.append(ev)
            log._by_action.setdefault(ev.action, []).append(ev)
            if ev.device_id is not None:
                log._by_device.setdefault((ev.action, ev.device_id), []).append(ev)
            log.state = after
            if ev.action == "confirm.completed":
                log.at_confirm = after.snapshot()  # the device table is shared by the lineage
        return log

    # -- lookups ---------------------------------------------------------------------------------
    def all(self, *actions: str, device: str | None = None) -> list[LogEvent]:
        """Events of these actions (of this device), in log order."""
        if device is None:
            found = [e for a in actions for e in self._by_action.get(a, ())]
        else:
            found = [e for a in actions for e in self._by_device.get((a, device), ())]
        return sorted(found, key=lambda e: e.index) if len(actions) > 1 else found

    def first(self, action: str) -> LogEvent | None:
        found = self.all(action)
        return found[0] if found else None

    def last(self, *actions: str, device: str | None = None) -> LogEvent | None:
        found = self.all(*actions, device=device)
        return found[-1] if found else None

    def of_stage(self, stage: int, *actions: str, device: str | None = None) -> list[LogEvent]:
        """Events of these actions recorded for ``stage`` (``details.stage``)."""
        return [e for e in self.all(*actions, device=device) if stage_of(e) == stage]

    def last_of_stage(
        self, stage: int, *actions: str, device: str | None = None
    ) -> LogEvent | None:
        found = self.of_stage(stage, *actions, device=device)
        return found[-1] if found else None

    def reached(self, *phases: Phase) -> bool:
        return any(e.phase_after in phases for e in self.events)


def stage_of(e: LogEvent) -> int | None:
    s = e.details.get("stage")
    return int(s) if isinstance(s, int | float) and not isinstance(s, bool) else None


def ids(details: Mapping[str, Any], key: str) -> list[str]:
    value = details.get(key)
    if not isinstance(value, list):
        return []
    return [str(x) for x in value]


def num(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def device_info(created: Mapping[str, Any]) -> dict[str, dict[str, str]]:
    """Type, group and arch per device id from ``deployment.created`` (``targets`` first, then
    the plan's canary rows)."""
    out: dict[str, dict[str, str]] = {}
    plan = created.get("plan") or {}
    for c in plan.get("canaries", ()):
        if isinstance(c, Mapping) and "id" in c:
            out[str(c["id"])] = {
                "hardware": str(c.get("hardware", "?")),
                "group": str(c.get("group", "?")),
                "arch": str(c.get("arch", "?")),
            }
    targets: Iterable[Any] = created.get("targets") or ()
    for t in targets:
        if isinstance(t, Mapping) and "id" in t:
            out[str(t["id"])] = {
                "hardware": str(t.get("hardware", "?")),
                "group": str(t.get("group", "?")),
                "arch": str(t.get("arch", "?")),
            }
    return out


def human(actor: str) -> bool:
    return actor not in HUMAN_EXCLUDED
