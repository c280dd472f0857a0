"""Every fault kind, observed the way the engine will see it: through a transport (HTTP and
in memory). Version-scoped faults act only while that version is current."""

from __future__ import annotations

import asyncio
import statistics

import pytest
from sim_helpers import BASE, make_manifest, open_channel, stage_args

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
    # The activate answer carried the device's health (taken before it went dark): it answers
    # the one health call that follows the activate (the smoke test; the commit after it is
    # what meets the dead link). Every later call goes to the device and finds it unreachable.
    assert (await t.health(d)).release == V2.release_id
    with pytest.raises(TransportUnavailable):
        await t.health(d)
    with pytest.raises(TransportUnavailable):
        await t.ping(d)


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
    # Errors are counted over ≥ 1,000 requests: σ ≤ 1.3 points around the rate.
    assert abs(((await t.health(e)).error_rate or 0) - 0.2) < 0.05
    slow = statistics.mean([(await t.health(lat)).latency_ms or 0 for _ in range(10)])
    assert 2.7 < slow / base_latency < 3.3
    assert abs(((await t.health(hot)).temperature_c or 0) - 95) <= 4.0  # ± 4 σ


async def test_error_fault_by_group_and_version(channel):
    fleet, t = channel
    hit = fleet.inject("errors:rate=0.3,group=plant-b,version=2.0.0")
    assert hit and all(fleet.device_state(i).faults for i in hit)
    b = next(d for d in fleet.devices if d.id == hit[0])
    a = next(d for d in fleet.devices if d.group == "plant-a")
    assert ((await t.health(b)).error_rate or 0) < 0.02  # still on 1.0.0
    await deploy(t, b)
    await deploy(t, a)
    assert abs(((await t.health(b)).error_rate or 0) - 0.3) < 0.06
    assert ((await t.health(a)).error_rate or 0) < 0.02


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


