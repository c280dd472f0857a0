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
    """The control of each canary (``canary.controls``), chosen once per canary round."""
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

    async def pick(canary: str) -> tuple[str, dict[str, Any]] | None:
        for dev in options.get(canary, []):
            try:
                sample = await ctx.transport.health(dev)
            except FleetgateError:
                continue
            if sample.app_up and not sample.crash_loop:
                return dev.id, sample_dict(sample) or {}
        return None

    picked = await ctx.each(list(options), pick, "controls")
    chosen = {c: p[0] for c, p in sorted(picked.items()) if p is not None}
    pre = {p[0]: p[1] for p in picked.values() if p is not None}
    await ctx.recorder.record(
        "canary.controls",
        controls=chosen,
        pre=pre,
        without=sorted(c for c, p in picked.items() if p is None),
    )
    ctx.control_pre.update(pre)
    return chosen


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
) -> bool:
    """Sample canaries and controls at the same moment; False when a canary broke a hard
    bound (it is recorded FAILED with the reason)."""
    ids = [*canaries, *(controls[c] for c in canaries if c in controls)]

    async def one(dev_id: str) -> HealthSample | None:
        try:
            return await ctx.transport.health(ctx.device(dev_id))
        except FleetgateError:
            return None

    got = await ctx.each(ids, one, "sample")
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
    for c in canaries:
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


# Additive metrics are compared as they are (error rates of different devices differ by tenths
# of a point, far inside the 1 pp floor); every other metric as a ratio to the device's own
# value before the soak, because devices differ (one board answers in 22 ms, its neighbour in
# 38 ms) and the question is whether the canary *changed* more than its control did.
ADDITIVE = frozenset({"error_rate", "restarts"})


def series(
    ctx: EngineContext,
    keys: Sequence[str],
    device: str,
    names: Sequence[str],
    scale: Mapping[str, float],
) -> dict[str, list[float]]:
    """A device's samples of the given soaks, per metric (missing values left out), each
    divided by ``scale[name]`` where given."""
    out: dict[str, list[float]] = {n: [] for n in names}
    for key in keys:
        for tick in ctx.sampled.get(key, ()):
            s = tick["samples"].get(device)
            if not s:
                continue
            for n in names:
                v = _metric(s, n)
                if v is not None:
                    out[n].append(v / scale[n] if n in scale else v)
    return out


def _scales(
    names: Sequence[str],
    canary_pre: Mapping[str, Any] | None,
    control_pre: Mapping[str, Any] | None,
) -> tuple[dict[str, float], dict[str, float]]:
    """Per metric, each device's own value before the soak, where both devices have one."""
    a: dict[str, float] = {}
    b: dict[str, float] = {}
    for n in names:
        if n in ADDITIVE or not canary_pre or not control_pre:
            continue
        x, y = _metric(canary_pre, n), _metric(control_pre, n)
        if x and y and x > 0 and y > 0:
            a[n], b[n] = x, y
    return a, b


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
    """``core.analysis.judge`` for every canary that has a control: canary -> Judgement."""
    from fleetgate.core.analysis import judge

    specs = metric_specs(ctx.policy.analysis)
    names = [s.name for s in specs]
    out: dict[str, Any] = {}
    for c in canaries:
        ctl = controls.get(c)
        if ctl is None:
            continue
        base = ctx.baselines.get(c)
        sa, sb = _scales(names, sample_dict(base) if base else None, ctx.control_pre.get(ctl))
        # A ratio series needs its absolute floor (5 ms …) as a ratio too.
        scaled = [replace(m, floor=m.floor / sb[m.name]) if m.name in sb else m for m in specs]
        out[c] = judge(
            series(ctx, keys, c, names, sa),
            series(ctx, keys, ctl, names, sb),
            scaled,
            confidence=ctx.policy.analysis.confidence,
        )
    return out


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
