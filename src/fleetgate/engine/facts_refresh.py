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
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from fleetgate.clock import normalise_iso
from fleetgate.core.events import Event
from fleetgate.core.model import Device
from fleetgate.errors import FleetgateError, ValidationError
from fleetgate.registry.facts import apply_facts, read_facts


@dataclass(frozen=True, slots=True)
class Refreshed:
    updated: list[Device] = field(default_factory=list)
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


async def _ask(client: Any, device: Device) -> Device | str:
    try:
        facts = await client.facts(device)
    except FleetgateError as exc:
        return str(exc).splitlines()[0]
    if facts.id != device.id:
        return f"answered as {facts.id!r}, not {device.id!r} (wrong address?)"
    try:
        return apply_facts(device, read_facts(facts_view(facts)))
    except ValidationError as exc:
        return "; ".join(exc.problems)


async def refresh_facts(
    store: Any, client: Any, devices: Sequence[Device], *, now: str, actor: str
) -> Refreshed:
    answers = await asyncio.gather(*(_ask(client, d) for d in devices))
    out = Refreshed()
    for device, answer in zip(devices, answers, strict=True):
        if isinstance(answer, Device):
            out.updated.append(answer)
        else:
            out.failed[device.id] = answer
    if not devices:
        return out
    async with store.transaction():
        # Only devices still in the inventory are written (an import may have run meanwhile).
        await store.record_seen(out.updated, now)
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
