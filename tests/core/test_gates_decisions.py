"""Wave decision matrix, unreachable rule and rollback scope, tested at the spec's edges."""

from __future__ import annotations

from fractions import Fraction

import pytest

from fleetgate.core.gates import (
    ScopeKind,
    UnreachableAction,
    WaveAction,
    rollback_scope,
    threshold,
    unreachable_decision,
    wave_decision,
)
from fleetgate.core.policy import Thresholds

T = Thresholds()
C = WaveAction.CONTINUE
Q = WaveAction.QUARANTINE_AND_CONTINUE
P = WaveAction.PAUSE_FOR_HUMAN
R = WaveAction.ROLLBACK_WAVE_AND_HALT


@pytest.mark.parametrize(
    ("failed", "targeted", "action"),
    [
        (0, 100, C),
        (0, 0, C),
        (4, 100, Q),
        (1, 21, Q),  # 4.76 %
        (5, 100, P),  # exactly 5 %
        (1, 20, P),  # exactly 5 %
        (1, 19, P),  # 5.26 %
        (19, 100, P),
        (20, 100, P),  # exactly 20 %
        (1, 5, P),  # exactly 20 %
        (21, 100, R),
        (1, 4, R),
        (1, 1, R),  # a one-device wave
        (1, 3, R),  # 33 %
        (100, 100, R),
    ],
)
def test_wave_matrix_edges(failed: int, targeted: int, action: WaveAction) -> None:
    d = wave_decision(failed, targeted, T)
    assert d.action is action
    assert d.rate == (Fraction(failed, targeted) if targeted else 0)


def test_wave_decision_reason_and_percent() -> None:
    d = wave_decision(1, 20, T)
    assert (
        d.reason
        == "1/20 devices failed (5.0 %): between 5.0 % and 20.0 %: pause for a human decision"
    )
    assert d.percent == 5.0
    assert wave_decision(0, 7, T).reason == "no device failed (0/7)"
    assert (
        wave_decision(3, 10, T).reason
        == "3/10 devices failed (30.0 %): above 20.0 %: roll back and halt"
    )


def test_float_thresholds_are_read_as_written() -> None:
    # 0.1 + 0.2 is 0.30000000000000004 as a float: its decimal repr still reads as written.
    assert threshold(0.05) == Fraction(1, 20)
    assert threshold(0.2) == Fraction(1, 5)
    t = Thresholds(wave_quarantine_below=0.1, wave_halt_above=0.2)
    assert wave_decision(1, 10, t).action is P
    assert wave_decision(2, 10, t).action is P
    assert wave_decision(3, 10, t).action is R


@pytest.mark.parametrize(("failed", "targeted"), [(-1, 10), (11, 10), (1, 0), (0, -1)])
def test_impossible_counts_are_refused(failed: int, targeted: int) -> None:
    with pytest.raises(ValueError):
        wave_decision(failed, targeted, T)


@pytest.mark.parametrize(
    ("unreachable", "targeted", "action"),
    [
        (0, 10, UnreachableAction.CONTINUE_SKIPPING),
        (0, 0, UnreachableAction.CONTINUE_SKIPPING),
        (19, 100, UnreachableAction.CONTINUE_SKIPPING),
        (20, 100, UnreachableAction.CONTINUE_SKIPPING),  # exactly 20 % continues
        (1, 5, UnreachableAction.CONTINUE_SKIPPING),
        (21, 100, UnreachableAction.HALT),
        (1, 4, UnreachableAction.HALT),
        (1, 1, UnreachableAction.HALT),
    ],
)
def test_unreachable_rule_edges(unreachable: int, targeted: int, action: UnreachableAction) -> None:
    assert unreachable_decision(unreachable, targeted, T).action is action


def test_unreachable_reason() -> None:
    d = unreachable_decision(2, 10, T)
    assert d.reason == "2/10 devices unreachable (20.0 %): at most 20.0 %: skip them and continue"
    assert (
        unreachable_decision(3, 10, T).reason
        == "3/10 devices unreachable (30.0 %): above 20.0 %: halt"
    )


DEPLOYED = {
    0: ["c1", "c2"],
    1: [f"w1-{i:02d}" for i in range(20)],
    2: [f"w2-{i:02d}" for i in range(20)],
}


def test_nothing_failed_rolls_back_nothing() -> None:
    s = rollback_scope({1: []}, DEPLOYED, 2, T)
    assert (s.kind, s.rollback, s.quarantine) == (ScopeKind.NONE, (), ())


def test_single_device_is_quarantined_alone() -> None:
    s = rollback_scope({2: ["w2-03"]}, DEPLOYED, 2, T)
    assert s.kind is ScopeKind.DEVICE
    assert s.rollback == s.quarantine == ("w2-03",)
    assert s.waves == (2,)
    assert "quarantine it" in s.reason


def test_single_device_in_an_earlier_wave_is_still_device_scope() -> None:
    s = rollback_scope({1: ["w1-00"]}, DEPLOYED, 2, T)
    assert s.kind is ScopeKind.DEVICE and s.rollback == ("w1-00",)


def test_single_failure_above_the_halt_rate_rolls_back_its_wave() -> None:
    deployed = {0: ["c1"], 1: ["a", "b", "c"]}
    s = rollback_scope({1: ["b"]}, deployed, 1, T)
    assert s.kind is ScopeKind.WAVE
    assert s.rollback == ("a", "b", "c") and s.quarantine == ("b",)


def test_several_failures_in_one_wave_roll_back_that_wave() -> None:
    s = rollback_scope({2: ["w2-05", "w2-01"]}, DEPLOYED, 2, T)
    assert s.kind is ScopeKind.WAVE
    assert s.rollback == tuple(sorted(DEPLOYED[2]))
    assert s.quarantine == ("w2-01", "w2-05")
    assert s.waves == (2,)
    assert (
        s.reason == "2/20 of wave 2 (10.0 %) failed, more than one device failed: roll back wave 2"
    )


def test_failures_in_two_waves_roll_back_everything_canaries_included() -> None:
    s = rollback_scope({1: ["w1-00"], 2: ["w2-00"]}, DEPLOYED, 2, T)
    assert s.kind is ScopeKind.ALL
    assert s.rollback == tuple(sorted(d for ids in DEPLOYED.values() for d in ids))
    assert {"c1", "c2"} <= set(s.rollback)
    assert s.quarantine == ("w1-00", "w2-00")
    assert s.waves == (0, 1, 2)


def test_a_canary_and_a_wave_failing_is_multiple_waves() -> None:
    deployed = {0: DEPLOYED[0], 1: DEPLOYED[1]}
    s = rollback_scope({0: ["c2"], 1: ["w1-07"]}, deployed, 1, T)
    assert s.kind is ScopeKind.ALL
    assert not any(d.startswith("w2") for d in s.rollback)


@pytest.mark.parametrize(
    ("failed", "deployed", "current"),
    [
        ({1: ["ghost"]}, DEPLOYED, 2),  # failed but not deployed
        ({2: ["w1-00"]}, DEPLOYED, 2),  # failed in the wrong wave
        ({}, {0: ["a"], 1: ["a"]}, 1),  # one device in two waves
        ({}, DEPLOYED, 1),  # wave 2 has devices but current wave is 1
        ({}, {}, -1),
    ],
)
def test_rollback_scope_refuses_inconsistent_input(
    failed: dict[int, list[str]], deployed: dict[int, list[str]], current: int
) -> None:
    with pytest.raises(ValueError):
        rollback_scope(failed, deployed, current, T)
