"""The drive loop: fold → ``next_effects`` → execute → (events) → repeat.

The loop has no state of its own: what to do next is always ``core.machine.next_effects`` of the
state the recorder holds, which is the fold of the log. It stops when the machine asks for a
human (``WaitForHuman``) or the deployment ended (``Stop``). An effect that records nothing would
loop forever; that is a bug, and it is refused loudly rather than spun on.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from fleetgate.core.machine import (
    Confirm,
    EvaluateWave,
    Prepare,
    ReplaceCanaries,
    Rollback,
    RunStage,
    Stop,
    VerifyCanary,
    WaitForHuman,
    next_effects,
)
from fleetgate.core.state import DeploymentState
from fleetgate.engine.canary_round import start_canary_round
from fleetgate.engine.confirm import run_confirm
from fleetgate.engine.context import EngineContext
from fleetgate.engine.rollback import run_rollback
from fleetgate.engine.stage import run_stage
from fleetgate.engine.verify import evaluate_wave, verify_canary
from fleetgate.errors import FleetgateError

PrepareFn = Callable[[EngineContext], Awaitable[None]]


async def drive(ctx: EngineContext, prepare: PrepareFn) -> DeploymentState:
    """Run the deployment until it needs a human or has ended; return the state."""
    while True:
        before = ctx.recorder.written
        effect = next_effects(ctx.recorder.state)[0]
        match effect:
            case WaitForHuman() | Stop():
                return ctx.recorder.state
            case Prepare():
                await prepare(ctx)
            case RunStage(stage=stage, device_ids=ids):
                await run_stage(ctx, stage, ids)
            case VerifyCanary(device_ids=ids):
                await verify_canary(ctx, ids)
            case ReplaceCanaries(decision=decision, retired=retired):
                await start_canary_round(ctx, decision, retired)
            case EvaluateWave(stage=stage):
                await evaluate_wave(ctx, stage)
            case Rollback(device_ids=ids, reason=reason):
                await run_rollback(ctx, ids, reason)
            case Confirm():
                await run_confirm(ctx)
        if ctx.recorder.written == before:
            raise FleetgateError(
                f"engine made no progress on {type(effect).__name__}",
                deployment_id=ctx.deployment_id,
            )
