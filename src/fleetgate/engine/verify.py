"""Health gates: ``VerifyCanary`` (VERIFY phase) and ``EvaluateWave`` (between waves).

Both run the same shape — health on the devices, soak, health again — and record a decision
made by ``core.gates`` with its reasons:

- VERIFY (Guardrail 1): every canary checked before and after the soak against its own
  pre-deploy baseline; ``canary_verdict`` → PASS (then ``approval.requested``) or FAIL.
- Between waves (Guardrail 3): health on ALL deployed devices, not only the current wave; the
  decision matrix on the current wave's failures; the rollback scope across waves when devices
  of earlier waves degrade too.

Soaks count time already served: the start of each soak is an event, so a controller that
resumes sleeps only for what is left (``soak.started`` → ``state.soak_started``).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Mapping
from datetime import timedelta
from typing import Any

from fleetgate.clock import parse_iso, to_iso
from fleetgate.core.gates import (
    ScopeKind,
    WaveAction,
    canary_verdict,
    evaluate_health,
    rollback_scope,
    wave_decision,
)
from fleetgate.core.model import HealthSample
from fleetgate.core.policy import HealthPolicy
from fleetgate.core.state import DeviceStatus
from fleetgate.engine.canary_analysis import (
    analysis_applies,
    choose_controls,
    hard_bounds_only,
    judge_canaries,
    judgement_doc,
    sample_tick,
    wave_tick,
)
from fleetgate.engine.context import EngineContext, Parked, sample_dict
from fleetgate.errors import FleetgateError, LogMoved

D = DeviceStatus
TickFn = Callable[[int, float], Awaitable[bool]]


async def check_health(
    ctx: EngineContext,
    stage: int,
    dev_id: str,
    round_name: str,
    rules: HealthPolicy | None = None,
) -> HealthSample | None:
    """Ask one device for health, judge it against its own baseline, record the verdict.
    A device that does not answer is recorded FAILED ("health endpoint not responding")."""
    baseline = ctx.baselines.get(dev_id)
    try:
        sample = await ctx.transport.health(ctx.device(dev_id))
    except FleetgateError as exc:
        await ctx.recorder.record(
            "device.health",
            device_id=dev_id,
            outcome="failed",
            stage=stage,
            round=round_name,
            status="failed",
            reasons=[f"health endpoint not responding: {exc}"],
            sample=None,
            baseline=sample_dict(baseline),
        )
        return None
    verdict = evaluate_health(sample, baseline, rules or ctx.policy.health)
    status, reasons = verdict.status.value.lower(), list(verdict.reasons)
    if sample.release is not None and sample.release != ctx.release.release_id:
        # Invariant 10: healthy on another release (it never switched, or reverted by itself)
        # is not a deployed device.
        status = "failed"
        reasons.insert(0, f"runs {sample.release}, not {ctx.release.release_id}")
    await ctx.recorder.record(
        "device.health",
        device_id=dev_id,
        stage=stage,
        round=round_name,
        outcome="ok" if status == "healthy" else "failed",
        status=status,
        reasons=reasons,
        sample=sample_dict(sample),
        baseline=sample_dict(baseline),
    )
    return sample


async def health_round(
    ctx: EngineContext,
    stage: int,
    ids: Iterable[str],
    round_name: str,
    rules: Mapping[str, HealthPolicy] | None = None,
) -> dict[str, HealthSample]:
    """``check_health`` on every device (bounded parallel); the samples that came back.
    ``rules``: other health rules for some devices (canaries judged against a control)."""
    results = await ctx.each(
        list(ids),
        lambda i: check_health(ctx, stage, i, round_name, (rules or {}).get(i)),
        f"health-{round_name}",
    )
    return {i: s for i, s in results.items() if s is not None}


async def soak(
    ctx: EngineContext,
    stage: int,
    seconds: float,
    *,
    key: str | None = None,
    every: float = 0.0,
    on_tick: TickFn | None = None,
) -> bool:
    """Serve a soak of ``seconds``, measured on the store's clock (invariant 9).

    ``soak.started`` records the store-clock start (``store_ts``); a resumed controller serves
    only what is left, ``seconds - (store_now - started)``, re-read after every slice of sleep,
    so its own clock (skewed, stopped and resumed) changes nothing. ``soak.completed`` records
    ``served_s`` on the same clock, always ``>= seconds``. ``key`` names the soak
    (``"STAGE:ROUND"``, or just the round; default ``"STAGE:soak"``) for a stage with more than
    one soak.

    With ``every`` and ``on_tick``, the soak is sampled: ``on_tick(tick, served_s)`` runs at
    ticks 0, 1, 2 … (every ``every`` seconds of served time; ticks already in ``ctx.sampled``
    are not repeated after a resume). A tick that returns False ends the soak early (a hard
    bound failed): ``soak.stopped`` is recorded and the result is False.
    """
    key = key or f"{stage}:soak"
    round_name = key.partition(":")[2] if ":" in key else key
    key = f"{stage}:{round_name}"
    if key in ctx.soaks_ended:  # re-entered after a park or a crash: already served
        return ctx.soaks_ended[key]
    recorded = ctx.recorder.state.soak_started.get(key)
    if recorded is None:
        started = await ctx.store_clock()
        await ctx.recorder.record(
            "soak.started", stage=stage, round=round_name, seconds=seconds, store_ts=to_iso(started)
        )
    else:
        started = parse_iso(recorded)
    done = [int(t["tick"]) for t in ctx.sampled.get(key, ())]
    next_tick = max(done) + 1 if done else 0
    while True:
        served = ((await ctx.store_clock()) - started).total_seconds()
        if on_tick is not None and every > 0 and served >= next_tick * every:
            if not await on_tick(next_tick, served):
                await ctx.recorder.record(
                    "soak.stopped",
                    stage=stage,
                    round=round_name,
                    served_s=served,
                    reason="a hard health bound failed during the soak",
                )
                ctx.soaks_ended[key] = False
                return False
            next_tick = int(served // every) + 1
            continue
        if served >= seconds:
            break
        wait = seconds - served
        if on_tick is not None and every > 0:
            wait = min(wait, max(next_tick * every - served, 0.0))
        if ctx.park_after_s is not None and wait >= ctx.park_after_s:
            # Waiting is data: the deployment is due again at the next sample (or the end).
            raise Parked(started + timedelta(seconds=served + wait))
        if ctx.log_moved is not None and await ctx.log_moved():
            raise LogMoved(
                f"deployment {ctx.deployment_id}: a decision was recorded during the soak",
                deployment_id=ctx.deployment_id,
            )
        await ctx.clock.sleep(min(wait, ctx.soak_slice_s))
    await ctx.recorder.record(
        "soak.completed", stage=stage, round=round_name, seconds=seconds, served_s=served
    )
    ctx.soaks_ended[key] = True
    return True


async def baseline_window(ctx: EngineContext, canaries: list[str]) -> None:
    """Before the first canary round deploys: choose the controls and sample canaries and
    controls together for ``analysis.baseline`` (issue 11), so the judge can take out the
    standing difference between two boxes. Skipped when the analysis does not apply, for
    later canary rounds (their kept canaries already run the release) and with no control."""
    an = ctx.policy.analysis
    if (
        not canaries
        or an.baseline_s <= 0
        or not an.control
        or ctx.recorder.state.canary_round != 1
        or not analysis_applies(an, ctx.policy.soak.canary_s)
    ):
        return
    controls = await choose_controls(ctx, canaries)
    if not controls:
        return

    async def tick(k: int, t: float) -> bool:
        return await sample_tick(ctx, "0:baseline", k, t, canaries, controls, hard=False)

    await soak(ctx, 0, an.baseline_s, key="baseline", every=an.interval_s, on_tick=tick)


async def verify_canary(ctx: EngineContext, ids: tuple[str, ...]) -> None:
    rec = ctx.recorder
    canaries = rec.state.canaries
    live = [i for i in canaries if rec.state.devices[i].on_new_release]
    if not live:
        # Nothing was deployed (every canary skipped or failed): no soak can prove anything.
        reasons = [f"{i}: {rec.state.devices[i].value}" for i in canaries]
        await rec.record(
            "canary.verdict",
            outcome="failed",
            verdict="FAIL",
            failed=list(canaries),
            all_failed=True,
            soak_s=0,
            reasons=["no canary was deployed", *reasons],
        )
        return
    n = rec.state.canary_round
    name = "soak" if n == 1 else f"soak-r{n}"
    an = ctx.policy.analysis
    soak_s = ctx.policy.soak.canary_s
    analysed = analysis_applies(an, soak_s)
    controls = await choose_controls(ctx, live) if analysed else {}
    # With a control, a canary's own-baseline rules give way to the comparison.
    hard = {c: hard_bounds_only(ctx.policy.health) for c in controls}
    keys = [f"0:{name}"]
    if keys[0] in rec.state.soak_started:
        # Re-entered (after a park or a crash) once the soak began: the initial round was
        # taken and recorded before it; judge with that one, do not take another.
        initial = {i: ctx.canary_initial[i] for i in live if i in ctx.canary_initial}
    else:
        initial = await health_round(ctx, 0, live, "initial", hard)

    async def tick(k: int, served: float, key: str) -> bool:
        return await sample_tick(ctx, key, k, served, live, controls)

    every = an.interval_s if analysed else 0.0
    served = await soak(
        ctx, 0, soak_s, key=name, every=every, on_tick=lambda k, t: tick(k, t, keys[0])
    )
    judgements: dict[str, Any] = {}
    if served and analysed:
        judgements = judge_canaries(ctx, keys, live, controls)
        if an.extend_s > 0 and any(j.verdict == "INCONCLUSIVE" for j in judgements.values()):
            # Not enough evidence either way: the soak extends once, then the judge looks again
            # at every sample of both.
            ext = f"{name}-ext"
            keys.append(f"0:{ext}")
            served = await soak(
                ctx, 0, an.extend_s, key=ext, every=every, on_tick=lambda k, t: tick(k, t, keys[1])
            )
            if served:
                judgements = judge_canaries(ctx, keys, live, controls)
    post = await health_round(ctx, 0, live, "post-soak", hard)
    # Every canary of this round is judged: one that was skipped, rolled back or failed to
    # stage proves nothing for its cell, so it fails (no sample) instead of being ignored.
    # Only canaries retired in an earlier round (replaced, or their cells excluded) are not.
    retired = set(rec.state.retired_canaries)
    judged = [i for i in canaries if i not in retired and rec.state.devices[i] is not D.EXCLUDED]
    # With a control, the baseline-relative rules give way to the comparison (a fleet-wide
    # surge moves canary and control alike); hard bounds stay.
    with_ctl = [i for i in judged if i in controls]
    plain = [i for i in judged if i not in controls]
    parts = [
        canary_verdict(initial, post, ctx.baselines, ids, policy, soak_served=True)
        for ids, policy in (
            (with_ctl, hard_bounds_only(ctx.policy.health)),
            (plain, ctx.policy.health),
        )
        if ids
    ]
    failed = [i for i in judged if any(i in p.failed_canaries for p in parts)]
    reasons = [r for p in parts for r in p.reasons]
    # What the log already says counts too: a canary recorded FAILED (smoke test, another
    # release) or DEGRADED is not healthy, whatever a later sample says.
    for i in judged:
        status = rec.state.devices[i]
        if status is not D.HEALTHY and i not in failed:
            failed.append(i)
            reasons.append(f"canary {i} is {status.value}: {rec.state.reasons.get(i, '')}")
    if not served:
        reasons.append("the soak stopped early: a hard health bound failed")
    inconclusive: list[str] = []
    for c, j in sorted(judgements.items()):
        if j.verdict == "FAIL" and c not in failed:
            failed.append(c)
        if j.verdict in ("FAIL", "INCONCLUSIVE"):
            reasons.append(
                f"canary {c} vs control {controls[c]}: {j.verdict}: " + "; ".join(j.reasons)
            )
        if j.verdict == "INCONCLUSIVE":
            inconclusive.append(c)
    if failed or not judged:
        verdict = "FAIL"
    elif inconclusive:
        verdict = "INCONCLUSIVE"
    else:
        verdict = "PASS"
    notes = []
    if not analysed:
        notes.append(
            f"threshold judge only: a {soak_s:g}s soak yields fewer than {an.min_samples} "
            f"samples at a {an.interval_s:g}s interval"
        )
    elif not controls:
        notes.append("no control device answered healthy: canaries judged against their baselines")
    verdict_ev = rec.make(
        "canary.verdict",
        outcome="ok" if verdict == "PASS" else "failed",
        details={
            "verdict": verdict,
            "failed": failed,
            "all_failed": bool(judged) and len(failed) == len(judged),
            "inconclusive": inconclusive,
            "reasons": reasons,
            "notes": notes,
            "judge": "analysis" if analysed else "threshold",
            "analysis": {c: judgement_doc(j, controls[c]) for c, j in sorted(judgements.items())},
            "soak_s": soak_s,
            "round": n,
        },
    )
    # The verdict and the approval request it opens are written in one append: whoever sees
    # AWAITING_APPROVAL finds the request (and its evidence) beside it, even after a crash.
    if verdict == "PASS":
        request = rec.make("approval.requested", details={"verdict": "PASS"})
        await rec.record_together([verdict_ev, request])
    elif verdict == "INCONCLUSIVE":
        request = rec.make(
            "approval.requested",
            details={
                "verdict": "INCONCLUSIVE",
                "evidence": {c: judgement_doc(judgements[c], controls[c]) for c in inconclusive},
            },
        )
        await rec.record_together([verdict_ev, request])
    else:
        await rec.record_event(verdict_ev)


async def evaluate_wave(ctx: EngineContext, stage: int) -> None:
    rec = ctx.recorder
    state = rec.state
    wave_ids = state.stages[stage]
    deployed = list(state.deployed_ids)
    wave_s = ctx.policy.soak.between_waves_s
    if f"{stage}:soak" not in state.soak_started and wave_s > 0:
        # (else re-entered: the round is recorded.) The devices this wave just smoke-tested
        # have their first sample: the smoke test's, moments ago (issue 12). A zero soak has
        # no "before" apart from its "after": the post-soak round below is the one sample.
        fresh = ctx.smoke_tested.get(stage, set())
        await health_round(ctx, stage, [i for i in deployed if i not in fresh], "initial")
    # The whole soak is sampled (issue 11), not only its ends; a too-short soak is not.
    every = ctx.policy.analysis.interval_s if analysis_applies(ctx.policy.analysis, wave_s) else 0.0
    await soak(ctx, stage, wave_s, every=every, on_tick=lambda k, t: wave_tick(ctx, stage, k, t))
    await health_round(ctx, stage, list(rec.state.deployed_ids), "post-soak")
    state = rec.state

    unhealthy = (D.FAILED, D.DEGRADED)
    failed_by_wave: dict[int, list[str]] = {}
    deployed_by_wave: dict[int, list[str]] = {}
    for n in range(stage + 1):
        ids = state.stages[n]
        deployed_by_wave[n] = [i for i in ids if state.devices[i].on_new_release]
        failed_by_wave[n] = [i for i in ids if state.devices[i] in unhealthy]
    # Invariant 10: the matrix counts every device of the wave that failed — to transfer, to
    # stage, to start, or its health — over every device the wave tried to deploy. Devices set
    # aside before any install (SKIPPED at pre-flight: unreachable, no disk, no rollback copy,
    # in maintenance; EXCLUDED with their cell) are not in the denominator: counted, they
    # diluted the rate — 3 failed of 5 deployed (60 %) read as 3/20 = 15 % and only paused.
    # Their own rule is the unreachable halt, checked at pre-flight.
    targeted = list(wave_ids)
    attempted = [i for i in wave_ids if not state.devices[i].set_aside_before_install]
    not_deployed = [i for i in wave_ids if state.devices[i] is D.DEPLOY_FAILED]
    failed_here = [i for i in wave_ids if state.devices[i] in unhealthy] + not_deployed
    decision = wave_decision(len(failed_here), len(attempted), ctx.policy.thresholds)
    scope = rollback_scope(failed_by_wave, deployed_by_wave, stage, ctx.policy.thresholds)
    all_failed = sorted({*(i for ids in failed_by_wave.values() for i in ids), *not_deployed})

    action = decision.action
    reason = decision.reason
    rollback = list(all_failed)
    scope_kind = scope.kind.value
    if scope.kind is ScopeKind.ALL:
        action = WaveAction.ROLLBACK_WAVE_AND_HALT
        reason = scope.reason
        rollback = list(scope.rollback)
    elif action is WaveAction.ROLLBACK_WAVE_AND_HALT:
        rollback = sorted(deployed_by_wave[stage])
        scope_kind = ScopeKind.WAVE.value
    elif all_failed and action is WaveAction.CONTINUE:
        # Failures only in earlier waves, none in this one: isolated, quarantine them.
        action = WaveAction.QUARANTINE_AND_CONTINUE
        reason = f"{len(all_failed)} device(s) of earlier waves degraded: " + scope.reason
    await rec.record(
        "wave.evaluated",
        outcome="ok" if action is WaveAction.CONTINUE else "failed",
        stage=stage,
        action=action.value,
        rate=float(decision.rate),
        targeted=len(targeted),
        attempted=len(attempted),
        failed=all_failed,
        scope=scope_kind,
        rollback=rollback,
        reason=reason,
        checked=len(deployed),
        reasons={i: state.reasons.get(i, "") for i in failed_here},
    )
