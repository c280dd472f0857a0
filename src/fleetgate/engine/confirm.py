"""``Confirm``: the CONFIRM phase — full-fleet health, rollback copies, accounting, verdict.

COMPLETE only when every targeted device is deployed and healthy, none was skipped or
quarantined, and every deployed device still holds its rollback copy; otherwise PARTIAL, with
the reasons (spec CONFIRM steps 1–7 and "Completion Criteria").

Invariant 10: a device counts as deployed only when it runs the release. The final health
answer says which release is current and whether the rollback copy is on disk (issue 12; an
agent that does not report it is asked for its facts); a device that is not on the release (it never
switched, or went back by itself) is recorded ``device.deploy_failed`` (step ``confirm``) and is
counted as failed, never as "Deployed (healthy)".
"""

from __future__ import annotations

from fleetgate.core.state import DeviceStatus
from fleetgate.engine.context import EngineContext
from fleetgate.engine.verify import health_round
from fleetgate.errors import FleetgateError

D = DeviceStatus


async def run_confirm(ctx: EngineContext) -> None:
    rec = ctx.recorder
    deployed = list(rec.state.deployed_ids)
    last = len(rec.state.stages) - 1
    samples = await health_round(ctx, last, deployed, "confirm")
    bad = sorted(i for i in deployed if rec.state.devices[i] in (D.FAILED, D.DEGRADED))
    if bad:
        # A device failing the final check is rolled back and set aside; CONFIRM runs again.
        await rec.record(
            "confirm.failed",
            outcome="failed",
            devices=bad,
            reasons={i: rec.state.reasons.get(i, "") for i in bad},
        )
        return

    async def copy(dev_id: str) -> bool:
        current: str | None
        sample = samples.get(dev_id)
        if sample is not None and sample.release and sample.rollback_available is not None:
            # The health answer just taken says which release runs and whether the rollback
            # copy is on disk (issue 12): no facts call. (One on another release was failed
            # by that health check already, and CONFIRM stopped above.)
            current, available = sample.release, sample.rollback_available
        else:
            try:
                facts = await ctx.transport.facts(ctx.device(dev_id))
            except FleetgateError:
                return False
            current, available = facts.current, facts.rollback_available
        if current != ctx.release.release_id and rec.state.devices[dev_id].on_new_release:
            await rec.record(
                "device.deploy_failed",
                device_id=dev_id,
                outcome="failed",
                stage=last,
                step="confirm",
                error=f"runs {current}, not {ctx.release.release_id}",
            )
        return available

    copies = await ctx.each(deployed, copy, "rollback-copy")
    state = rec.state
    ok_copies = sorted(i for i, v in copies.items() if v)
    missing = sorted(i for i, v in copies.items() if not v)
    counts = {
        "deployed_healthy": state.count(D.HEALTHY),
        "deployed_degraded": state.count(D.DEGRADED),
        "failed": state.count(D.FAILED, D.ROLLBACK_FAILED, D.DEPLOY_FAILED),
        "skipped": state.count(D.SKIPPED, D.UNREACHABLE, D.PENDING),
        "excluded": state.count(D.EXCLUDED),
        "quarantined": state.count(D.QUARANTINED),
        "rolled_back": state.count(D.ROLLED_BACK),
        "not_targeted": max(0, state.fleet_total - len(state.devices)),
    }
    await rec.record(
        "confirm.checked",
        rollback_copies={"ok": ok_copies, "missing": missing},
        health={
            "healthy": counts["deployed_healthy"],
            "degraded": counts["deployed_degraded"],
            "failed": counts["failed"],
        },
    )
    reasons: list[str] = []
    for key in ("deployed_degraded", "failed", "skipped", "excluded", "quarantined", "rolled_back"):
        if counts[key]:
            reasons.append(f"{counts[key]} {key.replace('_', ' ')}")
    if missing:
        reasons.append(f"{len(missing)} deployed devices lost their rollback copy")
    result = "PARTIAL" if reasons else "COMPLETE"
    await rec.record(
        "confirm.completed",
        outcome="ok" if result == "COMPLETE" else "partial",
        result=result,
        counts=counts,
        reasons=reasons,
    )
