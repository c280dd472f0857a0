"""The new user's path, through the real CLI and real HTTP: an Ansible inventory with groups,
``:children``, ``ansible_host`` and a credential, and no facts, is imported; ``registry
refresh`` reads the facts from the (simulated) devices at their ``ansible_host`` on the agent's
default port; a host that does not answer stays unknown, and a plan excludes it saying why."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from fleetgate.cli.main import run
from fleetgate.core.model import ArtifactKind, Manifest
from fleetgate.core.plan import plan_deployment
from fleetgate.core.policy import Policy
from fleetgate.registry.ansible import DEFAULT_AGENT_PORT
from fleetgate.sim.fleetspec import FleetSpec
from fleetgate.sim.server import VirtualFleet
from fleetgate.store import Store


async def _cli(capsys, *argv: str) -> tuple[int, str, str]:  # type: ignore[no-untyped-def]
    code = await asyncio.to_thread(run, list(argv))
    out, err = capsys.readouterr()
    return code, out, err


async def test_import_without_facts_then_refresh_from_the_devices(tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    spec = FleetSpec(devices=4, seed=3, per_device_address=True, groups=("plant-a",))
    async with VirtualFleet.start(spec, port=DEFAULT_AGENT_PORT) as fleet:
        token_file = tmp_path / "fleet.token"
        token_file.write_text(fleet.token + "\n")
        token_file.chmod(0o600)
        hosts = {d.id: d.address.split("//")[1].split(":")[0] for d in fleet.devices}
        ids = sorted(hosts)
        inventory = tmp_path / "hosts.ini"
        inventory.write_text(
            "[line1]\n"
            + "".join(f"{i} ansible_host={hosts[i]}\n" for i in ids[:2])
            + "[line2]\n"
            + "".join(f"{i} ansible_host={hosts[i]}\n" for i in ids[2:])
            + "ghost ansible_host=127.1.200.200\n"  # nothing answers there
            + "[plant_a:children]\nline1\nline2\n"
            + f"[plant_a:vars]\nfleetgate_token_file={token_file}\n"
        )
        db = f"sqlite+aiosqlite:///{tmp_path}/fg.db"
        code, out, err = await _cli(capsys, "--db", db, "registry", "import", str(inventory))
        assert code == 0, err
        assert "imported 5 devices" in out

        code, out, err = await _cli(capsys, "--db", db, "registry", "refresh", "--as", "ann")
        assert code == 1, err  # one device did not answer
        assert "refreshed 4 of 5 device(s)" in out
        assert err.startswith("ghost: not refreshed:")

        code, out, err = await _cli(capsys, "--db", db, "registry", "list", "--json")
        rows = {r["id"]: r for r in json.loads(out)["devices"]}
        for i in ids:
            sim = next(d for d in fleet.devices if d.id == i)
            assert rows[i]["hardware"] == sim.hardware and rows[i]["facts_known"]
            assert rows[i]["last_seen"] is not None
            assert rows[i]["group"] in ("line1", "line2")
        assert not rows["ghost"]["facts_known"] and rows["ghost"]["last_seen"] is None

    async with Store.open(db) as store:
        fleet_now = await store.list_devices()
        events = [e async for e in store.iter_events() if e.action == "registry.refreshed"]
    plan = plan_deployment(
        fleet_now, Manifest(name="app", version="1.0", kind=ArtifactKind.BUNDLE), Policy()
    )
    (excl,) = plan.excluded
    assert excl.device.id == "ghost" and excl.reason.startswith("facts unknown")
    assert len(plan.targeted) == 4
    (ev,) = events
    assert ev.actor == "ann" and ev.details["updated"] == 4 and "ghost" in ev.details["failed"]
