"""Every ``fleetgate demo`` scenario ends the same over MQTT as over HTTP, proved from the event
log: the same phase sequence, final phase, per-device final states and exit code.

Each test runs the scenario twice at once, in one loop: over HTTP (the sim's server, agents
listening) and over MQTT (every virtual device and every real agent dialled out to the real
Mosquitto on 127.0.0.1:1883, the controller's ``MqttChannel``). The MQTT runs go one at a time:
two fleets with the same device ids on one broker would take each other's client ids (under
pytest-xdist: ``alone``, below).
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from fleetgate.api.embedded import api_in_process
from fleetgate.core.machine import apply
from fleetgate.core.state import DeploymentState, DeviceStatus
from fleetgate.sim.demo import SCENARIOS, run_demo
from fleetgate.store import Store

# Under pytest-xdist, nothing beside these: the same device ids on the machine's broker, and
# the real agents' latency gate (20 ms floor) is judged on wall-clock probes until an agent's
# first metrics scrape (seen failing at 30 ms with both cores busy).
pytestmark = [pytest.mark.slow, pytest.mark.alone]
BROKER = "mqtt://127.0.0.1:1883"
DEVICES, AGENTS = 12, 2


def _db(tmp_path: Path, channel: str) -> str:
    return f"sqlite+aiosqlite:///{tmp_path / channel}/fg.db"


async def _run(
    tmp_path: Path, scenario: str, channel: str, on_approval: Any = None, devices: int = DEVICES
) -> dict[str, Any]:
    where = tmp_path / channel
    db = _db(tmp_path, channel)
    result = await run_demo(
        db,
        scenario,
        devices,
        yes=True,
        agents=AGENTS,
        channel=channel,
        broker=BROKER,
        home=where / "home",
        say=lambda _l: None,
        on_approval=on_approval,
        serve_api=api_in_process,
    )
    async with Store.open(db) as store:
        events = await store.events(result.deployment_id)
        assert (await store.verify()).ok
        quarantined = await store.quarantined()
        # How the real agents came into the inventory: (action, device, token or state).
        arrivals = [
            (ev.action, ev.device_id, ev.details.get("state") or ev.details.get("was"))
            for ev in await store.events()
            if ev.action in ("device.enrolled", "registry.accepted")
        ]
        tokens = {
            ev.details["token"] for ev in await store.events() if ev.action == "device.enrolled"
        }
        agents = {d.id: d for d in await store.list_devices() if d.id.startswith("agent-")}
        keys = {a: await store.device_key(a) for a in agents}
    state = DeploymentState.empty(result.deployment_id)
    phases: list[str] = []
    for ev in events:  # the phase sequence, as the log replays it
        state = apply(state, ev)
        if not phases or phases[-1] != state.phase.value:
            phases.append(state.phase.value)
    return {
        "phases": phases,
        "final": result.phase,
        "reason": state.halt_reason,
        "exit": result.exit_code,
        "devices": dict(state.device_items()),
        "stages": state.stages,
        "quarantined": sorted(quarantined),
        "arrivals": arrivals,
        "tokens": tokens,
        "agents": agents,
        "keys": keys,
    }


@pytest.fixture(autouse=True)
def _one_migration_at_a_time(monkeypatch: pytest.MonkeyPatch) -> None:
    """Two stores opened at once in one process: alembic's module-level proxies are not safe
    for two migrations in two threads at a time (KeyError: 'config'), so take turns."""
    from fleetgate.store import migrate

    lock = asyncio.Lock()
    upgrade = migrate.upgrade

    async def in_turn(*args: Any) -> None:
        async with lock:
            await upgrade(*args)

    monkeypatch.setattr(migrate, "upgrade", in_turn)


async def _both(
    tmp_path: Path, scenario: str, on_approval: Any = None, devices: int = DEVICES
) -> tuple[Any, Any]:
    for channel in ("http", "mqtt"):
        (tmp_path / channel).mkdir()
    http, mqtt = await asyncio.gather(
        _run(tmp_path, scenario, "http", on_approval, devices),
        _run(tmp_path, scenario, "mqtt", on_approval, devices),
    )
    return http, mqtt


def _same(http: dict[str, Any], mqtt: dict[str, Any]) -> None:
    for key in ("phases", "final", "exit", "stages", "devices", "quarantined"):
        assert mqtt[key] == http[key], f"{key}: {mqtt['reason']!r} vs {http['reason']!r}"


@pytest.mark.parametrize("scenario", SCENARIOS)
async def test_each_scenario_ends_the_same_over_mqtt_as_over_http(
    tmp_path: Path, scenario: str
) -> None:
    http, mqtt = await _both(tmp_path, scenario)
    _same(http, mqtt)
    expected = {
        "happy": "COMPLETE",
        "bad-canary": "ABORTED",
        "wave-degradation": "HALTED",
        "unreachable": "HALTED",
        "rollback-failure": "HALTED",
    }
    assert mqtt["final"] == expected[scenario]
    # The real agents took part over MQTT too (their ids are in the plan).
    assert {"agent-01", "agent-02"} <= set(mqtt["devices"])
    # Over MQTT they enrolled themselves (pending, one single-use token each) and were
    # accepted; over HTTP they are imported.
    assert mqtt["arrivals"] == [
        ("device.enrolled", "agent-01", "pending"),
        ("device.enrolled", "agent-02", "pending"),
        ("registry.accepted", "agent-01", "pending"),
        ("registry.accepted", "agent-02", "pending"),
    ]
    assert len(mqtt["tokens"]) == 2
    for dev_id, dev in mqtt["agents"].items():
        assert dev.state.value == "active"
        assert dev.address == f"{BROKER}/{dev_id}"
        assert mqtt["keys"][dev_id] is not None  # its own key, proved at enrolment
        assert dev.token_file and "/credentials/" in dev.token_file  # its own credential
    assert http["arrivals"] == [] and all(k is None for k in http["keys"].values())


async def test_a_device_that_stays_offline_is_skipped_and_quarantined_as_over_http(
    tmp_path: Path,
) -> None:
    """One wave device goes away for good after the approval (over MQTT: its connection drops,
    the broker publishes its will); past the policy's retries it is SKIPPED, the rest of the
    fleet is deployed (PARTIAL), and it lands on the quarantine list — as over HTTP."""
    victims: list[str] = []

    def go_offline(fleet: Any, state: Any) -> None:
        victim = next(d for d in state.stages[1] if d in fleet.model.by_id)
        fleet.inject(f"offline:device={victim}")
        victims.append(victim)

    # 30 devices: one away in wave 1 stays under the 20 % that would halt the stage.
    http, mqtt = await _both(tmp_path, "happy", go_offline, devices=30)
    _same(http, mqtt)
    victim = victims[0]
    assert victims == [victim, victim]
    assert mqtt["final"] == "PARTIAL"  # the rest of the fleet is on the release
    assert mqtt["devices"][victim] is DeviceStatus.SKIPPED
    assert mqtt["quarantined"] == [victim]
    others = [s for d, s in mqtt["devices"].items() if d != victim]
    assert all(s is DeviceStatus.HEALTHY for s in others)
