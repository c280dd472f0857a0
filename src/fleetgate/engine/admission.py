"""Admission: may a new deployment be created at all?

Two refusals (``GuardrailError``, exit 3), checked against every deployment that has not ended:

- **A rollback failure is unresolved anywhere** (spec, Rollback Failure: "Do NOT proceed with
  any deployment until rollback is resolved"). ``fleetgate deploy recover ID --device DEV``
  clears it, after re-checking the device.
- **Targets overlap** (issue 7.7): two deployments driving the same device at once fight over
  it — the first one's later rollback would land the device on whatever the second installed.
  A deployment whose targets overlap one that has not ended (waiting for approval, halted,
  rolling out …) is refused, naming it and the shared devices, until that one has ended
  (approved through, rejected, or rolled back).

The check and the creation of the new deployment happen in one write transaction that holds the
log's append lock (``Store.lock_log``; SQLite's write lock, PostgreSQL's chain-head row lock), so
two ``deploy start`` racing cannot both pass it. Deployments' summary rows say which have ended;
anything not terminal is folded from its log (its cached status may be stale after a crash).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from fleetgate.core.machine import fold
from fleetgate.core.state import TERMINAL, DeploymentState
from fleetgate.errors import GuardrailError

_TERMINAL_NAMES = frozenset(p.value for p in TERMINAL)


@dataclass
class OpenDeployments:
    """The deployments that have not ended, folded from their logs."""

    states: list[DeploymentState] = field(default_factory=list)

    @property
    def rollback_failures(self) -> dict[str, tuple[str, ...]]:
        return {
            s.deployment_id: s.manual_intervention for s in self.states if s.manual_intervention
        }

    def overlapping(self, targets: Iterable[str]) -> dict[str, list[str]]:
        wanted = set(targets)
        out: dict[str, list[str]] = {}
        for s in self.states:
            if s.phase.terminal:
                continue
            shared = sorted(wanted.intersection(s.devices))
            if shared:
                out[s.deployment_id] = shared
        return out


async def open_deployments(store: Any) -> OpenDeployments:
    found = OpenDeployments()
    for record in await store.list_deployments():
        if record.status in _TERMINAL_NAMES:
            continue
        found.states.append(fold(record.id, await store.events(record.id)))
    return found


def _names(ids: list[str], limit: int = 5) -> str:
    more = f" and {len(ids) - limit} more" if len(ids) > limit else ""
    return ", ".join(ids[:limit]) + more


async def admit(store: Any, targets: Iterable[str]) -> None:
    """Refuse a new deployment of ``targets`` (GuardrailError), or return. Call it inside the
    transaction that creates the deployment, after ``store.lock_log()``."""
    found = await open_deployments(store)
    blocked = found.rollback_failures
    if blocked:
        where = "; ".join(f"{d}: {', '.join(ids)}" for d, ids in blocked.items())
        first = next(iter(blocked))
        raise GuardrailError(
            f"a rollback failed and is unresolved ({where}): no deployment may proceed until "
            f"it is (fleetgate deploy recover {first} --device DEV --as NAME, once the device "
            "is fixed)"
        )
    overlap = found.overlapping(targets)
    if overlap:
        dep, shared = next(iter(overlap.items()))
        state = next(s for s in found.states if s.deployment_id == dep)
        raise GuardrailError(
            f"deployment {dep} ({state.artifact}, {state.phase.value}) has not ended and "
            f"targets {len(shared)} of the same devices ({_names(shared)}): finish it, or end "
            f"it with fleetgate deploy rollback {dep} (or reject it) before starting another"
        )
