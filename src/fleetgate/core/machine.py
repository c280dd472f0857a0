"""The deployment state machine: ``step(state, event) -> (state, effects)``.

Events are the audit log's own events (``core.events.Event`` / ``StoredEvent``): the machine
reads ``action``, ``device_id``, ``actor``, ``ts`` and ``details``. So the deployment's state *is*
a fold over its stored events (``fold``), and a report or a resumed controller rebuilds exactly
the live state from the log alone.

Decisions are made by ``core.gates`` in the engine and *recorded* in the events that carry them
(``canary.verdict``, ``wave.evaluated`` …) with their reasons — "every decision gets logged with
the reasoning". The machine applies recorded decisions and refuses illegal ones (an approval
without a PASS canary verdict, a resume while a rollback failure is unresolved, any event in a
terminal phase other than a rollback request): ``IllegalTransition``.

Effects are a pure function of the state (``next_effects``): after a controller dies, the next
one folds the log and asks ``next_effects`` what to do — no separate resume path to get wrong.
Every effect is idempotent on the device side (agents answer repeats from their record), so
re-running the effect that was in flight when the controller died is safe.

Phases: PREPARE → CANARY → VERIFY → AWAITING_APPROVAL → ROLLOUT (wave i/n) → CONFIRM →
COMPLETE | PARTIAL, plus HALTED (waits for a human), ROLLING_BACK, and the terminal ROLLED_BACK,
ABORTED.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from typing import Any, Protocol

from immutables import Map

from fleetgate.core.events import DEPLOYMENT_EVENTS
from fleetgate.core.state import TERMINAL, Approval, DeploymentState, DeviceStatus, Phase
from fleetgate.errors import IllegalTransition

D = DeviceStatus


class EventLike(Protocol):
    @property
    def ts(self) -> str: ...
    @property
    def deployment_id(self) -> str | None: ...
    @property
    def device_id(self) -> str | None: ...
    @property
    def actor(self) -> str: ...
    @property
    def action(self) -> str: ...
    @property
    def outcome(self) -> str: ...
    @property
    def details(self) -> Mapping[str, Any]: ...


# -- effects: what the engine must do next ------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Prepare:
    """Verify the artifact, publish it, confirm the plan; then ``prepare.passed``/``failed``."""


@dataclass(frozen=True, slots=True)
class RunStage:
    """Pre-flight, baseline, stage, activate and smoke-test these devices; then
    ``stage.deployed``. Devices already on the release are not deployed again."""

    stage: int
    device_ids: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class VerifyCanary:
    """Health, soak, health again on the canaries; then ``canary.verdict``."""

    device_ids: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class ReplaceCanaries:
    """After a partial canary FAIL and a human's resume: choose replacement canaries for the
    cells the failed canaries covered ("replace"), or set those cells' devices aside
    ("exclude"); then ``canary.replaced``. Round 2 then runs the whole canary stage."""

    decision: str
    retired: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class EvaluateWave:
    """Health on ALL deployed devices, soak, again; then ``wave.evaluated``."""

    stage: int
    device_ids: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Rollback:
    """Capture logs, roll these devices back; then ``rollback.completed``."""

    device_ids: tuple[str, ...]
    reason: str


@dataclass(frozen=True, slots=True)
class Confirm:
    """Full-fleet health, rollback copies present, accounting; then ``confirm.completed``."""


@dataclass(frozen=True, slots=True)
class WaitForHuman:
    reason: str


@dataclass(frozen=True, slots=True)
class Stop:
    phase: Phase


Effect = (
    Prepare
    | RunStage
    | VerifyCanary
    | ReplaceCanaries
    | EvaluateWave
    | Rollback
    | Confirm
    | WaitForHuman
    | Stop
)
CANARY_DECISIONS = ("replace", "exclude")

_WAVE_ACTIONS = ("CONTINUE", "QUARANTINE_AND_CONTINUE", "PAUSE_FOR_HUMAN", "ROLLBACK_WAVE_AND_HALT")


def _ids(details: Mapping[str, Any], key: str) -> tuple[str, ...]:
    return tuple(str(x) for x in details.get(key, ()))


def _require(state: DeploymentState, event: EventLike, *phases: Phase) -> None:
    if state.phase not in phases:
        allowed = ", ".join(p.value for p in phases)
        raise IllegalTransition(
            f"{event.action} is not allowed in phase {state.phase.value} (only in {allowed})",
            deployment_id=state.deployment_id,
        )


def _after_stage(state: DeploymentState) -> DeploymentState:
    """The current stage's gate passed: on to the next wave, or to CONFIRM."""
    done = state.stage + 1
    if state.stage + 1 < len(state.stages):
        return replace(state, phase=Phase.ROLLOUT, stage=state.stage + 1, stages_done=done)
    return replace(state, phase=Phase.CONFIRM, stages_done=done)


