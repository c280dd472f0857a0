"""A deployment's state, and the spec's ``<fleet-deploy-state>`` block rendered from it.

``core.machine.apply`` returns a new ``DeploymentState`` for each event, and folding a
deployment's stored events from ``DeploymentState.empty`` rebuilds exactly the state the live
controller had (DESIGN.md invariant 7). Nothing here reads a clock; timestamps come from the
events.

A ``DeploymentState`` never changes after it was produced: every field is immutable. Cost: a
deployment of N devices has ~10 N events, so copying the per-device table on every event would
make a fold O(N²) (minutes at 10,000 devices); the device table and the set-aside reasons are
persistent maps (``immutables.Map``, a hash array mapped trie: an update is O(log N) and shares
everything else with its predecessor), so an earlier state stays valid for as long as it is held.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, fields
from enum import Enum
from types import MappingProxyType
from typing import Any

from immutables import Map


class Phase(str, Enum):
    PREPARE = "PREPARE"
    CANARY = "CANARY"
    VERIFY = "VERIFY"
    AWAITING_APPROVAL = "AWAITING_APPROVAL"
    ROLLOUT = "ROLLOUT"
    CONFIRM = "CONFIRM"
    HALTED = "HALTED"
    ROLLING_BACK = "ROLLING_BACK"
    ROLLED_BACK = "ROLLED_BACK"
    ABORTED = "ABORTED"
    COMPLETE = "COMPLETE"
    PARTIAL = "PARTIAL"

    @property
    def terminal(self) -> bool:
        return self in TERMINAL


TERMINAL = frozenset({Phase.ROLLED_BACK, Phase.ABORTED, Phase.COMPLETE, Phase.PARTIAL})


class DeviceStatus(str, Enum):
    PENDING = "pending"  # planned, not touched yet
    UNREACHABLE = "unreachable"  # failed pre-flight; retried after the stage
    SKIPPED = "skipped"  # still unreachable after the retries: never deployed
    STAGED = "staged"
    DEPLOYED = "deployed"  # activated, not judged yet
    HEALTHY = "healthy"
    DEGRADED = "degraded"
    FAILED = "failed"  # runs the release, but activation or a health check failed
    DEPLOY_FAILED = "deploy_failed"  # transfer or stage failed: never ran the release
    EXCLUDED = "excluded"  # its cell lost its canary and has no replacement: not deployed
    QUARANTINED = "quarantined"  # failed, rolled back to known-good, set aside
    ROLLED_BACK = "rolled_back"
    ROLLBACK_FAILED = "rollback_failed"  # needs manual intervention

    @property
    def on_new_release(self) -> bool:
        """The device runs (or may run) the new release."""
        return self in (
            DeviceStatus.STAGED,
            DeviceStatus.DEPLOYED,
            DeviceStatus.HEALTHY,
            DeviceStatus.DEGRADED,
            DeviceStatus.FAILED,
            DeviceStatus.ROLLBACK_FAILED,
        )

    @property
    def set_aside_before_install(self) -> bool:
        """Left out before anything was installed (SKIPPED at pre-flight, EXCLUDED with its
        cell): not in its wave's failure-rate denominator (ADR 0020)."""
        return self in (DeviceStatus.SKIPPED, DeviceStatus.EXCLUDED)


class Approval(str, Enum):
    PENDING = "PENDING"
    GRANTED = "GRANTED"
    REJECTED = "REJECTED"
    NOT_REQUIRED = "NOT_REQUIRED"


