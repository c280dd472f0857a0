"""Replacing the inventory, as ``registry import`` and ``POST /api/v1/devices:import`` do.

One transaction: the devices are replaced and ``registry.imported`` is logged together, and a
device on the quarantine list stays quarantined whatever the new file says about it (only
``registry release``, an audited decision, takes it off the list).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from fleetgate.clock import utc_now_iso
from fleetgate.core.events import Event
from fleetgate.core.model import Device, DeviceState


def keep_quarantine(
    new: Sequence[Device], held: Mapping[str, str]
) -> tuple[list[Device], list[str]]:
    """A re-import must not return a quarantined device to service: a device on the store's
    quarantine list (``held``: id -> reason) stays quarantined whatever state the file gives it,
    even if an earlier import left it out."""
    out: list[Device] = []
    kept: list[str] = []
    for d in new:
        reason = held.get(d.id)
        if reason is not None and (
            d.state is not DeviceState.QUARANTINE or d.state_reason != reason
        ):
            d = replace(d, state=DeviceState.QUARANTINE, state_reason=reason)
            kept.append(d.id)
        out.append(d)
    return out, kept


@dataclass(frozen=True, slots=True)
class Imported:
    devices: int
    kept_in_quarantine: list[str]


async def import_inventory(
    store: Any, devices: Sequence[Device], *, actor: str, source: str, sha256: str
) -> Imported:
    async with store.transaction():
        kept_devices, kept = keep_quarantine(devices, await store.quarantined())
        await store.replace_devices(kept_devices)
        await store.append(
            Event(
                ts=utc_now_iso(),
                deployment_id=None,
                action="registry.imported",
                actor=actor,
                details={
                    "file": source,
                    "sha256": sha256,
                    "devices": len(kept_devices),
                    "kept_in_quarantine": kept,
                },
            )
        )
    return Imported(len(kept_devices), kept)
