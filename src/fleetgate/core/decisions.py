"""Rollout decisions: the wave failure matrix, the unreachable rule and the rollback scope.

Pure: no I/O, no clock, no randomness. Counts in, a frozen decision out, each with a reason
that quotes the numbers.

Boundaries are exact. Rates are compared as rationals (``fractions.Fraction``); the policy's
float thresholds are read as the decimals written in the policy (``Fraction(repr(x))``), so
1 failed of 20 is exactly 5 % and 0.05 is exactly 5 %: no float rounding can move a device
across a boundary.

Wave failure decision matrix (spec, Phase 4), with the default thresholds:

    failed == 0            -> CONTINUE
    rate <  5 %            -> QUARANTINE_AND_CONTINUE  ("Quarantine failed devices, continue")
    5 % <= rate <= 20 %    -> PAUSE_FOR_HUMAN          ("Pause deployment, ... human decision")
    rate > 20 %            -> ROLLBACK_WAVE_AND_HALT   ("Automatic rollback of current wave, HALT")

Exactly 5 % and exactly 20 % pause: the spec writes "< 5%", "5-20%", "> 20%".

Unreachable rule (spec, Device Unreachable During Deployment): "If unreachable count exceeds
20% of wave -> HALT deployment"; exactly 20 % continues, skipping the unreachable devices.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass
from enum import Enum
from fractions import Fraction

from fleetgate.core.policy import Thresholds


class WaveAction(str, Enum):
    """Mildest first: ``severity`` orders them."""

    CONTINUE = "CONTINUE"
    QUARANTINE_AND_CONTINUE = "QUARANTINE_AND_CONTINUE"
    PAUSE_FOR_HUMAN = "PAUSE_FOR_HUMAN"
    ROLLBACK_WAVE_AND_HALT = "ROLLBACK_WAVE_AND_HALT"

    @property
    def severity(self) -> int:
        return list(WaveAction).index(self)


class UnreachableAction(str, Enum):
    CONTINUE_SKIPPING = "CONTINUE_SKIPPING"
    HALT = "HALT"


class ScopeKind(str, Enum):
    """How much to roll back. NONE: nothing failed."""

    NONE = "NONE"
    DEVICE = "DEVICE"
    WAVE = "WAVE"
    ALL = "ALL"


@dataclass(frozen=True, slots=True)
class WaveDecision:
    action: WaveAction
    failed: int
    targeted: int
    rate: Fraction
    reason: str

    @property
    def percent(self) -> float:
        """The failure rate in percent, for display and JSON (decide on ``rate``)."""
        return float(self.rate * 100)


@dataclass(frozen=True, slots=True)
class UnreachableDecision:
    action: UnreachableAction
    unreachable: int
    targeted: int
    rate: Fraction
    reason: str

    @property
    def percent(self) -> float:
        return float(self.rate * 100)


@dataclass(frozen=True, slots=True)
class RollbackScope:
    """What to roll back and what to quarantine. Device ids are sorted; ``waves`` are the
    waves whose devices are rolled back (all of them for WAVE and ALL)."""

    kind: ScopeKind
    rollback: tuple[str, ...]
    quarantine: tuple[str, ...]
    waves: tuple[int, ...]
    reason: str


def threshold(x: float) -> Fraction:
    """A policy fraction as the exact decimal written in the policy (0.05 -> 1/20)."""
    return Fraction(repr(float(x)))


def _rate(count: int, targeted: int, what: str) -> Fraction:
    if targeted < 0 or count < 0:
        raise ValueError(f"{what} and targeted must not be negative ({count}/{targeted})")
    if count > targeted:
        raise ValueError(f"{what} ({count}) exceeds devices targeted ({targeted})")
    return Fraction(count, targeted) if targeted else Fraction(0)


def _pct(rate: Fraction) -> str:
    return f"{float(rate * 100):.1f} %"


def wave_decision(failed: int, targeted: int, thresholds: Thresholds) -> WaveDecision:
    """The spec's Wave Failure Decision Matrix for ``failed`` of ``targeted`` wave devices.

    With q = ``wave_quarantine_below`` (5 %) and h = ``wave_halt_above`` (20 %):
    0 failed (or an empty wave) -> CONTINUE; rate < q -> QUARANTINE_AND_CONTINUE;
    q <= rate <= h -> PAUSE_FOR_HUMAN; rate > h -> ROLLBACK_WAVE_AND_HALT.
    So exactly 5 % and exactly 20 % pause. Small waves follow the same arithmetic: 1 failed of
    1 or of 3 is over 20 % and rolls the wave back.
    """
    rate = _rate(failed, targeted, "failed")
    q, h = threshold(thresholds.wave_quarantine_below), threshold(thresholds.wave_halt_above)
    counts = f"{failed}/{targeted} devices failed ({_pct(rate)})"
    if failed == 0:
        action, why = WaveAction.CONTINUE, "no device failed"
    elif rate < q:
        action, why = WaveAction.QUARANTINE_AND_CONTINUE, f"below {_pct(q)}: quarantine them"
    elif rate <= h:
        action, why = (
            WaveAction.PAUSE_FOR_HUMAN,
            f"between {_pct(q)} and {_pct(h)}: pause for a human decision",
        )
    else:
        action, why = WaveAction.ROLLBACK_WAVE_AND_HALT, f"above {_pct(h)}: roll back and halt"
    reason = f"{counts}: {why}" if failed else f"{why} ({failed}/{targeted})"
    return WaveDecision(action, failed, targeted, rate, reason)


def unreachable_decision(
    unreachable: int, targeted: int, thresholds: Thresholds
) -> UnreachableDecision:
    """The spec's unreachable rule: "If unreachable count exceeds 20% of wave -> HALT
    deployment".

    HALT when ``unreachable / targeted > unreachable_halt_above``; otherwise CONTINUE_SKIPPING
    (the unreachable devices are retried, then marked SKIPPED and quarantined). Exactly 20 %
    continues. An empty wave continues.
    """
    rate = _rate(unreachable, targeted, "unreachable")
    h = threshold(thresholds.unreachable_halt_above)
    counts = f"{unreachable}/{targeted} devices unreachable ({_pct(rate)})"
    if rate > h:
        return UnreachableDecision(
            UnreachableAction.HALT, unreachable, targeted, rate, f"{counts}: above {_pct(h)}: halt"
        )
    why = "skip them and continue" if unreachable else "continue"
    return UnreachableDecision(
        UnreachableAction.CONTINUE_SKIPPING,
        unreachable,
        targeted,
        rate,
        f"{counts}: at most {_pct(h)}: {why}",
    )


def rollback_scope(
    failed_by_wave: Mapping[int, Collection[str]],
    deployed_by_wave: Mapping[int, Collection[str]],
    current_wave: int,
    thresholds: Thresholds,
) -> RollbackScope:
    """Scope of a degradation (spec, Health Check Degradation During Rollout, step 3).

    Waves are numbered from 0 (the canaries) to ``current_wave``; ``deployed_by_wave`` holds
    the devices running the new release in each wave, ``failed_by_wave`` those that failed
    the health check ("Collect health metrics from ALL deployed devices"). Contract: every
    failed device is a deployed device of the same wave, no device is in two waves, and no
    wave after ``current_wave`` has devices; otherwise ``ValueError``.

    Interpretation of the spec's three cases:

    - "a. Single device: quarantine, continue cautiously" -> DEVICE: exactly one device failed
      and its wave's failure rate is not above ``wave_halt_above``; roll back and quarantine
      that device only.
    - "b. Single wave: rollback current wave" -> WAVE: all failures are in one wave and either
      more than one device failed there, or the one failure is above ``wave_halt_above`` of
      its wave (1 of 3 rolls its wave back, as the decision matrix does); roll back every
      deployed device of that wave.
    - "c. Multiple waves: rollback ALL waves" -> ALL: failed devices in two or more waves;
      roll back every deployed device of every wave, canaries included.

    ``quarantine`` is always the failed devices (held for investigation); ``rollback`` is a
    superset of them for every kind and never holds an undeployed device. Whether the
    deployment continues is the decision matrix's call, not this function's.
    """
    if current_wave < 0:
        raise ValueError(f"current wave {current_wave} must not be negative")
    deployed: dict[int, frozenset[str]] = {}
    owner: dict[str, int] = {}
    for wave, devices in deployed_by_wave.items():
        ids = frozenset(devices)
        if ids and not 0 <= wave <= current_wave:
            raise ValueError(f"wave {wave} has deployed devices but is outside 0..{current_wave}")
        for dev in ids:
            if dev in owner:
                raise ValueError(f"device {dev} is in waves {owner[dev]} and {wave}")
            owner[dev] = wave
        deployed[wave] = ids
    failed: dict[int, frozenset[str]] = {}
    for wave, devices in failed_by_wave.items():
        ids = frozenset(devices)
        stray = sorted(ids - deployed.get(wave, frozenset()))
        if stray:
            raise ValueError(f"failed devices not deployed in wave {wave}: {', '.join(stray)}")
        if ids:
            failed[wave] = ids

    bad = tuple(sorted(d for ids in failed.values() for d in ids))
    if not bad:
        return RollbackScope(ScopeKind.NONE, (), (), (), "no deployed device failed")
    if len(failed) >= 2:
        waves = tuple(sorted(w for w, ids in deployed.items() if ids))
        rollback = tuple(sorted(d for ids in deployed.values() for d in ids))
        listed = ", ".join(str(w) for w in sorted(failed))
        return RollbackScope(
            ScopeKind.ALL,
            rollback,
            bad,
            waves,
            f"{len(bad)} devices failed across waves {listed}: roll back all "
            f"{len(rollback)} deployed devices",
        )
    ((wave, ids),) = failed.items()
    wave_rate = Fraction(len(ids), len(deployed[wave]))
    halt = threshold(thresholds.wave_halt_above)
    share = f"{len(ids)}/{len(deployed[wave])} of wave {wave} ({_pct(wave_rate)})"
    if len(ids) == 1 and wave_rate <= halt:
        return RollbackScope(
            ScopeKind.DEVICE,
            bad,
            bad,
            (wave,),
            f"single device {bad[0]} failed, {share}: quarantine it, continue cautiously",
        )
    why = "more than one device failed" if len(ids) > 1 else f"above {_pct(halt)}"
    return RollbackScope(
        ScopeKind.WAVE,
        tuple(sorted(deployed[wave])),
        bad,
        (wave,),
        f"{share} failed, {why}: roll back wave {wave}",
    )
