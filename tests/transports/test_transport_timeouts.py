"""Per-call timeouts, over HTTP and in memory: a caller that gives up does not stop the device,
and repeating the command with the same seq gets the recorded answer — the resume story the
engine relies on."""

from __future__ import annotations

import asyncio

import pytest
from sim_helpers import TOKEN, make_manifest, open_channel, stage_args

from fleetgate.sim.fleetspec import FleetSpec
from fleetgate.transports.base import CallTimeouts, TransportUnavailable


@pytest.mark.parametrize("kind", ["http", "memory"])
async def test_a_timed_out_stage_completes_on_the_device_and_replays(kind):
    spec = FleetSpec(devices=3, seed=2, token=TOKEN)
    async with open_channel(kind, spec, CallTimeouts(stage=0.1)) as (fleet, t):
        d = fleet.devices[0]
        fleet.inject(f"slow-link:kbps=2000,device={d.id}")  # 100 kB: 0.4 s
        m = make_manifest("2.0.0")
        with pytest.raises(TransportUnavailable) as info:
            await t.stage(d, **stage_args(m, "dep", 1))
        assert info.value.code == "timeout" and info.value.retryable
        while [e.outcome for e in fleet.device_state(d.id).history] != ["staged"]:
            await asyncio.sleep(0.02)
        fleet.clear_faults()
        again = await t.stage(d, **stage_args(m, "dep", 1))
        assert again.replayed and again.status == "staged"
        assert fleet.device_state(d.id).executed == {("stage", m.release_id): 1}


@pytest.mark.parametrize("kind", ["http", "memory"])
async def test_each_call_has_its_own_timeout(kind):
    spec = FleetSpec(devices=3, seed=2, token=TOKEN)
    timeouts = CallTimeouts(ping=0.1, health=2.0)
    async with open_channel(kind, spec, timeouts) as (fleet, t):
        d = fleet.devices[1]
        fleet.inject(f"latency:factor=1,delay=0.3,device={d.id}")
        with pytest.raises(TransportUnavailable) as info:
            await t.ping(d)
        assert info.value.code == "timeout" and info.value.device_id == d.id
        assert (await t.health(d)).app_up