def _start_rollback(
    state: DeploymentState, ids: Iterable[str], then: Phase, quarantine: bool = False
) -> DeploymentState:
    scope = tuple(sorted(set(ids)))
    return replace(
        state,
        phase=Phase.ROLLING_BACK,
        rollback_scope=scope,
        rollback_then=then,
        quarantine_on_rollback=quarantine,
        halted_from=state.phase if state.phase is not Phase.ROLLING_BACK else state.halted_from,
    )


def _halt(state: DeploymentState, reason: str, from_phase: Phase | None = None) -> DeploymentState:
    return replace(
        state,
        phase=Phase.HALTED,
        halt_reason=reason,
        halted_from=from_phase or state.phase,
    )


def step(state: DeploymentState, event: EventLike) -> tuple[DeploymentState, list[Effect]]:
    new = apply(state, event)
    return new, next_effects(new)


def apply(state: DeploymentState, event: EventLike) -> DeploymentState:
    """``step`` without computing effects: O(1) per device event (the recorder's hot path).
    Raises ``IllegalTransition`` before changing anything."""
    new = _apply(state, event)
    who = f" {event.device_id}" if event.device_id else ""
    last = f"{event.action}{who} ({event.outcome})"
    if new is state:
        return state.evolve(last_action=last)
    # ``new`` was made by ``_apply`` for this event and nobody else holds it yet: set the field
    # on it instead of copying the whole state a second time (``replace`` also re-ran
    # ``__post_init__``: issue 12, one successor per event, not three).
    object.__setattr__(new, "last_action", last)
    return new


