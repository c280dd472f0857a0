"""Canary analysis: a canary's metric series against a concurrent control's, per metric.

Pure: no I/O, no clock, no randomness. numpy and scipy (the ``controller`` extra) are imported
inside the functions that need them, so importing this module loads neither, and the agent,
which never judges, never needs them.

The method (Kayenta's test, our margin; docs/analysis.md, docs/adr/0005-canary-analysis.md):

- Per metric, the canary's samples ``x_1..x_m`` (taken every interval of the soak) are compared
  with the control's ``y_1..y_n`` (matched devices still on the old release, sampled at the same
  moments) by a two-sided Mann-Whitney U test (``scipy.stats.mannwhitneyu``; its p-value is
  reported as evidence, it does not decide).
- The size of the change is the Hodges-Lehmann shift estimate ``median{x_i - y_j}`` over all
  ``m*n`` pairwise differences, with its distribution-free confidence interval
  ``[D_(k), D_(mn+1-k)]`` from the ordered differences ``D_(1) <= ... <= D_(mn)`` (Bauer 1972,
  JASA 67:687; Hollander, Wolfe & Chicken, *Nonparametric Statistical Methods*, ch. 4).
  ``k`` is the normal approximation of the critical value with a continuity correction,
  ``k = floor(mn/2 + 1/2 - z * sigma)``, ``z = Phi^-1(1 - (1 - confidence)/2)``,
  ``sigma^2 = mn/12 * ((m+n+1) - sum(t^3 - t) / ((m+n)(m+n-1)))`` where ``t`` runs over the
  sizes of the groups of tied values *within* each sample. Those ties are the same at every
  hypothesised shift, so the interval moves exactly with the data (shift the canary by c and
  both ends move by c); the ties *between* the samples change with the shift and are left out,
  which only makes the interval wider. With no ties the interval is exactly the set of shifts
  that the asymptotic, continuity-corrected two-sided U test does not reject at
  ``1 - confidence``.
- The tolerated change is ``max(tolerance * |control median|, floor)``: Kayenta's number
  (25 %), with an absolute floor so that an error rate near 0 or a latency of a few
  milliseconds is not held to a change of nothing. (Kayenta's classifier applies its 25 % to
  the shift estimate itself, ``|HL| * tolerance``, and calls a metric High when the interval
  clears that; we apply it to the control's level, an equivalence margin an operator can read
  as "up to 25 % worse than the control".)
- Three answers, by where the interval lies (for ``Direction.INCREASE``, where up is harmful):
  ``ci_high <= tolerated`` -> PASS (wholly within); ``ci_low > tolerated`` -> FAIL (wholly
  beyond); anything else -> INCONCLUSIVE. ``Direction.DECREASE`` mirrors it around
  ``-tolerated``. An interval touching the tolerance exactly still passes, as a limit does in
  ``core.health``.
- Baseline adjustment (difference in differences): when the pre-deployment samples of both the
  canary and the control are given, the shift measured before the deployment (the standing
  difference between the two devices) is subtracted from the shift during the soak, and the
  two intervals are combined by MOVER (Zou & Donner 2008, Stat Med 27:1693):
  ``L = d - sqrt((d1 - l1)^2 + (u0 - d0)^2)``, ``U = d + sqrt((u1 - d1)^2 + (d0 - l0)^2)`` for
  ``d = d1 - d0``. This is what makes a canary comparable with a *different* device.

Contract and invariants:

- NaN and infinite values are dropped before anything else; an empty series is "no data".
- ``compare``: an empty canary series while the control or the canary's own baseline has
  data is NO_DATA ("missing data is never a pass"); fewer than ``min_samples`` on either side (after
  dropping) is INCONCLUSIVE, never PASS; identical or constant series need no division (the
  interval is then a single point).
- Verdicts are invariant to the order of the samples, and shifting the canary's values in the
  harmful direction never makes a verdict milder (PASS < INCONCLUSIVE < FAIL).
- ``judge``: any critical FAIL or critical NO_DATA -> FAIL; else any critical INCONCLUSIVE ->
  INCONCLUSIVE; else PASS. Non-critical metrics are reported and never decide. A canary that
  reported no sample of any judged metric is NO_DATA on every metric, whatever the control did.
- Every reason quotes the numbers it was decided on.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from enum import Enum
from statistics import NormalDist
from typing import Literal

from fleetgate.errors import PolicyError

# Kayenta's NetflixACAJudge builds its MannWhitneyClassifier with tolerance = 0.25 and
# confLevel = 0.98 (spinnaker/kayenta, kayenta-judge/.../NetflixACAJudge.scala).
KAYENTA_CONFIDENCE = 0.98
KAYENTA_TOLERANCE = 0.25
DEFAULT_MIN_SAMPLES = 10


class Direction(str, Enum):
    """The harmful direction of a metric."""

    INCREASE = "increase"
    DECREASE = "decrease"


class MetricVerdict(str, Enum):
    PASS = "PASS"  # noqa: S105  (a verdict, not a password)
    FAIL = "FAIL"
    INCONCLUSIVE = "INCONCLUSIVE"
    NO_DATA = "NO_DATA"

    @property
    def severity(self) -> int:
        """PASS 0 < INCONCLUSIVE 1 < FAIL = NO_DATA 2 (both count against the canary)."""
        return _SEVERITY[self.value]


_SEVERITY = {"PASS": 0, "INCONCLUSIVE": 1, "FAIL": 2, "NO_DATA": 2}


@dataclass(frozen=True, slots=True)
class MetricSpec:
    """How one metric is judged. Refuses (``PolicyError``) a value that makes no sense.

    ``tolerance`` is the relative change tolerated against the control's median, ``floor`` an
    absolute change always tolerated (in the metric's own unit): the tolerated change is
    ``max(tolerance * |control median|, floor)``. ``min_samples`` is per side, after NaN/inf
    are dropped.
    """

    name: str
    direction: Direction = Direction.INCREASE
    tolerance: float = KAYENTA_TOLERANCE
    floor: float = 0.0
    critical: bool = True
    min_samples: int = DEFAULT_MIN_SAMPLES

    def __post_init__(self) -> None:
        problems = []
        if not self.name or self.name != self.name.strip():
            problems.append(f"metric name {self.name!r} must be non-empty, without blanks")
        try:
            object.__setattr__(self, "direction", Direction(self.direction))
        except ValueError:
            problems.append(
                f"{self.name}.direction {self.direction!r} must be 'increase' or 'decrease'"
            )
        for field_name in ("tolerance", "floor"):
            value = getattr(self, field_name)
            if not (isinstance(value, int | float) and math.isfinite(value) and value >= 0):
                problems.append(f"{self.name}.{field_name} {value!r} must be a finite number >= 0")
        if isinstance(self.min_samples, bool) or not isinstance(self.min_samples, int):
            problems.append(f"{self.name}.min_samples {self.min_samples!r} must be an integer")
        elif self.min_samples < 2:
            problems.append(f"{self.name}.min_samples {self.min_samples} must be at least 2")
        if problems:
            raise PolicyError("; ".join(problems))

    def tolerated(self, control_median: float) -> float:
        """The change tolerated in the harmful direction, a number >= 0."""
        return max(self.tolerance * abs(control_median), self.floor)


# Defaults. Tolerance 25 % and confidence 0.98 are Kayenta's (above); the floors are ours:
DEFAULT_METRICS: tuple[MetricSpec, ...] = (
    # 1 point, the rollout policy's error_rate_increase_max: 25 % of a 0.5 % error rate would
    # be 0.125 points, a change one unlucky 30 s window makes.
    MetricSpec("error_rate", Direction.INCREASE, KAYENTA_TOLERANCE, floor=0.01),
    # 5 ms: under it a change is scheduling noise, not a regression (the policy's own latency
    # floor is 20 ms for a single-sample ratio; a median over a soak is steadier).
    MetricSpec("latency_ms", Direction.INCREASE, KAYENTA_TOLERANCE, floor=5.0),
    # Resources are reported, not deciding: a release may legitimately use more CPU or memory,
    # and the hard bounds (cpu_percent_max, temperature_c_max) still act on their own.
    MetricSpec("cpu_percent", Direction.INCREASE, KAYENTA_TOLERANCE, floor=5.0, critical=False),
    MetricSpec("mem_used_mb", Direction.INCREASE, KAYENTA_TOLERANCE, floor=50.0, critical=False),
    # A relative change of a Celsius reading means nothing: an absolute 5 C only.
    MetricSpec("temperature_c", Direction.INCREASE, 0.0, floor=5.0, critical=False),
    # Restarts counted since the window began, on both sides: one more restart is tolerated,
    # two more is the policy's crash_restarts_max of 2 reached.
    MetricSpec("restarts", Direction.INCREASE, 0.0, floor=1.0),
)


@dataclass(frozen=True, slots=True)
class MetricResult:
    """One metric's comparison. ``effect``, ``ci_low`` and ``ci_high`` are canary - control in
    the metric's unit (baseline-adjusted when baselines were given); ``tolerated`` is the
    change tolerated in the harmful direction; ``p_value`` is the two-sided Mann-Whitney U
    p-value of the soak series, for the record (the interval decides)."""

    name: str
    verdict: MetricVerdict
    canary_median: float | None
    control_median: float | None
    effect: float | None
    ci_low: float | None
    ci_high: float | None
    n_canary: int
    n_control: int
    tolerated: float | None
    critical: bool
    reason: str
    p_value: float | None = None
    baseline_adjusted: bool = False


@dataclass(frozen=True, slots=True)
class Judgement:
    """The canary's verdict over all judged metrics; ``reasons`` say what decided it."""

    verdict: Literal["PASS", "FAIL", "INCONCLUSIVE"]
    metrics: tuple[MetricResult, ...]
    reasons: tuple[str, ...]

    @property
    def passed(self) -> bool:
        return self.verdict == "PASS"

    def metric(self, name: str) -> MetricResult | None:
        return next((r for r in self.metrics if r.name == name), None)


@dataclass(frozen=True, slots=True)
class Shift:
    """A Hodges-Lehmann shift estimate with its interval (``None`` when the samples are too
    small for an interval at that confidence)."""

    estimate: float
    low: float | None
    high: float | None


def finite(values: Iterable[float | None]) -> list[float]:
    """The values that are numbers (NaN, inf and None dropped), as floats, in order."""
    return [float(v) for v in values if v is not None and math.isfinite(v)]


def _median(values: Sequence[float]) -> float:
    s = sorted(values)
    mid = len(s) // 2
    return s[mid] if len(s) % 2 else (s[mid - 1] + s[mid]) / 2


def _within_sample_ties(values: Iterable[float]) -> float:
    return float(sum(t**3 - t for t in Counter(values).values() if t > 1))


def _z(confidence: float) -> float:
    return NormalDist().inv_cdf(1.0 - (1.0 - confidence) / 2.0)


def _check_confidence(confidence: float) -> None:
    if not (isinstance(confidence, int | float) and 0.5 <= confidence < 1.0):
        raise PolicyError(f"analysis confidence {confidence!r} must be in [0.5, 1)")


def hodges_lehmann(
    canary: Sequence[float], control: Sequence[float], confidence: float = KAYENTA_CONFIDENCE
) -> Shift:
    """Hodges-Lehmann estimate of the shift canary - control and its distribution-free
    interval (formulas in the module docstring). Both samples must be non-empty and finite."""
    import numpy as np

    _check_confidence(confidence)
    m, n = len(canary), len(control)
    if m == 0 or n == 0:
        raise ValueError("hodges_lehmann needs at least one value on each side")
    diffs = np.subtract.outer(np.asarray(canary, dtype=float), np.asarray(control, dtype=float))
    d = np.sort(diffs, axis=None)
    big_n = m * n
    mid = big_n // 2
    estimate = float(d[mid]) if big_n % 2 else float((d[mid - 1] + d[mid]) / 2)
    ties = _within_sample_ties(canary) + _within_sample_ties(control)
    total = m + n
    # total >= 2 here, so the denominator is never 0; the bracket is > 0 because the groups
    # of ties within each sample are never as large as one group of all m + n values.
    variance = m * n / 12.0 * ((total + 1) - ties / (total * (total - 1)))
    sigma = math.sqrt(max(variance, 0.0))
    k = math.floor(big_n / 2 + 0.5 - _z(confidence) * sigma)
    if k < 1:
        return Shift(estimate, None, None)
    return Shift(estimate, float(d[k - 1]), float(d[big_n - k]))


def _mover(during: Shift, before: Shift) -> Shift:
    """The difference ``during - before`` of two independent estimates, MOVER interval."""
    est = during.estimate - before.estimate
    if None in (during.low, during.high, before.low, before.high):
        return Shift(est, None, None)
    assert during.low is not None and during.high is not None  # for mypy
    assert before.low is not None and before.high is not None
    low = est - math.hypot(during.estimate - during.low, before.high - before.estimate)
    high = est + math.hypot(during.high - during.estimate, before.estimate - before.low)
    return Shift(est, low, high)


def _mann_whitney_p(canary: Sequence[float], control: Sequence[float]) -> float:
    import numpy as np
    from scipy.stats import mannwhitneyu  # type: ignore[import-untyped]

    if len(set(canary) | set(control)) == 1:
        return 1.0  # every value tied: no evidence of any difference, and nothing to divide
    x, y = np.asarray(canary, dtype=float), np.asarray(control, dtype=float)
    p = float(mannwhitneyu(x, y, alternative="two-sided").pvalue)
    return p if math.isfinite(p) else 1.0


def _n(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.4g}"


def _signed(x: float | None) -> str:
    return "n/a" if x is None else f"{x:+.4g}"


def _classify(shift: Shift, tolerated: float, direction: Direction) -> MetricVerdict:
    low, high = shift.low, shift.high
    if low is None or high is None:
        return MetricVerdict.INCONCLUSIVE
    if direction is Direction.INCREASE:
        if high <= tolerated:
            return MetricVerdict.PASS
        return MetricVerdict.FAIL if low > tolerated else MetricVerdict.INCONCLUSIVE
    if low >= -tolerated:
        return MetricVerdict.PASS
    return MetricVerdict.FAIL if high < -tolerated else MetricVerdict.INCONCLUSIVE


def compare(
    canary: Sequence[float],
    control: Sequence[float],
    spec: MetricSpec,
    confidence: float = KAYENTA_CONFIDENCE,
    *,
    canary_baseline: Sequence[float] | None = None,
    control_baseline: Sequence[float] | None = None,
    against: str = "control",
) -> MetricResult:
    """Judge one metric: the canary's series against the control's (rules in the module
    docstring). ``canary_baseline``/``control_baseline``: the two devices' pre-deployment
    samples; with both of at least ``min_samples`` values, the shift is baseline-adjusted
    (difference in differences, MOVER interval), otherwise it is the plain soak comparison.
    ``against`` names the other side in the reason ("control", "baseline")."""
    _check_confidence(confidence)
    x, y = finite(canary), finite(control)
    xb = finite(canary_baseline or ())
    yb = finite(control_baseline or ())
    m, n = len(x), len(y)
    x_med = _median(x) if x else None
    y_med = _median(y) if y else None
    head = f"{spec.name}: canary median {_n(x_med)} (n={m}) vs {against} median {_n(y_med)} (n={n})"

    def result(
        verdict: MetricVerdict,
        reason: str,
        shift: Shift | None = None,
        tolerated: float | None = None,
        p_value: float | None = None,
        adjusted: bool = False,
    ) -> MetricResult:
        return MetricResult(
            name=spec.name,
            verdict=verdict,
            canary_median=x_med,
            control_median=y_med,
            effect=None if shift is None else shift.estimate,
            ci_low=None if shift is None else shift.low,
            ci_high=None if shift is None else shift.high,
            n_canary=m,
            n_control=n,
            tolerated=tolerated,
            critical=spec.critical,
            reason=f"{head}: {reason}",
            p_value=p_value,
            baseline_adjusted=adjusted,
        )

    if not x:
        if y or xb:
            seen = f"the {against} reported {n}" if y else f"its baseline had {len(xb)}"
            return result(MetricVerdict.NO_DATA, f"no data from the canary ({seen}): never a pass")
        return result(MetricVerdict.INCONCLUSIVE, f"no data from the canary nor the {against}")
    if y_med is None:
        return result(MetricVerdict.INCONCLUSIVE, f"no {against} data to compare with")

    tolerated = spec.tolerated(y_med)
    shift = hodges_lehmann(x, y, confidence)
    p_value = _mann_whitney_p(x, y)
    adjusted = len(xb) >= spec.min_samples and len(yb) >= spec.min_samples
    if adjusted:
        shift = _mover(shift, hodges_lehmann(xb, yb, confidence))
    harm = "+" if spec.direction is Direction.INCREASE else "-"
    what = "shift adjusted for the pre-deployment difference" if adjusted else "shift"
    described = (
        f"{what} {_signed(shift.estimate)} ({confidence:.0%} CI {_signed(shift.low)} to "
        f"{_signed(shift.high)}, Mann-Whitney p={p_value:.3g}), tolerated {harm}{tolerated:.4g}"
    )
    if m < spec.min_samples or n < spec.min_samples:
        verdict = MetricVerdict.INCONCLUSIVE
        where = f"too few samples (at least {spec.min_samples} per side)"
    else:
        verdict = _classify(shift, tolerated, spec.direction)
        where = {
            MetricVerdict.PASS: "the interval lies within the tolerance",
            MetricVerdict.FAIL: "the interval lies wholly beyond the tolerance",
            MetricVerdict.INCONCLUSIVE: (
                "no interval at this confidence"
                if shift.low is None
                else "the interval straddles the tolerance"
            ),
        }[verdict]
    return result(verdict, f"{described}; {where}", shift, tolerated, p_value, adjusted)


def _decide(results: Sequence[MetricResult], silent: bool) -> Judgement:
    critical = [r for r in results if r.critical]
    bad = [r for r in critical if r.verdict in (MetricVerdict.FAIL, MetricVerdict.NO_DATA)]
    unsure = [r for r in critical if r.verdict is MetricVerdict.INCONCLUSIVE]
    side = [
        f"(not deciding) {r.verdict.value} {r.reason}"
        for r in results
        if not r.critical and r.verdict is not MetricVerdict.PASS
    ]
    if silent:
        return Judgement(
            "FAIL",
            tuple(results),
            ("the canary reported no sample of any judged metric: silence is never a pass",),
        )
    if bad:
        return Judgement(
            "FAIL", tuple(results), tuple(f"{r.verdict.value} {r.reason}" for r in bad)
        )
    if unsure:
        reasons = tuple(f"INCONCLUSIVE {r.reason}" for r in unsure)
        return Judgement("INCONCLUSIVE", tuple(results), (*reasons, *side))
    names = ", ".join(r.name for r in critical)
    summary = (
        f"every critical metric within tolerance ({names})"
        if critical
        else "no metric is critical: none decides against the canary"
    )
    return Judgement("PASS", tuple(results), (summary, *side))


def _check_specs(specs: Sequence[MetricSpec]) -> None:
    if not specs:
        raise PolicyError("analysis needs at least one metric to judge")
    names = [s.name for s in specs]
    dupes = sorted({x for x in names if names.count(x) > 1})
    if dupes:
        raise PolicyError(f"analysis metrics listed twice: {', '.join(dupes)}")


def judge(
    canary: Mapping[str, Sequence[float]],
    control: Mapping[str, Sequence[float]],
    specs: Sequence[MetricSpec] = DEFAULT_METRICS,
    confidence: float = KAYENTA_CONFIDENCE,
    *,
    canary_baseline: Mapping[str, Sequence[float]] | None = None,
    control_baseline: Mapping[str, Sequence[float]] | None = None,
) -> Judgement:
    """One canary (or one pooled canary group) against its control, every metric of
    ``specs`` (series by metric name; a name missing from a mapping is an empty series).

    Several control devices are passed as one pooled series per metric (their samples
    concatenated). With ``canary_baseline`` and ``control_baseline`` (the same devices'
    samples from before the deployment, pooled the same way), each metric is
    baseline-adjusted, which removes the standing difference between the canary and its
    controls: recommended whenever those samples exist (docs/analysis.md shows why).
    """
    _check_specs(specs)
    _check_confidence(confidence)
    cb = canary_baseline or {}
    ob = control_baseline or {}
    results = [
        compare(
            canary.get(s.name, ()),
            control.get(s.name, ()),
            s,
            confidence,
            canary_baseline=cb.get(s.name),
            control_baseline=ob.get(s.name),
        )
        for s in specs
    ]
    return _silence(results, specs)


def judge_against_baseline(
    canary: Mapping[str, Sequence[float]],
    baseline: Mapping[str, Sequence[float]],
    specs: Sequence[MetricSpec] = DEFAULT_METRICS,
    confidence: float = KAYENTA_CONFIDENCE,
) -> Judgement:
    """The canary's soak series against its own pre-deployment samples, for when no control
    device exists. Same rules as ``judge``, but nothing separates the release from a change
    that hit the whole fleet during the soak (a load surge, a hot afternoon): prefer ``judge``
    with a control whenever one can be found."""
    _check_specs(specs)
    _check_confidence(confidence)
    results = [
        compare(canary.get(s.name, ()), baseline.get(s.name, ()), s, confidence, against="baseline")
        for s in specs
    ]
    return _silence(results, specs)


def _silence(results: list[MetricResult], specs: Sequence[MetricSpec]) -> Judgement:
    silent = all(r.n_canary == 0 for r in results)
    if silent:
        results = [
            replace(
                r,
                verdict=MetricVerdict.NO_DATA,
                reason=(
                    f"{r.name}: no data from the canary ({r.n_control} from the other side); "
                    "it reported no metric at all: never a pass"
                ),
            )
            if r.verdict is not MetricVerdict.NO_DATA
            else r
            for r in results
        ]
    return _decide(results, silent)


# -- the engine's comparison: each device relative to its own "before" --------------------------

# Compared as they are: error rates of different devices differ by tenths of a point (far inside
# the 1 pp floor), restart counts are counts, and a ratio of Celsius readings means nothing.
ADDITIVE_METRICS = frozenset({"error_rate", "restarts", "temperature_c"})


def judge_relative(
    canary: Mapping[str, Sequence[float]],
    canary_before: Mapping[str, float],
    controls: Sequence[Mapping[str, Sequence[float]]],
    controls_before: Sequence[Mapping[str, float]],
    specs: Sequence[MetricSpec] = DEFAULT_METRICS,
    confidence: float = KAYENTA_CONFIDENCE,
) -> Judgement:
    """A canary against a pool of control devices, each device's series divided by its own
    value before the deployment (``*_before``: one number per metric, e.g. the median of a
    baseline window), then the pool concatenated and ``judge`` applied.

    Why: two boxes are never equal (one answers in 22 ms, its neighbour in 38 ms), and pooling
    controls of different levels widens the comparison; as ratios (1.0 = unchanged) they are
    alike, and the question becomes whether the canary *changed* more than its controls did. A
    metric is compared as a ratio only where every device has a positive before-value (else all
    as they are); ``ADDITIVE_METRICS`` never. A ratio's absolute floor (5 ms …) becomes a ratio
    too, against the pool's median before-value.
    """
    if len(controls) != len(controls_before):
        raise ValueError("one before-value mapping per control device")
    scaled_specs: list[MetricSpec] = []
    canary_out: dict[str, list[float]] = {}
    pool_out: dict[str, list[float]] = {}
    for spec in specs:
        n = spec.name
        befores = [canary_before.get(n), *(b.get(n) for b in controls_before)]
        relative = n not in ADDITIVE_METRICS and all(
            b is not None and math.isfinite(b) and b > 0 for b in befores
        )
        if relative:
            cb = float(canary_before[n])
            canary_out[n] = [v / cb for v in canary.get(n, ())]
            pool_out[n] = [
                v / float(b[n])
                for s, b in zip(controls, controls_before, strict=True)
                for v in s.get(n, ())
            ]
            ref = sorted(float(b[n]) for b in controls_before)
            scaled_specs.append(replace(spec, floor=spec.floor / ref[len(ref) // 2]))
        else:
            canary_out[n] = list(canary.get(n, ()))
            pool_out[n] = [v for s in controls for v in s.get(n, ())]
            scaled_specs.append(spec)
    return judge(canary_out, pool_out, scaled_specs, confidence)
