"""Filling the inventory's facts from the devices themselves (``registry refresh``, and before
a plan that needs facts a device has not reported yet).

``refresh_facts(store, client, devices, now)`` asks every device for its facts through the
transport client (``DeviceClient.facts``: the same channel, credentials and bounded
concurrency as a deployment), writes each answer's facts (hardware, arch, RAM, disk, GPU,
software merged) and ``last_seen`` in one transaction, and logs ``registry.refreshed`` with the
counts and, per device that did not answer or answered nonsense, why. A device that fails
keeps what the inventory knew (unknown stays unknown): nothing is guessed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from fleetgate.clock import normalise_iso, to_iso
from fleetgate.core.events import Event
from fleetgate.core.model import Device
from fleetgate.errors import FleetgateError, ValidationError
from fleetgate.registry.facts import ReportedFacts, read_facts

log = logging.getLogger("fleetgate.registry")


@dataclass(frozen=True, slots=True)
class Refreshed:
    updated: list[Device] = field(default_factory=list)  # as written to the store
    failed: dict[str, str] = field(default_factory=dict)  # device id -> one-line reason


def facts_view(facts: Any) -> dict[str, Any]:
    """The inventory's part of a ``transports.results.Facts`` answer, as ``read_facts`` reads
    it."""
    return {
        "hardware": facts.hardware,
        "arch": facts.arch,
        "ram_mb": facts.ram_mb,
        "disk_mb": facts.disk_mb,
        "disk_free_mb": facts.disk_free_mb,
        "gpu": facts.gpu,
        "software": dict(facts.software),
    }


def reported(device_id: str, facts: Any) -> ReportedFacts | str:
    """The inventory's facts from a facts answer, or why they cannot be used."""
    if facts.id != device_id:
        return f"answered as {facts.id!r}, not {device_id!r} (wrong address?)"
    try:
        return read_facts(facts_view(facts))
    except ValidationError as exc:
        return "; ".join(exc.problems)


async def _ask(client: Any, device: Device) -> ReportedFacts | str:
    try:
        facts = await client.facts(device)
    except FleetgateError as exc:
        return str(exc).splitlines()[0]
    return reported(device.id, facts)


async def refresh_facts(
    store: Any, client: Any, devices: Sequence[Device], *, now: str, actor: str
) -> Refreshed:
    answers = await asyncio.gather(*(_ask(client, d) for d in devices))
    out = Refreshed()
    facts: dict[str, ReportedFacts] = {}
    for device, answer in zip(devices, answers, strict=True):
        if isinstance(answer, str):
            out.failed[device.id] = answer
        else:
            facts[device.id] = answer
    if not devices:
        return out
    async with store.transaction():
        # Applied to each device's current record: a state written meanwhile is kept.
        out.updated.extend(await store.record_facts(facts, now))
        await store.append(
            Event(
                ts=normalise_iso(now),
                deployment_id=None,
                action="registry.refreshed",
                actor=actor,
                details={
                    "asked": len(devices),
                    "updated": len(out.updated),
                    "failed": dict(sorted(out.failed.items())[:100]),
                },
            )
        )
    return out


async def refresh_unknown(
    store: Any, client: Any, fleet: Sequence[Device], *, now: str, actor: str
) -> list[Device]:
    """Before a plan: ask the active devices whose facts are still unknown (first contact),
    and return the fleet with what they answered; the rest stay unknown and the plan
    excludes them with that reason."""
    from fleetgate.core.model import DeviceState

    unknown = [d for d in fleet if not d.facts_known and d.state is DeviceState.ACTIVE]
    if not unknown:
        return list(fleet)
    done = await refresh_facts(store, client, unknown, now=now, actor=actor)
    fresh = {d.id: d for d in done.updated}
    return [fresh.get(d.id, d) for d in fleet]


class FactsRecorder:
    """Every successful facts call of a deployment (pre-flight, rollback checks) refreshes the
    device's facts and ``last_seen``: ``attach(client)`` sets the client's ``on_facts``; answers
    are kept per device and written in one transaction at most every ``interval_s``, off the
    deployment's path (a store hiccup here is logged, never a deployment failure)."""

    def __init__(self, store: Any, interval_s: float = 2.0) -> None:
        self.store = store
        self.interval_s = interval_s
        self._pending: dict[str, ReportedFacts] = {}
        self._task: asyncio.Task[None] | None = None

    def attach(self, client: Any) -> FactsRecorder:
        client.on_facts = self.note
        return self

    def note(self, device: Device, facts: Any) -> None:
        answer = reported(device.id, facts)
        if isinstance(answer, str):
            return
        self._pending[device.id] = answer
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._later())

    async def _later(self) -> None:
        await asyncio.sleep(self.interval_s)
        self._task = None
        await self.flush()

    async def flush(self) -> None:
        batch, self._pending = self._pending, {}
        if not batch:
            return
        try:
            await self.store.record_facts(batch, to_iso(await self.store.now()))
        except FleetgateError as exc:
            log.warning("facts of %d device(s) not recorded: %s", len(batch), exc)

    async def aclose(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self.flush()
