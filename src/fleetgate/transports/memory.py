"""``MemoryChannel``: the device channel as a function call, no sockets; ``MemoryTransport`` is
the client over it that engine tests open on a virtual fleet.

Contract (on top of ``Channel``'s, transports/channel.py):
- The channel knows nothing of what answers: it calls ``dispatch(device, command, body, token)``
  (``token`` None: the fleet's own). The simulator wires itself in (``SimFleet.dispatch``,
  sim/dispatch.py); this module never imports ``fleetgate.sim``. A dispatcher raises
  ``ChannelDown`` for a dropped request (unreachable → ``connection-refused``, flaky →
  ``connection-reset``): it fails at once instead of going through a socket.
- Bodies cross as JSON, both ways (``json`` round trip), so nothing the wire could not carry
  slips through.
- Like a real agent, a device keeps executing a command whose caller timed out: each send runs
  as a shielded task and only the wait is abandoned; ``aclose()`` waits for those tasks.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from fleetgate.core.model import Device
from fleetgate.transports.base import CallTimeouts
from fleetgate.transports.channel import Reply
from fleetgate.transports.client import DeviceClient, OnCall
from fleetgate.transports.tokens import TokenSource

Dispatch = Callable[[Device, str, "dict[str, Any] | None", "str | None"], Awaitable[Reply]]


class Dispatcher(Protocol):
    """What ``MemoryTransport`` needs of a fleet (``SimFleet`` is one)."""

    def dispatch(
        self, device: Device, command: str, body: dict[str, Any] | None, token: str | None
    ) -> Awaitable[Reply]: ...


class MemoryChannel:
    def __init__(self, dispatch: Dispatch, *, tokens: TokenSource | None = None) -> None:
        self.dispatch = dispatch
        self.tokens = tokens
        self._tasks: set[asyncio.Task[Reply]] = set()

    async def aclose(self) -> None:
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    async def send(self, device: Device, command: str, body: dict[str, Any] | None) -> Reply:
        token = self.tokens.token_for(device) if self.tokens else None
        wire = None if body is None else json.loads(json.dumps(body))
        task = asyncio.ensure_future(self.dispatch(device, command, wire, token))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        reply = await asyncio.shield(task)
        return Reply(reply.status, json.loads(json.dumps(reply.body)))


class MemoryTransport(DeviceClient):
    """``DeviceClient`` over a ``MemoryChannel`` into ``fleet`` (kept as ``self.fleet``)."""

    def __init__(
        self,
        fleet: Any,
        *,
        tokens: TokenSource | None = None,
        timeouts: CallTimeouts | None = None,
        on_call: OnCall | None = None,
    ) -> None:
        self.fleet = fleet
        dispatcher: Dispatcher = fleet
        super().__init__(
            MemoryChannel(dispatcher.dispatch, tokens=tokens), timeouts=timeouts, on_call=on_call
        )