def _apply(s: DeploymentState, e: EventLike) -> DeploymentState:
    a, d = e.action, e.details
    if a not in DEPLOYMENT_EVENTS:
        raise IllegalTransition(f"unknown event {a!r}", deployment_id=s.deployment_id)
    if a == "deployment.created":
        if s.stages:
            raise IllegalTransition("deployment already created", deployment_id=s.deployment_id)
        stages = tuple(tuple(str(i) for i in st) for st in d["stages"])
        return replace(
            s,
            phase=Phase.PREPARE,
            artifact=str(d.get("artifact", "")),
            sha256=str(d.get("sha256", "")),
            fleet_total=int(d.get("fleet_total", 0)),
            stages=stages,
            devices=Map({i: D.PENDING for st in stages for i in st}),
            order=tuple(dict.fromkeys(i for st in stages for i in st)),
            plan=dict(d.get("plan", {})),
            allow_short_soak=bool(d.get("allow_short_soak", False)),
            started_by=e.actor,
            distinct_approver=bool(d.get("distinct_approver", False)),
        )
    if not s.stages:
        raise IllegalTransition(f"{a} before deployment.created", deployment_id=s.deployment_id)

    # Device-level facts are recorded in any phase: they describe what really happened.
    if a.startswith("device."):
        return _apply_device(s, e)
    if s.phase in TERMINAL and a not in (
        "rollback.requested",
        "rollback.completed",
        "soak.started",
        "approval.requested",
        "confirm.checked",
        "registry.quarantined",
    ):
        raise IllegalTransition(
            f"{a}: deployment already ended ({s.phase.value})", deployment_id=s.deployment_id
        )

    match a:
        case "prepare.passed":
            _require(s, e, Phase.PREPARE)
            return replace(s, phase=Phase.CANARY, stage=0)
        case "prepare.failed":
            _require(s, e, Phase.PREPARE)
            return replace(s, phase=Phase.ABORTED, halt_reason=str(d.get("reason", "")))
        case "stage.deployed":
            _require(s, e, Phase.CANARY, Phase.ROLLOUT)
            stage = int(d.get("stage", s.stage))
            if stage != s.stage:
                raise IllegalTransition(
                    f"stage.deployed for stage {stage}, current {s.stage}",
                    deployment_id=s.deployment_id,
                )
            s = replace(s, stage_deployed=stage)
            return replace(s, phase=Phase.VERIFY) if stage == 0 else s
        case "soak.started":
            key = f"{d.get('stage', s.stage)}:{d.get('round', 'soak')}"
            return replace(s, soak_started={**s.soak_started, key: str(d.get("store_ts", e.ts))})
        case "canary.verdict":
            _require(s, e, Phase.VERIFY)
            if s.canary_decision:
                raise IllegalTransition(
                    "canary.verdict before the replacement canaries were chosen",
                    deployment_id=s.deployment_id,
                )
            verdict = str(d["verdict"])
            entry = {
                "round": s.canary_round,
                "verdict": verdict,
                "failed": list(_ids(d, "failed")),
                "ts": e.ts,
            }
            history = (*s.canary_history, entry)
            if verdict in ("PASS", "INCONCLUSIVE"):
                # INCONCLUSIVE (issue 11): the analysis could not tell, even after the soak was
                # extended; a human decides with the evidence (approve --accept-inconclusive, or
                # reject).
                return replace(
                    s, canary_verdict=verdict, phase=Phase.AWAITING_APPROVAL, canary_history=history
                )
            failed = _ids(d, "failed") or s.canaries
            all_failed = bool(d.get("all_failed", True))
            s = replace(
                s,
                canary_verdict="FAIL",
                canary_history=history,
                halt_reason="canary verdict FAIL: " + "; ".join(d.get("reasons", [])),
            )
            s = s.with_devices(
                {}, {i: f"canary failed: {s.reasons.get(i, 'see verdict')}" for i in failed}
            )
            # Some canaries failed: they are rolled back and quarantined (set aside for
            # investigation) and a human decides; all failed: the release is bad, abort.
            then = Phase.ABORTED if all_failed else Phase.HALTED
            return _start_rollback(s, failed, then, quarantine=not all_failed)
        case "canary.replaced":
            return _apply_replaced(s, e)
        case "canary.controls":
            _require(s, e, Phase.CANARY, Phase.VERIFY)
            controls = {str(k): str(v) for k, v in dict(d.get("controls", {})).items() if v}
            for c, ctl in controls.items():
                if c not in s.canaries or s.devices.get(ctl) is not D.PENDING:
                    raise IllegalTransition(
                        f"canary.controls: {ctl} cannot control {c} (must be an untouched device)",
                        deployment_id=s.deployment_id,
                    )
            return replace(s, controls=controls)
        case "approval.requested":
            return s
        case "approval.granted":
            _require(s, e, Phase.AWAITING_APPROVAL)
            gone = [
                f"{i} ({s.devices[i].value})"
                for i in s.canaries
                if i not in s.retired_canaries
                and s.devices[i] not in (D.HEALTHY, D.DEPLOYED, D.EXCLUDED)
            ]
            if gone:
                raise IllegalTransition(
                    "the canary verdict no longer holds: "
                    + ", ".join(gone)
                    + " is no longer a healthy canary on the release; reject the rollout",
                    deployment_id=s.deployment_id,
                )
            accepted = s.canary_verdict == "INCONCLUSIVE" and bool(d.get("accept_inconclusive"))
            if s.canary_verdict != "PASS" and not accepted:
                raise IllegalTransition(
                    "approval needs a PASS canary verdict"
                    + (
                        " (the verdict is INCONCLUSIVE: approve with --accept-inconclusive to "
                        "take that risk by name, or reject)"
                        if s.canary_verdict == "INCONCLUSIVE"
                        else ""
                    ),
                    deployment_id=s.deployment_id,
                )
            if e.actor in ("", "fleetgate", "system"):
                raise IllegalTransition(
                    "approval must be recorded by a named human", deployment_id=s.deployment_id
                )
            if s.distinct_approver and e.actor == s.started_by:
                raise IllegalTransition(
                    f"four-eyes rule: {e.actor} started this deployment and cannot approve it "
                    "(policy approval.distinct_approver); another approver must",
                    deployment_id=s.deployment_id,
                )
            s = replace(s, approval=Approval.GRANTED)
            return _after_stage(s)
        case "approval.rejected":
            _require(s, e, Phase.AWAITING_APPROVAL)
            s = replace(s, approval=Approval.REJECTED)
            return _start_rollback(s, s.deployed_ids, Phase.ROLLED_BACK)
        case "wave.evaluated":
            _require(s, e, Phase.ROLLOUT)
            return _apply_wave(s, e)
        case "rollback.requested":
            unknown = sorted(i for i in _ids(d, "devices") if i not in s.devices)
            if unknown:
                raise IllegalTransition(
                    "rollback of devices outside this deployment: " + ", ".join(unknown),
                    deployment_id=s.deployment_id,
                )
            ids = _ids(d, "devices") or s.deployed_ids
            partial = bool(_ids(d, "devices")) and set(ids) != set(s.deployed_ids)
            back_to = s.phase if partial else Phase.ROLLED_BACK
            if s.phase is not Phase.ROLLING_BACK:
                return _start_rollback(s, ids, back_to)
            # A rollback requested while another is under way joins it: the scopes add up, a
            # whole-deployment (or an ending) rollback ends the deployment, and devices the
            # pending one was quarantining are still quarantined.
            then = s.rollback_then or Phase.HALTED
            if not partial or then in TERMINAL:
                then = then if then in TERMINAL else Phase.ROLLED_BACK
            held = (*s.quarantine_scope, *(s.rollback_scope if s.quarantine_on_rollback else ()))
            s = _start_rollback(s, (*s.rollback_scope, *ids), then)
            return replace(s, quarantine_scope=tuple(sorted(set(held))))
        case "rollback.completed":
            _require(s, e, Phase.ROLLING_BACK)
            s = replace(s, rollback_scope=(), quarantine_on_rollback=False, quarantine_scope=())
            then = s.rollback_then or Phase.HALTED
            s = replace(s, rollback_then=None)
            if s.manual_intervention:
                # Where the rollback was going is kept for the resume after the recovery: an
                # abort or a whole-deployment rollback ends there, never in a rollout again.
                if then in TERMINAL or then is Phase.ROLLOUT:
                    after = then
                else:
                    after = s.halted_from or Phase.HALTED
                return _halt(
                    s,
                    "rollback failed on "
                    + ", ".join(s.manual_intervention)
                    + ": manual intervention required; every deployment action stopped",
                    from_phase=after,
                )
            if then is Phase.HALTED:
                return _halt(
                    s,
                    s.halt_reason or "rolled back; waiting for a human decision",
                    from_phase=s.halted_from,
                )
            if then is Phase.ROLLOUT:  # quarantine done: the wave's gate passed
                return _after_stage(replace(s, phase=Phase.ROLLOUT))
            return replace(s, phase=then)
        case "deployment.halted":
            if s.phase is Phase.HALTED:
                return replace(s, halt_reason=str(d.get("reason", s.halt_reason)))
            return _halt(s, str(d.get("reason", "halted")))
        case "deployment.resumed":
            _require(s, e, Phase.HALTED)
            if s.manual_intervention:
                raise IllegalTransition(
                    "a rollback failure is unresolved ("
                    + ", ".join(s.manual_intervention)
                    + "): recover the device(s) first",
                    deployment_id=s.deployment_id,
                )
            back = s.halted_from or Phase.PREPARE
            if back in TERMINAL:  # a rollback or abort a rollback failure interrupted
                return replace(s, phase=back, halted_from=None)
            if back in (Phase.HALTED, Phase.ROLLING_BACK):
                back = Phase.ROLLOUT if s.stage > 0 else Phase.VERIFY
            if s.drill == "failed":  # validate rollback again, on another canary
                s = replace(s, drill="", drill_device=None)
            s = replace(s, phase=back, halt_reason="", halted_from=None)
            if back is Phase.VERIFY and s.canary_verdict == "FAIL":
                # Invariant 11: a FAIL is never re-verified into a PASS. The human chooses how
                # the failed canaries' cells are covered again; round 2 proves it.
                choice = str(d.get("canary_failure") or "replace")
                if choice not in CANARY_DECISIONS:
                    raise IllegalTransition(
                        f"canary_failure must be one of {CANARY_DECISIONS}, not {choice!r}",
                        deployment_id=s.deployment_id,
                    )
                return replace(s, canary_decision=choice)
            if s.pending_quarantine:
                ids = s.pending_quarantine
                s = replace(s, pending_quarantine=())
                return _start_rollback(s, ids, Phase.ROLLOUT, quarantine=True)
            return s
        case "drill.started":
            _require(s, e, Phase.CANARY)
            return replace(s, drill_device=str(d["device"]), drill="started")
        case "drill.completed":
            return replace(s, drill="done" if d.get("ok", True) else "failed")
        case "deployment.aborted":
            return replace(s, phase=Phase.ABORTED, halt_reason=str(d.get("reason", "")))
        case "confirm.completed":
            _require(s, e, Phase.CONFIRM)
            return replace(s, phase=Phase(str(d["result"])))
        case "confirm.checked":
            return s
        case "confirm.failed":
            # Devices that fail the final health check are rolled back and set aside, then
            # CONFIRM runs again on the rest.
            _require(s, e, Phase.CONFIRM)
            return _start_rollback(s, _ids(d, "devices"), Phase.CONFIRM, quarantine=True)
        case _:
            # Informational events of the vocabulary (stage.started, preflight summaries …)
            # change nothing; anything else was refused above.
            return s


