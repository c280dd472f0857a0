"""Every fault kind, observed the way the engine will see it: through a transport (HTTP and
in memory). Version-scoped faults act only while that version is current."""

from __future__ import annotations

import asyncio
import statistics

import pytest
from sim_helpers import BASE, make_manifest, stage_args

from fleetgate.transports.base import DeviceRefusal, TransportUnavailable

V2 = make_manifest("2.0.0")


async def deploy(t, d, seq: int = 1, manifest=V2):
    await t.stage(d, **stage_args(manifest, "dep", seq))
    return await t.activate(d, deployment_id="dep", seq=seq + 1, release=manifest.release_id)


async def test_unreachable_drops_every_request(channel):
    fleet, t = channel
    d, other = fleet.devices[0], fleet.devices[1]
    fleet.inject(f"unreachable:device={d.id}")
    for call in (t.ping(d), t.health(d), t.stage(d, **stage_args(V2, "dep", 1))):
        with pytest.raises(TransportUnavailable) as info:
            await call
        assert info.value.retryable and info.value.device_id == d.id
        assert info.value.code in ("connection-refused", "connection-reset")
    assert (await t.ping(other)).id == other.id
    assert fleet.device_state(d.id).received == {}  # the device never saw the stage


async def test_unreachable_after_a_version_goes_live(channel):
    fleet, t = channel
    d = fleet.devices[0]
    fleet.inject(f"unreachable:version=2.0.0,device={d.id}")
    assert (await deploy(t, d)).ok
    with pytest.raises(TransportUnavailable):
        await t.health(d)


async def test_flaky_drops_the_first_k_requests(channel):
    fleet, t = channel
    d = fleet.devices[2]
    fleet.inject(f"flaky:k=2,device={d.id}")
    outcomes = []
    for _ in range(4):  # commands are POSTs: no client-side repeat hides a drop
        try:
            outcomes.append((await t.stage(d, **stage_args(V2, "dep", 1))).status)
        except TransportUnavailable as exc:
            assert exc.retryable and exc.code in ("connection-refused", "connection-reset")
            outcomes.append("dropped")
    assert outcomes == ["dropped", "dropped", "staged", "staged"]
    state = fleet.device_state(d.id)
    assert state.dropped == 2 and state.executed == {("stage", V2.release_id): 1}
    assert (await t.ping(d)).id == d.id


async def test_slow_link_stretches_the_stage(channel):
    fleet, t = channel
    slow, fast = fleet.devices[3], fleet.devices[4]
    fleet.inject(f"slow-link:kbps=2000,device={slow.id}")  # 100 kB: 0.4 s
    staging = asyncio.create_task(t.stage(slow, **stage_args(V2, "dep", 1)))
    while (await t.facts(slow)).state != "staging":
        await asyncio.sleep(0.01)
    assert (await t.stage(fast, **stage_args(V2, "dep", 1))).status == "staged"
    assert not staging.done() and (await t.facts(slow)).state == "staging"
    assert (await staging).status == "staged"
    assert (await t.facts(slow)).state == "idle"


async def test_low_disk(channel):
    fleet, t = channel
    d = fleet.devices[5]
    fleet.inject(f"low-disk:free_mb=50,device={d.id}")
    assert (await t.facts(d)).disk_free_mb == 50 and (await t.health(d)).disk_free_mb == 50
    with pytest.raises(DeviceRefusal) as info:
        await t.stage(d, **stage_args(V2, "dep", 1))
    assert (info.value.code, info.value.status, info.value.retryable) == (
        "insufficient-disk",
        507,
        False,
    )


async def test_crash_loop_follows_the_faulty_version(channel):
    fleet, t = channel
    d = fleet.devices[6]
    fleet.inject(f"crash-loop:version=2.0.0,device={d.id}")
    before = await t.health(d)
    assert before.app_up and not before.crash_loop and before.restarts == 0
    assert (await deploy(t, d)).ok  # it starts: the crashes come afterwards
    during = [await t.health(d) for _ in range(5)]
    assert all(s.crash_loop and s.restarts >= 3 for s in during)
    assert not all(s.app_up for s in during)
    assert min(s.error_rate or 0 for s in during) > 0.2
    back = await t.rollback(d, deployment_id="dep", seq=3)
    assert back.ok and back.release == BASE
    healed = await t.health(d)
    assert healed.app_up and not healed.crash_loop and healed.restarts == 0


async def test_start_fail(channel):
    fleet, t = channel
    d = fleet.devices[7]
    fleet.inject(f"start-fail:code=4,device={d.id}")
    result = await deploy(t, d)
    assert not result.ok and result.status == "start-failed"
    assert result.error is not None and "code 4" in result.error and result.logs
    assert result.previous == BASE
    sample = await t.health(d)
    assert not sample.app_up and sample.crash_loop and sample.release == V2.release_id
    assert not (await t.facts(d)).app_running


async def test_start_fail_scoped_to_a_version_is_healed_by_rollback(channel):
    fleet, t = channel
    d = fleet.devices[7]
    fleet.inject(f"start-fail:version=2.0.0,device={d.id}")
    assert (await deploy(t, d)).status == "start-failed"
    back = await t.rollback(d, deployment_id="dep", seq=3)
    assert back.ok and back.app_healthy and (await t.health(d)).app_up


async def test_errors_latency_and_hot(channel):
    fleet, t = channel
    e, lat, hot = fleet.devices[8], fleet.devices[9], fleet.devices[10]
    base_latency = statistics.mean([(await t.health(lat)).latency_ms or 0 for _ in range(10)])
    fleet.inject(f"errors:rate=0.2,device={e.id}")
    fleet.inject(f"latency:factor=3,device={lat.id}")
    fleet.inject(f"hot:temp=95,device={hot.id}")
    assert abs(((await t.health(e)).error_rate or 0) - 0.2) < 0.001
    slow = statistics.mean([(await t.health(lat)).latency_ms or 0 for _ in range(10)])
    assert 2.7 < slow / base_latency < 3.3
    assert abs(((await t.health(hot)).temperature_c or 0) - 95) <= 0.5


async def test_error_fault_by_group_and_version(channel):
    fleet, t = channel
    hit = fleet.inject("errors:rate=0.3,group=plant-b,version=2.0.0")
    assert hit and all(fleet.device_state(i).faults for i in hit)
    b = next(d for d in fleet.devices if d.id == hit[0])
    a = next(d for d in fleet.devices if d.group == "plant-a")
    assert ((await t.health(b)).error_rate or 0) < 0.01  # still on 1.0.0
    await deploy(t, b)
    await deploy(t, a)
    assert abs(((await t.health(b)).error_rate or 0) - 0.3) < 0.001
    assert ((await t.health(a)).error_rate or 0) < 0.01


async def test_rollback_fail_leaves_the_device_broken(channel):
    fleet, t = channel
    d = fleet.devices[11]
    fleet.inject(f"rollback-fail:device={d.id}")
    assert (await deploy(t, d)).ok
    with pytest.raises(DeviceRefusal) as info:
        await t.rollback(d, deployment_id="dep", seq=3)
    assert (info.value.code, info.value.status, info.value.retryable) == ("internal", 500, False)
    with pytest.raises(DeviceRefusal):  # the same seq replays the failure
        await t.rollback(d, deployment_id="dep", seq=3)
    facts = await t.facts(d)
    assert facts.current == V2.release_id and facts.previous == BASE
    logs = await t.logs(d)
    assert any("rollback to" in line and "failed" in line for line in logs.agent)
