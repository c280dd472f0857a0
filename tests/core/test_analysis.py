"""core.analysis: the Hodges-Lehmann interval on known data, each verdict and its boundary,
ties, constant and NaN series, too few samples, silence, a DECREASE metric, the baseline
adjustment, and properties (monotone in the canary's shift, blind to sample order)."""

from __future__ import annotations

import math
import random
import subprocess
import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fleetgate.core.analysis import (
    DEFAULT_METRICS,
    Direction,
    MetricSpec,
    MetricVerdict,
    compare,
    hodges_lehmann,
    judge,
    judge_against_baseline,
)
from fleetgate.errors import PolicyError

CONTROL = [float(i) for i in range(30)]  # 0 .. 29


def shifted(values: list[float], c: float) -> list[float]:
    return [v + c for v in values]


def spec(**kw: object) -> MetricSpec:
    base: dict[str, object] = {"name": "m", "tolerance": 0.0, "floor": 1.0}
    base.update(kw)
    return MetricSpec(**base)  # type: ignore[arg-type]


# --- the estimate and its interval ---------------------------------------------------------


def test_module_imports_without_numpy_or_scipy() -> None:
    code = (
        "import sys, fleetgate.core.analysis as a; "
        "a.MetricSpec('x'); "
        "assert 'scipy' not in sys.modules and 'numpy' not in sys.modules, sorted(sys.modules)"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_hodges_lehmann_by_hand() -> None:
    # Differences of [4, 6, 8] - [1, 2, 3]: 1 2 3 3 4 5 5 6 7 -> median 4. Three a side are too
    # few for a 98 % interval: k = floor(4.5 + 0.5 - 2.326 * sqrt(9 * 7 / 12)) = 0.
    s = hodges_lehmann([4.0, 6.0, 8.0], [1.0, 2.0, 3.0])
    assert (s.estimate, s.low, s.high) == (4.0, None, None)


def test_interval_is_the_order_statistics_of_the_differences() -> None:
    canary = shifted(CONTROL, 5.0)
    diffs = sorted(x - y for x in canary for y in CONTROL)
    # sigma = sqrt(30*30*61/12), z = 2.3263: k = floor(450.5 - 156.96) = 293
    k = math.floor(450 + 0.5 - 2.3263478740408408 * math.sqrt(900 * 61 / 12))
    assert k == 293
    s = hodges_lehmann(canary, CONTROL)
    assert s.estimate == 5.0
    assert (s.low, s.high) == (diffs[k - 1], diffs[900 - k]) == (-1.0, 11.0)


def test_interval_is_the_set_of_shifts_the_u_test_does_not_reject() -> None:
    from scipy.stats import mannwhitneyu

    rng = random.Random(7)
    x = [rng.gauss(0.0, 1.0) + 0.7 for _ in range(25)]
    y = [rng.gauss(0.0, 1.0) for _ in range(30)]
    s = hodges_lehmann(x, y, confidence=0.95)
    assert s.low is not None and s.high is not None
    eps = 1e-9

    def p(delta: float) -> float:
        return float(mannwhitneyu([v - delta for v in x], y, method="asymptotic").pvalue)

    assert p(s.low - eps) < 0.05 <= p(s.low + eps)
    assert p(s.high + eps) < 0.05 <= p(s.high - eps)


def test_interval_covers_the_true_shift_at_its_confidence() -> None:
    rng = random.Random(2024)
    covered = 0
    runs = 300
    for _ in range(runs):
        y = [rng.lognormvariate(0.0, 0.5) for _ in range(20)]
        x = [rng.lognormvariate(0.0, 0.5) + 2.0 for _ in range(20)]
        s = hodges_lehmann(x, y, confidence=0.90)
        assert s.low is not None and s.high is not None
        covered += s.low <= 2.0 <= s.high
    assert 0.85 <= covered / runs <= 0.96


# --- verdicts and their boundaries ---------------------------------------------------------


def test_pass_fail_and_inconclusive_by_where_the_interval_lies() -> None:
    # canary = control + 5: CI [-1, 11]; + 20: CI [14, 26].
    assert compare(shifted(CONTROL, 5), CONTROL, spec(floor=12)).verdict is MetricVerdict.PASS
    assert compare(shifted(CONTROL, 5), CONTROL, spec(floor=4)).verdict is (
        MetricVerdict.INCONCLUSIVE
    )
    assert compare(shifted(CONTROL, 20), CONTROL, spec(floor=4)).verdict is MetricVerdict.FAIL


def test_an_interval_touching_the_tolerance() -> None:
    up5, up20 = shifted(CONTROL, 5), shifted(CONTROL, 20)
    assert compare(up5, CONTROL, spec(floor=11.0)).verdict is MetricVerdict.PASS  # high == tol
    assert compare(up5, CONTROL, spec(floor=10.999)).verdict is MetricVerdict.INCONCLUSIVE
    assert compare(up20, CONTROL, spec(floor=14.0)).verdict is MetricVerdict.INCONCLUSIVE
    assert compare(up20, CONTROL, spec(floor=13.999)).verdict is MetricVerdict.FAIL


def test_the_tolerance_is_relative_to_the_control_median_with_a_floor() -> None:
    control = shifted(CONTROL, 100.0)  # median 114.5
    r = compare(shifted(control, 5), control, spec(tolerance=0.25, floor=5.0))
    assert r.tolerated == pytest.approx(0.25 * 114.5)
    assert r.verdict is MetricVerdict.PASS
    near_zero = compare([0.0] * 30, [0.001] * 30, spec(tolerance=0.25, floor=0.01))
    assert near_zero.tolerated == 0.01


def test_a_decrease_metric_mirrors_the_rule() -> None:
    throughput = spec(direction="decrease", tolerance=0.25, floor=0.0)
    assert throughput.direction is Direction.DECREASE
    control = shifted(CONTROL, 100.0)  # median 114.5: tolerated -28.6
    assert compare(shifted(control, -60), control, throughput).verdict is MetricVerdict.FAIL
    assert compare(shifted(control, +60), control, throughput).verdict is MetricVerdict.PASS
    assert compare(shifted(control, -25), control, throughput).verdict is (
        MetricVerdict.INCONCLUSIVE
    )


def test_ties_in_a_counter() -> None:
    restarts = MetricSpec("restarts", tolerance=0.0, floor=1.0)
    quiet = [0.0] * 30
    flappy = [0.0] * 25 + [1.0] * 5
    r = compare(flappy, quiet, restarts)
    assert (r.effect, r.ci_low, r.ci_high, r.verdict) == (0.0, 0.0, 0.0, MetricVerdict.PASS)
    looping = compare([2.0] * 30, quiet, restarts)
    assert (looping.ci_low, looping.ci_high, looping.verdict) == (2.0, 2.0, MetricVerdict.FAIL)


def test_identical_and_constant_series_need_no_division() -> None:
    same = compare([3.0] * 20, [3.0] * 20, spec(floor=0.0))
    assert (same.effect, same.ci_low, same.ci_high) == (0.0, 0.0, 0.0)
    assert same.p_value == 1.0
    assert same.verdict is MetricVerdict.PASS
    mirror = compare(list(CONTROL), list(reversed(CONTROL)), spec(floor=0.0))
    assert mirror.effect == 0.0 and mirror.verdict is MetricVerdict.INCONCLUSIVE


def test_nan_and_inf_are_dropped() -> None:
    dirty = [math.nan, *shifted(CONTROL, 5), math.inf, -math.inf]
    clean = compare(shifted(CONTROL, 5), CONTROL, spec(floor=12))
    r = compare(dirty, [*CONTROL, math.nan], spec(floor=12))
    assert (r.n_canary, r.n_control) == (30, 30)
    assert (r.effect, r.ci_low, r.ci_high, r.verdict) == (
        clean.effect,
        clean.ci_low,
        clean.ci_high,
        clean.verdict,
    )


def test_too_few_samples_is_inconclusive_never_pass() -> None:
    few = CONTROL[:9]
    assert compare(few, few, spec(floor=100)).verdict is MetricVerdict.INCONCLUSIVE
    assert compare(shifted(few, 1000), few, spec()).verdict is MetricVerdict.INCONCLUSIVE
    nine_nans = [math.nan] * 5 + few
    assert compare(nine_nans, CONTROL, spec(floor=100)).verdict is MetricVerdict.INCONCLUSIVE


def test_an_empty_canary_is_no_data_when_the_other_side_has_data() -> None:
    assert compare([], CONTROL, spec()).verdict is MetricVerdict.NO_DATA
    assert compare([math.nan], CONTROL, spec()).verdict is MetricVerdict.NO_DATA
    assert compare([], [], spec(), canary_baseline=CONTROL).verdict is MetricVerdict.NO_DATA
    assert compare([], [], spec()).verdict is MetricVerdict.INCONCLUSIVE
    assert compare(CONTROL, [], spec()).verdict is MetricVerdict.INCONCLUSIVE


def test_reasons_quote_the_numbers() -> None:
    r = compare(shifted(CONTROL, 20), CONTROL, spec(floor=4))
    assert r.reason == (
        "m: canary median 34.5 (n=30) vs control median 14.5 (n=30): shift +20 "
        f"(98% CI +14 to +26, Mann-Whitney p={r.p_value:.3g}), tolerated +4; "
        "the interval lies wholly beyond the tolerance"
    )


# --- the baseline adjustment ----------------------------------------------------------------


def test_baseline_adjustment_removes_a_standing_difference_between_devices() -> None:
    rng = random.Random(3)

    def series(level: float) -> list[float]:
        return [level + rng.gauss(0.0, 2.0) for _ in range(30)]

    latency = MetricSpec("latency_ms", floor=5.0)  # tolerated: 25 % of ~40 = 10 ms
    # The canary device has always been 15 ms slower than its control; the release changed
    # nothing. Compared plainly it fails; adjusted for the difference before, it passes.
    before_c, before_k = series(55.0), series(40.0)
    during_c, during_k = series(55.0), series(40.0)
    plain = compare(during_c, during_k, latency)
    adjusted = compare(
        during_c, during_k, latency, canary_baseline=before_c, control_baseline=before_k
    )
    assert plain.verdict is MetricVerdict.FAIL and not plain.baseline_adjusted
    assert adjusted.verdict is MetricVerdict.PASS and adjusted.baseline_adjusted
    assert adjusted.effect is not None and abs(adjusted.effect) < 2.0
    # A real regression of 20 ms on top of the standing 15 ms is still caught.
    regressed = compare(
        series(75.0), series(40.0), latency, canary_baseline=before_c, control_baseline=before_k
    )
    assert regressed.verdict is MetricVerdict.FAIL
    # A baseline with too few samples is not used: the comparison stays plain.
    short = compare(
        during_c, during_k, latency, canary_baseline=before_c[:5], control_baseline=before_k
    )
    assert not short.baseline_adjusted


# --- judge -----------------------------------------------------------------------------------


def healthy(offset: float = 0.0) -> dict[str, list[float]]:
    rng = random.Random(11 + int(offset))
    return {
        "error_rate": [0.005 + rng.uniform(-0.002, 0.002) for _ in range(30)],
        "latency_ms": [40.0 + offset + rng.gauss(0.0, 3.0) for _ in range(30)],
        "cpu_percent": [30.0 + rng.gauss(0.0, 2.0) for _ in range(30)],
        "mem_used_mb": [2000.0 + rng.gauss(0.0, 5.0) for _ in range(30)],
        "temperature_c": [55.0 + rng.gauss(0.0, 0.5) for _ in range(30)],
        "restarts": [0.0] * 30,
    }


def test_judge_passes_a_canary_like_its_control() -> None:
    j = judge(healthy(), healthy(0.5))
    assert j.verdict == "PASS" and j.passed
    assert [r.name for r in j.metrics] == [s.name for s in DEFAULT_METRICS]
    assert j.reasons[0].startswith("every critical metric within tolerance")


def test_judge_fails_on_a_critical_fail_and_quotes_it() -> None:
    canary = healthy()
    canary["latency_ms"] = shifted(canary["latency_ms"], 30.0)
    j = judge(canary, healthy())
    assert j.verdict == "FAIL"
    assert len(j.reasons) == 1 and j.reasons[0].startswith("FAIL latency_ms: canary median")


def test_a_non_critical_metric_never_decides() -> None:
    canary = healthy()
    canary["cpu_percent"] = shifted(canary["cpu_percent"], 40.0)
    j = judge(canary, healthy())
    cpu = j.metric("cpu_percent")
    assert cpu is not None and cpu.verdict is MetricVerdict.FAIL and not cpu.critical
    assert j.verdict == "PASS"
    assert any(r.startswith("(not deciding) FAIL cpu_percent") for r in j.reasons)


def test_judge_is_inconclusive_when_a_critical_metric_is() -> None:
    canary = healthy()
    canary["latency_ms"] = canary["latency_ms"][:5]
    j = judge(canary, healthy())
    assert j.verdict == "INCONCLUSIVE"
    assert j.reasons[0].startswith("INCONCLUSIVE latency_ms") and "too few samples" in j.reasons[0]


def test_a_silent_canary_fails_with_no_data_on_every_metric() -> None:
    for canary in ({}, {name: [] for name in healthy()}, {"latency_ms": [math.nan] * 30}):
        j = judge(canary, healthy())
        assert j.verdict == "FAIL"
        assert {r.verdict for r in j.metrics} == {MetricVerdict.NO_DATA}
    # Silent and no control either: still no pass.
    assert judge({}, {}).verdict == "FAIL"


def test_a_metric_the_canary_stopped_reporting_fails_it() -> None:
    canary = healthy()
    del canary["error_rate"]
    j = judge(canary, healthy())
    assert j.verdict == "FAIL"
    r = j.metric("error_rate")
    assert r is not None and r.verdict is MetricVerdict.NO_DATA
    assert "never a pass" in j.reasons[0]


def test_app_metrics_use_the_same_specs() -> None:
    infer = MetricSpec("inference_latency_seconds", tolerance=0.2, floor=0.0)
    control = {"inference_latency_seconds": [0.1 + i / 1000 for i in range(30)]}
    canary = {"inference_latency_seconds": [0.2 + i / 1000 for i in range(30)]}
    assert judge(canary, control, [infer]).verdict == "FAIL"
    assert judge(control, control, [infer]).verdict == "PASS"


def test_judge_against_the_device_own_baseline() -> None:
    j = judge_against_baseline(healthy(), healthy(0.5))
    assert j.verdict == "PASS"
    assert "vs baseline median" in j.metrics[0].reason
    assert judge_against_baseline({}, healthy()).verdict == "FAIL"


def test_judge_with_baselines_adjusts_every_metric() -> None:
    j = judge(healthy(12.0), healthy(), canary_baseline=healthy(12.0), control_baseline=healthy())
    assert j.verdict == "PASS"
    assert all(r.baseline_adjusted for r in j.metrics)


def test_bad_specs_and_confidence_are_refused() -> None:
    with pytest.raises(PolicyError, match="tolerance"):
        MetricSpec("x", tolerance=-0.1)
    with pytest.raises(PolicyError, match="floor"):
        MetricSpec("x", floor=math.nan)
    with pytest.raises(PolicyError, match="min_samples"):
        MetricSpec("x", min_samples=1)
    with pytest.raises(PolicyError, match="direction"):
        MetricSpec("x", direction="sideways")  # type: ignore[arg-type]
    with pytest.raises(PolicyError, match="name"):
        MetricSpec("")
    with pytest.raises(PolicyError, match="twice"):
        judge({}, {}, [MetricSpec("x"), MetricSpec("x")])
    with pytest.raises(PolicyError, match="at least one metric"):
        judge({}, {}, [])
    with pytest.raises(PolicyError, match="confidence"):
        compare(CONTROL, CONTROL, spec(), confidence=1.0)


# --- properties ------------------------------------------------------------------------------

PROPS = settings(max_examples=150, deadline=None)
values = st.lists(st.integers(min_value=0, max_value=60).map(float), min_size=0, max_size=24)


@PROPS
@given(
    values,
    values,
    st.integers(min_value=0, max_value=40).map(float),
    st.integers(min_value=0, max_value=10).map(float),
    st.sampled_from(list(Direction)),
)
def test_moving_the_canary_the_harmful_way_never_makes_a_verdict_milder(
    canary: list[float], control: list[float], c: float, floor: float, direction: Direction
) -> None:
    s = MetricSpec("m", direction, tolerance=0.1, floor=floor, min_samples=5)
    step = c if direction is Direction.INCREASE else -c
    before = compare(canary, control, s)
    after = compare(shifted(canary, step), control, s)
    assert after.verdict.severity >= before.verdict.severity
    if before.effect is not None and after.effect is not None:
        assert after.effect == before.effect + step
    if before.ci_low is not None and after.ci_low is not None:
        assert (after.ci_low, after.ci_high) == (before.ci_low + step, before.ci_high + step)


@PROPS
@given(values, values, st.randoms(use_true_random=False))
def test_the_verdict_does_not_depend_on_the_order_of_the_samples(
    canary: list[float], control: list[float], rnd: random.Random
) -> None:
    s = MetricSpec("m", tolerance=0.1, floor=2.0, min_samples=5)
    a = compare(canary, control, s)
    c2, k2 = list(canary), list(control)
    rnd.shuffle(c2)
    rnd.shuffle(k2)
    b = compare(c2, k2, s)
    assert (a.verdict, a.effect, a.ci_low, a.ci_high) == (b.verdict, b.effect, b.ci_low, b.ci_high)
    assert (a.p_value is None) == (b.p_value is None)
    if a.p_value is not None and b.p_value is not None:
        assert a.p_value == pytest.approx(b.p_value)


def test_judge_relative_takes_out_the_standing_difference_between_boxes() -> None:
    """The engine's comparison: a canary always 40 % slower than its controls, unchanged by the
    release, passes once each device is read relative to its own before-value; the same data
    compared as they are fail."""
    from fleetgate.core.analysis import judge_relative

    wobble = [1.0 + 0.01 * ((i * 7) % 5 - 2) for i in range(30)]
    canary = {"latency_ms": [42.0 * w for w in wobble], "error_rate": [0.004] * 30}
    ctl = {"latency_ms": [30.0 * w for w in reversed(wobble)], "error_rate": [0.004] * 30}
    specs = [MetricSpec("latency_ms", floor=5.0), MetricSpec("error_rate", floor=0.01)]
    relative = judge_relative(
        canary, {"latency_ms": 42.0, "error_rate": 0.004}, [ctl], [{"latency_ms": 30.0}], specs
    )
    assert relative.verdict == "PASS"
    assert judge(canary, ctl, specs).verdict == "FAIL"
    # A real +40 % on the canary is still caught relative to its own before-value.
    worse = {**canary, "latency_ms": [v * 1.4 for v in canary["latency_ms"]]}
    got = judge_relative(worse, {"latency_ms": 42.0}, [ctl], [{"latency_ms": 30.0}], specs)
    assert got.verdict == "FAIL"
    # error_rate is additive: a control without a before-value for it changes nothing there.
    assert got.metric("error_rate").verdict.value == "PASS"