def _apply_device(s: DeploymentState, e: EventLike) -> DeploymentState:
    dev = e.device_id
    if dev is None or dev not in s.devices:
        raise IllegalTransition(
            f"{e.action} for a device outside the plan: {dev!r}", deployment_id=s.deployment_id
        )
    if dev == s.drill_device:
        if s.drill == "started" and e.action == "device.rolled_back":
            s = replace(s, drill="rolled_back")
        elif s.drill == "rolled_back" and e.action == "device.activated":
            s = replace(s, drill="reactivated")
    cur = s.devices[dev]
    d = e.details
    match e.action:
        case "device.unreachable":
            why = f"unreachable (attempt {d.get('attempt', 1)}): {d.get('error', '')}".rstrip(": ")
            return s.with_devices({dev: D.UNREACHABLE}, {dev: why})
        case "device.skipped":
            return s.with_devices({dev: D.SKIPPED}, {dev: str(d.get("reason") or "skipped")})
        case "device.staged":
            return s.with_devices({dev: D.STAGED})
        case "device.activated":
            return s.with_devices({dev: D.DEPLOYED})
        case "device.deploy_failed":
            # Invariant 10: a failed transfer or stage leaves the device on its old release
            # (DEPLOY_FAILED: never counted as deployed); a failed start leaves it on the new
            # one (FAILED: it needs a rollback). Both count in the wave's failure rate.
            step = str(d.get("step") or "stage")
            status = D.FAILED if step == "activate" else D.DEPLOY_FAILED
            why = f"{step} failed: {d.get('error') or 'no detail'}"
            return s.with_devices({dev: status}, {dev: why})
        case "device.health":
            if not cur.on_new_release:
                return s  # a health check of a rolled-back device changes nothing
            if cur is D.FAILED:
                return s  # a failure stands for this deployment: a later good sample is luck
            status = {"healthy": D.HEALTHY, "degraded": D.DEGRADED, "failed": D.FAILED}[
                str(d["status"])
            ]
            if status is D.HEALTHY:
                return s.with_devices({dev: status})
            why = "health " + str(d["status"]) + ": " + "; ".join(map(str, d.get("reasons", ())))
            return s.with_devices({dev: status}, {dev: why})
        case "device.commit_failed":
            # The device would not (or could not be made to) keep the release: it reverted
            # by itself, or never confirmed it. Failed; its rollback is answered either way.
            if not cur.on_new_release:
                return s
            why = f"commit failed: {d.get('error') or 'no detail'}"
            return s.with_devices({dev: D.FAILED}, {dev: why})
        case "device.rolled_back":
            quarantine = s.quarantine_on_rollback or dev in s.quarantine_scope
            new = D.QUARANTINED if quarantine else D.ROLLED_BACK
            return s.with_devices({dev: new})
        case "device.quarantined":
            return s.with_devices({dev: D.QUARANTINED})
        case "device.rollback_failed":
            mi = tuple(sorted({*s.manual_intervention, dev}))
            why = f"rollback failed: {d.get('error') or 'no detail'}"
            return s.with_devices({dev: D.ROLLBACK_FAILED}, {dev: why}, manual_intervention=mi)
        case "device.recovered":  # an operator fixed a device by hand
            if dev not in s.manual_intervention:
                raise IllegalTransition(
                    f"{dev} has no unresolved rollback failure in this deployment",
                    deployment_id=s.deployment_id,
                )
            mi = tuple(i for i in s.manual_intervention if i != dev)
            why = f"rollback failed; recovered by {e.actor}"
            return s.with_devices({dev: D.QUARANTINED}, {dev: why}, manual_intervention=mi)
        case _:
            return s  # baseline, logs captured, preflight ok …: evidence only


