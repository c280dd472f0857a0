"""evaluate_health: each VERIFY rule, its boundary, and the reason text with the numbers."""

from __future__ import annotations

import math

import pytest

from fleetgate.core.gates import DeviceHealth, HealthVerdict, evaluate_health, fleet_health_summary
from fleetgate.core.model import HealthSample
from fleetgate.core.policy import HealthPolicy

POLICY = HealthPolicy(latency_floor_ms=5.0)  # numbers below are written for a 5 ms floor


def sample(**kw: object) -> HealthSample:
    base: dict[str, object] = {
        "device_id": "rpi-01",
        "app_up": True,
        "latency_ms": 100.0,
        "error_rate": 0.01,
        "cpu_percent": 40.0,
        "temperature_c": 55.0,
        "restarts": 0,
        "release": "vision-2.4.1",
    }
    base.update(kw)
    return HealthSample(**base)  # type: ignore[arg-type]


BASELINE = sample(release="vision-2.4.0")


def test_healthy_sample_has_no_reasons() -> None:
    v = evaluate_health(sample(), BASELINE, POLICY)
    assert v == HealthVerdict("rpi-01", DeviceHealth.HEALTHY, (), ())
    assert v.healthy


def test_app_down_fails_even_with_no_metrics() -> None:
    s = HealthSample("rpi-01", app_up=False)
    v = evaluate_health(s, None, POLICY)
    assert v.status is DeviceHealth.FAILED
    assert v.reasons == ("health endpoint not responding (application down)",)
    assert set(v.unmeasured) == {"error_rate", "latency_ms", "cpu_percent", "temperature_c"}


def test_silence_is_never_health() -> None:
    """Issue 11: "up" with nothing measured is no data, a failure, not a pass."""
    v = evaluate_health(HealthSample("rpi-01", app_up=True), BASELINE, POLICY)
    assert v.status is DeviceHealth.FAILED
    assert v.reasons[0].startswith("no data: the device answered up but reported no metric")
    assert "error_rate" in v.unmeasured


def test_one_reading_without_a_metric_is_not_silence() -> None:
    # An agent has no error rate for a window without requests: one such reading is not "no
    # data" (a metric missing for the whole soak is, in the canary analysis).
    v = evaluate_health(sample(error_rate=math.nan, cpu_percent=math.nan), BASELINE, POLICY)
    assert v.status is DeviceHealth.HEALTHY
    assert {"error_rate", "cpu_percent"} <= set(v.unmeasured)


def test_a_metric_missing_on_both_sides_never_fails_by_itself() -> None:
    v = evaluate_health(sample(cpu_percent=math.nan), BASELINE, POLICY)
    assert v.status is DeviceHealth.HEALTHY
    assert "cpu_percent" in v.unmeasured


def test_crash_loop_fails() -> None:
    v = evaluate_health(sample(crash_loop=True), BASELINE, POLICY)
    assert v.status is DeviceHealth.FAILED
    assert v.reasons == ("crash loop detected",)


def test_restarts_on_a_new_release_count_in_full() -> None:
    base = sample(restarts=5, release="vision-2.4.0")
    assert evaluate_health(sample(restarts=2), base, POLICY).healthy
    v = evaluate_health(sample(restarts=3), base, POLICY)
    assert v.status is DeviceHealth.FAILED
    assert v.reasons == ("3 restarts on this release (max 2)",)


def test_restarts_since_a_same_release_baseline_are_a_difference() -> None:
    base = sample(restarts=5)
    assert evaluate_health(sample(restarts=7), base, POLICY).healthy
    v = evaluate_health(sample(restarts=8), base, POLICY)
    assert v.reasons == ("3 restarts since baseline (max 2)",)


def test_restart_counter_reset_counts_from_the_reset() -> None:
    base = sample(restarts=10)
    assert evaluate_health(sample(restarts=2), base, POLICY).healthy
    assert not evaluate_health(sample(restarts=3), base, POLICY).healthy


def test_unknown_release_is_not_assumed_the_same() -> None:
    base = sample(restarts=5, release=None)
    assert not evaluate_health(sample(restarts=6, release=None), base, POLICY).healthy


def test_error_rate_increase_reason_quotes_the_numbers() -> None:
    v = evaluate_health(sample(error_rate=0.04), sample(error_rate=0.01), POLICY)
    assert v.status is DeviceHealth.FAILED
    assert v.reasons == ("error rate 4.0 % is 3.0 pts above baseline 1.0 % (max +1.0)",)


