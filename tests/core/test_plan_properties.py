"""Invariants 2 and 3 of DESIGN.md as properties over random fleets (≥200 fleets each)."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fleetgate.core.model import (
    Arch,
    ArtifactKind,
    Device,
    DeviceState,
    Manifest,
    Monitoring,
    Resources,
)
from fleetgate.core.plan import Plan, plan_deployment
from fleetgate.core.policy import CanaryPolicy, Policy
from fleetgate.errors import PolicyError

HARDWARE = ["jetson-orin-nano", "rpi4", "gateway", "rpi5", "custom-x"]
GROUPS = ["plant-a", "plant-b", "plant-c", "lab", "edge-1", "edge-2"]


_ROW = st.tuples(
    st.sampled_from(HARDWARE),
    st.sampled_from(list(Arch)),
    st.sampled_from(GROUPS),
    st.sampled_from(list(Monitoring)),
    st.integers(0, 9),  # 0: critical
    st.integers(0, 9),  # 8: maintenance, 9: quarantine
)


def _device(i: int, row: tuple[str, Arch, str, Monitoring, int, int]) -> Device:
    hardware, arch, group, monitoring, crit, state = row
    return Device(
        id=f"dev-{i:05d}",
        hardware=hardware,
        arch=arch,
        group=group,
        address=f"http://127.0.0.1:{7000 + i}",
        resources=Resources(ram_mb=4096, disk_mb=64000, gpu=False),
        token_env="T",
        monitoring=monitoring,
        critical=crit == 0,
        state={8: DeviceState.MAINTENANCE, 9: DeviceState.QUARANTINE}.get(
            state, DeviceState.ACTIVE
        ),
    )


def fleets() -> st.SearchStrategy[list[Device]]:
    return st.lists(_ROW, min_size=1, max_size=300).map(
        lambda rows: [_device(i, r) for i, r in enumerate(rows)]
    )


@st.composite
def policies(draw: st.DrawFn) -> Policy:
    """Only policies inside the spec's bounds (core.policy refuses the rest; test_policy.py
    proves that): wave 1 in 10-25 %, wave 2 in 25-50 %, wave 3 and later in 50-100 %."""
    first = draw(st.sampled_from([10.0, 15.0, 20.0, 25.0]))
    second = draw(st.sampled_from([x for x in (25.0, 30.0, 40.0, 50.0) if x > first]))
    later = draw(
        st.lists(
            st.sampled_from([x for x in (50.0, 60.0, 75.0, 90.0) if x > second]),
            unique=True,
            max_size=3,
        )
    )
    return Policy(
        canary=CanaryPolicy(percent=draw(st.sampled_from([1.0, 2.0, 3.0, 5.0]))),
        waves=(first, second, *sorted(later), 100.0),
    )


MANIFEST = Manifest(name="vision", version="2.4.1", kind=ArtifactKind.BUNDLE)


def _check_invariant_2(plan: Plan) -> None:
    canaries = [c.device for c in plan.canaries]
    assert not any(d.critical for d in canaries), "a critical device became a canary"
    if not plan.targeted:
        return
    noncritical = [d for d in plan.targeted if not d.critical]
    if not noncritical:
        assert plan.blockers
        return
    quota = max(1, math.ceil(2.0 * len(plan.targeted) / 100))
    assert len(canaries) >= min(1, len(noncritical))
    for attr in ("hardware", "group"):
        values = {d.attribute(attr) for d in noncritical}
        covered = {d.attribute(attr) for d in canaries}
        missing = values - covered
        # A value may stay uncovered only when covering it would deploy all at once, and the
        # plan must then say so.
        for v in missing:
            assert f"{attr}={v}" in plan.uncovered
    assert len(canaries) >= min(quota, len(noncritical), max(1, len(plan.targeted) - 1))


def _check_invariant_3(plan: Plan) -> None:
    n = len(plan.targeted)
    stages = [s for s in plan.stages() if s]
    ids = [d.id for s in stages for d in s]
    assert sorted(ids) == sorted(d.id for d in plan.targeted), "every target exactly once"
    assert len(ids) == len(set(ids))
    if n >= 2:
        assert all(len(s) < n for s in stages), "a stage deployed the whole fleet at once"
        assert len(stages) >= 2
    deployed = 0
    for s in stages:
        before = deployed
        deployed += len(s)
        if n >= 2:
            assert not (before == 0 and deployed == n)


@settings(max_examples=200, deadline=None)
@given(fleets(), policies())
def test_canary_coverage_invariant_2(fleet: list[Device], policy: Policy) -> None:
    plan = plan_deployment(fleet, MANIFEST, Policy(waves=policy.waves))
    _check_invariant_2(plan)


@settings(max_examples=200, deadline=None)
@given(fleets(), policies())
def test_never_all_at_once_invariant_3(fleet: list[Device], policy: Policy) -> None:
    plan = plan_deployment(fleet, MANIFEST, policy)
    _check_invariant_3(plan)
    # Waves follow the cumulative percentages: after wave i at most ceil(cum_i × n) deployed,
    # unless the canary stage alone already went past it.
    n = len(plan.targeted)
    deployed = len(plan.canaries)
    for w in plan.waves:
        deployed += len(w.devices)
        allowed = [math.ceil(p * n / 100) for p in policy.waves]
        assert deployed in allowed or deployed == n


@settings(max_examples=200, deadline=None)
@given(fleets())
def test_plan_is_deterministic_and_order_independent(fleet: list[Device]) -> None:
    a = plan_deployment(fleet, MANIFEST, Policy())
    b = plan_deployment(list(reversed(fleet)), MANIFEST, Policy())
    assert a.canary_ids == b.canary_ids
    assert [tuple(d.id for d in w.devices) for w in a.waves] == [
        tuple(d.id for d in w.devices) for w in b.waves
    ]


@st.composite
def out_of_bound_waves(draw: st.DrawFn) -> tuple[float, ...]:
    """An in-bound wave list with one wave moved outside its Guardrail 3 band, or cut short."""
    waves = list(draw(policies()).waves)
    bands = [(10.0, 25.0), (25.0, 50.0)] + [(50.0, 100.0)] * (len(waves) - 2)
    i = draw(st.integers(0, len(waves) - 1))
    if i == len(waves) - 1:
        return (waves[0], 100.0)  # too few waves: wave 2 would jump to the whole fleet
    lo, hi = bands[i]
    below, above = st.floats(0.5, lo, exclude_max=True), st.floats(hi, 120.0, exclude_min=True)
    waves[i] = draw(st.one_of(below, above))
    return tuple(waves)


@settings(max_examples=300, deadline=None)
@given(out_of_bound_waves())
def test_out_of_bound_waves_are_refused(waves: tuple[float, ...]) -> None:
    with pytest.raises(PolicyError, match=r"waves\.cumulative"):
        Policy(waves=waves)
