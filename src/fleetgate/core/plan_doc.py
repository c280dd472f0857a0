"""The plan as a document: what ``deployment.created`` records (``plan``) and ``deploy plan
--json`` prints, so the PREPARE report can be rebuilt from the log alone. Pure."""

from __future__ import annotations

from collections import Counter
from typing import Any

from fleetgate.core.manifest import manifest_to_dict
from fleetgate.core.plan import Plan
from fleetgate.core.policy import Policy


def format_duration(seconds: float) -> str:
    """``900`` → ``15m``, ``3600`` → ``1h``, ``90`` → ``90s``."""
    s = round(seconds)
    if s % 3600 == 0 and s:
        return f"{s // 3600}h"
    if s % 60 == 0 and s:
        return f"{s // 60}m"
    return f"{seconds:g}s"


def plan_to_dict(
    plan: Plan,
    policy: Policy,
    *,
    sha256: str | None = None,
    distribution: str | None = None,
    bundle_sha256: str | None = None,
) -> dict[str, Any]:
    """``sha256`` is the payload's digest (what the signed manifest binds, what devices fetch);
    ``bundle_sha256`` the ``.fgb`` file's, the one ``fleetgate artifact build`` prints."""
    m = plan.manifest
    groups = Counter(
        (d.group, d.hardware or "", d.arch.value if d.arch else "") for d in plan.targeted
    )
    return {
        "artifact": {
            "name": m.name,
            "version": m.version,
            "kind": m.kind.value,
            "sha256": sha256 or m.sha256,
            "bundle_sha256": bundle_sha256,
            "size": m.size,
            "disk_mb": m.requires.disk_mb,
            "manifest": manifest_to_dict(m),
        },
        "distribution": distribution,
        "fleet_total": plan.fleet_total,
        "targeted": len(plan.targeted),
        "groups": sorted({d.group for d in plan.targeted}),
        "device_groups": [
            {"group": g, "hardware": h, "arch": a, "count": n}
            for (g, h, a), n in sorted(groups.items())
        ],
        "canaries": [
            {
                "id": c.device.id,
                "hardware": c.device.hardware,
                "group": c.device.group,
                "reason": c.reason,
            }
            for c in plan.canaries
        ],
        "waves": [
            {
                "number": w.number,
                "devices": [d.id for d in w.devices],
                "count": len(w.devices),
                "cumulative_percent": round(w.cumulative_percent, 2),
                "by_hardware": w.counts("hardware"),
                "by_group": w.counts("group"),
            }
            for w in plan.waves
        ],
        "compatibility": [
            {
                "group": c.group,
                "hardware": c.hardware,
                "arch": c.arch,
                "count": c.count,
                "compatible": c.compatible,
                "status": c.status,
                "reasons": list(c.reasons),
            }
            for c in plan.compatibility
        ],
        "excluded": [{"id": e.device.id, "reason": e.reason} for e in plan.excluded],
        "not_targeted": len(plan.not_targeted),
        "uncovered": list(plan.uncovered),
        "notes": list(plan.notes),
        "blockers": list(plan.blockers),
        "policy": {
            "canary_percent": policy.canary.percent,
            "waves": list(policy.waves),
            "soak_canary": format_duration(policy.soak.canary_s),
            "soak_between_waves": format_duration(policy.soak.between_waves_s),
            "allow_short_soak": policy.allow_short_soak,
        },
    }
