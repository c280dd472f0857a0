"""The CONFIRM section of the session report: every device of the inventory accounted for, and
every device set aside named with its reason.

Accounting is computed from the folded device statuses, never copied from ``confirm.completed``:
the recorded counts are kept beside it and any disagreement with the state at the moment they
were recorded becomes a warning, so the table always sums to ``fleet_total`` and matches the
state block.

- Rows: the spec's four (Deployed (healthy), Skipped (unreachable), Quarantined (failed), Not
  targeted) always; then, only when not zero, Deployed (degraded), Deployed (not yet checked),
  Staged (not activated), Failed (on the new release), Failed (not deployed), Excluded (cell not
  proven by a canary), Rolled back, Rollback failed (manual intervention), Pending (not
  reached). "Deployed (healthy)" counts HEALTHY devices only — devices that run the release
  (invariant 10): a device whose transfer or stage failed is "Failed (not deployed)", one CONFIRM
  found on another release too (``device.deploy_failed`` step ``confirm``).
- Set aside (spec: "skipped or quarantined devices documented with reasons"): every device that
  ends quarantined, rollback-failed, failed (on the release or to deploy), skipped or excluded,
  with its status and the fold's ``state.reasons`` (crash loop, the failed health metric,
  "unreachable (attempt 3): …", "stage failed: 507 insufficient-disk …", "canary failed: …",
  "rollback failed; recovered by NAME"), completed from the events where the fold has none
  (the rollback failure's error, the retries of a skipped device, a ``device.quarantined``
  reason). Grouped by status in the order above, then in plan order.
- ``registry_quarantined``: devices the engine put on the registry's quarantine list
  (``registry.quarantined``), which the next plan leaves out until ``registry release``.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from typing import Any

from fleetgate.core.state import TERMINAL, DeploymentState, DeviceStatus, Phase
from fleetgate.report.session_log import SessionLog, display_status, num

D = DeviceStatus

# (label, statuses) in table order; the first four are the spec's rows, always shown.
_CONFIRM_ROWS: tuple[tuple[str, tuple[DeviceStatus, ...]], ...] = (
    ("Deployed (healthy)", (D.HEALTHY,)),
    ("Skipped (unreachable)", (D.SKIPPED, D.UNREACHABLE)),
    ("Quarantined (failed)", (D.QUARANTINED,)),
    ("Not targeted", ()),
    ("Deployed (degraded)", (D.DEGRADED,)),
    ("Deployed (not yet checked)", (D.DEPLOYED,)),
    ("Staged (not activated)", (D.STAGED,)),
    ("Failed (on the new release)", (D.FAILED,)),
    ("Failed (not deployed)", (D.DEPLOY_FAILED,)),
    ("Excluded (cell not proven by a canary)", (D.EXCLUDED,)),
    ("Rolled back", (D.ROLLED_BACK,)),
    ("Rollback failed (manual intervention)", (D.ROLLBACK_FAILED,)),
    ("Pending (not reached)", (D.PENDING,)),
)
# ``confirm.completed.counts`` keys and the statuses the engine counts in each.
_RECORDED: dict[str, tuple[DeviceStatus, ...]] = {
    "deployed_healthy": (D.HEALTHY,),
    "deployed_degraded": (D.DEGRADED,),
    "failed": (D.FAILED, D.ROLLBACK_FAILED, D.DEPLOY_FAILED),
    "skipped": (D.SKIPPED, D.UNREACHABLE, D.PENDING),  # never reached counts as skipped there
    "excluded": (D.EXCLUDED,),
    "quarantined": (D.QUARANTINED,),
    "rolled_back": (D.ROLLED_BACK,),
}
_SET_ASIDE = (
    D.ROLLBACK_FAILED,
    D.QUARANTINED,
    D.FAILED,
    D.DEPLOY_FAILED,
    D.SKIPPED,
    D.UNREACHABLE,
    D.EXCLUDED,
)


def _percent(n: int, total: int) -> float:
    return round(100 * n / total, 1) if total else 0.0


def _reason(log: SessionLog, dev: str, status: DeviceStatus) -> str:
    why = log.state.reasons.get(dev, "")
    if status is D.ROLLBACK_FAILED and not why.startswith("rollback failed"):
        ev = log.last("device.rollback_failed", device=dev)
        error = str(ev.details.get("error") or "no detail") if ev else "no detail"
        why = f"rollback failed: {error}" + (f" (set aside after: {why})" if why else "")
    elif status is D.SKIPPED:
        tries = log.all("device.unreachable", device=dev)
        if tries and "attempt" not in why:
            last = str(tries[-1].details.get("error") or "")
            detail = f"{len(tries)} attempts" + (f", last: {last}" if last else "")
            why = f"{why or 'unreachable'} ({detail})"
    elif status is D.QUARANTINED and not why:
        ev = log.last("device.quarantined", device=dev)
        why = str(ev.details.get("reason") or "") if ev else ""
    return why or f"{display_status(status).lower()} (no reason recorded)"


def set_aside(log: SessionLog) -> list[dict[str, str]]:
    """Every device set aside, ``{device, status, reason}``, grouped by status, in plan order."""
    state = log.state
    order = [i for st in state.stages for i in st]
    order += [i for i in state.order if i not in set(order)]  # excluded: out of every stage
    out = []
    for status in _SET_ASIDE:
        for dev in order:
            if state.devices[dev] is status:
                out.append(
                    {
                        "device": dev,
                        "status": display_status(status),
                        "reason": _reason(log, dev, status),
                    }
                )
    return out


def _check_recorded(
    recorded: Mapping[str, Any], state: DeploymentState | None, total: int
) -> list[str]:
    if state is None:
        return []
    counts = Counter(state.devices.values())
    have = {key: sum(counts[s] for s in statuses) for key, statuses in _RECORDED.items()}
    have["not_targeted"] = max(0, total - len(state.devices))
    return [
        f"confirm.completed counts {key}={recorded[key]}, the device events give {n}"
        for key, n in have.items()
        if key in recorded and num(recorded[key]) != n
    ]


def confirm_section(log: SessionLog) -> dict[str, Any]:
    state = log.state
    counts = Counter(state.devices.values())
    total = state.fleet_total
    not_targeted = max(0, total - len(state.devices))
    rows: list[dict[str, Any]] = []
    for i, (label, statuses) in enumerate(_CONFIRM_ROWS):
        n = not_targeted if not statuses else sum(counts[s] for s in statuses)
        if i < 4 or n:
            rows.append({"status": label, "count": n, "percent": _percent(n, total)})
    done, checked = log.last("confirm.completed"), log.last("confirm.checked")
    recorded = done.details.get("counts") if done else None
    warnings = []
    if isinstance(recorded, Mapping):
        warnings = _check_recorded(recorded, log.at_confirm, total)
    in_registry: list[str] = []
    for e in log.all("registry.quarantined"):
        devices = e.details.get("devices")
        in_registry += [str(i) for i in devices] if isinstance(devices, Mapping) else []
    phase = state.phase
    return {
        "reached": log.reached(Phase.CONFIRM) or done is not None,
        "result": str(done.details.get("result")) if done else phase.value,
        "final": phase in TERMINAL,
        "rows": rows,
        "set_aside": set_aside(log),
        "registry_quarantined": list(dict.fromkeys(in_registry)),
        "rollback_copies": dict(checked.details.get("rollback_copies") or {}) if checked else None,
        "health": dict(checked.details.get("health") or {}) if checked else None,
        "recorded_counts": dict(recorded) if isinstance(recorded, Mapping) else None,
        "reasons": [str(r) for r in (done.details.get("reasons") or [])] if done else [],
        "warnings": warnings,
    }
