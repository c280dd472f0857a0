"""The rollout policy and the guardrails it may not break.

A ``Policy`` is built only through ``Policy.__post_init__``, which refuses any value that would
break one of the spec's guardrails, so no code path downstream can run an unsafe policy:

- canary: 1–5 % of the target fleet (at least one device is the planner's job);
- waves: cumulative percentages, strictly increasing, ending at 100, and never one step from
  below to 100 % straight after the canary (Guardrail 3: "never deploy to all devices at once";
  the first wave is at most 25 %, the spec's "Wave 1: 10-25 % of fleet");
- soak: at least 15 minutes for the canary and between waves, unless the policy itself says
  ``allow_short_soak = true`` (the engine then records that in the audit log);
- thresholds ordered: quarantine_below <= halt_above, both in [0, 1];
- approval: the human gate after VERIFY cannot be switched off.

Defaults are the spec's numbers.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field

from fleetgate.errors import PolicyError

MIN_SOAK_SECONDS = 15 * 60
MIN_CANARY_PERCENT = 1.0
MAX_CANARY_PERCENT = 5.0
MAX_FIRST_WAVE_PERCENT = 25.0
COVER_ATTRIBUTES = ("hardware", "group", "arch")


@dataclass(frozen=True, slots=True)
class CanaryPolicy:
    percent: float = 2.0
    cover: tuple[str, ...] = ("hardware", "group")


@dataclass(frozen=True, slots=True)
class SoakPolicy:
    canary_s: float = MIN_SOAK_SECONDS
    between_waves_s: float = MIN_SOAK_SECONDS


@dataclass(frozen=True, slots=True)
class HealthPolicy:
    error_rate_increase_max: float = 0.01
    latency_ratio_max: float = 1.2
    cpu_percent_max: float = 90.0
    temperature_c_max: float = 85.0
    crash_restarts_max: int = 2
    # Latency baselines under this are noise: a 2 ms -> 3 ms change is not a 1.5x regression.
    latency_floor_ms: float = 20.0


@dataclass(frozen=True, slots=True)
class Thresholds:
    wave_quarantine_below: float = 0.05
    wave_halt_above: float = 0.20
    unreachable_halt_above: float = 0.20


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    attempts: int = 3
    backoff_s: float = 2.0


@dataclass(frozen=True, slots=True)
class Policy:
    canary: CanaryPolicy = field(default_factory=CanaryPolicy)
    waves: tuple[float, ...] = (25.0, 50.0, 100.0)
    soak: SoakPolicy = field(default_factory=SoakPolicy)
    health: HealthPolicy = field(default_factory=HealthPolicy)
    thresholds: Thresholds = field(default_factory=Thresholds)
    retries: RetryPolicy = field(default_factory=RetryPolicy)
    fleet_rollout_approval: bool = True
    allow_short_soak: bool = False

    def __post_init__(self) -> None:
        problems = list(policy_problems(self))
        if problems:
            raise PolicyError("; ".join(problems))


def policy_problems(p: Policy) -> list[str]:
    """Every guardrail the policy breaks, as ``section.field: reason`` strings."""
    out: list[str] = []
    c = p.canary
    if not MIN_CANARY_PERCENT <= c.percent <= MAX_CANARY_PERCENT:
        out.append(f"canary.percent: {c.percent:g} is outside 1-5 % of the fleet (Guardrail 3)")
    for attr in c.cover:
        if attr not in COVER_ATTRIBUTES:
            out.append(f"canary.cover: unknown attribute {attr!r} (one of {COVER_ATTRIBUTES})")
    for required in ("hardware", "group"):
        if required not in c.cover:
            out.append(f"canary.cover: must include {required!r} (canaries cover every {required})")

    w = p.waves
    if not w:
        out.append("waves.cumulative: must list at least two waves")
    else:
        if any(not 0 < x <= 100 for x in w):
            out.append("waves.cumulative: every value must be in (0, 100]")
        if any(b <= a for a, b in itertools.pairwise(w)):
            out.append("waves.cumulative: values must strictly increase")
        if w[-1] != 100:
            out.append("waves.cumulative: the last wave must reach 100")
        if len(w) < 2:
            out.append(
                "waves.cumulative: a single wave to 100 % deploys the whole fleet at once "
                "(Guardrail 3: staged rollouts are mandatory)"
            )
        elif w[0] > MAX_FIRST_WAVE_PERCENT:
            out.append(
                f"waves.cumulative: first wave {w[0]:g} % exceeds {MAX_FIRST_WAVE_PERCENT:g} % "
                "(Guardrail 3: wave 1 is 10-25 % of the fleet)"
            )

    if not p.allow_short_soak:
        for name, value in (("canary", p.soak.canary_s), ("between_waves", p.soak.between_waves_s)):
            if value < MIN_SOAK_SECONDS:
                out.append(
                    f"soak.{name}: {value:g}s is below the 15 min minimum; write "
                    "allow_short_soak = true in the policy to accept it (it is audited)"
                )
    if p.soak.canary_s < 0 or p.soak.between_waves_s < 0:
        out.append("soak: durations must not be negative")

    t = p.thresholds
    for name in ("wave_quarantine_below", "wave_halt_above", "unreachable_halt_above"):
        value = getattr(t, name)
        if not 0 <= value <= 1:
            out.append(f"thresholds.{name}: {value:g} must be a fraction in [0, 1]")
    if t.wave_quarantine_below > t.wave_halt_above:
        out.append(
            "thresholds: wave_quarantine_below must not exceed wave_halt_above "
            f"({t.wave_quarantine_below:g} > {t.wave_halt_above:g})"
        )
    if t.unreachable_halt_above > 0.20:
        out.append("thresholds.unreachable_halt_above: the spec halts above 20 % unreachable")
    if t.wave_halt_above > 0.20:
        out.append("thresholds.wave_halt_above: the spec rolls back a wave above 20 % failures")

    h = p.health
    if h.error_rate_increase_max < 0 or h.latency_ratio_max < 1 or h.crash_restarts_max < 0:
        out.append(
            "health: error_rate_increase_max >= 0, latency_ratio_max >= 1, crash_restarts_max >= 0"
        )
    if p.retries.attempts < 1 or p.retries.backoff_s < 0:
        out.append("retries: attempts >= 1 and backoff >= 0")
    if not p.fleet_rollout_approval:
        out.append(
            "approval.fleet_rollout: the human gate after VERIFY cannot be switched off "
            "(Guardrail 1)"
        )
    return out
