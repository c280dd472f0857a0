"""Property tests for the gates: the matrix is monotone and partitions [0, 1], the rollback
scope covers the failures and never touches an undeployed device, PASS means all healthy."""

from __future__ import annotations

from fractions import Fraction

from hypothesis import event, given, settings
from hypothesis import strategies as st

from fleetgate.core.gates import (
    DeviceHealth,
    ScopeKind,
    UnreachableAction,
    WaveAction,
    canary_verdict,
    evaluate_health,
    rollback_scope,
    unreachable_decision,
    wave_decision,
)
from fleetgate.core.model import HealthSample
from fleetgate.core.policy import HealthPolicy, Thresholds

PROPS = settings(max_examples=200, deadline=None)
T = Thresholds()

percent = st.integers(min_value=0, max_value=20).map(lambda p: p / 100)


@st.composite
def thresholds(draw: st.DrawFn) -> Thresholds:
    a, b = sorted((draw(percent), draw(percent)))
    return Thresholds(wave_quarantine_below=a, wave_halt_above=b, unreachable_halt_above=b)


@st.composite
def counts(draw: st.DrawFn) -> tuple[int, int]:
    targeted = draw(st.integers(min_value=0, max_value=2000))
    return draw(st.integers(min_value=0, max_value=targeted)), targeted


@PROPS
@given(counts(), thresholds())
def test_more_failures_never_give_a_milder_action(ft: tuple[int, int], t: Thresholds) -> None:
    failed, targeted = ft
    if failed < targeted:
        now = wave_decision(failed, targeted, t).action
        worse = wave_decision(failed + 1, targeted, t).action
        assert worse.severity >= now.severity
    # A bigger wave with the same failures is never treated more harshly.
    assert (
        wave_decision(failed, targeted + 1, t).action.severity
        <= wave_decision(failed, targeted, t).action.severity
        or targeted == 0
    )


@PROPS
@given(counts())
def test_matrix_matches_the_spec_in_integer_arithmetic(ft: tuple[int, int]) -> None:
    failed, targeted = ft
    action = wave_decision(failed, targeted, T).action
    if failed == 0:
        expected = WaveAction.CONTINUE
    elif failed * 100 < 5 * targeted:
        expected = WaveAction.QUARANTINE_AND_CONTINUE
    elif failed * 100 <= 20 * targeted:
        expected = WaveAction.PAUSE_FOR_HUMAN
    else:
        expected = WaveAction.ROLLBACK_WAVE_AND_HALT
    assert action is expected


@PROPS
@given(counts(), thresholds())
def test_decisions_partition_the_unit_interval(ft: tuple[int, int], t: Thresholds) -> None:
    failed, targeted = ft
    d = wave_decision(failed, targeted, t)
    q, h = Fraction(str(t.wave_quarantine_below)), Fraction(str(t.wave_halt_above))
    assert 0 <= d.rate <= 1
    regions = {
        WaveAction.CONTINUE: failed == 0,
        WaveAction.QUARANTINE_AND_CONTINUE: failed > 0 and d.rate < q,
        WaveAction.PAUSE_FOR_HUMAN: failed > 0 and q <= d.rate <= h,
        WaveAction.ROLLBACK_WAVE_AND_HALT: failed > 0 and d.rate > h,
    }
    assert [a for a, inside in regions.items() if inside] == [d.action]


@PROPS
@given(counts())
def test_unreachable_halts_exactly_above_twenty_percent(ft: tuple[int, int]) -> None:
    unreachable, targeted = ft
    halt = unreachable * 100 > 20 * targeted
    action = unreachable_decision(unreachable, targeted, T).action
    assert action is (UnreachableAction.HALT if halt else UnreachableAction.CONTINUE_SKIPPING)


@st.composite
def waves(draw: st.DrawFn) -> tuple[dict[int, list[str]], dict[int, list[str]], int]:
    current = draw(st.integers(min_value=0, max_value=4))
    deployed: dict[int, list[str]] = {}
    failed: dict[int, list[str]] = {}
    for w in range(current + 1):
        size = draw(st.integers(min_value=0 if w else 1, max_value=12))
        ids = [f"w{w}-{i}" for i in range(size)]
        deployed[w] = ids
        failed[w] = draw(st.lists(st.sampled_from(ids), unique=True)) if ids else []
    # Planned but undeployed devices of the next wave may be listed empty.
    deployed[current + 1] = []
    return failed, deployed, current


