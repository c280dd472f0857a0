"""Health verdicts: one device's sample against its baseline, and the canary verdict.

Pure: no I/O, no clock, no randomness. Inputs are ``HealthSample`` values (what an agent
reported) and the ``HealthPolicy`` limits; outputs are frozen verdicts whose ``reasons`` carry
the actual numbers, so a report can quote them as evidence ("Log Everything With Evidence").

The spec's VERIFY checklist, and how each item is judged here:

    a. Application responds to health endpoint   -> ``app_up`` False: FAILED
    b. Resource utilization within expected bounds -> CPU / temperature over limit: DEGRADED
    c. Error rate at or below baseline            -> increase over the allowed margin: FAILED
    d. Latency at or below baseline               -> ratio over the allowed ratio: FAILED
    e. No crash loops detected                    -> crash loop or too many restarts: FAILED

Invariants:

- ``status`` is the worst finding: FAILED if any FAILED rule fired, else DEGRADED if any
  resource rule fired, else HEALTHY. ``reasons`` is empty exactly when HEALTHY.
- A missing metric (``None``, or NaN from a scrape) is listed in ``unmeasured``; it fails only
  as "no data" (issue 11: missing data is never a pass) when the sample has no metric at all.
  One reading without an error rate is not "stopped reporting" (an agent has no rate for a
  window without requests); a metric missing for the whole soak is, and the canary analysis
  fails it (NO_DATA). A sample with ``app_up`` False is FAILED whatever else it says.
- Comparisons are exact on the decimal values as written (``Fraction(repr(x))``), so
  ``0.03 - 0.02`` is exactly the allowed ``0.01`` and does not fail by a float rounding error.
- Canary verdict (Guardrail 1): PASS only if every canary has an initial and a post-soak sample,
  each is HEALTHY (DEGRADED is not healthy), and the soak was served. Anything else is FAIL.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import Enum
from fractions import Fraction
from types import MappingProxyType

from fleetgate.core.model import HealthSample
from fleetgate.core.policy import HealthPolicy


class DeviceHealth(str, Enum):
    """The spec's health report status, mildest first."""

    HEALTHY = "HEALTHY"
    DEGRADED = "DEGRADED"
    FAILED = "FAILED"

    @property
    def severity(self) -> int:
        return _SEVERITY[self.value]


_SEVERITY = {"HEALTHY": 0, "DEGRADED": 1, "FAILED": 2}


class Verdict(str, Enum):
    PASS = "PASS"  # noqa: S105  (a verdict, not a password)
    FAIL = "FAIL"


@dataclass(frozen=True, slots=True)
class HealthVerdict:
    """One device's health. ``reasons`` explain a non-HEALTHY status with the numbers."""

    device_id: str
    status: DeviceHealth
    reasons: tuple[str, ...] = ()
    unmeasured: tuple[str, ...] = ()

    @property
    def healthy(self) -> bool:
        return self.status is DeviceHealth.HEALTHY


@dataclass(frozen=True, slots=True)
class HealthCounts:
    """Counts for CONFIRM and the state block (``deployed_healthy``, ``deployed_degraded``)."""

    healthy: int = 0
    degraded: int = 0
    failed: int = 0

    @property
    def total(self) -> int:
        return self.healthy + self.degraded + self.failed


@dataclass(frozen=True, slots=True)
class CanaryVerdict:
    """The VERIFY phase's answer. ``all_failed`` lets the engine tell "ALL canary devices fail
    -> ABORT" from "SOME fail -> request user decision" (spec, Error Recovery)."""

    verdict: Verdict
    per_device: Mapping[str, HealthVerdict] = field(default_factory=dict)
    reasons: tuple[str, ...] = ()
    failed_canaries: tuple[str, ...] = ()
    all_failed: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "per_device", MappingProxyType(dict(self.per_device)))

    @property
    def passed(self) -> bool:
        return self.verdict is Verdict.PASS


def _exact(x: float) -> Fraction:
    # repr() is the shortest decimal that round-trips, i.e. the number as a human wrote it.
    return Fraction(repr(float(x)))


def _value(x: float | None) -> float | None:
    """A measured value, or None when the device could not measure it (None or NaN)."""
    return None if x is None or math.isnan(x) else x


# Float arithmetic on a limit of two decimals is off by ~1e-16 of its size: a value further
# than this (relative) from the float limit is on the same side of the exact one.
_FAST_MARGIN = 1e-9


def _greater(value: float, limit_f: float, limit: Callable[[], Fraction]) -> bool:
    """``value > limit()`` exactly; +inf/-inf compare as themselves. ``limit_f`` is the same
    limit in floats: the comparison is decided on it unless the value is within rounding
    distance, and only then are the exact ``Fraction``s built (issue 12: one sample, one
    comparison in floats, no garbage)."""
    if math.isinf(value):
        return value > 0
    if math.isfinite(limit_f):
        gap = value - limit_f
        margin = _FAST_MARGIN * max(1.0, abs(value), abs(limit_f))
        if gap > margin:
            return True
        if gap < -margin:
            return False
    return _exact(value) > limit()


