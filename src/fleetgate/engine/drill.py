"""The rollback drill: Guardrail 2 says the rollback procedure must be *validated, not just
documented*. During the canary stage one healthy canary is rolled back to its known-good release,
checked to run it, and moved forward to the new release again — before any verdict, approval or
wave depends on rollback working.

Each step is an event (``drill.started``, the device's own rollback and activate events,
``drill.completed``) and the state machine tracks how far the drill got, so a controller killed
mid-drill continues it instead of repeating it. A drill whose rollback fails is the spec's
highest-severity case: the device is flagged for manual intervention and the deployment halts.
"""

from __future__ import annotations

from fleetgate.core.state import DeviceStatus
from fleetgate.engine.context import EngineContext, sample_dict
from fleetgate.engine.rollback import rollback_device
from fleetgate.engine.stage import activate_one
from fleetgate.errors import FleetgateError

D = DeviceStatus


async def rollback_drill(ctx: EngineContext) -> bool:
    """Run (or finish) the drill; False when it failed and the deployment was halted."""
    rec = ctx.recorder
    if rec.state.drill == "done":
        return True
    if rec.state.drill_device is None:
        healthy = sorted(i for i in rec.state.canaries if rec.state.devices[i] is D.HEALTHY)
        if not healthy:
            return True  # no healthy canary: the canary verdict fails without a drill
        await rec.record(
            "drill.started",
            device=healthy[0],
            reason="validate the rollback procedure on a canary (Guardrail 2)",
        )
    dev_id = rec.state.drill_device
    assert dev_id is not None
    if rec.state.drill == "started":
        if not await rollback_device(ctx, dev_id):
            await rec.record("drill.completed", outcome="failed", device=dev_id, ok=False)
            await rec.record(
                "deployment.halted",
                reason=(
                    f"rollback drill failed on {dev_id}: rollback capability is not validated "
                    "(Guardrail 2: stop the deployment immediately)"
                ),
            )
            return False
        try:
            sample = await ctx.transport.health(ctx.device(dev_id))
            await rec.record(
                "drill.checked",
                device=dev_id,
                app_up=sample.app_up,
                release=sample.release,
                sample=sample_dict(sample),
            )
        except FleetgateError as exc:
            await rec.record(
                "drill.checked", outcome="failed", device=dev_id, app_up=False, error=str(exc)
            )
    if rec.state.drill == "rolled_back":
        ok = await activate_one(ctx, 0, dev_id)
        await rec.record("drill.completed", outcome="ok" if ok else "failed", device=dev_id, ok=ok)
        return True
    await rec.record("drill.completed", device=dev_id, ok=rec.state.drill == "reactivated")
    return True
