"""``DeviceClient``: the typed calls the engine makes, written once above any ``Channel``.

Contract (docs/protocol.md is the wire contract, docs/transports.md the seam):
- One method per protocol call (``ping``, ``facts``, ``health``, ``logs``, ``stage``,
  ``activate``, ``commit``, ``rollback``). Each builds the body (``stage_body`` …), sends it
  through the channel, and returns a typed result parsed from the reply (``results.py``) or
  raises. It never returns half-parsed data and never retries by itself: retry policy belongs
  to the engine, which knows the deployment's ``[retries]``.
- Every failure is a ``FleetgateError`` with ``device_id`` set:
  - ``TransportUnavailable`` (retryable): the channel got no answer (``ChannelDown``: refused,
    reset, …), the call's timeout passed (``timeout``), a 5xx without a protocol error body,
    ``409 busy`` / ``409 in-progress``, a 2xx whose body is not JSON (``bad-response``);
  - ``DeviceRefusal``: the device answered with a protocol error it means, or a 2xx whose JSON
    lacks the protocol's shape; ``retryable`` comes from the protocol table (``errors.py``).
  Both carry ``code`` and ``status`` (``None`` when there was no answer).
- A ``200`` is never an exception: ``activate`` answering ``start-failed`` and ``rollback``
  answering ``app_healthy: false`` are results the engine must judge.
- Timeouts: ``CallTimeouts`` per call, counted once the call holds a slot of the
  ``concurrency`` bound (``None``: unbounded), so a burst of 10,000 health checks queues
  instead of timing out. A timeout cancels the wait, not the device's work.
- ``on_facts(device, facts)``, if set, is called after every successful ``facts`` call (the
  controller records the facts and ``last_seen`` in the inventory); it must not block.
- ``on_call(command, seconds)``, if given, is called after every call, answered or not, with
  the wall time including the wait for a slot (the API's agent-latency histogram).
- A health sample a device volunteers with a successful ``activate`` answer (issue 12: the
  body asks ``with_health``) is kept for that device and answers its **next** ``health`` call,
  once, if that call comes within ``VOLUNTEERED_MAX_AGE_S``: the engine's smoke test, made right
  after the activate is recorded, costs no second round trip and sees exactly what a call would
  have seen then. Anything later (a soak round, a wave gate) goes to the device.
- Lifecycle: ``async with client:`` … ``aclose()`` closes the channel. Idempotent.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping
from types import TracebackType
from typing import Any, TypeVar

from fleetgate.core.model import Device, HealthSample
from fleetgate.transports.base import (
    CallTimeouts,
    activate_body,
    commit_body,
    rollback_body,
    stage_body,
)
from fleetgate.transports.channel import Channel, ChannelDown
from fleetgate.transports.errors import TransportUnavailable, error_from_reply
from fleetgate.transports.results import (
    ActivateResult,
    CommitResult,
    DeviceLogs,
    Facts,
    PingResult,
    RollbackResult,
    StageResult,
    parse_health,
)

log = logging.getLogger("fleetgate.transport")

T = TypeVar("T")
OnCall = Callable[[str, float], None]

# How old a volunteered health sample may be when the next health call would use it. The
# smoke test follows its activate within milliseconds (one store append); a few seconds cover
# a loaded controller. Older, the device is asked: a sample never stands in for a later check.
VOLUNTEERED_MAX_AGE_S = 5.0


class DeviceClient:
    def __init__(
        self,
        channel: Channel,
        *,
        timeouts: CallTimeouts | None = None,
        concurrency: int | None = None,
        on_call: OnCall | None = None,
    ) -> None:
        if concurrency is not None and concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        self.channel = channel
        self.timeouts = timeouts or CallTimeouts()
        self.concurrency = concurrency
        self.on_call = on_call
        self._slots = asyncio.Semaphore(concurrency) if concurrency is not None else None
        # Told of every successful facts answer (engine/facts_refresh.py FactsRecorder).
        self.on_facts: Callable[[Device, Facts], None] | None = None
        # device id -> (monotonic time, sample) volunteered with an activate answer; at most
        # one per device, removed by the next health call (used or too old).
        self._volunteered: dict[str, tuple[float, HealthSample]] = {}

    async def aclose(self) -> None:
        await self.channel.aclose()

    async def __aenter__(self) -> DeviceClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    # -- one call ------------------------------------------------------------------------------
    async def call(
        self,
        device: Device,
        command: str,
        body: dict[str, Any] | None,
        parse: Callable[[str, Any], T],
    ) -> T:
        """Send ``command`` and parse its reply; every failure mapped here, once. (One flat
        coroutine on purpose: this runs for every message of every device.)"""
        t0 = time.perf_counter() if self.on_call is not None else 0.0
        slots = self._slots
        if slots is not None:
            await slots.acquire()
        try:
            limit = self.timeouts.for_call(command)
            try:
                async with asyncio.timeout(limit):
                    reply = await self.channel.send(device, command, body)
            except TimeoutError:
                raise self._unavailable(
                    device, command, "timeout", f"no answer within {limit:g}s"
                ) from None
            except ChannelDown as down:
                raise self._unavailable(device, command, down.code, down.what) from None
        finally:
            if slots is not None:
                slots.release()
            if self.on_call is not None:
                self.on_call(command, time.perf_counter() - t0)
        status, data = reply.status, reply.body
        if not 200 <= status < 300:
            log.debug("%s %s -> %d", device.id, command, status)
            raise error_from_reply(device.id, status, data)
        if data is None:
            raise TransportUnavailable(
                f"{device.id}: {command}: HTTP {status} with a body that is not JSON",
                device_id=device.id,
                code="bad-response",
                status=status,
            )
        return parse(device.id, data)

    def _unavailable(
        self, device: Device, command: str, code: str, what: str
    ) -> TransportUnavailable:
        log.debug("%s %s: %s", device.id, command, code)
        return TransportUnavailable(
            f"{device.id}: {command} at {device.address}: {what}", device_id=device.id, code=code
        )

    # -- the protocol --------------------------------------------------------------------------
    async def ping(self, device: Device) -> PingResult:
        return await self.call(device, "ping", None, PingResult.parse)

    async def facts(self, device: Device) -> Facts:
        facts = await self.call(device, "facts", None, Facts.parse)
        if self.on_facts is not None:  # the inventory keeps what devices report (issue 9)
            self.on_facts(device, facts)
        return facts

    async def health(self, device: Device) -> HealthSample:
        kept = self._volunteered.pop(device.id, None)
        if kept is not None and time.monotonic() - kept[0] <= VOLUNTEERED_MAX_AGE_S:
            return kept[1]
        return await self.call(device, "health", None, parse_health)

    async def logs(self, device: Device, lines: int = 200) -> DeviceLogs:
        return await self.call(device, "logs", {"lines": lines}, DeviceLogs.parse)

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
        return await self.call(device, "stage", body, StageResult.parse)

    async def activate(
        self, device: Device, *, deployment_id: str, seq: int, release: str
    ) -> ActivateResult:
        body = activate_body(deployment_id, seq, release)
        self._volunteered.pop(device.id, None)  # never a sample from before this activate
        result = await self.call(device, "activate", body, ActivateResult.parse)
        if result.ok and result.health is not None:
            self._volunteered[device.id] = (time.monotonic(), result.health)
        return result

    async def commit(
        self, device: Device, *, deployment_id: str, seq: int, release: str
    ) -> CommitResult:
        body = commit_body(deployment_id, seq, release)
        return await self.call(device, "commit", body, CommitResult.parse)

    async def rollback(
        self, device: Device, *, deployment_id: str, seq: int, to: str | None = None
    ) -> RollbackResult:
        body = rollback_body(deployment_id, seq, to)
        return await self.call(device, "rollback", body, RollbackResult.parse)