def _pct(fraction: float) -> str:
    """A fraction as a percentage number: one decimal, more only if one would show 0.0."""
    v = fraction * 100
    return f"{v:.1f}" if v == 0 or abs(v) >= 0.05 else f"{v:.2g}"


def _num(x: float) -> str:
    return f"{x:g}"


def _restarts_since_baseline(
    sample: HealthSample, baseline: HealthSample | None
) -> tuple[int, str]:
    # An agent's restart counter belongs to a release: a new release starts counting at 0, so
    # subtracting the old release's count would hide restarts. Only a baseline of the same
    # (known) release is subtracted; a counter that went backwards was reset, so it already
    # counts since the reset.
    same_release = (
        baseline is not None and sample.release is not None and baseline.release == sample.release
    )
    if baseline is not None and same_release and sample.restarts >= baseline.restarts:
        return sample.restarts - baseline.restarts, "since baseline"
    return sample.restarts, "on this release"


def evaluate_health(
    sample: HealthSample, baseline: HealthSample | None, policy: HealthPolicy
) -> HealthVerdict:
    """Judge one health sample against the device's pre-deployment baseline.

    FAILED (the application does not work as before):

    - "Application responds to health endpoint": ``app_up`` is False.
    - "No crash loops detected": ``crash_loop`` is True, or the restarts since the baseline
      exceed ``crash_restarts_max`` (since baseline = ``sample.restarts - baseline.restarts``
      when the baseline is of the same release, else ``sample.restarts``).
    - "Error rate at or below baseline": ``error_rate - baseline.error_rate`` exceeds
      ``error_rate_increase_max`` (absolute fractions; no baseline error rate -> compare with 0).
    - "Latency at or below baseline": ``latency_ms / max(baseline.latency_ms, latency_floor_ms)``
      exceeds ``latency_ratio_max``. Without a baseline latency there is nothing to compare
      with: the check is skipped and listed in ``unmeasured``.

    DEGRADED ("Resource utilization within expected bounds"; the application works):

    - ``cpu_percent`` above ``cpu_percent_max``; ``temperature_c`` above ``temperature_c_max``.

    A limit is allowed (``>`` fails, ``==`` passes). Missing metrics fail only as "no data".
    """
    failed: list[str] = []
    degraded: list[str] = []
    unmeasured: list[str] = []

    if not sample.app_up:
        failed.append("health endpoint not responding (application down)")
    elif sample.has_no_data:
        # Silence is never health: "up" with nothing measured proves nothing (issue 11).
        failed.append("no data: the device answered up but reported no metric at all")
    if sample.crash_loop:
        failed.append("crash loop detected")
    restarts, since = _restarts_since_baseline(sample, baseline)
    if restarts > policy.crash_restarts_max:
        failed.append(f"{restarts} restarts {since} (max {policy.crash_restarts_max})")

    err = _value(sample.error_rate)
    base_err = _value(baseline.error_rate) if baseline is not None else None
    if err is None:
        unmeasured.append("error_rate")
    else:
        base = 0.0 if base_err is None else base_err
        inc = policy.error_rate_increase_max
        if _greater(err, base + inc, lambda: _exact(base) + _exact(inc)):
            against = "no baseline (0 %)" if base_err is None else f"baseline {_pct(base)} %"
            failed.append(
                f"error rate {_pct(err)} % is {_pct(err - base)} pts above {against} "
                f"(max +{_pct(policy.error_rate_increase_max)})"
            )

    lat = _value(sample.latency_ms)
    base_lat = _value(baseline.latency_ms) if baseline is not None else None
    if lat is None:
        unmeasured.append("latency_ms")
    elif base_lat is None:
        unmeasured.append("latency_baseline")
    else:
        floor = policy.latency_floor_ms
        denom = max(base_lat, floor)
        ratio_max = policy.latency_ratio_max
        if _greater(lat, ratio_max * denom, lambda: _exact(ratio_max) * _exact(denom)):
            ratio = lat / denom if denom > 0 else math.inf
            against = (
                f"baseline {_num(base_lat)} ms"
                if base_lat >= floor
                else f"the {_num(floor)} ms floor (baseline {_num(base_lat)} ms)"
            )
            failed.append(
                f"latency {_num(lat)} ms is {ratio:.2f}x {against} "
                f"(max {_num(policy.latency_ratio_max)}x)"
            )

    cpu = _value(sample.cpu_percent)
    if cpu is None:
        unmeasured.append("cpu_percent")
    elif _greater(cpu, policy.cpu_percent_max, lambda: _exact(policy.cpu_percent_max)):
        degraded.append(f"CPU {cpu:.1f} % is above the {_num(policy.cpu_percent_max)} % limit")
    temp = _value(sample.temperature_c)
    if temp is None:
        unmeasured.append("temperature_c")
    elif _greater(temp, policy.temperature_c_max, lambda: _exact(policy.temperature_c_max)):
        degraded.append(
            f"temperature {temp:.1f} C is above the {_num(policy.temperature_c_max)} C limit"
        )

    if failed:
        status = DeviceHealth.FAILED
    elif degraded:
        status = DeviceHealth.DEGRADED
    else:
        status = DeviceHealth.HEALTHY
    return HealthVerdict(sample.device_id, status, tuple(failed + degraded), tuple(unmeasured))


