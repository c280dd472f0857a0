"""``RunStage``: put the release on one stage's devices (the canaries, or one wave).

Per device, in this order (spec CANARY/ROLLOUT steps a–e, Guardrails 2 and 4):

1. **Pre-flight** — the agent answers facts (one call: reachability, and its health, kept as
   the baseline); the device is ``active`` in the inventory;
   it has a known-good release to come back to (``current`` is set: a device that cannot keep a
   rollback copy is *skipped*, never deployed — invariant 5); its free disk holds the artifact
   plus its unpacked size while keeping that rollback copy. A device that does not answer is
   *unreachable*: it is logged, the rest go on, and it is retried after the stage (3 attempts,
   jittered exponential backoff) before it is marked SKIPPED. More than 20 % unreachable in the
   stage halts the deployment before anything is deployed (``core.gates.unreachable_decision``).
2. **Baseline** — health captured before the device is touched: the device's own yardstick
   (from the pre-flight's answer; asked apart from an agent that does not send it with facts).
3. **Stage, activate, smoke test, commit** — each command is logged as an intent (with its
   ``seq``) before it is sent and as a result after; transfer failures are retried (policy
   retries). A start that fails, or a smoke test that fails, is a *failed* device (the wave gate
   decides). A device that passed its smoke test is sent ``commit`` (issue 10): its release
   leaves the device-side trial, so a later crash or reboot no longer reverts it (the
   controller's own gates and rollback still apply). A commit the device refuses (it reverted
   the release by itself) fails the device.

Idempotent on resume: devices already on the release are not deployed again; a command whose
intent is in the log without a result is re-sent with the same ``seq`` (the agent replays it),
after checking the device's facts — a device that already runs the release is recorded as such.
A device activated before the crash but not yet smoke-tested gets only its smoke test; one whose
commit intent has no result gets its commit again (same seq).
"""

from __future__ import annotations

import json
import time
from typing import Any

from fleetgate.core.disk import stage_mb_needed
from fleetgate.core.gates import unreachable_decision
from fleetgate.core.model import DeviceState
from fleetgate.core.state import DeviceStatus
from fleetgate.engine.canary_analysis import analysis_applies, hard_bounds_only
from fleetgate.engine.context import EngineContext, sample_dict, sample_from_dict
from fleetgate.engine.verify import baseline_window, check_health
from fleetgate.errors import DeviceError, FleetgateError, TransportError
from fleetgate.transports.base import Facts

D = DeviceStatus
_TODO = (D.PENDING, D.UNREACHABLE)


