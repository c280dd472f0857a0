from __future__ import annotations

import itertools
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fleetgate.config.policy_file import load_policy, parse_duration
from fleetgate.core.policy import CanaryPolicy, Policy, RetryPolicy, SoakPolicy, Thresholds
from fleetgate.errors import InputError, PolicyError, ValidationError

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "rollout.toml"


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "rollout.toml"
    p.write_text(text)
    return p


def test_example_policy_is_the_spec_defaults() -> None:
    assert load_policy(EXAMPLE) == Policy()
    p = Policy()
    assert p.canary.percent == 2
    assert p.waves == (25, 50, 100)
    assert p.soak.canary_s == 900
    assert p.thresholds.wave_quarantine_below == 0.05
    assert p.thresholds.wave_halt_above == 0.20


@pytest.mark.parametrize(
    ("toml", "needle"),
    [
        ("[waves]\ncumulative = [100]", "whole fleet at once"),
        ("[waves]\ncumulative = [50, 100]", "wave 1 at 50 % is outside 10-25 %"),
        ("[waves]\ncumulative = [25, 20, 100]", "strictly increase"),
        ("[waves]\ncumulative = [25, 50]", "last wave must reach 100"),
        ("[canary]\npercent = 10", "canary.percent: 10 is outside 1-5 %"),
        ("[canary]\npercent = 0.5", "canary.percent: 0.5 is outside"),
        ("[approval]\nfleet_rollout = false", "cannot be switched off"),
        ("[thresholds]\nwave_quarantine_below = 0.15\nwave_halt_above = 0.10", "must not exceed"),
        ("[soak]\ncanary = '5m'", "soak.canary: 300s is below the 15 min minimum"),
        ("[soak]\nbetween_waves = 60", "soak.between_waves: 60s is below"),
        ("[canary]\ncover = ['hardware']", "must include 'group'"),
    ],
)
def test_guardrail_breaking_policies_are_refused(tmp_path: Path, toml: str, needle: str) -> None:
    with pytest.raises(ValidationError) as err:
        load_policy(write(tmp_path, toml))
    text = str(err.value)
    assert needle in text
    assert text.startswith(str(tmp_path / "rollout.toml") + ": ")


# Issue 7 item 4: policies the spec forbids that used to be accepted. Each names its field.
@pytest.mark.parametrize(
    ("toml", "needle"),
    [
        (
            "[waves]\ncumulative = [5, 50, 100]",
            "waves.cumulative: wave 1 at 5 % is outside 10-25 % of the fleet",
        ),
        (
            "[waves]\ncumulative = [20, 95, 100]",
            "waves.cumulative: wave 2 at 95 % is outside 25-50 % of the fleet",
        ),
        (
            "[waves]\ncumulative = [10, 25, 40, 100]",
            "waves.cumulative: wave 3 at 40 % is outside 50-100 % of the fleet",
        ),
        ("[waves]\ncumulative = [20, 100]", "waves.cumulative: 2 wave(s), at least 3 are needed"),
        (
            "[thresholds]\nwave_quarantine_below = 0.20",
            "thresholds.wave_quarantine_below: 0.2 is above 0.05",
        ),
        ("[thresholds]\nwave_halt_above = 0.3", "thresholds.wave_halt_above: 0.3 is above 0.2"),
        (
            "[thresholds]\nunreachable_halt_above = 0.5",
            "thresholds.unreachable_halt_above: 0.5 is above 0.2",
        ),
        ("[retries]\nattempts = 1", "retries.attempts: 1 must be exactly 3"),
        ("[retries]\nattempts = 10", "retries.attempts: 10 must be exactly 3"),
        ("[retries]\nbackoff = 0", "retries.backoff: 0s must be positive"),
    ],
)
def test_policies_beyond_the_spec_bounds_are_refused(
    tmp_path: Path, toml: str, needle: str
) -> None:
    with pytest.raises(ValidationError) as err:
        load_policy(write(tmp_path, toml))
    assert len(err.value.problems) == 1, err.value.problems
    assert err.value.problems[0].startswith(str(tmp_path / "rollout.toml") + ": " + needle)


@pytest.mark.parametrize(
    "policy",
    [
        {"waves": (5.0, 50.0, 100.0)},
        {"waves": (20.0, 95.0, 100.0)},
        {"thresholds": Thresholds(wave_quarantine_below=0.20)},
        {"retries": RetryPolicy(attempts=1)},
    ],
)
def test_policies_beyond_the_bounds_are_refused_in_code_too(policy: dict[str, object]) -> None:
    with pytest.raises(PolicyError):
        Policy(**policy)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "toml",
    [
        "[waves]\ncumulative = [10, 25, 50, 75, 100]",  # more, smaller steps
        "[waves]\ncumulative = [10, 30, 60, 80, 90, 100]",
        "[canary]\npercent = 1\ncover = ['hardware', 'group', 'arch']",
        "[thresholds]\nwave_quarantine_below = 0\nwave_halt_above = 0.1\n"
        "unreachable_halt_above = 0.05",
        "[soak]\ncanary = '1h'\nbetween_waves = '30m'",
    ],
)
def test_tightened_policies_are_accepted(tmp_path: Path, toml: str) -> None:
    load_policy(write(tmp_path, toml))