def worst(verdicts: Iterable[HealthVerdict], device_id: str) -> HealthVerdict:
    """The most severe status of several verdicts of one device, with all their reasons."""
    vs = list(verdicts)
    status = max((v.status for v in vs), key=lambda s: s.severity, default=DeviceHealth.HEALTHY)
    reasons = tuple(r for v in vs for r in v.reasons)
    unmeasured = tuple(dict.fromkeys(u for v in vs for u in v.unmeasured))
    return HealthVerdict(device_id, status, reasons, unmeasured)


def fleet_health_summary(verdicts: Mapping[str, HealthVerdict]) -> HealthCounts:
    """How many devices are HEALTHY, DEGRADED and FAILED."""
    statuses = [v.status for v in verdicts.values()]
    return HealthCounts(
        healthy=statuses.count(DeviceHealth.HEALTHY),
        degraded=statuses.count(DeviceHealth.DEGRADED),
        failed=statuses.count(DeviceHealth.FAILED),
    )


def _stage_verdict(
    device_id: str,
    samples: Mapping[str, HealthSample],
    baseline: HealthSample | None,
    policy: HealthPolicy,
    stage: str,
) -> HealthVerdict:
    sample = samples.get(device_id)
    if sample is None:
        # "Do NOT count unreachable devices as deployed": no evidence is not a pass.
        return HealthVerdict(
            device_id, DeviceHealth.FAILED, (f"{stage}: no health sample (device unreachable)",)
        )
    v = evaluate_health(sample, baseline, policy)
    return HealthVerdict(
        device_id, v.status, tuple(f"{stage}: {r}" for r in v.reasons), v.unmeasured
    )


def canary_verdict(
    initial: Mapping[str, HealthSample],
    post_soak: Mapping[str, HealthSample],
    baselines: Mapping[str, HealthSample | None],
    canary_ids: Sequence[str],
    policy: HealthPolicy,
    soak_served: bool,
) -> CanaryVerdict:
    """Guardrail 1's gate check, from the VERIFY phase's two rounds of health checks.

    "ALL canary devices report healthy after deployment", "Health checks ran for the minimum
    soak period", "No error rate increase detected on canary devices" -- "If ANY check fails ->
    DO NOT REQUEST FLEET ROLLOUT". So PASS needs: at least one canary; for every canary an
    initial and a post-soak sample (a missing one means the device was unreachable: FAIL for
    that device), both HEALTHY (DEGRADED is not healthy); and ``soak_served``.

    ``per_device`` holds, per canary, the worst of its initial and post-soak verdicts;
    ``failed_canaries`` the canaries that are not HEALTHY, in ``canary_ids`` order;
    ``all_failed`` is True when every canary failed (the spec's "ALL canary devices fail ->
    ABORT"), as opposed to some ("request user decision").
    """
    ids = list(dict.fromkeys(canary_ids))
    per_device: dict[str, HealthVerdict] = {}
    for dev in ids:
        base = baselines.get(dev)
        per_device[dev] = worst(
            (
                _stage_verdict(dev, initial, base, policy, "initial"),
                _stage_verdict(dev, post_soak, base, policy, "after soak"),
            ),
            dev,
        )
    failed = tuple(dev for dev in ids if not per_device[dev].healthy)

    reasons: list[str] = []
    if not ids:
        reasons.append("no canary devices: nothing proves the release (Guardrail 1)")
    for dev in failed:
        v = per_device[dev]
        reasons.append(f"canary {dev} is {v.status.value}: " + "; ".join(v.reasons))
    if not soak_served:
        reasons.append("the minimum soak period was not served")
    verdict = Verdict.FAIL if reasons else Verdict.PASS
    return CanaryVerdict(
        verdict=verdict,
        per_device=per_device,
        reasons=tuple(reasons),
        failed_canaries=failed,
        all_failed=bool(ids) and len(failed) == len(ids),
    )
