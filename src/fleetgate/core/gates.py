"""Health gates and rollout decisions: the one import for callers.

The logic lives in two modules, each with its contract in its docstring:

- ``core.health``: ``evaluate_health`` (one sample vs its baseline -> HEALTHY / DEGRADED /
  FAILED with reasons), ``canary_verdict`` (Guardrail 1's PASS/FAIL), ``fleet_health_summary``.
- ``core.decisions``: ``wave_decision`` (the spec's wave failure matrix, exact boundaries),
  ``unreachable_decision`` (> 20 % unreachable halts), ``rollback_scope`` (device / wave /
  all).

Pure: no I/O, no clock, no randomness.
"""

from __future__ import annotations

from fleetgate.core.decisions import (
    RollbackScope,
    ScopeKind,
    UnreachableAction,
    UnreachableDecision,
    WaveAction,
    WaveDecision,
    rollback_scope,
    threshold,
    unreachable_decision,
    wave_decision,
)
from fleetgate.core.health import (
    CanaryVerdict,
    DeviceHealth,
    HealthCounts,
    HealthVerdict,
    Verdict,
    canary_verdict,
    evaluate_health,
    fleet_health_summary,
    worst,
)

__all__ = [
    "CanaryVerdict",
    "DeviceHealth",
    "HealthCounts",
    "HealthVerdict",
    "RollbackScope",
    "ScopeKind",
    "UnreachableAction",
    "UnreachableDecision",
    "Verdict",
    "WaveAction",
    "WaveDecision",
    "canary_verdict",
    "evaluate_health",
    "fleet_health_summary",
    "rollback_scope",
    "threshold",
    "unreachable_decision",
    "wave_decision",
    "worst",
]
