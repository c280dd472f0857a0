"""Canary analysis during the canary soak (issue 11): time series, a concurrent control cohort,
and the statistical judge.

- **Controls.** Before the soak, each live canary gets a control device: an untouched wave
  device of its cell that answers healthy (``core.plan.control_candidates``), recorded in
  ``canary.controls``. Controls run the old release and are only *read* (health), never
  deployed during the canary stage.
- **Time series.** The soak is sampled every ``analysis.interval`` (default 30 s), canaries and
  controls at the same moments; each tick is one ``soak.sampled`` event with every device's
  sample (a canary stage has few devices; measured in docs/analysis.md). A canary whose sample
  breaks a hard bound (health endpoint down, crash loop, over-temperature) fails at once: the
  soak stops and the verdict is FAIL.
- **The judge.** ``core.analysis.judge`` compares each canary's series with its control's
  (Mann-Whitney U, Hodges-Lehmann effect and interval) per metric: PASS, FAIL or INCONCLUSIVE.
  Where a canary has a control, the baseline-relative threshold rules (error-rate increase,
  latency ratio) are replaced by the comparison, so a fleet-wide surge fails no canary; hard
  bounds still apply. A canary without a control keeps the threshold rules against its own
  baseline. Missing data never passes: a metric the control reports and the canary does not is
  NO_DATA, a FAIL.
- **INCONCLUSIVE** extends the soak once by ``analysis.extend``, then, still inconclusive, the
  verdict is INCONCLUSIVE and a human decides with the evidence (``deploy approve
  --accept-inconclusive`` or ``deploy reject``).

The analysis runs when the soak can yield ``analysis.min_samples`` per device at the interval;
a shorter soak (only with the audited ``allow_short_soak``) is judged by the threshold rules,
and the verdict says so.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any

from fleetgate.core.model import HealthSample
from fleetgate.core.plan import control_candidates
from fleetgate.core.policy import AnalysisPolicy, HealthPolicy
from fleetgate.core.state import DeviceStatus
from fleetgate.engine.context import EngineContext, sample_dict
from fleetgate.errors import FleetgateError

D = DeviceStatus
STANDARD = ("error_rate", "latency_ms", "cpu_percent", "mem_used_mb", "temperature_c", "restarts")


def analysis_applies(policy: AnalysisPolicy, soak_s: float) -> bool:
    """Enough samples per device for the judge at this interval."""
    return soak_s >= policy.interval_s * (policy.min_samples - 1)


def hard_bounds_only(h: HealthPolicy) -> HealthPolicy:
    """The health rules without the baseline-relative ones (replaced by the comparison with a
    control): application down, crash loop, restarts, CPU and temperature still apply."""
    return replace(h, error_rate_increase_max=1.0, latency_ratio_max=1e9)


async def choose_controls(ctx: EngineContext, canaries: Sequence[str]) -> dict[str, str]:
    """The controls of each canary (``canary.controls``), chosen once per canary round; the
    result maps each canary to its first control (the whole pool is ``ctx.control_pools``)."""
    state = ctx.recorder.state
    if state.controls:
        return dict(state.controls)
    if not ctx.policy.analysis.control:
        return {}
    pending = [
        ctx.device(i) for st in state.stages[1:] for i in st if state.devices[i] is D.PENDING
    ]
    options = control_candidates(
        [ctx.device(i) for i in canaries], pending, ctx.policy.canary.cover
    )

    async def pick(canary: str) -> dict[str, dict[str, Any]]:
        healthy: dict[str, dict[str, Any]] = {}
        for dev in options.get(canary, []):
            try:
                sample = await ctx.transport.health(dev)
            except FleetgateError:
                continue
            if sample.app_up and not sample.crash_loop:
                healthy[dev.id] = sample_dict(sample) or {}
        return healthy

    picked = await ctx.each(list(options), pick, "controls")
    pools = {c: list(p) for c, p in sorted(picked.items()) if p}
    chosen = {c: p[0] for c, p in pools.items()}
    pre = {d: s for p in picked.values() for d, s in p.items()}
    await ctx.recorder.record(
        "canary.controls",
        controls=chosen,
        pools=pools,
        pre=pre,
        without=sorted(c for c, p in picked.items() if not p),
    )
    ctx.control_pre.update(pre)
    ctx.control_pools.update(pools)
    return chosen


async def sample_all(
    ctx: EngineContext, ids: Sequence[str], label: str
) -> dict[str, HealthSample | None]:
    """One health sample of every device at once (None: it did not answer)."""

    async def one(dev_id: str) -> HealthSample | None:
        try:
            return await ctx.transport.health(ctx.device(dev_id))
        except FleetgateError:
            return None

    return await ctx.each(ids, one, label)


def hard_failure(sample: HealthSample | None, policy: HealthPolicy) -> str:
    """Why a canary fails at once during the soak, or ''."""
    if sample is None:
        return "health endpoint not responding"
    if not sample.app_up:
        return "health endpoint not responding (application down)"
    if sample.crash_loop:
        return "crash loop detected"
    t = sample.temperature_c
    if t is not None and not math.isnan(t) and t > policy.temperature_c_max:
        return f"temperature {t:.1f} C is above the {policy.temperature_c_max:g} C limit"
    return ""


async def sample_tick(
    ctx: EngineContext,
    key: str,
    tick: int,
    served: float,
    canaries: Sequence[str],
    controls: Mapping[str, str],
    *,
    hard: bool = True,
) -> bool:
    """Sample canaries and controls at the same moment; False when a canary broke a hard
    bound (it is recorded FAILED with the reason). ``hard=False`` (the baseline window, before
    the canaries run the release) only records."""
    ids = [*canaries, *(d for c in canaries for d in _pool(ctx, c, controls))]
    got = await sample_all(ctx, ids, "sample")
    stage, _, round_name = key.partition(":")
    entry: dict[str, Any] = {
        "stage": int(stage),
        "round": round_name,
        "tick": tick,
        "t": round(served, 3),
        "samples": {i: sample_dict(got.get(i)) for i in ids},
    }
    await ctx.recorder.record("soak.sampled", **entry)
    ctx.sampled.setdefault(key, []).append(entry)
    ok = True
    for c in canaries if hard else ():
        why = hard_failure(got.get(c), ctx.policy.health)
        if why:
            ok = False
            await ctx.recorder.record(
                "device.health",
                device_id=c,
                outcome="failed",
                stage=0,
                round=f"soak tick {tick}",
                status="failed",
                reasons=[why],
                sample=sample_dict(got.get(c)),
                baseline=sample_dict(ctx.baselines.get(c)),
            )
    return ok


def _metric(sample: Mapping[str, Any], name: str) -> float | None:
    v = sample.get(name)
    if v is None:
        v = (sample.get("metrics") or {}).get(name)
    if isinstance(v, bool) or not isinstance(v, int | float):
        return None
    return float(v) if math.isfinite(v) else None


def series(
    ctx: EngineContext, keys: Sequence[str], device: str, names: Sequence[str]
) -> dict[str, list[float]]:
    """A device's samples of the given soaks, per metric (missing values left out)."""
    out: dict[str, list[float]] = {n: [] for n in names}
    for key in keys:
        for tick in ctx.sampled.get(key, ()):
            s = tick["samples"].get(device)
            if not s:
                continue
            for n in names:
                v = _metric(s, n)
                if v is not None:
                    out[n].append(v)
    return out


