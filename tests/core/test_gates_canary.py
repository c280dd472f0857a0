"""canary_verdict: Guardrail 1's gate check from the initial and post-soak health samples."""

from __future__ import annotations

from fleetgate.core.gates import DeviceHealth, Verdict, canary_verdict
from fleetgate.core.model import HealthSample
from fleetgate.core.policy import HealthPolicy

POLICY = HealthPolicy()
IDS = ("orin-1", "rpi-1", "gw-1")


def ok(dev: str, **kw: object) -> HealthSample:
    values: dict[str, object] = {"latency_ms": 50.0, "error_rate": 0.0, "cpu_percent": 30.0}
    values.update(kw)
    return HealthSample(dev, app_up=True, **values)  # type: ignore[arg-type]


def rounds(**overrides: HealthSample) -> dict[str, HealthSample]:
    out = {d: ok(d) for d in IDS}
    out.update({k.replace("_", "-"): v for k, v in overrides.items()})
    return out


BASELINES: dict[str, HealthSample | None] = {d: ok(d) for d in IDS}


def test_all_healthy_after_soak_passes() -> None:
    cv = canary_verdict(rounds(), rounds(), BASELINES, IDS, POLICY, soak_served=True)
    assert cv.verdict is Verdict.PASS and cv.passed
    assert cv.reasons == () and cv.failed_canaries == () and not cv.all_failed
    assert set(cv.per_device) == set(IDS)
    assert all(v.status is DeviceHealth.HEALTHY for v in cv.per_device.values())


def test_soak_not_served_fails_even_if_healthy() -> None:
    cv = canary_verdict(rounds(), rounds(), BASELINES, IDS, POLICY, soak_served=False)
    assert cv.verdict is Verdict.FAIL
    assert cv.reasons == ("the minimum soak period was not served",)
    assert cv.failed_canaries == () and not cv.all_failed


def test_missing_post_soak_sample_is_an_unreachable_failure() -> None:
    post = rounds()
    del post["rpi-1"]
    cv = canary_verdict(rounds(), post, BASELINES, IDS, POLICY, soak_served=True)
    assert cv.verdict is Verdict.FAIL
    assert cv.failed_canaries == ("rpi-1",)
    v = cv.per_device["rpi-1"]
    assert v.status is DeviceHealth.FAILED
    assert v.reasons == ("after soak: no health sample (device unreachable)",)


def test_degraded_is_not_healthy() -> None:
    post = rounds(gw_1=ok("gw-1", cpu_percent=97.0))
    cv = canary_verdict(rounds(), post, BASELINES, IDS, POLICY, soak_served=True)
    assert cv.verdict is Verdict.FAIL
    assert cv.failed_canaries == ("gw-1",)
    assert cv.per_device["gw-1"].status is DeviceHealth.DEGRADED
    assert cv.reasons == (
        "canary gw-1 is DEGRADED: after soak: CPU 97.0 % is above the 90 % limit",
    )


def test_per_device_is_the_worst_of_both_rounds() -> None:
    initial = rounds(orin_1=ok("orin-1", error_rate=0.05))
    post = rounds(orin_1=ok("orin-1", cpu_percent=95.0))
    cv = canary_verdict(initial, post, BASELINES, IDS, POLICY, soak_served=True)
    v = cv.per_device["orin-1"]
    assert v.status is DeviceHealth.FAILED
    assert v.reasons == (
        "initial: error rate 5.0 % is 5.0 pts above baseline 0.0 % (max +1.0)",
        "after soak: CPU 95.0 % is above the 90 % limit",
    )


def test_all_canaries_failing_is_reported_as_all_failed() -> None:
    down = {d: HealthSample(d, app_up=False) for d in IDS}
    cv = canary_verdict(rounds(), down, BASELINES, IDS, POLICY, soak_served=True)
    assert cv.all_failed
    assert cv.failed_canaries == IDS


def test_some_failing_is_not_all_failed() -> None:
    post = rounds(rpi_1=HealthSample("rpi-1", app_up=False))
    cv = canary_verdict(rounds(), post, BASELINES, IDS, POLICY, soak_served=True)
    assert cv.verdict is Verdict.FAIL and not cv.all_failed


def test_no_canaries_is_a_fail() -> None:
    cv = canary_verdict({}, {}, {}, (), POLICY, soak_served=True)
    assert cv.verdict is Verdict.FAIL
    assert not cv.all_failed
    assert "no canary devices" in cv.reasons[0]


def test_missing_baseline_compares_error_rate_with_zero() -> None:
    post = rounds(rpi_1=ok("rpi-1", error_rate=0.02))
    cv = canary_verdict(rounds(), post, {}, IDS, POLICY, soak_served=True)
    assert cv.failed_canaries == ("rpi-1",)


def test_samples_of_non_canaries_are_ignored() -> None:
    extra = rounds()
    extra["other"] = HealthSample("other", app_up=False)
    cv = canary_verdict(extra, extra, BASELINES, IDS, POLICY, soak_served=True)
    assert cv.passed and "other" not in cv.per_device
