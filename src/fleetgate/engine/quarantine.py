"""Set-aside devices go on the registry's quarantine list (spec: "add to quarantine list for
investigation"), so the next plan excludes them — with the reason — until an operator returns
them to service (``fleetgate registry release ID``).

After each drive, every device of the deployment that ended QUARANTINED, SKIPPED, failed to
deploy, or whose rollback failed, and that is still ``active`` in the registry, goes on the
store's quarantine list (which an inventory import cannot drop) and its device row becomes
``state: quarantine`` with ``state_reason`` naming the deployment and the failure (crash
loop, the failed health metric, "unreachable (attempt 3)", "stage failed: 507 …"). The change
is an audit event, ``registry.quarantined`` (details: ``devices`` {id: reason}), recorded before
the registry is written, so a crash between the two is repaired by the next drive (it finds the
devices still active and writes them again). Devices excluded because their canary cell was not
proven are *not* quarantined: nothing is wrong with them.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from fleetgate.core.model import DeviceState
from fleetgate.core.state import DeviceStatus
from fleetgate.engine.recorder import Recorder

D = DeviceStatus
SET_ASIDE = frozenset({D.QUARANTINED, D.SKIPPED, D.DEPLOY_FAILED, D.ROLLBACK_FAILED})


async def sync_quarantine(store: Any, rec: Recorder) -> None:
    state = rec.state
    aside = [i for i, st in state.device_items() if st in SET_ASIDE]
    if not aside:
        return
    listed = await store.quarantined()
    # Every set-aside device goes on the list, even one an import has meanwhile left out of
    # the inventory: the list outlives the device rows (a later import re-applies it).
    new = {
        i: state.reasons.get(i) or state.devices[i].value for i in sorted(aside) if i not in listed
    }
    if not new:
        return
    changed = [
        replace(
            dev,
            state=DeviceState.QUARANTINE,
            state_reason=f"{state.deployment_id}: {new[dev.id]}",
        )
        for dev in await store.get_devices(list(new))
        if dev.state is DeviceState.ACTIVE
    ]
    await rec.record("registry.quarantined", devices=new)
    async with store.transaction():
        await store.set_quarantine(new, state.deployment_id)
        await store.upsert_devices(changed)