def _apply_replaced(s: DeploymentState, e: EventLike) -> DeploymentState:
    """Round 2 of the canary stage: replacements join stage 0 (leaving their waves),
    devices of cells nobody can prove any more are EXCLUDED (never deployed)."""
    _require(s, e, Phase.VERIFY)
    if not s.canary_decision:
        raise IllegalTransition(
            "canary.replaced without a human decision to resume", deployment_id=s.deployment_id
        )
    d = e.details
    repl, excl = _ids(d, "replacements"), _ids(d, "excluded")
    moved = set(repl) | set(excl)
    in_waves = {i for st in s.stages[1:] for i in st}
    for i in moved:
        if i not in in_waves or s.devices.get(i) is not D.PENDING:
            raise IllegalTransition(
                f"canary.replaced: {i} is not an untouched wave device",
                deployment_id=s.deployment_id,
            )
    reasons: Mapping[str, Any] = d.get("reasons", {})
    stages = (
        (*s.stages[0], *repl),
        *(tuple(i for i in st if i not in moved) for st in s.stages[1:]),
    )
    s = s.with_devices(
        {i: D.EXCLUDED for i in excl},
        {i: str(reasons.get(i) or "its cell lost its canary") for i in excl},
    )
    return replace(
        s,
        stages=stages,
        phase=Phase.CANARY,
        canary_round=s.canary_round + 1,
        controls={},
        canary_decision="",
        retired_canaries=tuple(sorted({*s.retired_canaries, *_ids(d, "retired")})),
        canary_verdict="PENDING",
    )