async def run_stage(ctx: EngineContext, stage: int, ids: tuple[str, ...]) -> None:
    rec = ctx.recorder
    todo = [i for i in ids if rec.state.devices[i] in _TODO]
    # Resumed after a crash: staged (activate left), activated (the smoke test left), or
    # healthy with its commit in flight.
    resumed = [
        i for i in ids if rec.state.devices[i] in (D.STAGED, D.DEPLOYED) or _commit_left(ctx, i)
    ]
    await rec.record("stage.started", stage=stage, devices=len(ids), todo=len(todo))
    if ctx.registry is not None and todo:
        # Guardrail 4 item 5 against the registry as it is now, not as it was at the start.
        live = {d.id: d for d in await ctx.registry(todo)}
        for dev in [i for i in todo if i not in live or live[i].state is not DeviceState.ACTIVE]:
            now = live.get(dev)
            why = (
                "no longer in the inventory"
                if now is None
                else f"device is in {now.state.value} in the registry"
                + (f" ({now.state_reason})" if now.state_reason else "")
            )
            await rec.record(
                "device.skipped", device_id=dev, outcome="skipped", stage=stage, reason=why
            )
            todo.remove(dev)

    reachable, unreachable = await _preflight_all(ctx, stage, todo)
    targeted = len(todo)
    decision = unreachable_decision(len(unreachable), targeted, ctx.policy.thresholds)
    await rec.record(
        "stage.preflight",
        stage=stage,
        reachable=sorted(reachable),
        unreachable=sorted(unreachable),
        rate=float(decision.rate),
        decision=decision.action.value,
        reason=decision.reason,
    )
    if decision.action.value == "HALT":
        await rec.record("deployment.halted", reason=f"stage {stage}: {decision.reason}")
        return

    if stage == 0:
        await baseline_window(ctx, [i for i in reachable if i in ctx.recorder.state.canaries])
    await ctx.each(reachable + resumed, lambda i: _deploy_one(ctx, stage, i), "deploy")

    # Unreachable devices: retried after the stage, then skipped and set aside.
    for attempt in range(1, ctx.policy.retries.attempts + 1):
        if not unreachable:
            break
        await ctx.clock.sleep(
            ctx.policy.retries.backoff_s * 2 ** (attempt - 1) * (0.5 + ctx.rng.random())
        )
        again, unreachable = await _preflight_all(ctx, stage, unreachable, attempt=attempt + 1)
        await ctx.each(again, lambda i: _deploy_one(ctx, stage, i), "deploy-retry")
    for dev in unreachable:
        await rec.record(
            "device.skipped",
            device_id=dev,
            outcome="skipped",
            stage=stage,
            reason="unreachable after retries; set aside for investigation",
        )

    if stage == 0:
        from fleetgate.engine.drill import rollback_drill

        if not await rollback_drill(ctx):
            return  # the drill failed: the deployment is halted
    state = rec.state
    failed = [i for i in ids if state.devices[i] in (D.FAILED, D.DEPLOY_FAILED)]
    skipped = [i for i in ids if state.devices[i] is D.SKIPPED]
    deployed = [i for i in ids if state.devices[i].on_new_release]
    await rec.record(
        "stage.deployed", stage=stage, deployed=len(deployed), failed=failed, skipped=skipped
    )


async def _preflight_all(
    ctx: EngineContext, stage: int, ids: list[str], attempt: int = 1
) -> tuple[list[str], list[str]]:
    results = await ctx.each(ids, lambda i: _preflight(ctx, stage, i, attempt), "preflight")
    ok = sorted(i for i, r in results.items() if r == "ok")
    unreachable = sorted(i for i, r in results.items() if r == "unreachable")
    return ok, unreachable


async def _preflight(ctx: EngineContext, stage: int, dev_id: str, attempt: int) -> str:
    rec, dev = ctx.recorder, ctx.device(dev_id)
    if dev.state is not DeviceState.ACTIVE:
        await rec.record(
            "device.skipped",
            device_id=dev_id,
            outcome="skipped",
            stage=stage,
            reason=f"device is in {dev.state.value}",
        )
        return "skipped"
    t0 = time.perf_counter()
    try:
        # One call (issue 12): an answer to facts proves the agent reachable (what a ping
        # proved), and carries the device's health, kept as its pre-deploy baseline.
        facts = await ctx.transport.facts(dev)
    except TransportError as exc:
        await rec.record(
            "device.unreachable",
            device_id=dev_id,
            outcome="failed",
            stage=stage,
            attempt=attempt,
            error=str(exc),
        )
        return "unreachable"
    except DeviceError as exc:
        await rec.record(
            "device.skipped",
            device_id=dev_id,
            outcome="skipped",
            stage=stage,
            reason=f"agent refused pre-flight: {exc}",
        )
        return "skipped"
    rtt_ms = round(1000 * (time.perf_counter() - t0), 1)
    if facts.health is not None:
        ctx.fresh_health[dev_id] = facts.health
    reason = _preflight_problem(ctx, facts)
    checks = {
        "reachable": True,
        "agent": facts.agent_version,
        "disk_free_mb": facts.disk_free_mb,
        "disk_needed_mb": round(_disk_needed_mb(ctx, facts), 1),
        "reserve_mb": facts.reserve_mb,
        "rollback_copy": facts.current,
        "state": facts.state,
    }
    if reason:
        await rec.record(
            "device.preflight",
            device_id=dev_id,
            outcome="failed",
            stage=stage,
            ok=False,
            checks=checks,
            reason=reason,
            rtt_ms=rtt_ms,
        )
        await rec.record(
            "device.skipped", device_id=dev_id, outcome="skipped", stage=stage, reason=reason
        )
        return "skipped"
    await rec.record(
        "device.preflight", device_id=dev_id, stage=stage, ok=True, checks=checks, rtt_ms=rtt_ms
    )
    return "ok"


