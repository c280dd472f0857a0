"""The rollout policy and the guardrails it may not break.

Invariant 12 of DESIGN.md: every number of the spec is a bound a policy may tighten, never
loosen. A ``Policy`` is built only through ``Policy.__post_init__``, which refuses any value
outside those bounds, so no code path downstream can run an unsafe policy. The bounds (all
checked by ``policy_problems``, which reports every problem at once, one per ``section.field``):

- canary: 1-5 % of the target fleet (at least one device is the planner's job), covering every
  hardware type and group;
- waves: cumulative percentages of the target fleet, strictly increasing, ending at 100, at
  least three of them: wave 1 in 10-25 %, wave 2 in 25-50 %, wave 3 and any later wave in
  50-100 % (Guardrail 3's "MANDATORY STAGING"). Extra waves after the third only make the steps
  smaller, so they are allowed;
- thresholds: ``wave_quarantine_below`` <= 5 %, ``wave_halt_above`` <= 20 %, the first not above
  the second (the decision matrix's bands may only shrink towards "pause for a human" and
  "roll back"), ``unreachable_halt_above`` <= 20 %;
- retries: exactly 3 attempts (the spec's "3 attempts max" for a transfer and "3 attempts" for
  an unreachable device: fewer skips devices a transient fault would have let through, more
  retries past the spec's limit, so neither direction is a tightening), with a positive backoff
  (the spec's backoff is exponential; from zero it is no backoff at all);
- soak: at least 15 minutes for the canary and between waves, unless the policy itself says
  ``allow_short_soak = true``: the only override, because the spec allows it ("never reduce
  soak periods without explicit user approval"); the engine records it with the person who
  started the deployment in the audit log;
- approval: the human gate after VERIFY cannot be switched off.

Nothing else can be overridden: the spec names no exception for the canary size, the wave
sizes, the failure bands or the retries (docs/adr/0001-policy-bounds.md says why).

Defaults are the spec's numbers. ``Thresholds`` and the other parts are plain values: the pure
decision functions take them as they are, and only a ``Policy`` validates them.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field

from fleetgate.errors import PolicyError

MIN_SOAK_SECONDS = 15 * 60
MIN_CANARY_PERCENT = 1.0
MAX_CANARY_PERCENT = 5.0
# Guardrail 3's wave bands, in cumulative % of the target fleet: wave 1, wave 2, wave 3 and later.
WAVE_BANDS: tuple[tuple[float, float], ...] = ((10.0, 25.0), (25.0, 50.0), (50.0, 100.0))
MIN_WAVES = len(WAVE_BANDS)
MAX_FIRST_WAVE_PERCENT = WAVE_BANDS[0][1]
MAX_QUARANTINE_BELOW = 0.05
MAX_WAVE_HALT_ABOVE = 0.20
MAX_UNREACHABLE_HALT_ABOVE = 0.20
RETRY_ATTEMPTS = 3
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
    wave_quarantine_below: float = MAX_QUARANTINE_BELOW
    wave_halt_above: float = MAX_WAVE_HALT_ABOVE
    unreachable_halt_above: float = MAX_UNREACHABLE_HALT_ABOVE


@dataclass(frozen=True, slots=True)
class AnalysisMetric:
    """One metric the canary judge compares (``core.analysis.MetricSpec`` as policy data).
    ``name`` is a standard sample field (``error_rate``, ``latency_ms`` …) or an app metric as
    the agent reports it (``inference_latency_seconds{quantile="0.95"}``)."""

    name: str
    direction: str = "increase"  # the harmful direction: increase | decrease
    tolerance: float = 0.25  # relative to the control's median (Kayenta's default 25 %)
    floor: float = 0.0  # absolute tolerance floor (error rates near 0, tiny latencies)
    critical: bool = True
    min_samples: int = 10


@dataclass(frozen=True, slots=True)
class AnalysisPolicy:
    """Canary analysis (issue 11): the soak is sampled every ``interval_s``; each canary is
    compared with a concurrent control device (Mann-Whitney U, ``core.analysis``); an
    INCONCLUSIVE result extends the soak once by ``extend_s``. The analysis runs when the soak
    yields at least ``min_samples`` per device; a shorter (audited ``allow_short_soak``) soak is
    judged by the threshold rules alone, and the verdict says so."""

    interval_s: float = 30.0
    confidence: float = 0.98  # Kayenta's default
    extend_s: float = 15 * 60.0
    # Before the canaries are deployed, canaries and controls are sampled for this long, so
    # the standing difference between two boxes is measured and taken out (docs/analysis.md).
    baseline_s: float = 15 * 60.0
    control: bool = True
    min_samples: int = 10
    metrics: tuple[AnalysisMetric, ...] = ()  # added to / overriding the defaults by name


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    attempts: int = RETRY_ATTEMPTS
    backoff_s: float = 2.0


@dataclass(frozen=True, slots=True)
class Policy:
    canary: CanaryPolicy = field(default_factory=CanaryPolicy)
    waves: tuple[float, ...] = (25.0, 50.0, 100.0)
    soak: SoakPolicy = field(default_factory=SoakPolicy)
    health: HealthPolicy = field(default_factory=HealthPolicy)
    thresholds: Thresholds = field(default_factory=Thresholds)
    retries: RetryPolicy = field(default_factory=RetryPolicy)
    analysis: AnalysisPolicy = field(default_factory=AnalysisPolicy)
    fleet_rollout_approval: bool = True
    allow_short_soak: bool = False
    # Four-eyes rule: the person who started a deployment may not approve its rollout.
    distinct_approver: bool = False

    def __post_init__(self) -> None:
        problems = list(policy_problems(self))
        if problems:
            raise PolicyError("; ".join(problems))


def policy_problems(p: Policy) -> list[str]:
    """Every bound the policy breaks, as ``section.field: reason`` strings, all of them."""
    return [
        *_canary_problems(p.canary),
        *_wave_problems(p.waves),
        *_soak_problems(p.soak, p.allow_short_soak),
        *_threshold_problems(p.thresholds),
        *_health_problems(p.health),
        *_retry_problems(p.retries),
        *_analysis_problems(p.analysis),
        *(
            []
            if p.fleet_rollout_approval
            else [
                "approval.fleet_rollout: the human gate after VERIFY cannot be switched off "
                "(Guardrail 1)"
            ]
        ),
    ]


def _canary_problems(c: CanaryPolicy) -> list[str]:
    out: list[str] = []
    if not MIN_CANARY_PERCENT <= c.percent <= MAX_CANARY_PERCENT:
        out.append(f"canary.percent: {c.percent:g} is outside 1-5 % of the fleet (Guardrail 3)")
    for attr in c.cover:
        if attr not in COVER_ATTRIBUTES:
            out.append(f"canary.cover: unknown attribute {attr!r} (one of {COVER_ATTRIBUTES})")
    for required in ("hardware", "group"):
        if required not in c.cover:
            out.append(f"canary.cover: must include {required!r} (canaries cover every {required})")
    return out


def _wave_band(index: int) -> tuple[float, float]:
    return WAVE_BANDS[min(index, len(WAVE_BANDS) - 1)]


def _wave_problems(w: tuple[float, ...]) -> list[str]:
    field_ = "waves.cumulative"
    staging = "Guardrail 3: wave 1 is 10-25 %, wave 2 25-50 %, wave 3 50-100 % of the fleet"
    if not w:
        return [f"{field_}: must list at least {MIN_WAVES} waves ({staging})"]
    out: list[str] = []
    if any(not 0 < x <= 100 for x in w):
        out.append(f"{field_}: every value must be in (0, 100]")
    if any(b <= a for a, b in itertools.pairwise(w)):
        out.append(f"{field_}: values must strictly increase")
    if w[-1] != 100:
        out.append(f"{field_}: the last wave must reach 100")
    if len(w) == 1 and w[0] >= 100:
        out.append(
            f"{field_}: a single wave to 100 % deploys the whole fleet at once "
            "(Guardrail 3: staged rollouts are mandatory)"
        )
    elif len(w) < MIN_WAVES:
        out.append(f"{field_}: {len(w)} wave(s), at least {MIN_WAVES} are needed ({staging})")
    # With too few waves the final 100 is the count problem above, not a band problem too.
    checked = w if len(w) >= MIN_WAVES else w[:-1]
    for i, x in enumerate(checked):
        lo, hi = _wave_band(i)
        if not lo <= x <= hi:
            out.append(
                f"{field_}: wave {i + 1} at {x:g} % is outside {lo:g}-{hi:g} % of the fleet "
                f"({staging})"
            )
    return out


def _soak_problems(s: SoakPolicy, allow_short_soak: bool) -> list[str]:
    out: list[str] = []
    for name, value in (("canary", s.canary_s), ("between_waves", s.between_waves_s)):
        if value < 0:
            out.append(f"soak.{name}: {value:g}s must not be negative")
        elif value < MIN_SOAK_SECONDS and not allow_short_soak:
            out.append(
                f"soak.{name}: {value:g}s is below the 15 min minimum; write "
                "allow_short_soak = true in the policy to accept it (it is audited)"
            )
    return out


def _threshold_problems(t: Thresholds) -> list[str]:
    out: list[str] = []
    limits = (
        (
            "wave_quarantine_below",
            MAX_QUARANTINE_BELOW,
            "the spec quarantines and continues only below 5 % failed; 5-20 % pauses for a human",
        ),
        ("wave_halt_above", MAX_WAVE_HALT_ABOVE, "the spec rolls back a wave above 20 % failed"),
        (
            "unreachable_halt_above",
            MAX_UNREACHABLE_HALT_ABOVE,
            "the spec halts above 20 % of the target devices unreachable",
        ),
    )
    for name, limit, why in limits:
        value = getattr(t, name)
        if not 0 <= value <= 1:
            out.append(f"thresholds.{name}: {value:g} must be a fraction in [0, 1]")
        elif value > limit:
            out.append(f"thresholds.{name}: {value:g} is above {limit:g} ({why})")
    if t.wave_quarantine_below > t.wave_halt_above:
        out.append(
            "thresholds.wave_quarantine_below: must not exceed wave_halt_above "
            f"({t.wave_quarantine_below:g} > {t.wave_halt_above:g})"
        )
    return out


def _health_problems(h: HealthPolicy) -> list[str]:
    out: list[str] = []
    if h.error_rate_increase_max < 0:
        out.append(f"health.error_rate_increase_max: {h.error_rate_increase_max:g} must be >= 0")
    if h.latency_ratio_max < 1:
        out.append(f"health.latency_ratio_max: {h.latency_ratio_max:g} must be >= 1")
    if h.crash_restarts_max < 0:
        out.append(f"health.crash_restarts_max: {h.crash_restarts_max} must be >= 0")
    return out


def _retry_problems(r: RetryPolicy) -> list[str]:
    out: list[str] = []
    if r.attempts != RETRY_ATTEMPTS:
        out.append(
            f"retries.attempts: {r.attempts} must be exactly {RETRY_ATTEMPTS}: the spec retries a "
            "transfer '3 attempts max' and an unreachable device '3 attempts'; fewer skips "
            "devices a transient fault would have let through, more retries past the spec's limit"
        )
    if r.backoff_s <= 0:
        out.append(
            f"retries.backoff: {r.backoff_s:g}s must be positive (the spec's retries back off "
            "exponentially)"
        )
    return out


def _analysis_problems(a: AnalysisPolicy) -> list[str]:
    out: list[str] = []
    if not 0 < a.interval_s <= 300:
        out.append(f"analysis.interval: {a.interval_s:g}s must be in (0, 300] seconds")
    if not 0.9 <= a.confidence < 1:
        out.append(f"analysis.confidence: {a.confidence:g} must be in [0.9, 1)")
    if a.extend_s < 0 or a.baseline_s < 0:
        out.append("analysis.extend, analysis.baseline: must not be negative")
    if a.min_samples < 5:
        out.append(f"analysis.min_samples: {a.min_samples} is too few to judge (at least 5)")
    for m in a.metrics:
        if m.direction not in ("increase", "decrease"):
            out.append(f"analysis.metric {m.name!r}: direction must be increase or decrease")
        if m.tolerance < 0 or m.floor < 0:
            out.append(f"analysis.metric {m.name!r}: tolerance and floor must not be negative")
        if m.min_samples < 5:
            out.append(f"analysis.metric {m.name!r}: min_samples must be at least 5")
    return out