@dataclass(frozen=True, slots=True)
class DeploymentState:
    deployment_id: str
    phase: Phase = Phase.PREPARE
    artifact: str = ""
    sha256: str = ""
    fleet_total: int = 0
    stages: tuple[tuple[str, ...], ...] = ()  # stage 0 = canaries, then the waves
    devices: Map[str, DeviceStatus] = field(default_factory=Map)
    # The devices in plan order (canaries, then each wave): a Map has no order of its own, and
    # rollbacks, reports and listings must be the same on every fold.
    order: tuple[str, ...] = ()
    stage: int = 0  # the stage being (or last) worked on
    stage_deployed: int = -1  # highest stage whose deploy step finished
    stages_done: int = 0  # stages whose gate passed
    canary_verdict: str = "PENDING"
    approval: Approval = Approval.PENDING
    halted_from: Phase | None = None  # phase to go back to on resume
    halt_reason: str = ""
    rollback_scope: tuple[str, ...] = ()
    rollback_then: Phase | None = None  # phase after the rollback completes
    quarantine_on_rollback: bool = False  # devices rolled back now end QUARANTINED
    quarantine_scope: tuple[str, ...] = ()  # these end QUARANTINED too (a merged rollback)
    pending_quarantine: tuple[str, ...] = ()  # failed devices of a paused wave
    manual_intervention: tuple[str, ...] = ()
    wave_failure_rate: float = 0.0
    soak_started: Mapping[str, str] = field(default_factory=dict)  # "stage:round" -> ts
    plan: Mapping[str, Any] = field(default_factory=dict)
    last_action: str = ""
    allow_short_soak: bool = False
    # Who created the deployment, and whether the policy's four-eyes rule applies to it.
    started_by: str = ""
    distinct_approver: bool = False
    # Why each failed, skipped, excluded or quarantined device is set aside (device -> reason).
    # Only devices that failed somehow are in it.
    reasons: Map[str, str] = field(default_factory=Map)
    # Canary rounds: a partial canary FAIL is never turned into a PASS; a human's resume
    # ("replace" or "exclude") starts round 2 with replacement canaries (or without the cells
    # that lost theirs), through the whole canary stage and a full soak.
    canary_round: int = 1
    canary_decision: str = ""  # "replace" | "exclude": recorded, replacements not yet chosen
    retired_canaries: tuple[str, ...] = ()  # failed in an earlier round, replaced or excluded
    # The concurrent control cohort of the current canary round: canary -> control device
    # (old release, sampled at the same moments; never deployed during the canary stage).
    controls: Mapping[str, str] = field(default_factory=dict)
    canary_history: tuple[Mapping[str, Any], ...] = ()  # one entry per finished canary round
    # Rollback drill on one canary: "" → started → rolled_back → reactivated → done
    drill_device: str | None = None
    drill: str = ""

    def __post_init__(self) -> None:
        # Whatever mapping a caller gives, the state holds an immutable one.
        if not isinstance(self.devices, Map):
            object.__setattr__(self, "devices", Map(self.devices))
        if not isinstance(self.reasons, Map):
            object.__setattr__(self, "reasons", Map(self.reasons))
        if not isinstance(self.soak_started, MappingProxyType):
            object.__setattr__(self, "soak_started", MappingProxyType(dict(self.soak_started)))
        if not isinstance(self.controls, MappingProxyType):
            object.__setattr__(self, "controls", MappingProxyType(dict(self.controls)))
        if not isinstance(self.plan, MappingProxyType):
            object.__setattr__(self, "plan", MappingProxyType(dict(self.plan)))

    @classmethod
    def empty(cls, deployment_id: str) -> DeploymentState:
        return cls(deployment_id=deployment_id)

    def with_devices(
        self,
        updates: Mapping[str, DeviceStatus],
        reasons: Mapping[str, str] | None = None,
        **kw: Any,
    ) -> DeploymentState:
        """The successor with these device statuses (and set-aside reasons): O(log N) per
        device, the rest of the table shared; this state is left as it was."""
        kw["devices"] = self.devices.update(updates)
        if reasons:
            kw["reasons"] = self.reasons.update(reasons)
        return self.evolve(**kw)

    def evolve(self, **changes: Any) -> DeploymentState:
        """``dataclasses.replace`` without re-running ``__init__`` and ``__post_init__`` for
        every field (a fold makes one successor per event): the changed fields must already be
        immutable values."""
        new = object.__new__(DeploymentState)
        for name in _FIELDS:
            object.__setattr__(
                new, name, changes.pop(name) if name in changes else getattr(self, name)
            )
        if changes:
            raise TypeError(f"DeploymentState has no field {next(iter(changes))!r}")
        return new

    def snapshot(self) -> DeploymentState:
        """Kept for callers of the mutable era: a state is immutable, so it is its own copy."""
        return self

    # -- derived counts --------------------------------------------------------------------
    def count(self, *statuses: DeviceStatus, ids: tuple[str, ...] | None = None) -> int:
        pool = ids if ids is not None else self.order
        return sum(1 for i in pool if self.devices.get(i) in statuses)

    def device_items(self) -> Iterator[tuple[str, DeviceStatus]]:
        """(device, status) in plan order."""
        devices = self.devices
        for i in self.order:
            yield i, devices[i]

    @property
    def canaries(self) -> tuple[str, ...]:
        return self.stages[0] if self.stages else ()

    @property
    def waves_total(self) -> int:
        return max(0, len(self.stages) - 1)

    @property
    def deployed_ids(self) -> tuple[str, ...]:
        """Devices that run the new release now."""
        return tuple(i for i, s in self.device_items() if s.on_new_release)

    def stage_of(self, device_id: str) -> int | None:
        for n, ids in enumerate(self.stages):
            if device_id in ids:
                return n
        return None