def _disk_needed_mb(ctx: EngineContext, facts: Facts) -> float:
    """The agent's own formula (``core.disk``) with the reserve the device reports."""
    manifest = json.loads(ctx.release.manifest_json)
    unpacked = float(manifest.get("requires", {}).get("disk_mb", 0))
    return stage_mb_needed(ctx.release.size, unpacked, facts.reserve_mb)


def _preflight_problem(ctx: EngineContext, facts: Facts) -> str:
    """Why this device must not be deployed, or '' (Guardrails 2 and 4, invariant 5)."""
    if facts.current == ctx.release.release_id:
        return ""  # already runs the release: nothing will be transferred
    if not facts.current:
        return "no known-good release on the device to roll back to (rollback copy required)"
    if facts.current not in facts.releases and facts.releases:
        return f"current release {facts.current} is not on disk"
    needed = _disk_needed_mb(ctx, facts)
    if ctx.release.release_id not in facts.releases and facts.disk_free_mb < needed:
        return (
            f"insufficient disk: {facts.disk_free_mb:.1f} MiB free, {needed:.1f} MiB needed "
            f"(artifact + unpacked + reserve {facts.reserve_mb:g}) while keeping the rollback copy"
        )
    return ""


async def _deploy_one(ctx: EngineContext, stage: int, dev_id: str) -> None:
    rec, dev, rel = ctx.recorder, ctx.device(dev_id), ctx.release
    status = rec.state.devices[dev_id]
    if _commit_left(ctx, dev_id):
        await commit_one(ctx, stage, dev_id)  # the controller died before or during its commit
        return
    if status is D.DEPLOYED:
        # Activated before a crash, its smoke test not recorded: only the smoke test is left.
        await smoke_test(ctx, stage, dev_id)
        if rec.state.devices[dev_id] is D.HEALTHY:
            await commit_one(ctx, stage, dev_id)
        return
    fresh = ctx.fresh_health.pop(dev_id, None)
    if dev_id not in ctx.baselines:
        # Taken before the device is touched: the pre-flight's answer carried it, or (an
        # agent that does not send health with its facts) a call of its own.
        baseline = fresh
        if baseline is None:
            try:
                baseline = await ctx.transport.health(dev)
            except FleetgateError:
                baseline = None
        doc = sample_dict(baseline)
        # The baseline as the log holds it: the driving controller judges against the very
        # sample a resumed one folds from the log (invariant 7), and its ``LogView`` shares
        # this object instead of keeping a second copy per device (issue 12).
        ctx.baselines[dev_id] = sample_from_dict(dev_id, doc)
        await rec.record("device.baseline", device_id=dev_id, stage=stage, sample=doc)

    if status is not D.STAGED:
        seq = await ctx.begin_command(dev_id, "stage", stage=stage, release=rel.release_id)
        t0 = time.perf_counter()
        try:
            res, attempts = await ctx.retrying(
                lambda: ctx.transport.stage(
                    dev,
                    deployment_id=ctx.deployment_id,
                    seq=seq,
                    manifest_json=rel.manifest_json,
                    signature=rel.signature,
                    url=rel.url,
                    downgrade_authorization=rel.downgrade_authorization,
                )
            )
        except FleetgateError as exc:
            await _failed(ctx, stage, dev_id, "stage", str(exc))
            return
        await rec.record(
            "device.staged",
            device_id=dev_id,
            stage=stage,
            seq=seq,
            release=res.release,
            status=res.status,
            replayed=res.replayed,
            attempts=attempts,
            seconds=round(time.perf_counter() - t0, 3),
        )

    await activate_one(ctx, stage, dev_id)


