"""``deploy recover``: clear a rollback failure, but only for a device that is really fixed.

The spec's highest-severity error, a failed rollback, stops every deployment action until it is
resolved. An operator fixes the device by hand (SSH, console, on site) and then says so with
``fleetgate deploy recover ID --device DEV --as NAME --comment …``. fleetgate first re-checks
the device and refuses to clear the block (``GuardrailError``, exit 3) unless all three hold:

1. **reachable**: the agent answers ``facts``;
2. **on a known-good release**: its current release is set, is not this deployment's release,
   and is on its disk;
3. **healthy**: it answers ``health`` for that release with the app up and within the policy's
   bounds against its own pre-deploy baseline.

Then ``device.recovered`` is recorded with the checks and the person's name (the device stays
QUARANTINED in this deployment and in the registry until ``fleetgate registry release``).
"""

from __future__ import annotations

from typing import Any

from fleetgate.config.policy_file import policy_from_dict
from fleetgate.core.gates import evaluate_health
from fleetgate.engine.context import sample_from_dict
from fleetgate.errors import FleetgateError, GuardrailError, InputError
from fleetgate.registry import device_from_dict
from fleetgate.transports.client import DeviceClient


async def recheck_device(
    store: Any, transport: DeviceClient, dep_id: str, device_id: str
) -> dict[str, Any]:
    """The three checks, as recorded in ``device.recovered``; GuardrailError if one fails."""
    created = None
    async for ev in store.iter_events(dep_id):
        created = ev
        break
    if created is None or created.action != "deployment.created":
        raise InputError(f"no deployment {dep_id!r}")
    d = created.details
    targets = {t["id"]: t for t in d["targets"]}
    if device_id not in targets:
        raise InputError(f"device {device_id!r} is not a target of deployment {dep_id}")
    device = device_from_dict(targets[device_id], where=f"deployment {dep_id} target")
    release = str(d["release"]["release_id"])
    policy = policy_from_dict(dict(d["policy"]), f"deployment {dep_id} policy")
    baseline = None
    for ev in await store.events(dep_id, device_id=device_id):
        if ev.action == "device.baseline":
            baseline = sample_from_dict(device_id, ev.details.get("sample"))
            break

    def refuse(why: str) -> GuardrailError:
        return GuardrailError(
            f"{device_id} is not recovered: {why}; the rollback failure stays unresolved",
            device_id=device_id,
            deployment_id=dep_id,
        )

    try:
        facts = await transport.facts(device)
    except FleetgateError as exc:
        raise refuse(f"unreachable ({exc})") from None
    checks: dict[str, Any] = {"reachable": True, "current": facts.current}
    if not facts.current:
        raise refuse("it runs no release")
    if facts.current == release:
        raise refuse(f"it still runs the deployment's release {release}")
    if facts.releases and facts.current not in facts.releases:
        raise refuse(f"its current release {facts.current} is not on its disk")
    checks["known_good"] = True
    try:
        sample = await transport.health(device)
    except FleetgateError as exc:
        raise refuse(f"health endpoint not responding ({exc})") from None
    if sample.release is not None and sample.release != facts.current:
        raise refuse(f"health answers for {sample.release}, not {facts.current}")
    verdict = evaluate_health(sample, baseline, policy.health)
    if not verdict.healthy:
        raise refuse(f"{verdict.status.value}: " + "; ".join(verdict.reasons))
    checks["healthy"] = True
    return checks