def test_no_override_loosens_anything_but_the_soak(tmp_path: Path) -> None:
    # allow_short_soak is the one audited override: it does not open the other bounds.
    path = write(
        tmp_path,
        "allow_short_soak = true\n[waves]\ncumulative = [5, 50, 100]\n"
        "[thresholds]\nwave_quarantine_below = 0.2\n[retries]\nattempts = 1\n",
    )
    with pytest.raises(ValidationError) as err:
        load_policy(path)
    fields = [p.split(": ")[1] for p in err.value.problems]
    assert fields == ["waves.cumulative", "thresholds.wave_quarantine_below", "retries.attempts"]


def test_thresholds_alone_are_not_validated() -> None:
    # The pure decision functions take Thresholds as given (tests probe them beyond the spec's
    # numbers); only a Policy validates them.
    t = Thresholds(wave_quarantine_below=0.5, wave_halt_above=0.9, unreachable_halt_above=1.0)
    assert t.wave_halt_above == 0.9


def test_all_problems_are_reported_at_once(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "[canary]\npercent = 9\n[approval]\nfleet_rollout = false\n"
        "[waves]\ncumulative = [5, 95, 100]\n[thresholds]\nwave_quarantine_below = 0.2\n"
        "[retries]\nattempts = 1\n",
    )
    with pytest.raises(ValidationError) as err:
        load_policy(path)
    problems = err.value.problems
    assert len(problems) == 6, problems
    assert all(p.startswith(f"{path}: ") and "\n" not in p for p in problems)
    fields = sorted(p.split(": ")[1] for p in problems)
    assert fields == [
        "approval.fleet_rollout",
        "canary.percent",
        "retries.attempts",
        "thresholds.wave_quarantine_below",
        "waves.cumulative",
        "waves.cumulative",
    ]


def test_short_soak_only_when_the_policy_says_so(tmp_path: Path) -> None:
    p = load_policy(
        write(tmp_path, "allow_short_soak = true\n[soak]\ncanary = '10s'\nbetween_waves = 0\n")
    )
    assert p.allow_short_soak and p.soak.canary_s == 10 and p.soak.between_waves_s == 0
    with pytest.raises(PolicyError):
        Policy(soak=SoakPolicy(10, 10))


def test_typos_and_wrong_types_name_the_field(tmp_path: Path) -> None:
    with pytest.raises(ValidationError) as err:
        load_policy(
            write(tmp_path, "[thresholds]\nwave_halt_abve = 0.2\n[retries]\nattempts = 'many'\n")
        )
    text = str(err.value)
    assert "thresholds.wave_halt_abve: Extra inputs are not permitted" in text
    assert "retries.attempts" in text


def test_unreadable_policy_is_one_line(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="no such policy file"):
        load_policy(tmp_path / "missing.toml")
    with pytest.raises(InputError, match="not valid TOML"):
        load_policy(write(tmp_path, "[canary\n"))


@pytest.mark.parametrize(
    ("text", "seconds"), [("15m", 900), ("90s", 90), ("1h30m", 5400), (42, 42), ("2.5s", 2.5)]
)
def test_durations(text: object, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("bad", ["", "15 minutes", "m", -1, True, "1d"])
def test_bad_durations(bad: object) -> None:
    with pytest.raises(ValueError):
        parse_duration(bad)


def _waves_in_bounds(w: tuple[float, ...]) -> bool:
    """Guardrail 3 written out independently of core.policy: the oracle for the property."""
    bands = [(10, 25), (25, 50)] + [(50, 100)] * max(0, len(w) - 2)
    return (
        len(w) >= 3
        and w[-1] == 100
        and all(b > a for a, b in itertools.pairwise(w))
        and all(lo <= x <= hi for x, (lo, hi) in zip(w, bands, strict=False))
    )


_PERCENTS = st.one_of(
    st.sampled_from([0.0, 5.0, 9.9, 10.0, 25.0, 26.0, 49.0, 50.0, 51.0, 99.0, 100.0, 101.0]),
    st.floats(min_value=-5, max_value=120, allow_nan=False),
)


@settings(max_examples=500, deadline=None)
@given(st.lists(_PERCENTS, max_size=6).map(tuple))
def test_a_wave_list_is_accepted_exactly_when_in_bounds(waves: tuple[float, ...]) -> None:
    if _waves_in_bounds(waves):
        assert Policy(waves=waves).waves == waves
    else:
        with pytest.raises(PolicyError, match=r"waves\.cumulative"):
            Policy(waves=waves)


@settings(max_examples=300, deadline=None)
@given(st.floats(0, 1), st.floats(0, 1), st.floats(0, 1), st.integers(-1, 6), st.floats(0.5, 10))
def test_thresholds_and_retries_are_accepted_exactly_when_in_bounds(
    quarantine: float, halt: float, unreachable: float, attempts: int, percent: float
) -> None:
    t = Thresholds(quarantine, halt, unreachable)
    ok = quarantine <= 0.05 and halt <= 0.20 and quarantine <= halt and unreachable <= 0.20
    ok = ok and attempts == 3 and 1 <= percent <= 5
    fields = {
        "canary": CanaryPolicy(percent=percent),
        "thresholds": t,
        "retries": RetryPolicy(attempts),
    }
    if ok:
        Policy(**fields)  # type: ignore[arg-type]
    else:
        with pytest.raises(PolicyError):
            Policy(**fields)  # type: ignore[arg-type]