async def activate_one(ctx: EngineContext, stage: int, dev_id: str) -> bool:
    """Activate the staged release and smoke-test it; False when the device failed."""
    rec, dev, rel = ctx.recorder, ctx.device(dev_id), ctx.release
    seq = await ctx.begin_command(dev_id, "activate", stage=stage, release=rel.release_id)
    try:
        act, _ = await ctx.retrying(
            lambda: ctx.transport.activate(
                dev, deployment_id=ctx.deployment_id, seq=seq, release=rel.release_id
            )
        )
    except FleetgateError as exc:
        await _failed(ctx, stage, dev_id, "activate", str(exc))
        return False
    if not act.ok:
        await _failed(ctx, stage, dev_id, "activate", act.error or act.status, list(act.logs))
        return False
    await rec.record(
        "device.activated",
        device_id=dev_id,
        stage=stage,
        seq=seq,
        release=act.release,
        previous=act.previous,
        replayed=act.replayed,
    )
    await smoke_test(ctx, stage, dev_id)
    if rec.state.devices[dev_id] is not D.HEALTHY:
        return False
    await commit_one(ctx, stage, dev_id)
    return rec.state.devices[dev_id] is D.HEALTHY


def _commit_left(ctx: EngineContext, dev_id: str) -> bool:
    """Smoke-tested healthy, and its commit not done: in flight when the controller died (the
    intent logged, no result), or never sent (killed between the smoke test and the intent:
    the last command the device was sent is still the activate)."""
    ledger = ctx.recorder.ledger
    return ctx.recorder.state.devices[dev_id] is D.HEALTHY and (
        ledger.pending_for(dev_id, "commit") is not None or ledger.last.get(dev_id) == "activate"
    )


async def commit_one(ctx: EngineContext, stage: int, dev_id: str) -> None:
    """Tell a device that passed its smoke test to keep the release (``POST /v1/commit``):
    intent, then result, like every command. A refusal or a device that cannot be reached
    after the retries is recorded ``device.commit_failed`` (the device counts as failed)."""
    rec, dev, rel = ctx.recorder, ctx.device(dev_id), ctx.release
    seq = await ctx.begin_command(dev_id, "commit", stage=stage, release=rel.release_id)
    try:
        res, attempts = await ctx.retrying(
            lambda: ctx.transport.commit(
                dev, deployment_id=ctx.deployment_id, seq=seq, release=rel.release_id
            )
        )
    except FleetgateError as exc:
        await rec.record(
            "device.commit_failed",
            device_id=dev_id,
            outcome="failed",
            stage=stage,
            seq=seq,
            release=rel.release_id,
            error=str(exc),
        )
        return
    await rec.record(
        "device.committed",
        device_id=dev_id,
        stage=stage,
        seq=seq,
        release=res.release,
        status=res.status,
        floor=dict(res.floor),
        replayed=res.replayed,
        attempts=attempts,
    )


async def smoke_test(ctx: EngineContext, stage: int, dev_id: str) -> None:
    """The smoke test right after activation: one health check against the baseline. A canary
    whose soak the analysis will judge against a control is smoke-tested on the hard bounds
    only (up, not crash-looping …): its metrics are the comparison's to judge, not one sample's
    against a baseline taken before a possible fleet-wide change."""
    an = ctx.policy.analysis
    compared = stage == 0 and an.control and analysis_applies(an, ctx.policy.soak.canary_s)
    rules = hard_bounds_only(ctx.policy.health) if compared else None
    await check_health(ctx, stage, dev_id, "smoke", rules)
    ctx.smoke_tested.setdefault(stage, set()).add(dev_id)


async def _failed(
    ctx: EngineContext, stage: int, dev_id: str, step: str, error: str, logs: Any = None
) -> None:
    await ctx.recorder.record(
        "device.deploy_failed",
        device_id=dev_id,
        outcome="failed",
        stage=stage,
        step=step,
        error=error,
        logs=logs or [],
    )
