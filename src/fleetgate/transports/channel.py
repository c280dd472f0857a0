"""The seam between the controller and a device: one message channel.

Contract:
- ``Channel.send(device, command, body) -> Reply``: deliver one command of the agent protocol
  (``COMMANDS``: the reads ``ping``, ``facts``, ``health``, ``logs`` and the commands the agent
  executes in ``AgentService.execute``: ``stage``, ``activate``, ``commit``, ``rollback``) to
  ``device`` and return its answer: the protocol status and the JSON body (``None`` when the
  body is not JSON). A channel knows how to reach a device and nothing about what the answer
  means: parsing, error mapping, timeouts, concurrency and timing live once, in
  ``transports/client.py`` (``DeviceClient``).
- "No answer" is ``ChannelDown`` with a transport code (``connection-refused``,
  ``connection-reset``, ``timeout``, ``transport``); the client maps it to
  ``TransportUnavailable`` (retryable). A device a channel cannot even address (a malformed
  address, no channel for its scheme, no credential) is a ``DeviceRefusal`` raised as is.
- A channel never retries and never gives up on its own clock beyond connecting: the client's
  per-call timeout cancels ``send``; a channel whose device keeps working after the caller has
  gone (the memory channel, a real agent) is fine with that.
- ``aclose()`` releases pooled connections; idempotent. It is lifecycle, not messaging.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from fleetgate.core.model import Device

# The protocol's vocabulary. Reads have no side effect on the device (HTTP: GET).
READS = frozenset({"ping", "facts", "health", "logs"})
COMMANDS = READS | frozenset({"stage", "activate", "commit", "rollback"})


@dataclass(frozen=True, slots=True)
class Reply:
    """A device's answer: protocol status (HTTP's codes, whatever carries them) + JSON body."""

    status: int
    body: Any


class ChannelDown(Exception):
    """No usable answer from the device. ``code`` is the transport code, ``what`` says why."""

    def __init__(self, code: str, what: str) -> None:
        super().__init__(f"{code}: {what}")
        self.code = code
        self.what = what


class Channel(Protocol):
    async def send(self, device: Device, command: str, body: dict[str, Any] | None) -> Reply: ...

    async def aclose(self) -> None: ...
