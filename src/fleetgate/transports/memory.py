"""``MemoryTransport``: the device channel straight into a ``SimFleet``, no sockets.

For fast engine tests: the same device model as the HTTP simulator (sim/device.py), the same
reply-to-exception mapping as ``HttpTransport`` (``error_from_reply``), the same per-call
timeouts. Differences, on purpose: a dropped request (``unreachable`` → ``connection-refused``,
``flaky`` → ``connection-reset``) raises immediately instead of going through a socket, and
JSON bodies are passed as Python objects (round-tripped through ``json`` so nothing the wire
could not carry slips through).

Like a real agent, a device keeps executing a command whose caller timed out: the call runs
as a shielded task and only the wait is abandoned.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from fleetgate.core.model import Device, HealthSample
from fleetgate.sim.device import VirtualDevice
from fleetgate.sim.device_state import SimReply
from fleetgate.sim.fleet import SimFleet
from fleetgate.transports.base import (
    ActivateResult,
    CallTimeouts,
    CommitResult,
    DeviceLogs,
    DeviceTransport,
    Facts,
    PingResult,
    RollbackResult,
    StageResult,
    TransportUnavailable,
    activate_body,
    commit_body,
    error_from_reply,
    parse_health,
    rollback_body,
    stage_body,
)
from fleetgate.transports.tokens import TokenSource

T = TypeVar("T")


class MemoryTransport(DeviceTransport):
    def __init__(
        self,
        fleet: SimFleet,
        *,
        tokens: TokenSource | None = None,
        timeouts: CallTimeouts | None = None,
    ) -> None:
        self.fleet = fleet
        self.tokens = tokens
        self.timeouts = timeouts or CallTimeouts()
        self._tasks: set[asyncio.Task[SimReply]] = set()

    async def aclose(self) -> None:
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    def _device(self, device: Device) -> VirtualDevice:
        dev = self.fleet.by_id.get(device.id)
        if dev is None:
            raise TransportUnavailable(
                f"{device.id}: no such device in the virtual fleet",
                device_id=device.id,
                code="connection-refused",
            )
        return dev

    async def _call(
        self,
        device: Device,
        call: str,
        parse: Callable[[str, Any], T],
        run: Callable[[VirtualDevice], Any],
    ) -> T:
        token = self.tokens.token_for(device) if self.tokens else self.fleet.token
        dev = self._device(device)
        admission = dev.admit()
        if admission.drop is not None:
            code = "connection-refused" if admission.drop == "refused" else "connection-reset"
            raise TransportUnavailable(
                f"{device.id}: {call}: {code}", device_id=device.id, code=code
            )
        limit = self.timeouts.for_call(call)

        async def answer() -> SimReply:
            if admission.delay_s > 0:
                await asyncio.sleep(admission.delay_s)
            denied = dev.authenticate(f"Bearer {token}", device.id)
            if denied is not None:
                return denied
            result = run(dev)
            if asyncio.iscoroutine(result):
                result = await result
            return result if isinstance(result, SimReply) else SimReply(200, result)

        task = asyncio.ensure_future(answer())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        try:
            reply = await asyncio.wait_for(asyncio.shield(task), limit)
        except asyncio.TimeoutError:
            raise TransportUnavailable(
                f"{device.id}: {call}: no answer within {limit:g}s",
                device_id=device.id,
                code="timeout",
            ) from None
        body = json.loads(json.dumps(reply.body))
        if not 200 <= reply.code < 300:
            raise error_from_reply(device.id, reply.code, body)
        return parse(device.id, body)

    async def ping(self, device: Device) -> PingResult:
        return await self._call(device, "ping", PingResult.parse, lambda d: d.ping())

    async def facts(self, device: Device) -> Facts:
        return await self._call(device, "facts", Facts.parse, lambda d: d.facts())

    async def health(self, device: Device) -> HealthSample:
        return await self._call(device, "health", parse_health, lambda d: d.health())

    async def logs(self, device: Device, lines: int = 200) -> DeviceLogs:
        return await self._call(device, "logs", DeviceLogs.parse, lambda d: d.logs(lines))

    async def stage(
        self,
        device: Device,
        *,
        deployment_id: str,
        seq: int,
        manifest_json: str,
        signature: str,
        url: str,
        downgrade_authorization: Mapping[str, str] | None = None,
    ) -> StageResult:
        body = stage_body(
            deployment_id, seq, manifest_json, signature, url, downgrade_authorization
        )
        return await self._command(device, "stage", body, StageResult.parse)

    async def activate(
        self, device: Device, *, deployment_id: str, seq: int, release: str
    ) -> ActivateResult:
        body = activate_body(deployment_id, seq, release)
        return await self._command(device, "activate", body, ActivateResult.parse)

    async def commit(
        self, device: Device, *, deployment_id: str, seq: int, release: str
    ) -> CommitResult:
        body = commit_body(deployment_id, seq, release)
        return await self._command(device, "commit", body, CommitResult.parse)

    async def rollback(
        self, device: Device, *, deployment_id: str, seq: int, to: str | None = None
    ) -> RollbackResult:
        body = rollback_body(deployment_id, seq, to)
        return await self._command(device, "rollback", body, RollbackResult.parse)

    async def _command(
        self, device: Device, name: str, body: dict[str, Any], parse: Callable[[str, Any], T]
    ) -> T:
        wire = json.loads(json.dumps(body))
        return await self._call(device, name, parse, lambda d: d.command(name, wire))
