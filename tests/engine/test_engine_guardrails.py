"""Issue 7, items 1 and 2: the holes a hostile test of the engine found, on the virtual fleet.

Each test reproduces an observed leak and proves it closed from the event log and from the
devices' own records (what they executed, what they run).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from engine_harness import harness

from fleetgate.core.machine import fold
from fleetgate.core.model import Device
from fleetgate.core.state import DeviceStatus, Phase
from fleetgate.errors import DeviceError
from fleetgate.transports.base import StageResult
from fleetgate.transports.memory import MemoryTransport

D = DeviceStatus
OLD = "app-1.0.0-00000000"


class DiskFillsAfterPreflight(MemoryTransport):
    """Stage answers ``507 insufficient-disk`` for ``victims``: their disk filled between the
    pre-flight and the stage (another process wrote logs, say), which no pre-flight predicts."""

    def __init__(self, inner: MemoryTransport, victims: set[str]) -> None:
        super().__init__(inner.fleet)
        self.victims = victims

    async def stage(self, device: Device, **kw: Any) -> StageResult:
        if device.id in self.victims:
            raise DeviceError(
                f"{device.id}: 507 insufficient-disk: disk full while staging",
                device_id=device.id,
            )
        return await super().stage(device, **kw)


async def test_stage_failures_count_in_the_wave_rate_and_are_never_deployed(
    tmp_path: Path,
) -> None:
    """Observed: 5 of 12 wave devices answered 507 to stage, the wave evaluation said
    'no device failed (0/12)' and went on, and CONFIRM listed them as deployed and healthy."""
    async with harness(tmp_path, devices=60) as h:
        dep = await h.start()
        await h.controller.drive(dep)
        wave1 = (await h.controller.state(dep)).stages[1]
        victims = set(wave1[:5])
        h.controller.transport = DiskFillsAfterPreflight(h.controller.transport, victims)  # type: ignore[arg-type]
        await h.controller.record_human(dep, "approval.granted", "alice")
        state = await h.controller.drive(dep)

        events = await h.events(dep)
        ev = next(e for e in events if e.action == "wave.evaluated")
        assert ev.details["targeted"] == len(wave1)
        assert set(ev.details["failed"]) >= victims
        assert ev.details["rate"] == 5 / len(wave1)  # > 20 %: roll back the wave and halt
        assert ev.details["action"] == "ROLLBACK_WAVE_AND_HALT"
        assert all("insufficient-disk" in ev.details["reasons"][v] for v in victims)
        assert state.phase is Phase.HALTED
        for v in victims:
            assert state.devices[v] is D.DEPLOY_FAILED
            assert h.fleet.device_state(v).current == OLD
        assert not any(e.action == "confirm.completed" for e in events)


async def test_one_stage_failure_in_a_big_wave_is_quarantined_not_counted_healthy(
    tmp_path: Path,
) -> None:
    async with harness(tmp_path, devices=200) as h:
        dep = await h.start()
        await h.controller.drive(dep)
        victim = (await h.controller.state(dep)).stages[2][0]
        h.controller.transport = DiskFillsAfterPreflight(h.controller.transport, {victim})  # type: ignore[arg-type]
        await h.controller.record_human(dep, "approval.granted", "alice")
        state = await h.controller.drive(dep)
        assert state.phase is Phase.PARTIAL
        assert state.devices[victim] is D.QUARANTINED
        assert "insufficient-disk" in state.reasons[victim]
        done = next(e for e in await h.events(dep) if e.action == "confirm.completed")
        assert done.details["counts"]["deployed_healthy"] == len(state.devices) - 1
        assert h.fleet.device_state(victim).current == OLD


async def test_preflight_uses_the_agents_disk_formula(tmp_path: Path) -> None:
    """Observed: pre-flight let devices with 50 MB free through ('disk_needed_mb: 1.0') that the
    agent then refused (artifact + unpacked + a 64 MiB reserve). Now they are skipped with the
    agent's own numbers, and no stage is sent to them."""
    async with harness(tmp_path, devices=60) as h:
        dep = await h.start()
        await h.controller.drive(dep)
        wave1 = (await h.controller.state(dep)).stages[1]
        low = wave1[:2]
        for v in low:
            h.fleet.inject(f"low-disk:free_mb=50,device={v}")
        await h.controller.record_human(dep, "approval.granted", "alice")
        await h.controller.drive(dep)
        events = await h.events(dep)
        for v in low:
            pre = next(e for e in events if e.action == "device.preflight" and e.device_id == v)
            assert pre.details["ok"] is False
            assert pre.details["checks"]["disk_needed_mb"] > 64
            assert "reserve 64" in pre.details["reason"]
            assert not any(k[0] == "stage" for k in h.fleet.device_state(v).executed)


