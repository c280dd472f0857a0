"""The virtual fleet behind a ``MemoryChannel``: one protocol message to one virtual device.

The same steps as the HTTP front end (sim/server.py), in the same order: find the device,
admit (a dropped request is ``ChannelDown``: ``connection-refused`` for ``unreachable``,
``offline`` and ``late``, ``connection-reset`` for ``flaky``), the fault's delay, authenticate,
then the read or the command (``answer``). ``token`` None is the fleet's own token (a trusted
test caller).

``answer(dev, command, body)`` is the last step alone: what the MQTT front end
(sim/mqtt_fleet.py) calls once its device link has admitted and authenticated the message, so
the three front ends share one read/command path and one seq record per device.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

from fleetgate.core.model import Device
from fleetgate.sim.device import COMMANDS, VirtualDevice
from fleetgate.sim.device_state import SimReply, refusal
from fleetgate.transports.channel import READS, ChannelDown, Reply


async def dispatch(
    devices: Mapping[str, VirtualDevice],
    fleet_token: str,
    device: Device,
    command: str,
    body: dict[str, Any] | None,
    token: str | None,
) -> Reply:
    dev = devices.get(device.id)
    if dev is None:
        raise ChannelDown("connection-refused", "no such device in the virtual fleet")
    admission = dev.admit()
    if admission.drop is not None:
        code = "connection-refused" if admission.drop == "refused" else "connection-reset"
        raise ChannelDown(code, code)
    if admission.delay_s > 0:
        await asyncio.sleep(admission.delay_s)
    denied = dev.authenticate(f"Bearer {token or fleet_token}", device.id)
    if denied is not None:
        return _reply(denied)
    return await answer(dev, command, body)


async def answer(dev: VirtualDevice, command: str, body: Any) -> Reply:
    """The read's or the command's answer from an admitted, authenticated message."""
    if command in READS:
        if command == "logs":
            lines = body.get("lines", 200) if isinstance(body, dict) else 200
            if isinstance(lines, bool) or not isinstance(lines, int):
                return _reply(refusal(400, "bad-request", "lines: expected an integer"))
            return Reply(200, dev.logs(lines))
        data: dict[str, Any] = getattr(dev, command)()
        return Reply(200, data)
    if command not in COMMANDS:
        return _reply(refusal(404, "not-found", f"no such command: {command}"))
    return _reply(await dev.command(command, body))


def _reply(reply: SimReply) -> Reply:
    return Reply(reply.code, reply.body)
