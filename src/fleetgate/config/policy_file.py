"""Load ``rollout.toml`` into a ``core.policy.Policy``.

Shape is checked by pydantic (unknown keys are errors: a typo such as ``wave_halt_abve`` must not
silently fall back to a default); the spec's bounds (invariant 12: a policy may tighten them,
never loosen them) are checked by ``core.policy`` so they hold for policies built in code too.
Every problem becomes one line ``FILE: section.field: reason`` and all of them are reported at
once. The one audited override a file may write is ``allow_short_soak = true``.

Durations are written ``"15m"``, ``"90s"``, ``"1h30m"`` or as a number of seconds.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field
from pydantic import ValidationError as PydanticValidationError

from fleetgate.config.toml_file import read_toml
from fleetgate.core.policy import (
    AnalysisMetric,
    AnalysisPolicy,
    CanaryPolicy,
    HealthPolicy,
    Policy,
    RetryPolicy,
    SoakPolicy,
    Thresholds,
    policy_problems,
)
from fleetgate.errors import PolicyError, ValidationError

_DURATION_RE = re.compile(r"^(?:(\d+(?:\.\d+)?)h)?(?:(\d+(?:\.\d+)?)m)?(?:(\d+(?:\.\d+)?)s)?$")


def parse_duration(value: object) -> float:
    """``"15m"`` → 900.0. Numbers are seconds. Raises ValueError on anything else."""
    if isinstance(value, bool):
        raise ValueError("expected a duration like '15m' or a number of seconds")
    if isinstance(value, int | float):
        if value < 0:
            raise ValueError("duration must not be negative")
        return float(value)
    if isinstance(value, str):
        m = _DURATION_RE.match(value.strip())
        if m and any(m.groups()):
            h, mi, s = (float(x) if x else 0.0 for x in m.groups())
            return h * 3600 + mi * 60 + s
    raise ValueError(f"{value!r} is not a duration like '15m', '90s' or '1h30m'")


Duration = Annotated[float, BeforeValidator(parse_duration)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=False)


class _Canary(_Strict):
    percent: float = 2.0
    cover: list[str] = Field(default_factory=lambda: ["hardware", "group"])


class _Waves(_Strict):
    cumulative: list[float] = Field(default_factory=lambda: [25.0, 50.0, 100.0])


class _Soak(_Strict):
    canary: Duration = 900.0
    between_waves: Duration = 900.0


class _Health(_Strict):
    error_rate_increase_max: float = 0.01
    latency_ratio_max: float = 1.2
    cpu_percent_max: float = 90.0
    temperature_c_max: float = 85.0
    crash_restarts_max: int = 2
    latency_floor_ms: float = 20.0


class _Thresholds(_Strict):
    wave_quarantine_below: float = 0.05
    wave_halt_above: float = 0.20
    unreachable_halt_above: float = 0.20


class _Retries(_Strict):
    attempts: int = 3
    backoff: Duration = 2.0


class _Metric(_Strict):
    name: str
    quantile: float | None = None  # a summary's quantile: name{quantile="0.95"}
    direction: str = "increase"
    tolerance: float = 0.25
    floor: float = 0.0
    critical: bool = True
    min_samples: int = 10


class _Analysis(_Strict):
    interval: Duration = 30.0
    confidence: float = 0.98
    extend: Duration = 900.0
    baseline: Duration = 900.0
    control: bool = True
    min_samples: int = 10
    metric: list[_Metric] = Field(default_factory=list)


class _Approval(_Strict):
    fleet_rollout: bool = True
    distinct_approver: bool = False


class _PolicyFile(_Strict):
    allow_short_soak: bool = False
    canary: _Canary = Field(default_factory=_Canary)
    waves: _Waves = Field(default_factory=_Waves)
    soak: _Soak = Field(default_factory=_Soak)
    health: _Health = Field(default_factory=_Health)
    thresholds: _Thresholds = Field(default_factory=_Thresholds)
    retries: _Retries = Field(default_factory=_Retries)
    approval: _Approval = Field(default_factory=_Approval)
    analysis: _Analysis = Field(default_factory=_Analysis)


def _loc(loc: tuple[int | str, ...]) -> str:
    return ".".join(str(x) for x in loc) or "(top level)"


def policy_from_dict(data: dict[str, Any], where: str) -> Policy:
    try:
        f = _PolicyFile.model_validate(data)
    except PydanticValidationError as exc:
        raise ValidationError(
            [f"{where}: {_loc(e['loc'])}: {e['msg']}" for e in exc.errors()]
        ) from None
    # Build without validation first so *all* guardrail problems are reported together.
    policy = object.__new__(Policy)
    fields = {
        "canary": CanaryPolicy(f.canary.percent, tuple(f.canary.cover)),
        "waves": tuple(f.waves.cumulative),
        "soak": SoakPolicy(f.soak.canary, f.soak.between_waves),
        "health": HealthPolicy(**f.health.model_dump()),
        "thresholds": Thresholds(**f.thresholds.model_dump()),
        "retries": RetryPolicy(f.retries.attempts, f.retries.backoff),
        "fleet_rollout_approval": f.approval.fleet_rollout,
        "analysis": AnalysisPolicy(
            interval_s=f.analysis.interval,
            confidence=f.analysis.confidence,
            extend_s=f.analysis.extend,
            baseline_s=f.analysis.baseline,
            control=f.analysis.control,
            min_samples=f.analysis.min_samples,
            metrics=tuple(
                AnalysisMetric(
                    name=m.name if m.quantile is None else f'{m.name}{{quantile="{m.quantile:g}"}}',
                    direction=m.direction,
                    tolerance=m.tolerance,
                    floor=m.floor,
                    critical=m.critical,
                    min_samples=m.min_samples,
                )
                for m in f.analysis.metric
            ),
        ),
        "allow_short_soak": f.allow_short_soak,
        "distinct_approver": f.approval.distinct_approver,
    }
    for k, v in fields.items():
        object.__setattr__(policy, k, v)
    problems = policy_problems(policy)
    if problems:
        raise ValidationError([f"{where}: {p}" for p in problems])
    try:
        return Policy(**fields)  # type: ignore[arg-type]
    except PolicyError as exc:  # pragma: no cover - policy_problems already said it
        raise ValidationError([f"{where}: {exc}"]) from exc


def load_policy(path: Path | None) -> Policy:
    """The policy in ``path``; the spec's defaults when ``path`` is None."""
    return load_policy_doc(path)[0]


def load_policy_doc(path: Path | None) -> tuple[Policy, dict[str, Any]]:
    """The policy and the document it came from (recorded in the deployment's first event, so
    a resumed controller runs under exactly the policy the deployment started with)."""
    if path is None:
        return Policy(), {}
    data = read_toml(path, "no such policy file")
    return policy_from_dict(data, str(path)), data
