"""The connection fault kinds ``offline`` (up, then gone for good) and ``late`` (there only after
T seconds), over HTTP and in memory (the listener refuses) and over MQTT, where they are the
device's broker connection itself: the virtual device's last will tells the controller."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from sim_helpers import TOKEN, make_manifest, open_channel, stage_args

from fleetgate.errors import InputError
from fleetgate.sim.faults import parse_fault
from fleetgate.sim.fleetspec import FleetSpec
from fleetgate.transports.base import CallTimeouts, DeviceRefusal, TransportUnavailable
from fleetgate.transports.http import HttpTransport
from fleetgate.transports.tokens import TokenSource

V2 = make_manifest("2.0.0")
# Ids no other test fleet uses: the MQTT tests share the broker with whatever else runs.
SPEC = FleetSpec(devices=6, seed=3, token=TOKEN, groups=("simq-x", "simq-y"))


def test_offline_and_late_parse_with_their_defaults() -> None:
    assert parse_fault("offline").param("after") == 0
    assert parse_fault("late").param("after") == 5
    assert str(parse_fault("late:after=2.5,device=x")) == "late:after=2.5,device=x"
    with pytest.raises(InputError, match="after=-1 must be >= 0"):
        parse_fault("offline:after=-1")


async def _refused(call: Awaitable[Any]) -> bool:
    """No answer, as from a closed listener (HTTP: aborted, memory: refused)."""
    with pytest.raises(TransportUnavailable) as info:
        await call
    return info.value.retryable and info.value.code in ("connection-refused", "connection-reset")


@pytest.mark.parametrize("kind", ["http", "memory"])
async def test_offline_and_late_refuse_while_the_device_is_away(kind: str) -> None:
    now = [100.0]
    async with open_channel(kind, SPEC, clock=lambda: now[0]) as (fleet, t):
        late, gone, fine = fleet.devices[:3]
        fleet.inject(f"late:after=5,device={late.id}")
        fleet.inject(f"offline:after=2,device={gone.id}")
        assert await _refused(t.ping(late))
        assert (await t.ping(gone)).id == gone.id
        now[0] += 3
        assert await _refused(t.ping(late))
        assert await _refused(t.stage(gone, **stage_args(V2, "dep", 1)))
        now[0] += 3
        assert (await t.ping(late)).id == late.id
        assert await _refused(t.ping(gone))
        assert (await t.ping(fine)).id == fine.id
        assert fleet.device_state(gone.id).received == {}  # the stage never reached it


async def _eventually(check: Callable[[], Awaitable[bool]], what: str) -> None:
    """Poll ``check`` until it holds (the broker's news travels asynchronously)."""
    for _ in range(200):
        if await check():
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"never: {what}")


# Both MQTT tests put SPEC's device ids on the machine's broker: two at once would take each
# other's client ids. They stay in this one module (pytest-xdist --dist loadfile: one worker, in
# turn).
async def test_over_mqtt_each_device_is_its_own_client_and_faults_are_its_connection() -> None:
    now = [100.0]
    # A ping sent in the moment before the watcher cuts a device is lost with it: time it out
    # soon, the poll asks again.
    quick = CallTimeouts(ping=0.5)
    async with open_channel("mqtt", SPEC, quick, clock=lambda: now[0]) as (fleet, t):
        assert fleet.connected() == len(fleet.devices)
        late, gone, fine = fleet.devices[:3]
        assert fine.address == f"mqtt://127.0.0.1:1883/{fine.id}"
        # The same read and command path as over HTTP: seq replay included.
        assert (await t.ping(fine)).id == fine.id
        first = await t.stage(fine, **stage_args(V2, "dep", 1))
        again = await t.stage(fine, **stage_args(V2, "dep", 1))
        assert (first.status, first.replayed, again.replayed) == ("staged", False, True)
        assert fleet.device_state(fine.id).executed == {("stage", V2.release_id): 1}

        fleet.inject(f"late:after=5,device={late.id}")
        fleet.inject(f"offline:after=2,device={gone.id}")

        async def refused(device: Any) -> bool:
            try:
                await t.ping(device)
            except TransportUnavailable as exc:
                return exc.code == "offline"
            return False

        async def answers(device: Any) -> bool:
            try:
                return (await t.ping(device)).id == device.id
            except TransportUnavailable:
                return False

        await _eventually(lambda: refused(late), "the late device is away")
        assert (await t.ping(gone)).id == gone.id
        now[0] += 3
        await _eventually(lambda: refused(gone), "the offline device dropped")
        presence = t.mqtt.presence(gone.id)  # type: ignore[attr-defined]
        assert presence is not None and presence.reason == "connection-lost"  # its last will
        now[0] += 3
        await _eventually(lambda: answers(late), "the late device connected")
        await asyncio.sleep(0.5)  # several watcher rounds: the offline device stays away
        assert await refused(gone)
        assert fleet.connected() == len(fleet.devices) - 1


async def test_over_mqtt_a_wrong_token_is_refused_by_the_device() -> None:
    async with (
        open_channel("mqtt", SPEC) as (fleet, _t),
        HttpTransport(TokenSource(overrides={fleet.devices[0].id: "not-the-token"})) as wrong,
    ):
        with pytest.raises(DeviceRefusal) as info:
            await wrong.ping(fleet.devices[0])
        assert info.value.status == 401 and info.value.code == "unauthorized"