@pytest.mark.parametrize(
    ("now", "before", "healthy"),
    [
        (0.02, 0.01, True),  # exactly +1 pt is allowed
        (0.07, 0.06, True),  # 0.07 - 0.06 is 0.010000000000000009 in floats: exactly +1 pt
        (0.04, 0.03, True),
        (0.0201, 0.01, False),
        (0.005, 0.01, True),  # lower than baseline
        (0.01, None, True),  # no baseline: compared with 0
        (0.0101, None, False),
    ],
)
def test_error_rate_boundary_is_exact(now: float, before: float | None, healthy: bool) -> None:
    v = evaluate_health(sample(error_rate=now), sample(error_rate=before), POLICY)
    assert v.healthy is healthy


def test_error_rate_without_any_baseline_compares_with_zero() -> None:
    v = evaluate_health(sample(error_rate=0.05), None, POLICY)
    assert v.reasons == ("error rate 5.0 % is 5.0 pts above no baseline (0 %) (max +1.0)",)


def test_latency_ratio_reason_and_exact_boundary() -> None:
    base = sample(latency_ms=100.0)
    assert evaluate_health(sample(latency_ms=120.0), base, POLICY).healthy
    v = evaluate_health(sample(latency_ms=130.0), base, POLICY)
    assert v.status is DeviceHealth.FAILED
    assert v.reasons == ("latency 130 ms is 1.30x baseline 100 ms (max 1.2x)",)
    # 1.8 > 1.2 * 1.5 in floats (1.7999999999999998); the ratio is exactly 1.2 and passes.
    tiny_floor = HealthPolicy(latency_floor_ms=0.0)
    assert evaluate_health(sample(latency_ms=1.8), sample(latency_ms=1.5), tiny_floor).healthy


def test_latency_below_the_floor_is_measured_against_the_floor() -> None:
    base = sample(latency_ms=2.0)
    assert evaluate_health(sample(latency_ms=6.0), base, POLICY).healthy  # 6 / 5 = 1.2
    v = evaluate_health(sample(latency_ms=12.0), base, POLICY)
    assert v.reasons == ("latency 12 ms is 2.40x the 5 ms floor (baseline 2 ms) (max 1.2x)",)


def test_latency_without_a_baseline_is_not_judged() -> None:
    v = evaluate_health(sample(latency_ms=900.0), sample(latency_ms=None), POLICY)
    assert v.healthy
    assert "latency_baseline" in v.unmeasured
    assert evaluate_health(sample(latency_ms=900.0), None, POLICY).healthy


def test_cpu_over_limit_degrades() -> None:
    assert evaluate_health(sample(cpu_percent=90.0), BASELINE, POLICY).healthy
    v = evaluate_health(sample(cpu_percent=95.0), BASELINE, POLICY)
    assert v.status is DeviceHealth.DEGRADED
    assert v.reasons == ("CPU 95.0 % is above the 90 % limit",)


def test_temperature_over_limit_degrades() -> None:
    assert evaluate_health(sample(temperature_c=85.0), BASELINE, POLICY).healthy
    v = evaluate_health(sample(temperature_c=91.5), BASELINE, POLICY)
    assert v.status is DeviceHealth.DEGRADED
    assert v.reasons == ("temperature 91.5 C is above the 85 C limit",)


def test_failure_outranks_degradation_and_all_reasons_are_kept() -> None:
    v = evaluate_health(sample(cpu_percent=99.0, crash_loop=True), BASELINE, POLICY)
    assert v.status is DeviceHealth.FAILED
    assert v.reasons == ("crash loop detected", "CPU 99.0 % is above the 90 % limit")


def test_infinite_latency_fails() -> None:
    v = evaluate_health(sample(latency_ms=math.inf), BASELINE, POLICY)
    assert v.status is DeviceHealth.FAILED


def test_fleet_health_summary_counts_each_status() -> None:
    verdicts = {
        "a": HealthVerdict("a", DeviceHealth.HEALTHY),
        "b": HealthVerdict("b", DeviceHealth.HEALTHY),
        "c": HealthVerdict("c", DeviceHealth.DEGRADED, ("x",)),
        "d": HealthVerdict("d", DeviceHealth.FAILED, ("y",)),
    }
    counts = fleet_health_summary(verdicts)
    assert (counts.healthy, counts.degraded, counts.failed, counts.total) == (2, 1, 1, 4)
    assert fleet_health_summary({}).total == 0
