"""``ReplaceCanaries``: start canary round 2 after a partial canary FAIL and a human's resume.

The spec allows a human decision when *some* canaries fail, "after assessing whether the
remaining canary coverage is sufficient". fleetgate makes that assessment concrete and never
turns the FAIL into a PASS (invariant 11): the failed canaries stay rolled back and quarantined,
and for each cover value (hardware type, group) that only they proved,

- ``replace`` (the default of ``deploy resume``): an untouched wave device of the same cell
  becomes a canary, and goes through the whole canary stage (pre-flight, baseline, stage,
  activate, smoke test) and a full soak together with the canaries still standing;
- ``exclude`` (``deploy resume --exclude-failed-cells``), or no candidate left: the devices
  with that value are EXCLUDED — never deployed by this deployment, listed in the report.

The choice is computed by ``core.plan.replace_canaries`` (pure) and recorded with its reasons
in ``canary.replaced``; the state machine then moves the replacements into stage 0.
"""

from __future__ import annotations

from fleetgate.core.plan import replace_canaries
from fleetgate.core.state import DeviceStatus
from fleetgate.engine.context import EngineContext

D = DeviceStatus


async def start_canary_round(ctx: EngineContext, decision: str, retired: tuple[str, ...]) -> None:
    state = ctx.recorder.state
    gone = {*retired, *state.retired_canaries}
    kept = [
        ctx.device(i)
        for i in state.canaries
        if i not in gone and state.devices[i] not in (D.EXCLUDED, D.ROLLED_BACK, D.QUARANTINED)
    ]
    pending = [
        ctx.device(i) for st in state.stages[1:] for i in st if state.devices[i] is D.PENDING
    ]
    result = replace_canaries(
        [ctx.device(i) for i in retired], kept, pending, ctx.policy.canary.cover, decision
    )
    await ctx.recorder.record(
        "canary.replaced",
        decision=decision,
        round=state.canary_round + 1,
        retired=list(retired),
        replacements=[c.device.id for c in result.replacements],
        why={c.device.id: c.reason for c in result.replacements},
        excluded=[x.device.id for x in result.excluded],
        reasons={x.device.id: x.reason for x in result.excluded},
        uncovered=list(result.uncovered),
    )
