"""``Rollback``: put devices back on their previous known-good release.

Per device (bounded parallel; spec "Health Check Degradation During Rollout" and "Rollback
Failure"):

1. capture the logs of a device that failed or degraded *before* touching it (evidence for
   the investigation; a healthy device rolled back with the rest has none to give);
2. read its facts: a device not running the new release (its stage failed, or it was rolled back
   by an earlier, interrupted run) is recorded as a no-op — the agent is never told to switch
   a device that is not on the new release, so a rollback can never move a device *forward*
   or off its known-good release;
3. send ``rollback`` (intent logged first with its ``seq``; re-sent with the same seq after a
   crash). The agent switches to the previous release and restarts it without running anything
   of the release it leaves (invariant 6).

A failed rollback is the highest-severity event: the device's facts are captured for manual
intervention, the rollback capability (a rollback copy on disk) of every other deployed device is
re-verified and recorded, and the state machine then halts every deployment action until an
operator records the device as recovered. After the rollback, health of the rolled-back devices
is re-checked (a few rounds) until it is back to baseline — the first round from the health the
rollback answer carries (issue 12); the result is in ``rollback.completed``.
"""

from __future__ import annotations

import time
from typing import Any

from fleetgate.core.gates import evaluate_health
from fleetgate.core.state import DeviceStatus
from fleetgate.engine.context import EngineContext, sample_dict
from fleetgate.errors import FleetgateError

D = DeviceStatus
RECOVERY_ROUNDS = 3
# Devices whose logs are evidence: they failed (activation, health) or degraded. A healthy
# device rolled back with the rest (a wave, the whole fleet) has nothing to explain: its logs
# are not fetched (issue 12; they stay on the device).
_FAILED = (D.FAILED, D.DEGRADED, D.DEPLOY_FAILED)


async def run_rollback(ctx: EngineContext, ids: tuple[str, ...], reason: str) -> None:
    rec = ctx.recorder
    t0 = time.perf_counter()
    await rec.record("rollback.started", devices=list(ids), reason=reason)
    results = await ctx.each(ids, lambda i: rollback_device(ctx, i), "rollback")
    done = sorted(i for i, ok in results.items() if ok)
    failed = sorted(i for i, ok in results.items() if not ok)
    if failed:
        await _recheck_capability(ctx, exclude=set(failed))
    recovered = await _recovery(ctx, done)
    await rec.record(
        "rollback.completed",
        outcome="failed" if failed else "ok",
        rolled_back=done,
        failed=failed,
        recovered=recovered,
        seconds=round(time.perf_counter() - t0, 3),
    )


async def rollback_device(ctx: EngineContext, dev_id: str) -> bool:
    rec, dev = ctx.recorder, ctx.device(dev_id)
    if rec.state.devices[dev_id] in _FAILED:
        await _capture_logs(ctx, dev_id)
    pending = rec.ledger.pending_for(dev_id, "rollback")
    if pending is None:
        try:
            facts = await ctx.transport.facts(dev)
        except FleetgateError:
            facts = None
        if facts is not None and facts.current != ctx.release.release_id:
            reverted = facts.reverted if facts.reverted is not None else {}
            noop: dict[str, Any] = {
                "seq": 0,
                "release": facts.current,
                "noop": True,
                "reason": "device is not on the new release",
            }
            if reverted.get("from") == ctx.release.release_id:
                noop["reason"] = "the device reverted the release by itself"
                noop["self_reverted"] = {k: reverted.get(k) for k in ("reason", "message", "at")}
            await rec.record_event(rec.make("device.rolled_back", device_id=dev_id, details=noop))
            return True
    seq = await ctx.begin_command(dev_id, "rollback", to=None)
    try:
        res, _ = await ctx.retrying(
            lambda: ctx.transport.rollback(dev, deployment_id=ctx.deployment_id, seq=seq)
        )
        if not res.ok:
            raise FleetgateError(res.error or f"rollback answered {res.status}", device_id=dev_id)
    except FleetgateError as exc:
        try:
            facts_now = await ctx.transport.facts(dev)
            captured: dict[str, object] = {
                "current": facts_now.current,
                "previous": facts_now.previous,
                "state": facts_now.state,
                "rollback_available": facts_now.rollback_available,
            }
        except FleetgateError as fexc:
            captured = {"unreachable": str(fexc)}
        await rec.record(
            "device.rollback_failed",
            device_id=dev_id,
            outcome="failed",
            seq=seq,
            error=str(exc),
            state=captured,
            next_step="manual intervention: SSH, out-of-band console, or on site",
        )
        return False
    details: dict[str, object] = {
        "seq": seq,
        "release": res.release,
        "from": res.from_release,
        "replayed": res.replayed,
    }
    if res.self_reverted is not None:
        # The device had already gone back by itself (issue 10): not a failure, the evidence.
        details["self_reverted"] = dict(res.self_reverted)
    await rec.record_event(rec.make("device.rolled_back", device_id=dev_id, details=details))
    if res.health is not None:
        ctx.fresh_health[dev_id] = res.health  # the first recovery check's sample
    return True


async def _capture_logs(ctx: EngineContext, dev_id: str) -> None:
    """The device's logs, before it is touched: the evidence of why it failed."""
    rec = ctx.recorder
    try:
        logs = await ctx.transport.logs(ctx.device(dev_id), 100)
        await rec.record(
            "device.logs_captured",
            device_id=dev_id,
            app=list(logs.app[-50:]),
            agent=list(logs.agent[-50:]),
        )
    except FleetgateError as exc:
        await rec.record(
            "device.logs_captured",
            device_id=dev_id,
            outcome="failed",
            error=str(exc),
            app=[],
            agent=[],
        )


async def _recheck_capability(ctx: EngineContext, exclude: set[str]) -> None:
    """After a rollback failure: can every other deployed device still be rolled back?"""
    ids = [i for i in ctx.recorder.state.deployed_ids if i not in exclude]

    async def one(dev_id: str) -> bool:
        try:
            return (await ctx.transport.facts(ctx.device(dev_id))).rollback_available
        except FleetgateError:
            return False

    res = await ctx.each(ids, one, "capability")
    await ctx.recorder.record(
        "rollback.capability_checked",
        ok=sorted(i for i, v in res.items() if v),
        missing=sorted(i for i, v in res.items() if not v),
    )


async def _recovery(ctx: EngineContext, ids: list[str]) -> list[str]:
    """Re-check rolled-back devices until their health is back to baseline (bounded)."""
    pending = set(ids)
    recovered: list[str] = []
    for attempt in range(RECOVERY_ROUNDS):
        if not pending:
            break
        if attempt:
            await ctx.clock.sleep(ctx.policy.retries.backoff_s)

        async def one(dev_id: str) -> bool:
            # The first check uses the health the rollback answer carried, if it did.
            sample = ctx.fresh_health.pop(dev_id, None)
            try:
                if sample is None:
                    sample = await ctx.transport.health(ctx.device(dev_id))
            except FleetgateError:
                return False
            verdict = evaluate_health(sample, ctx.baselines.get(dev_id), ctx.policy.health)
            if verdict.healthy:
                await ctx.recorder.record(
                    "health.recovered", device_id=dev_id, sample=sample_dict(sample)
                )
            return verdict.healthy

        res = await ctx.each(sorted(pending), one, "recovery")
        for dev_id, ok in res.items():
            if ok:
                pending.discard(dev_id)
                recovered.append(dev_id)
    return sorted(recovered)