def _apply_wave(s: DeploymentState, e: EventLike) -> DeploymentState:
    d = e.details
    action = str(d["action"])
    if action not in _WAVE_ACTIONS:
        raise IllegalTransition(f"unknown wave action {action!r}", deployment_id=s.deployment_id)
    if int(d.get("stage", s.stage)) != s.stage or s.stage_deployed != s.stage:
        raise IllegalTransition(
            "wave.evaluated before the wave was deployed", deployment_id=s.deployment_id
        )
    s = replace(s, wave_failure_rate=float(d.get("rate", 0.0)))
    failed = _ids(d, "failed")
    if action == "CONTINUE":
        return _after_stage(s)
    if action == "QUARANTINE_AND_CONTINUE":
        return _start_rollback(s, failed, Phase.ROLLOUT, quarantine=True)
    if action == "PAUSE_FOR_HUMAN":
        s = replace(s, pending_quarantine=failed)
        return _halt(s, str(d.get("reason", "wave paused for a human decision")))
    scope = _ids(d, "rollback") or failed
    then = Phase.ROLLED_BACK if d.get("scope") == "ALL" else Phase.HALTED
    s = replace(s, halt_reason=str(d.get("reason", "wave rolled back")))
    return _start_rollback(s, scope, then)


def next_effects(s: DeploymentState) -> list[Effect]:
    """What the engine must do next, from the state alone."""
    match s.phase:
        case Phase.PREPARE:
            return [Prepare()]
        case Phase.CANARY:
            return [RunStage(0, s.canaries)]
        case Phase.VERIFY:
            if s.canary_decision:
                last = s.canary_history[-1] if s.canary_history else {}
                retired = tuple(str(i) for i in last.get("failed", ()))
                return [ReplaceCanaries(s.canary_decision, retired)]
            live = tuple(i for i in s.canaries if s.devices[i].on_new_release)
            return [VerifyCanary(live)]
        case Phase.AWAITING_APPROVAL:
            return [WaitForHuman("fleet rollout needs a recorded human approval")]
        case Phase.ROLLOUT:
            if s.stage_deployed == s.stage:
                return [EvaluateWave(s.stage, s.deployed_ids)]
            return [RunStage(s.stage, s.stages[s.stage])]
        case Phase.CONFIRM:
            return [Confirm()]
        case Phase.HALTED:
            return [WaitForHuman(s.halt_reason or "halted")]
        case Phase.ROLLING_BACK:
            todo = tuple(
                i
                for i in s.rollback_scope
                if s.devices.get(i)
                not in (
                    D.ROLLED_BACK,
                    D.QUARANTINED,
                    D.ROLLBACK_FAILED,
                    D.PENDING,
                    D.SKIPPED,
                    D.EXCLUDED,
                )
            )
            if s.quarantine_on_rollback:
                why = "quarantine: " + ", ".join(f"{i}: {s.reasons.get(i, 'failed')}" for i in todo)
            else:
                why = s.halt_reason or "rollback"
            return [Rollback(todo, why)]
        case _:
            return [Stop(s.phase)]


def fold(deployment_id: str, events: Iterable[EventLike]) -> DeploymentState:
    """Rebuild a deployment's state from its events (in order)."""
    state = DeploymentState.empty(deployment_id)
    for ev in events:
        state = apply(state, ev)
    return state
