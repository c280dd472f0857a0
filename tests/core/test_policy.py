from __future__ import annotations

from pathlib import Path

import pytest

from fleetgate.config.policy_file import load_policy, parse_duration
from fleetgate.core.policy import Policy, SoakPolicy
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
        ("[waves]\ncumulative = [50, 100]", "first wave 50 % exceeds 25 %"),
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


def test_all_problems_are_reported_at_once(tmp_path: Path) -> None:
    path = write(tmp_path, "[canary]\npercent = 9\n[approval]\nfleet_rollout = false\n")
    with pytest.raises(ValidationError) as err:
        load_policy(path)
    assert len(err.value.problems) == 2


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