@PROPS
@given(waves(), thresholds())
def test_rollback_scope_covers_failures_and_only_deployed_devices(
    case: tuple[dict[int, list[str]], dict[int, list[str]], int], t: Thresholds
) -> None:
    failed, deployed, current = case
    s = rollback_scope(failed, deployed, current, t)
    bad = {d for ids in failed.values() for d in ids}
    everyone = {d for ids in deployed.values() for d in ids}
    waves_hit = [w for w, ids in failed.items() if ids]
    assert set(s.quarantine) == bad
    assert set(s.rollback) >= bad
    assert set(s.rollback) <= everyone
    assert list(s.rollback) == sorted(set(s.rollback))
    if not bad:
        assert s.kind is ScopeKind.NONE and s.rollback == ()
    elif len(waves_hit) >= 2:
        assert s.kind is ScopeKind.ALL and set(s.rollback) == everyone
    elif len(bad) > 1:
        assert s.kind is ScopeKind.WAVE and set(s.rollback) == set(deployed[waves_hit[0]])
    else:
        wave = waves_hit[0]
        above = Fraction(1, len(deployed[wave])) > Fraction(str(t.wave_halt_above))
        assert s.kind is (ScopeKind.WAVE if above else ScopeKind.DEVICE)
        assert set(s.rollback) == (set(deployed[wave]) if above else bad)


maybe = st.none() | st.just(float("nan")) | st.floats(min_value=0, max_value=1000)


@st.composite
def samples(draw: st.DrawFn, dev: str, sound: bool = False) -> HealthSample:
    if sound or draw(st.booleans()):
        # A sound sample with a little noise, so PASS verdicts are generated often enough.
        return HealthSample(
            dev,
            app_up=True,
            latency_ms=draw(st.none() | st.floats(min_value=40, max_value=48)),
            error_rate=draw(st.none() | st.floats(min_value=0, max_value=0.005)),
            cpu_percent=draw(st.none() | st.floats(min_value=0, max_value=90)),
            temperature_c=draw(st.none() | st.floats(min_value=20, max_value=85)),
            release="r1",
        )
    return HealthSample(
        dev,
        app_up=draw(st.booleans()),
        latency_ms=draw(maybe),
        error_rate=draw(st.none() | st.floats(min_value=0, max_value=1)),
        cpu_percent=draw(st.none() | st.floats(min_value=0, max_value=100)),
        temperature_c=draw(st.none() | st.floats(min_value=20, max_value=110)),
        restarts=draw(st.integers(min_value=0, max_value=5)),
        crash_loop=draw(st.booleans()),
        release=draw(st.sampled_from([None, "r1", "r2"])),
    )


@st.composite
def canary_case(draw: st.DrawFn) -> tuple[dict[str, HealthSample], ...]:
    ids = [f"c{i}" for i in range(draw(st.integers(min_value=1, max_value=4)))]
    # Half the cases are all-present and sound, so PASS verdicts are frequent enough to check.
    sound = draw(st.booleans())
    out = []
    for _ in range(3):
        chosen = ids if sound else draw(st.lists(st.sampled_from(ids), unique=True))
        out.append({d: draw(samples(d, sound)) for d in chosen})
    return tuple(out)


@PROPS
@given(canary_case(), st.booleans())
def test_canary_pass_implies_every_canary_healthy_in_both_rounds(
    case: tuple[dict[str, HealthSample], ...], soak: bool
) -> None:
    initial, post, baselines = case
    ids = sorted(set(initial) | set(post) | set(baselines)) or ["c0"]
    policy = HealthPolicy()
    cv = canary_verdict(initial, post, dict(baselines), ids, policy, soak)
    event(f"verdict {cv.verdict.value}")
    if cv.passed:
        assert soak
        for d in ids:
            assert d in initial and d in post
            for s in (initial[d], post[d]):
                assert evaluate_health(s, baselines.get(d), policy).status is DeviceHealth.HEALTHY
    else:
        assert cv.reasons
    assert set(cv.failed_canaries) == {d for d in ids if not cv.per_device[d].healthy}
    assert cv.all_failed == (len(cv.failed_canaries) == len(ids))


@PROPS
@given(samples("d"), st.none() | samples("d"))
def test_health_status_matches_reasons(s: HealthSample, base: HealthSample | None) -> None:
    v = evaluate_health(s, base, HealthPolicy())
    assert (v.status is DeviceHealth.HEALTHY) == (v.reasons == ())
    if not s.app_up or s.crash_loop:
        assert v.status is DeviceHealth.FAILED