async def _partial_canary_failure(h: Any) -> tuple[str, str]:
    dep = await h.start()
    state = await h.controller.state(dep)
    bad = state.canaries[0]
    h.fleet.inject(f"start-fail:device={bad},version=2.0.0")
    state = await h.controller.drive(dep)
    assert state.phase is Phase.HALTED and state.canary_verdict == "FAIL"
    assert state.devices[bad] is D.QUARANTINED  # rolled back and set aside
    assert h.fleet.device_state(bad).current == OLD
    return dep, bad


async def test_resume_after_a_partial_canary_fail_replaces_the_failed_cell(
    tmp_path: Path,
) -> None:
    """Observed: resume re-verified the remaining canaries, recorded PASS, and the approval
    rolled out to the failed canary's hardware type and group unproven."""
    async with harness(tmp_path, devices=60) as h:
        dep, bad = await _partial_canary_failure(h)
        first_soak = h.clock.slept
        state = await h.controller.record_human(dep, "deployment.resumed", "bob")
        state = await h.controller.drive(dep)
        assert state.phase is Phase.AWAITING_APPROVAL, state.halt_reason
        events = await h.events(dep)
        replaced = next(e for e in events if e.action == "canary.replaced")
        (new,) = replaced.details["replacements"]
        dev = {d.id: d for d in h.fleet.devices}
        assert (dev[new].hardware, dev[new].group) == (dev[bad].hardware, dev[bad].group)
        assert new in state.canaries and state.stage_of(new) == 0
        # The replacement went through the whole canary stage and a full second soak.
        snap = h.fleet.device_state(new)
        assert any(k[0] == "stage" for k in snap.executed)
        assert h.clock.slept - first_soak >= 600
        verdicts = [e.details["verdict"] for e in events if e.action == "canary.verdict"]
        assert verdicts == ["FAIL", "PASS"]  # the FAIL stays; round 2 has its own verdict
        assert state.devices[bad] is D.QUARANTINED
        await h.controller.record_human(dep, "approval.granted", "alice")
        state = await h.controller.drive(dep)
        assert state.phase is Phase.PARTIAL  # the quarantined canary is not deployed
        assert h.fleet.device_state(bad).current == OLD
        assert fold(dep, await h.events(dep)) == state


async def test_resume_with_exclude_leaves_the_unproven_cell_out(tmp_path: Path) -> None:
    async with harness(tmp_path, devices=60) as h:
        dep, bad = await _partial_canary_failure(h)
        await h.controller.record_human(dep, "deployment.resumed", "bob", canary_failure="exclude")
        state = await h.controller.drive(dep)
        assert state.phase is Phase.AWAITING_APPROVAL
        excluded = [i for i, s in state.devices.items() if s is D.EXCLUDED]
        assert excluded
        dev = {d.id: d for d in h.fleet.devices}
        kept = [dev[i] for i in state.canaries if state.devices[i] is D.HEALTHY]
        for i in excluded:
            # Every excluded device has a hardware type or group no passing canary has.
            assert (
                all(k.hardware != dev[i].hardware or k.group != dev[i].group for k in kept)
                or dev[i].hardware == dev[bad].hardware
                or dev[i].group == dev[bad].group
            )
        await h.controller.record_human(dep, "approval.granted", "alice")
        state = await h.controller.drive(dep)
        assert state.phase is Phase.PARTIAL
        for i in excluded:
            assert not h.fleet.device_state(i).executed, f"{i} was touched"
