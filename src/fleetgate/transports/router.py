"""``Router``: a channel that hands each device to the channel of its address's scheme.

Contract:
- ``Router({"http": h, "https": h})`` routes ``http://…`` and ``https://…`` devices to ``h``;
  ``register(scheme, channel)`` adds one (``mqtt``, ``mqtts``; ``ssh`` later), so one
  deployment can mix devices reached in different ways. Schemes are case-insensitive.
- A device whose address has no scheme, or a scheme no channel is registered for, is refused
  in one line naming the device, its address and the scheme (``DeviceRefusal``, code
  ``no-channel``, not retryable: asking again will not register a channel).
- ``aclose()`` closes every registered channel once.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from fleetgate.core.model import Device
from fleetgate.transports.channel import Channel, Reply
from fleetgate.transports.errors import DeviceRefusal


def scheme_of(address: str) -> str:
    """``'mqtt'`` for ``mqtt://broker/…``; ``''`` for an address without ``scheme://``."""
    scheme, sep, _ = address.partition("://")
    return scheme.lower() if sep else ""


class Router:
    def __init__(self, routes: Mapping[str, Channel] | None = None) -> None:
        self._routes: dict[str, Channel] = {}
        for scheme, channel in (routes or {}).items():
            self.register(scheme, channel)

    def register(self, scheme: str, channel: Channel) -> None:
        self._routes[scheme.lower()] = channel

    @property
    def schemes(self) -> tuple[str, ...]:
        return tuple(sorted(self._routes))

    def channel_for(self, device: Device) -> Channel:
        scheme = scheme_of(device.address)
        channel = self._routes.get(scheme)
        if channel is None:
            what = f"scheme {scheme!r}" if scheme else "no scheme"
            raise DeviceRefusal(
                f"{device.id}: address {device.address!r}: {what} has no channel here "
                f"(configured: {', '.join(self.schemes) or 'none'})",
                device_id=device.id,
                code="no-channel",
                status=None,
                retryable=False,
            )
        return channel

    async def send(self, device: Device, command: str, body: dict[str, Any] | None) -> Reply:
        return await self.channel_for(device).send(device, command, body)

    async def aclose(self) -> None:
        seen: set[int] = set()
        for channel in self._routes.values():
            if id(channel) not in seen:
                seen.add(id(channel))
                await channel.aclose()
