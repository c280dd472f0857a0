"""The deployment plan: who is targeted, who are the canaries, how the rest is cut into waves.

Pure and deterministic: the same fleet, manifest, policy and selection always give the same plan
(ties are broken by device id), so a plan can be re-derived and compared during an audit.

Rules (spec PREPARE, "Canary Selection Criteria", Guardrail 3; DESIGN.md invariants 2 and 3):

- *Targeted* = selected, ``state: active``, and compatible with the release. Devices in
  maintenance or quarantine, and incompatible ones, are *excluded* with a reason and never
  deployed. Devices the selection leaves out are *not targeted*.
- *Canaries*: ``ceil(percent × targeted)`` devices, at least 1, never a ``critical`` device.
  Coverage first: at least one canary per value of every ``cover`` attribute (hardware type,
  group) present among the targeted devices, chosen greedily (the candidate covering the most
  still-uncovered values wins; ties: higher monitoring fidelity, then id). The quota is then
  filled with the best-monitored devices, preferring (hardware, group) combinations no canary
  has yet. When coverage needs more than 5 % of the targeted fleet, the plan says so in
  ``notes``; a value held only by critical devices cannot be covered and is reported.
- *Waves*: cumulative percentages of the targeted fleet (canaries count as deployed). Wave ``i``
  brings the deployed count to ``ceil(cum_i × targeted)``; a wave that would add no device is
  dropped. Every wave is stratified across (hardware, group) by systematic sampling: each device
  gets the key ``(rank_in_stratum + 0.5) / stratum_size`` and the remaining devices are taken in
  key order, so any prefix holds each stratum in proportion. Within a stratum the best-monitored
  go first; ``critical`` devices go after every other device, so single points of failure are
  touched only once the release has proven itself on the rest of the fleet.
- With two or more targeted devices no stage (canary or wave) contains all of them.
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

from fleetgate.core.compat import CompatibilityChecker
from fleetgate.core.model import Device, DeviceState, Manifest
from fleetgate.core.policy import MAX_CANARY_PERCENT, Policy


@dataclass(frozen=True, slots=True)
class Exclusion:
    device: Device
    reason: str


@dataclass(frozen=True, slots=True)
class Canary:
    device: Device
    reason: str


@dataclass(frozen=True, slots=True)
class Wave:
    number: int  # 1-based; the canary stage is wave 0 in events
    devices: tuple[Device, ...]
    cumulative_percent: float  # share of the targeted fleet deployed after this wave

    def counts(self, attribute: str) -> dict[str, int]:
        return dict(sorted(Counter(d.attribute(attribute) for d in self.devices).items()))


@dataclass(frozen=True, slots=True)
class GroupCompatibility:
    """One row of the PREPARE "Device groups" table: a (group, hardware, arch) cell."""

    group: str
    hardware: str
    arch: str
    count: int
    compatible: int
    reasons: tuple[str, ...]

    @property
    def status(self) -> str:
        if self.compatible == self.count:
            return "PASS"
        return "FAIL" if self.compatible == 0 else "PARTIAL"


@dataclass(frozen=True, slots=True)
class Plan:
    manifest: Manifest
    fleet_total: int
    targeted: tuple[Device, ...]
    canaries: tuple[Canary, ...]
    waves: tuple[Wave, ...]
    excluded: tuple[Exclusion, ...]
    not_targeted: tuple[Device, ...]
    compatibility: tuple[GroupCompatibility, ...]
    uncovered: tuple[str, ...] = ()
    notes: tuple[str, ...] = field(default=())

    @property
    def blockers(self) -> tuple[str, ...]:
        """Reasons this plan must not run at all (PREPARE fails)."""
        out: list[str] = []
        if not self.targeted:
            out.append("no device is targeted (selection, state and compatibility left none)")
        elif not self.canaries:
            out.append("no canary possible: every targeted device is critical")
        return tuple(out)

    @property
    def canary_ids(self) -> tuple[str, ...]:
        return tuple(c.device.id for c in self.canaries)

    def stages(self) -> list[tuple[Device, ...]]:
        """Stage 0 = canaries, then each wave."""
        return [tuple(c.device for c in self.canaries), *(w.devices for w in self.waves)]


def plan_deployment(
    fleet: Sequence[Device],
    manifest: Manifest,
    policy: Policy,
    select: Callable[[Device], bool] | None = None,
) -> Plan:
    checker = CompatibilityChecker(manifest.requires)
    targeted: list[Device] = []
    excluded: list[Exclusion] = []
    not_targeted: list[Device] = []
    unjudged: list[str] = []  # not selected, but their facts are unknown
    cells: dict[tuple[str, str, str], list[int]] = defaultdict(lambda: [0, 0])
    cell_reasons: dict[tuple[str, str, str], set[str]] = defaultdict(set)
    for d in sorted(fleet, key=lambda d: d.id):
        if select is not None and not select(d):
            not_targeted.append(d)
            if not d.facts_known:
                unjudged.append(d.id)
            continue
        if d.hardware is None or d.arch is None or d.resources is None:
            # Never guessed: the device has not reported them (registry refresh does).
            missing = ", ".join(d.unknown_facts)
            excluded.append(Exclusion(d, f"facts unknown ({missing}): fleetgate registry refresh"))
            continue
        key = (d.group, d.hardware, d.arch.value)
        cells[key][0] += 1
        compat = checker.check(d)
        if compat.ok:
            cells[key][1] += 1
        else:
            cell_reasons[key].update(compat.reasons)
        if d.state is not DeviceState.ACTIVE:
            why = f": {d.state_reason}" if d.state_reason else ""
            excluded.append(Exclusion(d, f"state {d.state.value}{why}"))
        elif not compat.ok:
            excluded.append(Exclusion(d, "incompatible: " + "; ".join(compat.reasons)))
        else:
            targeted.append(d)

    compatibility = tuple(
        GroupCompatibility(g, h, a, n, ok, tuple(sorted(cell_reasons[(g, h, a)])))
        for (g, h, a), (n, ok) in sorted(cells.items())
    )
    canaries, uncovered, notes = select_canaries(targeted, policy)
    if unjudged:
        # A selection on a fact (hardware=…, arch=…) cannot match an unknown one: say so.
        shown = ", ".join(unjudged[:10]) + (" …" if len(unjudged) > 10 else "")
        notes = [
            *notes,
            f"{len(unjudged)} device(s) not selected whose facts are unknown (a selection on "
            f"hardware, arch, gpu or software never matches them): {shown}",
        ]
    canary_ids = {c.device.id for c in canaries}
    rest = [d for d in targeted if d.id not in canary_ids]
    waves = cut_waves(rest, len(canaries), len(targeted), policy.waves)
    return Plan(
        manifest=manifest,
        fleet_total=len(fleet),
        targeted=tuple(targeted),
        canaries=tuple(canaries),
        waves=tuple(waves),
        excluded=tuple(excluded),
        not_targeted=tuple(not_targeted),
        compatibility=compatibility,
        uncovered=tuple(uncovered),
        notes=tuple(notes),
    )


def _monitoring_key(d: Device) -> tuple[int, str]:
    return (-d.monitoring.rank, d.id)


def select_canaries(
    targeted: Sequence[Device], policy: Policy
) -> tuple[list[Canary], list[str], list[str]]:
    """Returns (canaries with reasons, uncoverable values, notes for the plan)."""
    if not targeted:
        return [], [], []
    cover = policy.canary.cover
    quota = max(1, math.ceil(policy.canary.percent * len(targeted) / 100))
    needed = {(a, d.attribute(a)) for d in targeted for a in cover}
    candidates = sorted((d for d in targeted if not d.critical), key=_monitoring_key)
    coverable = {(a, d.attribute(a)) for d in candidates for a in cover}
    uncovered = sorted(f"{a}={v}" for a, v in needed - coverable)

    chosen: list[Canary] = []
    taken: set[str] = set()
    remaining = set(coverable)
    while remaining:
        # Greedy set cover: the first candidate in monitoring order with the best gain wins.
        best: Device | None = None
        best_gain: set[tuple[str, str]] = set()
        for d in candidates:
            if d.id in taken:
                continue
            gain = {(a, d.attribute(a)) for a in cover} & remaining
            if len(gain) > len(best_gain):
                best, best_gain = d, gain
                if len(gain) == len(cover):
                    break
        if best is None:
            break
        taken.add(best.id)
        remaining -= best_gain
        covers = ", ".join(f"{a}={v}" for a, v in sorted(best_gain))
        chosen.append(Canary(best, f"covers {covers}; monitoring {best.monitoring.value}"))

    if len(chosen) < quota:
        seen_cells = {(c.device.hardware, c.device.group) for c in chosen}
        fill = sorted(
            (d for d in candidates if d.id not in taken),
            key=lambda d: ((d.hardware, d.group) in seen_cells, *_monitoring_key(d)),
        )
        for d in fill[: quota - len(chosen)]:
            seen_cells.add((d.hardware, d.group))
            chosen.append(
                Canary(
                    d,
                    f"fills the {policy.canary.percent:g} % quota; monitoring {d.monitoring.value}",
                )
            )

    notes: list[str] = []
    if len(targeted) >= 2 and len(chosen) >= len(targeted):
        # Guardrail 3 outranks coverage: the canary stage must leave at least one device out.
        dropped = chosen[len(targeted) - 1 :]
        chosen = chosen[: len(targeted) - 1]
        kept = {(a, c.device.attribute(a)) for c in chosen for a in cover}
        lost = sorted(
            {
                f"{a}={d.device.attribute(a)}"
                for d in dropped
                for a in cover
                if (a, d.device.attribute(a)) not in kept
            }
        )
        uncovered = sorted({*uncovered, *lost})
        notes.append(
            "coverage would put every targeted device in the canary stage (Guardrail 3 forbids "
            f"deploying all at once): {len(chosen)} canaries kept"
        )
    ceiling = max(1, math.floor(MAX_CANARY_PERCENT * len(targeted) / 100))
    if len(chosen) > ceiling:
        share = 100 * len(chosen) / len(targeted)
        notes.append(
            f"coverage needs {len(chosen)} canaries = {share:.1f} % of {len(targeted)} targeted "
            f"devices, above the 5 % ceiling: one per hardware type and group is kept"
        )
    if uncovered:
        notes.append(
            "no canary possible for "
            + ", ".join(uncovered)
            + " (only critical devices have it): those devices are covered by no canary"
        )
    if not chosen:
        notes.append("no canary possible: every targeted device is critical")
    return chosen, uncovered, notes


def _stratified_order(devices: Iterable[Device]) -> list[Device]:
    strata: dict[tuple[str, str], list[Device]] = defaultdict(list)
    for d in devices:  # targeted devices: their facts are known
        strata[(d.hardware or "", d.group)].append(d)
    rank = {name: r for r, name in enumerate(_balanced_strata(strata))}
    keyed: list[tuple[bool, float, int, str, Device]] = []
    for name, members in strata.items():
        members.sort(key=lambda d: (d.critical, *_monitoring_key(d)))
        n = len(members)
        keyed.extend(
            (d.critical, (i + 0.5) / n, rank[name], d.id, d) for i, d in enumerate(members)
        )
    keyed.sort(key=lambda k: k[:4])
    return [k[4] for k in keyed]


def _balanced_strata(strata: Iterable[tuple[str, str]]) -> list[tuple[str, str]]:
    """Tie order for strata of equal key: alternate hardware *and* group, so a prefix of the
    device order is balanced on both marginals, not only per (hardware, group) cell.
    O(S²) in the number of strata, which is small (types × groups)."""
    remaining = sorted(strata)
    used_hw: Counter[str] = Counter()
    used_group: Counter[str] = Counter()
    order: list[tuple[str, str]] = []
    while remaining:
        pick = min(remaining, key=lambda s: (used_hw[s[0]] + used_group[s[1]], s))
        remaining.remove(pick)
        used_hw[pick[0]] += 1
        used_group[pick[1]] += 1
        order.append(pick)
    return order


def cut_waves(
    rest: Sequence[Device], deployed: int, targeted: int, cumulative: Sequence[float]
) -> list[Wave]:
    order = _stratified_order(rest)
    waves: list[Wave] = []
    pos = 0
    for pct in cumulative:
        goal = targeted if pct >= 100 else math.ceil(pct * targeted / 100)
        take = goal - deployed
        if take <= 0:
            continue
        batch = tuple(order[pos : pos + take])
        pos += take
        deployed += take
        waves.append(Wave(len(waves) + 1, batch, 100 * deployed / targeted))
    return waves


@dataclass(frozen=True, slots=True)
class CanaryReplacement:
    """How the cells of failed canaries are covered again (invariant 11)."""

    replacements: tuple[Canary, ...]  # join the canary stage; go through all of it
    excluded: tuple[Exclusion, ...]  # not deployed: a value of theirs has no canary left
    uncovered: tuple[str, ...]  # "hardware=rpi4" values no canary proves any more


def replace_canaries(
    retired: Sequence[Device],
    kept: Sequence[Device],
    pending: Sequence[Device],
    cover: Sequence[str],
    decision: str,
) -> CanaryReplacement:
    """Cover again what the ``retired`` (failed) canaries covered.

    ``kept`` are the canaries still standing (they are verified again in round 2); ``pending``
    the wave devices nobody has touched yet. A *lost* value is a cover value (``hardware=…``,
    ``group=…``) of a retired canary that no kept canary has.

    - ``decision == "replace"``: for each retired canary, the best-monitored non-critical
      pending device of exactly its cell (all cover values equal) replaces it; values still
      lost are then covered greedily, as ``select_canaries`` does.
    - A failed canary's *cell* is proven again only by a replacement of that same cell: when
      there is none (or the decision is "exclude"), every pending device of that cell is
      *excluded*, even if other canaries hold its hardware type and its group separately.
    - Every other pending device that still has a lost value is excluded too: no canary
      proves its hardware type or group.

    Deterministic: ties are broken by monitoring, then id.
    """
    if decision not in ("replace", "exclude"):
        raise ValueError(f"decision must be 'replace' or 'exclude', not {decision!r}")

    def values(d: Device) -> set[tuple[str, str]]:
        return {(a, d.attribute(a)) for a in cover}

    def cell(d: Device) -> tuple[str, ...]:
        return tuple(d.attribute(a) for a in cover)

    held = {v for d in kept for v in values(d)}
    lost = {v for d in retired for v in values(d)} - held
    chosen: list[Canary] = []
    unproven_cells = {cell(r) for r in retired}
    if decision == "replace":
        candidates = sorted(
            (d for d in pending if not d.critical and d.state is DeviceState.ACTIVE),
            key=_monitoring_key,
        )
        taken: set[str] = set()
        for r in sorted(retired, key=lambda d: d.id):
            same = [d for d in candidates if d.id not in taken and cell(d) == cell(r)]
            if same:
                best = same[0]
                taken.add(best.id)
                lost -= values(best)
                unproven_cells.discard(cell(r))
                chosen.append(Canary(best, f"replaces failed canary {r.id} (same cell)"))
        while lost:
            pick: Device | None = None
            gain: set[tuple[str, str]] = set()
            for d in candidates:
                g = values(d) & lost if d.id not in taken else set()
                if len(g) > len(gain):
                    pick, gain = d, g
            if pick is None:
                break
            taken.add(pick.id)
            lost -= gain
            covers = ", ".join(f"{a}={v}" for a, v in sorted(gain))
            chosen.append(Canary(pick, f"replaces a failed canary: covers {covers}"))
    taken_ids = {c.device.id for c in chosen}

    def why(d: Device) -> str:
        if cell(d) in unproven_cells:
            where = ", ".join(f"{a}={v}" for a, v in zip(cover, cell(d), strict=True))
            return f"its cell ({where}) lost its canary and has no replacement"
        return (
            "no canary proves "
            + ", ".join(f"{a}={v}" for a, v in sorted(values(d) & lost))
            + " after its canary failed"
        )

    excluded = tuple(
        Exclusion(d, why(d))
        for d in sorted(pending, key=lambda d: d.id)
        if d.id not in taken_ids and (cell(d) in unproven_cells or values(d) & lost)
    )
    uncovered = tuple(
        sorted(
            {f"{a}={v}" for a, v in lost}
            | {",".join(f"{a}={v}" for a, v in zip(cover, c, strict=True)) for c in unproven_cells}
        )
    )
    return CanaryReplacement(tuple(chosen), excluded, uncovered)


def control_candidates(
    canaries: Sequence[Device], pending: Sequence[Device], cover: Sequence[str], per: int = 5
) -> dict[str, list[Device]]:
    """Control devices for each canary, best first (issue 11: a concurrent control cohort).

    A control runs the *old* release at the same time as its canary and is sampled at the same
    moments, so a fleet-wide change (a load surge, a hot day) moves both alike. Candidates for a
    canary are the untouched wave devices (``pending``) of exactly its cell (every ``cover``
    attribute equal), not critical, ``active``; best-monitored first, then by id. Up to ``per``
    per canary, dealt out in turns so canaries of one cell share it fairly; a device is offered
    to one canary only. The engine keeps those that answer healthy and pools them (several
    controls narrow the comparison, docs/analysis.md); a canary without any is judged against
    its own baseline.
    """
    pool = sorted(
        (d for d in pending if not d.critical and d.state is DeviceState.ACTIVE),
        key=_monitoring_key,
    )
    by_cell: dict[tuple[str, ...], list[Device]] = defaultdict(list)
    for d in pool:
        by_cell[tuple(d.attribute(a) for a in cover)].append(d)
    out: dict[str, list[Device]] = {c.id: [] for c in sorted(canaries, key=lambda d: d.id)}
    cells = {c.id: tuple(c.attribute(a) for a in cover) for c in canaries}
    for _ in range(per):
        for cid in out:
            left = by_cell.get(cells[cid])
            if left:
                out[cid].append(left.pop(0))
    return out
