"""Issue 12: the health sample an ``activate`` answer carries answers the next ``health`` call.

Used once, only for that device, only if it is fresh (``VOLUNTEERED_MAX_AGE_S``), only after a
successful, first-hand (not replayed) answer: a sample never stands in for a later check, nor for
another device's, nor for a start that failed.
"""

from __future__ import annotations

from typing import Any

import pytest

from fleetgate.core.model import Device
from fleetgate.transports import client as client_mod
from fleetgate.transports.channel import Reply
from fleetgate.transports.client import DeviceClient

A = Device("a", None, None, "g", "http://127.0.0.1:9/a", None)
B = Device("b", None, None, "g", "http://127.0.0.1:9/b", None)


def health_body(device_id: str, latency: float) -> dict[str, Any]:
    return {"device_id": device_id, "app_up": True, "latency_ms": latency, "release": "r2"}


class ScriptedChannel:
    """Answers activate as told; every health call answers latency 99 (a "live" reading)."""

    def __init__(self, activate: dict[str, Any]) -> None:
        self.activate = activate
        self.sent: list[tuple[str, str, Any]] = []

    async def send(self, device: Device, command: str, body: dict[str, Any] | None) -> Reply:
        self.sent.append((device.id, command, body))
        if command == "activate":
            return Reply(200, self.activate)
        return Reply(200, health_body(device.id, 99.0))

    async def aclose(self) -> None:
        return None


def active(**extra: Any) -> dict[str, Any]:
    return {"status": "active", "release": "r2", "previous": "r1", **extra}


async def activate(client: DeviceClient, device: Device = A) -> Any:
    return await client.activate(device, deployment_id="d", seq=1001, release="r2")


async def test_the_next_health_call_uses_the_carried_sample_once() -> None:
    ch = ScriptedChannel(active(health=health_body("a", 7.0)))
    client = DeviceClient(ch)
    result = await activate(client)
    assert ch.sent[0][2]["with_health"] is True  # asked for, in the body
    assert result.health is not None and result.health.latency_ms == 7.0
    first = await client.health(A)
    assert first.latency_ms == 7.0 and [c for _, c, _ in ch.sent] == ["activate"]
    second = await client.health(A)  # a later check always goes to the device
    assert second.latency_ms == 99.0 and [c for _, c, _ in ch.sent] == ["activate", "health"]


async def test_it_answers_for_its_own_device_only() -> None:
    ch = ScriptedChannel(active(health=health_body("a", 7.0)))
    client = DeviceClient(ch)
    await activate(client, A)
    assert (await client.health(B)).latency_ms == 99.0
    assert (await client.health(A)).latency_ms == 7.0


async def test_a_stale_sample_is_not_used(monkeypatch: pytest.MonkeyPatch) -> None:
    ch = ScriptedChannel(active(health=health_body("a", 7.0)))
    client = DeviceClient(ch)
    now = [1000.0]
    monkeypatch.setattr(client_mod.time, "monotonic", lambda: now[0])
    await activate(client)
    now[0] += client_mod.VOLUNTEERED_MAX_AGE_S + 0.01
    assert (await client.health(A)).latency_ms == 99.0
    assert (await client.health(A)).latency_ms == 99.0  # and it is gone, not kept for later


@pytest.mark.parametrize(
    "answer",
    [
        {
            "status": "start-failed",
            "release": "r2",
            "previous": "r1",
            "error": "exit 3",
            "health": health_body("a", 7.0),
        },
        # A replayed answer's sample is from its first run: history.
        active(replayed=True, health=health_body("a", 7.0)),
        active(),  # an agent that does not carry one
    ],
    ids=["start-failed", "replayed", "old-agent"],
)
async def test_no_usable_sample_means_the_device_is_asked(answer: dict[str, Any]) -> None:
    ch = ScriptedChannel(answer)
    client = DeviceClient(ch)
    await activate(client)
    assert (await client.health(A)).latency_ms == 99.0
    assert [c for _, c, _ in ch.sent] == ["activate", "health"]


async def test_a_second_activate_drops_the_first_sample() -> None:
    ch = ScriptedChannel(active(health=health_body("a", 7.0)))
    client = DeviceClient(ch)
    await activate(client)
    ch.activate = {"status": "start-failed", "release": "r2", "previous": "r1", "error": "x"}
    await activate(client)
    assert (await client.health(A)).latency_ms == 99.0


async def test_a_malformed_carried_sample_is_a_bad_response() -> None:
    ch = ScriptedChannel(active(health="fine"))
    client = DeviceClient(ch)
    with pytest.raises(Exception, match=r"activate\.health"):
        await activate(client)