def _median(values: Sequence[float]) -> float:
    v = sorted(values)
    return (v[len(v) // 2] + v[(len(v) - 1) // 2]) / 2


def _median_or_none(values: Sequence[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    return _median(known) if known else None


def _pool(ctx: EngineContext, canary: str, controls: Mapping[str, str]) -> list[str]:
    """A canary's control pool (its first control alone for logs from before pools)."""
    pool = ctx.control_pools.get(canary)
    if pool:
        return list(pool)
    return [controls[canary]] if canary in controls else []


def metric_specs(policy: AnalysisPolicy) -> list[Any]:
    """The judge's metric specs: the defaults, overridden or extended by the policy's."""
    from fleetgate.core.analysis import DEFAULT_METRICS, Direction, MetricSpec

    specs = {m.name: replace(m, min_samples=policy.min_samples) for m in DEFAULT_METRICS}
    for m in policy.metrics:
        specs[m.name] = MetricSpec(
            name=m.name,
            direction=Direction(m.direction),
            tolerance=m.tolerance,
            floor=m.floor,
            critical=m.critical,
            min_samples=m.min_samples,
        )
    return list(specs.values())


def judge_canaries(
    ctx: EngineContext, keys: Sequence[str], canaries: Sequence[str], controls: Mapping[str, str]
) -> dict[str, Any]:
    """``core.analysis.judge_relative`` for every canary that has controls: canary ->
    Judgement. Each device's "before" is the median of its baseline window (sampled with the
    controls before the canary was deployed) where there is one, else a single sample: the
    canary's pre-deploy baseline, the control's sample when it was chosen."""
    from fleetgate.core.analysis import judge_relative

    specs = metric_specs(ctx.policy.analysis)
    names = [s.name for s in specs]
    window = [f"{k.partition(':')[0]}:baseline" for k in keys[:1]]
    out: dict[str, Any] = {}
    for c in canaries:
        pool = _pool(ctx, c, controls)
        if not pool:
            continue
        out[c] = judge_relative(
            series(ctx, keys, c, names),
            _before(ctx, window, c, names),
            [series(ctx, keys, d, names) for d in pool],
            [_before(ctx, window, d, names) for d in pool],
            specs,
            confidence=ctx.policy.analysis.confidence,
        )
    return out


def _before(
    ctx: EngineContext, window: Sequence[str], device: str, names: Sequence[str]
) -> dict[str, float]:
    got = series(ctx, window, device, names)
    if any(got.values()) and all(
        len(v) >= ctx.policy.analysis.min_samples for v in got.values() if v
    ):
        return {n: _median(v) for n, v in got.items() if v}
    base = ctx.baselines.get(device)
    one: Mapping[str, Any] | None = sample_dict(base) if base else ctx.control_pre.get(device)
    return {n: v for n in names if one and (v := _metric(one, n)) is not None}


def judgement_doc(j: Any, control: str) -> dict[str, Any]:
    """A judgement as JSON for ``canary.verdict`` (the report's evidence)."""
    return {
        "control": control,
        "verdict": j.verdict,
        "reasons": list(j.reasons),
        "metrics": [
            {
                "name": m.name,
                "verdict": m.verdict.value,
                "canary_median": m.canary_median,
                "control_median": m.control_median,
                "effect": m.effect,
                "ci_low": m.ci_low,
                "ci_high": m.ci_high,
                "n_canary": m.n_canary,
                "n_control": m.n_control,
                "tolerated": m.tolerated,
                "critical": m.critical,
                "reason": m.reason,
            }
            for m in j.metrics
        ],
    }


async def wave_tick(ctx: EngineContext, stage: int, tick: int, served: float) -> bool:
    """One sampling round of a between-waves soak: every deployed device, at the same moment.

    A wave soak can hold the whole fleet, so the log keeps a summary per tick — how many
    answered, how many are up, the fleet's median latency and error rate — and the full sample
    only of devices that broke a hard bound; those are recorded FAILED at once (they count in
    the wave's decision) instead of waiting for the end of the soak. Measured in
    docs/analysis.md: a full per-device record would be ~250 bytes × devices × ticks. Never
    stops the soak: the decision matrix decides after it.
    """
    ids = list(ctx.recorder.state.deployed_ids)
    got = await sample_all(ctx, ids, "wave-sample")
    broken = {i: why for i in ids if (why := hard_failure(got.get(i), ctx.policy.health))}
    answered = [s for s in got.values() if s is not None]

    summary = {
        "devices": len(ids),
        "answered": len(answered),
        "up": sum(1 for s in answered if s.app_up),
        "latency_ms_median": _median_or_none([s.latency_ms for s in answered]),
        "error_rate_median": _median_or_none([s.error_rate for s in answered]),
    }
    await ctx.recorder.record(
        "soak.sampled",
        stage=stage,
        round="soak",
        tick=tick,
        t=round(served, 3),
        summary=summary,
        samples={i: sample_dict(got.get(i)) for i in sorted(broken)},
    )
    ctx.sampled.setdefault(f"{stage}:soak", []).append({"tick": tick, "samples": {}})
    for i, why in sorted(broken.items()):
        if ctx.recorder.state.devices[i] is D.FAILED:
            continue  # already failed: one record of it is enough
        await ctx.recorder.record(
            "device.health",
            device_id=i,
            outcome="failed",
            stage=stage,
            round=f"soak tick {tick}",
            status="failed",
            reasons=[why],
            sample=sample_dict(got.get(i)),
            baseline=sample_dict(ctx.baselines.get(i)),
        )
    return True