_FIELDS = tuple(f.name for f in fields(DeploymentState))


def _next_action(s: DeploymentState) -> str:
    match s.phase:
        case Phase.PREPARE:
            return "verify artifact and plan, then deploy to canaries"
        case Phase.CANARY:
            return "deploy to canary devices"
        case Phase.VERIFY:
            return "health checks and soak on canaries"
        case Phase.AWAITING_APPROVAL:
            return f"human approval: fleetgate deploy approve {s.deployment_id} --as NAME"
        case Phase.ROLLOUT:
            return f"wave {s.stage}/{s.waves_total}: deploy, health gate, soak"
        case Phase.CONFIRM:
            return "full-fleet health check and summary"
        case Phase.HALTED:
            if s.canary_verdict == "FAIL":
                return (
                    f"human decision: fleetgate deploy resume {s.deployment_id} --as NAME "
                    "(replacement canaries for the failed cells; --exclude-failed-cells to "
                    f"leave those cells out) or fleetgate deploy rollback {s.deployment_id}"
                )
            return f"human decision: fleetgate deploy resume|rollback {s.deployment_id}"
        case Phase.ROLLING_BACK:
            return f"roll back {len(s.rollback_scope)} devices"
        case _:
            return "none (deployment ended)"


def exit_code(s: DeploymentState) -> int:
    """The CLI's exit code for a deployment in this state (DESIGN.md): 0 complete, 1 partial,
    3 halted/rolled back/aborted, 4 waiting for a human (approval, or a 5-20 % wave pause
    where nothing was rolled back)."""
    if s.phase is Phase.HALTED and s.pending_quarantine:
        return 4
    return {
        Phase.COMPLETE: 0,
        Phase.PARTIAL: 1,
        Phase.AWAITING_APPROVAL: 4,
        Phase.HALTED: 3,
        Phase.ROLLED_BACK: 3,
        Phase.ABORTED: 3,
    }.get(s.phase, 4)


def render_state_block(s: DeploymentState) -> str:
    """The spec's ``<fleet-deploy-state>`` block; field names exactly as the spec writes them."""
    D = DeviceStatus
    canaries = s.canaries
    deployed = (D.DEPLOYED, D.HEALTHY, D.DEGRADED, D.FAILED, D.ROLLBACK_FAILED)
    # The wave being worked on, or (after a halt or a rollback) the one the deployment stopped in.
    wave = s.stage if s.stage_deployed >= 0 or s.phase is Phase.ROLLOUT else 0
    blockers: list[str] = []
    if s.halt_reason and s.phase is Phase.HALTED:
        blockers.append(s.halt_reason)
    if s.manual_intervention:
        blockers.append("manual intervention needed: " + ", ".join(s.manual_intervention))
    fields = [
        ("phase", s.phase.value),
        ("artifact", s.artifact),
        ("fleet_total", str(s.fleet_total)),
        ("canary_count", str(len(canaries))),
        ("canary_healthy", str(s.count(D.HEALTHY, ids=canaries))),
        ("deployed_count", str(s.count(*deployed))),
        ("deployed_healthy", str(s.count(D.HEALTHY))),
        ("deployed_degraded", str(s.count(D.DEGRADED))),
        ("skipped", str(s.count(D.SKIPPED, D.UNREACHABLE, D.EXCLUDED))),
        ("quarantined", str(s.count(D.QUARANTINED))),
        ("rollback_available", "false" if s.manual_intervention else "true"),
        ("canary_verdict", s.canary_verdict),
        ("human_approval", s.approval.value),
        ("current_wave", f"{max(0, wave)}/{s.waves_total}"),
        ("wave_failure_rate", f"{100 * s.wave_failure_rate:.1f}%"),
        ("last_action", s.last_action or "none"),
        ("next_action", _next_action(s)),
        ("blockers", "; ".join(blockers) or "none"),
    ]
    body = "\n".join(f"{k}: {v}" for k, v in fields)
    return f"<fleet-deploy-state>\n{body}\n</fleet-deploy-state>"
