from __future__ import annotations

from fleetgate.core.model import (
    Arch,
    ArtifactKind,
    Device,
    DeviceState,
    Manifest,
    Monitoring,
    Requirements,
    Resources,
)
from fleetgate.core.plan import plan_deployment
from fleetgate.core.policy import Policy


def dev(
    i: int,
    hardware: str = "rpi4",
    group: str = "plant-a",
    *,
    arch: Arch = Arch.ARM64,
    monitoring: Monitoring = Monitoring.MEDIUM,
    critical: bool = False,
    state: DeviceState = DeviceState.ACTIVE,
    ram: int = 4096,
    disk: int = 32000,
    gpu: bool = False,
    software: dict[str, str] | None = None,
) -> Device:
    return Device(
        id=f"d{i:04d}",
        hardware=hardware,
        arch=arch,
        group=group,
        address=f"http://127.0.0.1:{8000 + i}",
        resources=Resources(ram, disk, gpu),
        token_env="T",
        software=software or {},
        monitoring=monitoring,
        critical=critical,
        state=state,
    )


M = Manifest(name="app", version="1.0", kind=ArtifactKind.BUNDLE)


def test_canaries_cover_every_type_and_group_and_prefer_monitoring() -> None:
    fleet = [
        dev(i, hw, g, monitoring=Monitoring.LOW)
        for i, (hw, g) in enumerate(
            (hw, g) for hw in ("rpi4", "orin", "gw") for g in ("a", "b", "c") for _ in range(10)
        )
    ]
    # One well-monitored device per hardware type, each in a different group.
    fleet[0] = dev(0, "rpi4", "a", monitoring=Monitoring.HIGH)
    fleet[40] = dev(40, "orin", "b", monitoring=Monitoring.HIGH)
    fleet[80] = dev(80, "gw", "c", monitoring=Monitoring.HIGH)
    plan = plan_deployment(fleet, M, Policy())
    assert {c.device.hardware for c in plan.canaries} == {"rpi4", "orin", "gw"}
    assert {c.device.group for c in plan.canaries} == {"a", "b", "c"}
    assert set(plan.canary_ids) == {"d0000", "d0040", "d0080"}
    assert all("covers" in c.reason and "monitoring high" in c.reason for c in plan.canaries)
    assert not plan.notes  # 3 of 90 = 3.3 %: within the ceiling


def test_never_a_critical_canary_and_uncoverable_type_is_reported() -> None:
    fleet = [dev(i) for i in range(20)] + [dev(20, "plc", critical=True)]
    plan = plan_deployment(fleet, M, Policy())
    assert "d0020" not in plan.canary_ids
    assert plan.uncovered == ("hardware=plc",)
    assert any("plc" in n for n in plan.notes)
    # The critical device lands in the last wave: touched once the rest proved the release.
    assert "d0020" in {d.id for d in plan.waves[-1].devices}


def test_coverage_above_five_percent_is_said_plainly() -> None:
    fleet = [dev(i, f"hw{i % 8}", "a") for i in range(40)]  # 8 types → 8 canaries = 20 %
    plan = plan_deployment(fleet, M, Policy())
    assert len(plan.canaries) == 8
    assert any("above the 5 % ceiling" in n for n in plan.notes)


def test_two_devices_of_different_types_are_never_deployed_at_once() -> None:
    plan = plan_deployment([dev(0, "rpi4"), dev(1, "orin")], M, Policy())
    assert len(plan.canaries) == 1
    assert [len(w.devices) for w in plan.waves] == [1]
    assert plan.uncovered  # one type stayed uncovered, and the plan says why
    assert any("Guardrail 3" in n for n in plan.notes)


def test_all_critical_fleet_is_blocked() -> None:
    plan = plan_deployment([dev(i, critical=True) for i in range(3)], M, Policy())
    assert not plan.canaries
    assert plan.blockers


def test_waves_follow_cumulative_percentages_and_stratify() -> None:
    fleet = [dev(i, ("rpi4", "orin")[i % 2], ("a", "b")[(i // 2) % 2]) for i in range(200)]
    plan = plan_deployment(fleet, M, Policy())
    assert len(plan.canaries) == 4  # 2 % of 200
    sizes = [len(w.devices) for w in plan.waves]
    assert sizes == [46, 50, 100]  # to 25 %, 50 %, 100 % of 200
    for w in plan.waves:
        by_hw = w.counts("hardware")
        by_group = w.counts("group")
        # Each wave holds each stratum in proportion (±1 device).
        assert abs(by_hw["rpi4"] - by_hw["orin"]) <= 1
        assert abs(by_group["a"] - by_group["b"]) <= 1


def test_excluded_devices_have_reasons_and_are_never_staged() -> None:
    fleet = [
        dev(0),
        dev(1, state=DeviceState.MAINTENANCE),
        dev(2, state=DeviceState.QUARANTINE),
        dev(3, arch=Arch.ARMV7),
        dev(4, ram=512),
        dev(5, disk=500),
        dev(6, software={"jetpack": "5.1.2"}),
        dev(7, software={"jetpack": "6.0"}, gpu=True),
        dev(8, software={"jetpack": "6.0"}, gpu=False),
        dev(9, software={"jetpack": "six"}, gpu=True),
    ]
    m = Manifest(
        name="vision",
        version="2.0",
        kind=ArtifactKind.BUNDLE,
        requires=Requirements(
            arch=(Arch.ARM64,), ram_mb=2048, disk_mb=300, gpu=True, software={"jetpack": ">=6.0"}
        ),
    )
    plan = plan_deployment(fleet, m, Policy())
    assert [d.id for d in plan.targeted] == ["d0007"]
    reasons = {e.device.id: e.reason for e in plan.excluded}
    assert reasons["d0001"] == "state maintenance"
    assert reasons["d0002"] == "state quarantine"
    assert "arch armv7 not in [arm64]" in reasons["d0003"]
    assert "RAM 512 MB < 2048 MB" in reasons["d0004"]
    assert "rollback copy" in reasons["d0005"]
    assert "jetpack 5.1.2 does not satisfy >=6.0" in reasons["d0006"]
    assert "no GPU" in reasons["d0008"]
    assert "not a PEP 440 version" in reasons["d0009"]
    assert "jetpack not installed" in reasons["d0000"]
    staged = {d.id for s in plan.stages() for d in s}
    assert staged == {"d0007"}


def test_selection_marks_the_rest_not_targeted() -> None:
    fleet = [dev(i, group=("a", "b")[i % 2]) for i in range(10)]
    plan = plan_deployment(fleet, M, Policy(), select=lambda d: d.group == "a")
    assert len(plan.targeted) == 5
    assert len(plan.not_targeted) == 5
    assert all(d.group == "a" for s in plan.stages() for d in s)


def test_compatibility_rows_per_group() -> None:
    fleet = [dev(0, group="a"), dev(1, group="a", ram=100), dev(2, group="b", ram=100)]
    m = Manifest(
        name="x", version="1", kind=ArtifactKind.BUNDLE, requires=Requirements(ram_mb=1024)
    )
    plan = plan_deployment(fleet, m, Policy())
    status = {c.group: c.status for c in plan.compatibility}
    assert status == {"a": "PARTIAL", "b": "FAIL"}
