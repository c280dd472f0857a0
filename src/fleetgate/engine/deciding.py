"""Human decisions: approve, reject, resume, halt, roll back, recover.

Deciding is not driving (ADR 0009): a decision is one short transaction under the log's lock,
validated by the state machine against the log as it is, with no lease; a driver that is
mid-step learns of it at its next append (``LogMoved``) and a parked deployment is woken."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from fleetgate.core.events import Event
from fleetgate.core.machine import apply
from fleetgate.core.state import DeploymentState, Phase
from fleetgate.engine.admission import open_deployments
from fleetgate.engine.controller_base import ControllerBase, summary
from fleetgate.errors import (
    GuardrailError,
    InputError,
)


@dataclass(frozen=True, slots=True)
class Decision:
    """A human decision to record: approve, reject, resume, halt, roll back, recover."""

    action: str
    actor: str
    device_id: str | None = None
    details: dict[str, Any] = field(default_factory=dict)


HALTABLE = (Phase.PREPARE, Phase.CANARY, Phase.VERIFY, Phase.ROLLOUT, Phase.CONFIRM)


def _check_halt(state: DeploymentState) -> None:
    """A human halt pauses a deployment that is moving; it never pauses a rollback (that is
    how the fleet gets back to safety) and there is nothing to pause in one that waits."""
    if state.phase is Phase.ROLLING_BACK:
        raise GuardrailError(
            f"deployment {state.deployment_id} is rolling back: a rollback is never paused",
            deployment_id=state.deployment_id,
        )
    if state.phase not in HALTABLE:
        raise GuardrailError(
            f"deployment {state.deployment_id} is {state.phase.value}: nothing is running to halt",
            deployment_id=state.deployment_id,
        )


class DecideMixin(ControllerBase):
    async def record_decision(self, dep_id: str, decision: Decision) -> DeploymentState:
        """Record a human decision in one short transaction and return: no lease, no drive.

        It is validated by the state machine against the log as it is now, under the log's
        lock, so no driver's append can slip in between. A driver that is running notices at
        its next append (``LogMoved``) and drives on from the new state; a parked deployment
        is made runnable at once. ``deployment.resumed`` on a deployment that is not HALTED
        records nothing: its controller died, and resuming it is driving on from the log.
        """
        if decision.action == "device.recovered" and not decision.details.get("checks"):
            # Only Controller.recover records it, after re-checking the device.
            raise InputError(
                "a recovery is recorded by `fleetgate deploy recover`, which re-checks the "
                "device first"
            )
        async with self.store.transaction():
            await self.store.lock_log()
            view = await self._view(dep_id)
            state = view.state
            if decision.action == "deployment.resumed" and state.phase is not Phase.HALTED:
                self.views.keep(view)
                return state
            if decision.actor.strip() in ("", "fleetgate", "system"):
                raise InputError("a human decision needs --as NAME")
            if decision.action == "rollback.requested":
                await self._check_rollback(state, decision)
            details = dict(decision.details)
            if decision.action == "deployment.halted":
                _check_halt(state)
                comment = str(details.get("comment") or "").strip()
                details["reason"] = f"halted by {decision.actor}" + (
                    f": {comment}" if comment else ""
                )
            ev = Event(
                ts=self.clock.now_iso(),
                deployment_id=dep_id,
                action=decision.action,
                actor=decision.actor,
                device_id=decision.device_id,
                details=details,
            )
            new = apply(state, ev)  # IllegalTransition: nothing written
            await self.store.append(ev)
            await self.store.update_deployment(dep_id, new.phase.value, summary(new))
            await self.store.set_wake(dep_id, None)
        # Committed: the view stays as it was before the decision and the next read of the
        # log takes the decision from the store, like any event written after it.
        self.views.keep(view)
        return new

    async def record_human(
        self,
        dep_id: str,
        action: str,
        actor: str,
        device_id: str | None = None,
        **details: Any,
    ) -> DeploymentState:
        """Record a human decision without driving on."""
        return await self.record_decision(dep_id, Decision(action, actor, device_id, details))

    async def decide(
        self, dep_id: str, decision: Decision | None, *, drive: bool = True
    ) -> DeploymentState:
        """Record ``decision`` (if any), then (``drive``) drive on until a human is needed or
        the deployment ended."""
        state = None
        if decision is not None:
            state = await self.record_decision(dep_id, decision)
        if drive or state is None:
            state = await self.drive(dep_id)
        return state

    async def _check_rollback(self, state: DeploymentState, decision: Decision) -> None:
        """A rollback names devices of this deployment (exit 2 otherwise), and a rollback of a
        deployment that has ended must not move devices that another deployment, not ended,
        now targets (the two-deployments-on-one-device hole, the other way round)."""
        named = [str(i) for i in decision.details.get("devices") or ()]
        unknown = sorted(i for i in named if i not in state.devices)
        if unknown:
            raise InputError(
                f"--device: {', '.join(unknown)} is not a device of deployment "
                f"{state.deployment_id}"
            )
        if not state.phase.terminal:
            return
        ids = named or list(state.order)
        found = await open_deployments(self.store)
        overlap = {
            d: shared for d, shared in found.overlapping(ids).items() if d != state.deployment_id
        }
        if overlap:
            dep, shared = next(iter(overlap.items()))
            raise GuardrailError(
                f"deployment {dep} has not ended and targets {len(shared)} of these devices "
                f"({', '.join(shared[:5])}{' …' if len(shared) > 5 else ''}): rolling back "
                f"{state.deployment_id} now would move devices it owns; end {dep} first",
                deployment_id=state.deployment_id,
            )

    async def recover(
        self, dep_id: str, device_id: str, actor: str, comment: str = ""
    ) -> DeploymentState:
        """Re-check a device whose rollback failed (reachable, on a known-good release,
        healthy) and only then record ``device.recovered`` (``engine.recover``)."""
        from fleetgate.engine.recover import recheck_device

        checks = await recheck_device(self.store, self.transport, dep_id, device_id)
        return await self.decide(
            dep_id,
            Decision("device.recovered", actor, device_id, {"checks": checks, "comment": comment}),
            drive=False,
        )