# -- time-bound faults: surge, leak; silence; the app's metrics ---------------------------------
class FakeClock:
    """The device model's clock, moved by hand (``SimFleet(clock=...)``)."""

    def __init__(self, t: float = 1000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


@pytest.fixture(params=["http", "memory"])
async def timed(request):
    clock = FakeClock()
    async with open_channel(request.param, clock=clock) as (fleet, t):
        yield fleet, t, clock


async def means(t, d, n: int = 20) -> tuple[float, float]:
    """Mean latency and error rate of ``n`` readings taken at one instant."""
    samples = [await t.health(d) for _ in range(n)]
    return (
        statistics.mean(s.latency_ms or 0 for s in samples),
        statistics.mean(s.error_rate or 0 for s in samples),
    )


async def test_surge_hits_every_selected_device_only_within_its_window(timed):
    fleet, t, clock = timed
    canaries = fleet.devices[:2]
    for d in canaries:
        assert (await deploy(t, d)).ok  # on 2.0.0; the rest stays on 1.0.0
    before = {d.id: await means(t, d) for d in fleet.devices}
    assert fleet.inject("surge:start=60,duration=120") == [d.id for d in fleet.devices]

    async def ratios() -> dict[str, tuple[float, float]]:
        out = {}
        for d in fleet.devices:
            latency, errors = await means(t, d)
            out[d.id] = (latency / before[d.id][0], errors - before[d.id][1])
        return out

    for at in (1030.0, 1180.0, 5000.0):  # before the window, at its end, long after
        clock.t = at
        for lat, err in (await ratios()).values():
            assert 0.95 < lat < 1.05 and abs(err) < 0.003, at
    for at in (1060.0, 1179.0):
        clock.t = at
        for dev_id, (lat, err) in (await ratios()).items():
            assert 1.24 < lat < 1.36, (at, dev_id)
            assert 0.007 < err < 0.013, (at, dev_id)  # +1 point, absolute


async def test_surge_scoped_to_a_group_leaves_the_others_alone(channel):
    fleet, t = channel
    hit = fleet.inject("surge:latency=1,errors=0.05,group=plant-a")
    assert hit and all(fleet.device(i).device.group == "plant-a" for i in hit)
    spared = next(d for d in fleet.devices if d.group != "plant-a")
    assert ((await t.health(spared)).error_rate or 0) < 0.02
    surged = next(d for d in fleet.devices if d.id == hit[0])
    assert ((await t.health(surged)).error_rate or 0) > 0.04


async def test_surge_window_runs_in_real_time_over_http():
    async with open_channel("http") as (fleet, t):
        d = fleet.devices[0]
        base = statistics.mean([(await t.health(d)).latency_ms or 0 for _ in range(5)])
        fleet.inject(f"surge:latency=1,start=0.5,duration=1.5,device={d.id}")
        assert ((await t.health(d)).latency_ms or 0) < 1.5 * base  # not yet
        await asyncio.sleep(1.0)
        assert ((await t.health(d)).latency_ms or 0) > 1.5 * base  # doubled: in the window
        await asyncio.sleep(1.5)
        assert ((await t.health(d)).latency_ms or 0) < 1.5 * base  # over


RSS = "process_resident_memory_bytes"


async def test_leak_grows_memory_while_its_version_runs_and_rollback_frees_it(timed):
    fleet, t, clock = timed
    d, other = fleet.devices[0], fleet.devices[1]
    fleet.inject(f"leak:version=2.0.0,mb_per_min=60,device={d.id}")
    start = await t.health(d)
    clock.t += 600
    idle = await t.health(d)  # still on 1.0.0: no leak
    assert idle.metrics[RSS] == start.metrics[RSS]
    assert (await deploy(t, d)).ok and (await deploy(t, other)).ok
    fresh = await t.health(d)
    assert fresh.metrics[RSS] == start.metrics[RSS]  # grows from the switch, not the injection
    other_before = await t.health(other)
    clock.t += 600  # ten minutes of 2.0.0
    leaking = [await t.health(d) for _ in range(10)]
    grown = leaking[0].metrics[RSS] - start.metrics[RSS]
    assert grown == pytest.approx(600 * 1024 * 1024, rel=1e-6)
    mem_grown = statistics.mean(s.mem_used_mb or 0 for s in leaking) - (start.mem_used_mb or 0)
    assert 400 < mem_grown < 800  # 600 MB, through the reading's noise
    assert (await t.health(other)).metrics[RSS] == other_before.metrics[RSS]  # not selected
    clock.t += 600
    assert (await t.health(d)).metrics[RSS] - start.metrics[RSS] == pytest.approx(
        1200 * 1024 * 1024, rel=1e-6
    )  # linear
    back = await t.rollback(d, deployment_id="dep", seq=3)
    assert back.ok and back.release == BASE
    clock.t += 600
    healed = await t.health(d)
    assert healed.metrics[RSS] == start.metrics[RSS]
    assert abs((healed.mem_used_mb or 0) - (start.mem_used_mb or 0)) < 200


async def test_leak_without_a_version_grows_from_injection_and_restarts_on_a_switch(timed):
    fleet, t, clock = timed
    d = fleet.devices[3]
    start = await t.health(d)
    fleet.inject(f"leak:device={d.id}")  # 5 MB/min by default
    clock.t += 120
    assert (await t.health(d)).metrics[RSS] - start.metrics[RSS] == pytest.approx(10 * 1024**2)
    assert (await deploy(t, d)).ok  # a restart of the app frees it
    assert (await t.health(d)).metrics[RSS] == start.metrics[RSS]


async def test_leak_stops_at_the_ram_ceiling(timed):
    fleet, t, clock = timed
    d = fleet.devices[0]
    fleet.inject(f"leak:mb_per_min=100000,device={d.id}")
    clock.t += 3600
    s = await t.health(d)
    assert s.mem_total_mb and s.mem_used_mb == pytest.approx(0.98 * s.mem_total_mb, abs=0.1)


async def test_silent_answers_with_no_data(channel):
    fleet, t = channel
    d, other = fleet.devices[0], fleet.devices[1]
    fleet.inject(f"silent:version=2.0.0,device={d.id}")
    assert not (await t.health(d)).has_no_data  # on 1.0.0 it still measures
    assert (await deploy(t, d)).ok
    s = await t.health(d)
    assert s.app_up and s.release == V2.release_id and s.has_no_data
    assert s.latency_ms is None and s.error_rate is None and s.cpu_percent is None
    assert s.mem_used_mb is None and s.temperature_c is None and s.disk_free_mb is None
    assert dict(s.metrics) == {}
    full = await t.health(other)
    assert not full.has_no_data and full.metrics and full.latency_ms is not None


async def test_app_metrics_agree_with_the_reading(timed):
    fleet, t, clock = timed
    d = fleet.devices[2]
    first = await t.health(d)
    assert first.metrics["app_request_latency_ms"] == first.latency_ms
    assert first.metrics['inference_latency_seconds{quantile="0.95"}'] == pytest.approx(
        (first.latency_ms or 0) * 1.779 / 1000, rel=1e-3
    )
    samples = []
    for _ in range(30):
        clock.t += 30
        samples.append(await t.health(d))
    requests = [s.metrics["app_requests_total"] for s in samples]
    errors = [s.metrics["app_errors_total"] for s in samples]
    assert requests == sorted(requests) and errors == sorted(errors)  # counters only grow
    rps = requests[-1] / (30 * 30)
    assert 10 <= rps <= 30.05
    rate = (errors[-1] - errors[0]) / (requests[-1] - requests[0])
    mean_rate = statistics.mean(s.error_rate or 0 for s in samples[1:])
    assert rate == pytest.approx(mean_rate, abs=0.0005)
    assert samples[-1].metrics["inference_latency_seconds_count"] == requests[-1]
    mean_latency_s = samples[-1].metrics["inference_latency_seconds_sum"] / requests[-1]
    assert mean_latency_s == pytest.approx(
        statistics.mean(s.latency_ms or 0 for s in samples) / 1000, rel=0.02
    )
    assert (await deploy(t, d)).ok
    assert (await t.health(d)).metrics["app_requests_total"] == 0  # a new app: counters restart


async def test_a_down_app_reports_no_metrics(channel):
    fleet, t = channel
    d = fleet.devices[7]
    fleet.inject(f"start-fail:device={d.id}")
    await deploy(t, d)
    s = await t.health(d)
    assert not s.app_up and dict(s.metrics) == {}
