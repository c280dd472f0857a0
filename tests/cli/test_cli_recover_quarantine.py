"""Issue 7 items 5, 6 and 7 through the real ``fleetgate`` entry point.

- ``deploy recover`` against a real HTTP fleet (``fleetgate sim run`` as its own process): the
  command re-checks the device over the network and refuses (exit 3, nothing recorded) until it
  is really fixed; a blank ``--as`` is exit 2; a replayed recover is refused.
- Quarantine: devices a deployment set aside are ``state: quarantine`` in the registry with a
  reason naming the deployment and the cause, ``deploy plan`` leaves them out with that reason,
  ``registry release`` returns one (audited), and a re-import of the original fleet.yaml does
  not silently return the others to service.
- Overlap: ``deploy start`` of a deployment overlapping one that awaits approval exits 3 naming
  it, and creates nothing.

Deployments are driven in-process on a virtual clock (soaks take no wall time) on the same
store the CLI uses; the commands under test run as the CLI runs them.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "engine"))
from engine_harness import FAST_POLICY, VirtualClock, build_release

from fleetgate.cli import deploy_run
from fleetgate.cli.main import EXIT_HALTED, EXIT_INPUT, EXIT_OK, EXIT_WAITING, run
from fleetgate.config.policy_file import policy_from_dict
from fleetgate.core.model import Device
from fleetgate.core.state import DeviceStatus, Phase
from fleetgate.engine.service import Controller, ControllerConfig
from fleetgate.sim.fleet import SimFleet
from fleetgate.sim.fleetspec import FleetSpec
from fleetgate.store import Store
from fleetgate.transports.client import DeviceClient
from fleetgate.transports.http import HttpTransport
from fleetgate.transports.memory import MemoryTransport
from fleetgate.transports.tokens import TokenSource

D = DeviceStatus
OLD = "app-1.0.0-00000000"


@pytest.fixture
def db(tmp_path: Path) -> str:
    return f"sqlite+aiosqlite:///{tmp_path}/fg.db"


@pytest.fixture
def release(tmp_path: Path) -> tuple[Path, Path]:
    return build_release(tmp_path)


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    h = tmp_path / "home"
    h.mkdir()
    monkeypatch.setattr(deploy_run, "HOME", h)
    monkeypatch.delenv("FLEETGATE_PUBKEY", raising=False)
    return h


def cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    capsys.readouterr()
    code = run(list(argv))
    out = capsys.readouterr()
    assert "Traceback" not in out.err
    return code, out.out, out.err


def events(db: str, dep: str | None = None) -> list[Any]:
    async def go() -> list[Any]:
        async with Store.open(db) as store:
            return list(await store.events(dep))

    return asyncio.run(go())


def registry(db: str) -> dict[str, Device]:
    async def go() -> dict[str, Device]:
        async with Store.open(db) as store:
            return {d.id: d for d in await store.list_devices()}

    return asyncio.run(go())


@asynccontextmanager
async def controller(
    db: str, transport: DeviceClient, tmp: Path, pub: Path
) -> AsyncIterator[Controller]:
    clock = VirtualClock()
    async with Store.open(db) as store:
        yield Controller(
            store,
            transport,
            ControllerConfig(tmp / "blobs", pub),
            clock=clock,
            store_clock=clock.store_now,
        )


async def start(ctl: Controller, bundle: Path, **kw: Any) -> str:
    policy = policy_from_dict(FAST_POLICY, "test policy")
    return await ctl.start(bundle, policy, policy_doc=FAST_POLICY, **kw)


# -- a real HTTP fleet in its own process ----------------------------------------------------------
class SimProcess:
    """``fleetgate sim run`` on 127.0.0.1; faults are injected and snapshots read through its
    control routes, the same way the demo drives a simulator in another process."""

    def __init__(self, tmp: Path, devices: int) -> None:
        self.log = tmp / "sim.out"
        self.inventory = tmp / "fleet.yaml"
        with self.log.open("wb") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "fleetgate", "sim", "run", "--devices", str(devices),
                 "--seed", "7", "--registry-out", str(self.inventory)],
                stdout=out,
                stderr=subprocess.STDOUT,
            )  # fmt: skip
        info = self._wait_ready()
        self.url = info["url"].split()[0]
        self.token = Path(info["token file"]).read_text().strip()

    def _wait_ready(self, timeout: float = 30) -> dict[str, str]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            lines = self.log.read_text(errors="replace").splitlines()
            if "ready" in lines:
                return dict(line.split(": ", 1) for line in lines if ": " in line)
            if self.proc.poll() is not None:
                break
            time.sleep(0.05)
        self.kill()
        raise AssertionError(f"sim not ready:\n{self.log.read_text(errors='replace')}")

    def _control(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        req = urllib.request.Request(
            self.url + path,
            method=method,
            data=json.dumps(body).encode() if body is not None else None,
            headers={"Authorization": f"Bearer {self.token}", "Content-Type": "application/json"},
        )
        with urllib.request.urlopen(req, timeout=10) as resp:
            return json.loads(resp.read())

    def inject(self, spec: str) -> list[str]:
        devices: list[str] = self._control("POST", "/_sim/faults", {"fault": spec})["devices"]
        return devices

    def clear_faults(self) -> None:
        self._control("DELETE", "/_sim/faults")

    def current(self, device_id: str) -> str | None:
        snap = self._control("GET", f"/_sim/devices/{device_id}")
        return snap["current"]  # type: ignore[no-any-return]

    def last_seq(self, device_id: str) -> int:
        return int(self._control("GET", f"/_sim/devices/{device_id}")["last_seq"])

    def kill(self) -> None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)


@pytest.fixture
def sim(tmp_path: Path) -> Iterator[SimProcess]:
    proc = SimProcess(tmp_path, devices=40)
    try:
        yield proc
    finally:
        proc.kill()


def manual_rollback(sim: SimProcess, db: str, device_id: str) -> None:
    """The operator's own fix: roll the device back to its known-good release over the agent
    protocol, outside any deployment."""

    device = registry(db)[device_id]

    async def go() -> None:
        async with HttpTransport(TokenSource()) as transport:
            await transport.rollback(
                device, deployment_id="manual-fix", seq=sim.last_seq(device_id) + 1, to=OLD
            )

    asyncio.run(go())
    assert sim.current(device_id) == OLD


@pytest.mark.slow
def test_recover_through_the_cli_rechecks_the_device_over_the_network(
    tmp_path: Path,
    db: str,
    home: Path,
    release: tuple[Path, Path],
    sim: SimProcess,
    capsys: pytest.CaptureFixture[str],
) -> None:
    bundle, pub = release
    assert cli(capsys, "--db", db, "registry", "import", str(sim.inventory))[0] == EXIT_OK

    async def rollback_failure() -> tuple[str, str]:
        async with (
            HttpTransport(TokenSource()) as transport,
            controller(db, transport, tmp_path, pub) as ctl,
        ):
            dep = await start(ctl, bundle)
            victim = (await ctl.state(dep)).canaries[-1]
            assert sim.inject(f"crash-loop:device={victim},version=2.0.0") == [victim]
            assert sim.inject(f"rollback-fail:device={victim}") == [victim]
            state = await ctl.drive(dep)
            assert state.phase is Phase.HALTED and state.manual_intervention == (victim,)
            return dep, victim

    dep, victim = asyncio.run(rollback_failure())
    assert sim.current(victim) != OLD
    base = ["--db", db, "deploy"]
    recover = [*base, "recover", dep, "--device", victim, "--pubkey", str(pub)]

    def refused(needle: str, *extra: str) -> None:
        before = [e.seq for e in events(db)]
        code, _, err = cli(capsys, *recover, "--as", "bob", *extra)
        assert code == EXIT_HALTED, err
        assert needle in err and "the rollback failure stays unresolved" in err
        assert [e.seq for e in events(db)] == before, "a refused recover recorded something"

    # 1. Nothing fixed yet: the device still runs (and crash-loops on) the new release.
    refused("still runs the deployment's release")
    # Resume stays refused (exit 3): the state machine's block, not a crash.
    code, _, err = cli(capsys, *base, "resume", dep, "--as", "bob", "--no-drive")
    assert code == EXIT_HALTED and "rollback failure is unresolved" in err
    # No deployment may start anywhere meanwhile; the refusal names the way out.
    code, _, err = cli(capsys, *base, "start", str(bundle), "--pubkey", str(pub))
    assert code == EXIT_HALTED and f"fleetgate deploy recover {dep} --device" in err
    # 2. A blank name names nobody: exit 2 before the device is even asked.
    code, _, err = cli(capsys, *recover, "--as", "   ")
    assert code == EXIT_INPUT and "--as: a blank name" in err
    # 3. Rolled back by hand, but the network to it is gone.
    sim.clear_faults()
    manual_rollback(sim, db, victim)
    sim.inject(f"unreachable:device={victim}")
    refused("unreachable")
    # 4. Reachable again, on the known-good release, healthy: recorded with the person.
    sim.clear_faults()
    code, out, err = cli(capsys, *recover, "--as", "  bob ", "--comment", "reflashed", "--json")
    assert code == EXIT_HALTED, err  # the deployment itself is still HALTED until resumed
    doc = json.loads(out)
    assert doc["deployment_id"] == dep and doc["phase"] == "HALTED"
    (rec,) = [e for e in events(db, dep) if e.action == "device.recovered"]
    assert (rec.device_id, rec.actor, rec.details["comment"]) == (victim, "bob", "reflashed")
    assert rec.details["checks"]["current"] == OLD and rec.details["checks"]["healthy"] is True
    # 5. A replayed recover is refused and changes nothing.
    before = [e.seq for e in events(db)]
    code, _, err = cli(capsys, *recover, "--as", "bob")
    assert code == EXIT_HALTED and "no unresolved rollback failure" in err
    assert [e.seq for e in events(db)] == before
    # 6. Resume is a decision the log accepts now.
    code, _, err = cli(capsys, *base, "resume", dep, "--as", "bob", "--no-drive")
    assert code == EXIT_WAITING, err  # recorded, not driven: back to VERIFY
    assert any(e.action == "deployment.resumed" for e in events(db, dep))


# -- quarantine (7.6) ------------------------------------------------------------------------------
@pytest.fixture
def fleet(tmp_path: Path, db: str, capsys: pytest.CaptureFixture[str]) -> SimFleet:
    """A 200-device virtual fleet (in memory), imported from its fleet.yaml through the CLI."""
    model = SimFleet(FleetSpec(devices=200, seed=7, activate_s=0.0))
    model.write_inventory(tmp_path / "fleet.yaml")
    code, _, err = cli(capsys, "--db", db, "registry", "import", str(tmp_path / "fleet.yaml"))
    assert code == EXIT_OK, err
    return model


def listed(capsys: pytest.CaptureFixture[str], db: str, select: str) -> dict[str, Any]:
    code, out, err = cli(capsys, "--db", db, "registry", "list", "--select", select, "--json")
    assert code == EXIT_OK, err
    return {d["id"]: d for d in json.loads(out)["devices"]}


def planned_exclusions(capsys: pytest.CaptureFixture[str], db: str, bundle: Path) -> dict[str, str]:
    code, out, err = cli(capsys, "--db", db, "deploy", "plan", str(bundle), "--json")
    assert code == EXIT_OK, err
    plan = json.loads(out)
    targeted = {c["id"] for c in plan["canaries"]}
    targeted |= {i for w in plan["waves"] for i in w["devices"]}
    excluded = {e["id"]: e["reason"] for e in plan["excluded"]}
    assert not targeted & set(excluded)
    return excluded


def test_set_aside_devices_are_quarantined_until_released(
    tmp_path: Path,
    db: str,
    release: tuple[Path, Path],
    fleet: SimFleet,
    capsys: pytest.CaptureFixture[str],
) -> None:
    bundle, pub = release

    async def deploy() -> tuple[str, str, str]:
        async with (
            MemoryTransport(fleet) as transport,
            controller(db, transport, tmp_path, pub) as ctl,
        ):
            dep = await start(ctl, bundle)
            assert (await ctl.drive(dep)).phase is Phase.AWAITING_APPROVAL
            wave = (await ctl.state(dep)).stages[1]
            bad, gone = wave[0], wave[1]
            fleet.inject(f"crash-loop:device={bad},version=2.0.0")
            fleet.inject(f"unreachable:device={gone}")
            await ctl.record_human(dep, "approval.granted", "alice")
            state = await ctl.drive(dep)
            assert state.phase is Phase.PARTIAL, state.halt_reason
            assert (state.devices[bad], state.devices[gone]) == (D.QUARANTINED, D.SKIPPED)
            return dep, bad, gone

    dep, bad, gone = asyncio.run(deploy())

    # The registry holds both, each with the deployment and its own cause.
    held = listed(capsys, db, "state=quarantine")
    assert set(held) == {bad, gone}
    assert held[bad]["state_reason"].startswith(f"{dep}: ")
    assert "crash loop" in held[bad]["state_reason"]
    assert held[gone]["state_reason"].startswith(f"{dep}: ")
    assert "unreachable" in held[gone]["state_reason"]
    (ev,) = [e for e in events(db, dep) if e.action == "registry.quarantined"]
    assert set(ev.details["devices"]) == {bad, gone}

    # The next plan leaves them out, saying why.
    excluded = planned_exclusions(capsys, db, bundle)
    assert excluded[bad] == f"state quarantine: {held[bad]['state_reason']}"
    assert excluded[gone] == f"state quarantine: {held[gone]['state_reason']}"

    # Release: unknown ids, active devices and blank names are input errors (2), nothing
    # recorded; the real one is audited with the person.
    before = [e.seq for e in events(db)]
    active = next(i for i in fleet.by_id if i not in (bad, gone))
    for argv, needle in (
        (["nope-99", "--as", "carol"], "no device 'nope-99'"),
        ([active, "--as", "carol"], "is active, not in quarantine"),
        ([bad, "--as", "  "], "--as: a blank name"),
    ):
        code, _, err = cli(capsys, "--db", db, "registry", "release", *argv)
        assert code == EXIT_INPUT and needle in err, (argv, err)
    assert [e.seq for e in events(db)] == before
    code, _, err = cli(
        capsys, "--db", db, "registry", "release", bad, "--as", "carol", "--comment", "new PSU"
    )
    assert code == EXIT_OK, err
    (rel,) = [e for e in events(db) if e.action == "registry.released"]
    assert (rel.device_id, rel.actor) == (bad, "carol")
    assert rel.details == {"was": held[bad]["state_reason"], "comment": "new PSU"}
    # Released twice: it is active now.
    code, _, err = cli(capsys, "--db", db, "registry", "release", bad, "--as", "carol")
    assert code == EXIT_INPUT and "not in quarantine" in err

    # Re-importing the original fleet.yaml (every device `active`) keeps the other one held.
    code, _, err = cli(capsys, "--db", db, "registry", "import", str(tmp_path / "fleet.yaml"))
    assert code == EXIT_OK and "kept 1 devices in quarantine" in err
    reg = registry(db)
    assert reg[gone].state.value == "quarantine"
    assert reg[gone].state_reason == held[gone]["state_reason"]
    assert reg[bad].state.value == "active" and reg[bad].state_reason == ""
    (imp,) = [e for e in events(db) if e.action == "registry.imported"][-1:]
    assert imp.details["kept_in_quarantine"] == [gone]
    excluded = planned_exclusions(capsys, db, bundle)
    assert gone in excluded and bad not in excluded


def partial_canary_fail(
    tmp_path: Path, db: str, release: tuple[Path, Path], fleet: SimFleet
) -> tuple[str, str, list[str]]:
    """One canary fails to start: it is rolled back and quarantined; resumed with "exclude",
    the devices its cell no longer has a canary for are left out (EXCLUDED)."""
    bundle, pub = release

    async def deploy() -> tuple[str, str, list[str]]:
        async with (
            MemoryTransport(fleet) as transport,
            controller(db, transport, tmp_path, pub) as ctl,
        ):
            dep = await start(ctl, bundle)
            bad = (await ctl.state(dep)).canaries[0]
            fleet.inject(f"start-fail:device={bad},version=2.0.0")
            assert (await ctl.drive(dep)).phase is Phase.HALTED
            await ctl.record_human(dep, "deployment.resumed", "bob", canary_failure="exclude")
            state = await ctl.drive(dep)
            excluded = [i for i, s in state.devices.items() if s is D.EXCLUDED]
            assert excluded
            return dep, bad, excluded

    return asyncio.run(deploy())


def test_a_cell_left_unproven_is_excluded_but_not_quarantined(
    tmp_path: Path,
    db: str,
    release: tuple[Path, Path],
    fleet: SimFleet,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Devices left out because no canary proves their cell have nothing wrong with them: they
    stay active. The canary that failed is quarantined."""
    dep, bad, excluded = partial_canary_fail(tmp_path, db, release, fleet)
    held = listed(capsys, db, "state=quarantine")
    assert set(held) == {bad} and held[bad]["state_reason"].startswith(f"{dep}: ")
    active = listed(capsys, db, "state=active")
    assert set(excluded) <= set(active)


def test_leaving_a_device_out_of_one_import_does_not_release_it(
    tmp_path: Path,
    db: str,
    release: tuple[Path, Path],
    fleet: SimFleet,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from fleetgate.registry import devices_to_yaml, load_inventory

    _, bad, _ = partial_canary_fail(tmp_path, db, release, fleet)
    original = tmp_path / "fleet.yaml"
    without = tmp_path / "fleet-without.yaml"
    without.write_text(devices_to_yaml(d for d in load_inventory(original) if d.id != bad))
    for path in (without, original):
        code, _, err = cli(capsys, "--db", db, "registry", "import", str(path))
        assert code == EXIT_OK, err
    assert not [e for e in events(db) if e.action == "registry.released"]
    assert registry(db)[bad].state.value == "quarantine", "back in service, never released"


# -- overlap (7.7) ---------------------------------------------------------------------------------
def test_start_overlapping_a_deployment_awaiting_approval_exits_3(
    tmp_path: Path,
    db: str,
    home: Path,
    release: tuple[Path, Path],
    fleet: SimFleet,
    capsys: pytest.CaptureFixture[str],
) -> None:
    bundle, pub = release

    async def first() -> str:
        async with (
            MemoryTransport(fleet) as transport,
            controller(db, transport, tmp_path, pub) as ctl,
        ):
            dep = await start(ctl, bundle)
            assert (await ctl.drive(dep)).phase is Phase.AWAITING_APPROVAL
            return dep

    dep = asyncio.run(first())
    before = [e.seq for e in events(db)]
    for select in ([], ["--select", "group=plant-b"]):
        code, _, err = cli(
            capsys, "--db", db, "deploy", "start", str(bundle), "--pubkey", str(pub), *select
        )
        assert code == EXIT_HALTED, err
        assert f"deployment {dep} " in err and "has not ended" in err
        assert f"fleetgate deploy rollback {dep}" in err
        assert "started" not in err
    assert [e.seq for e in events(db)] == before, "a refused start recorded something"
    assert {e.deployment_id for e in events(db) if e.action == "deployment.created"} == {dep}
    # No device beyond the first deployment's canaries was touched.
    touched = {i for i in fleet.by_id if fleet.device_state(i).executed}
    assert touched <= set(asyncio.run(_canaries(db, dep)))


async def _canaries(db: str, dep: str) -> tuple[str, ...]:
    from fleetgate.core.machine import fold

    async with Store.open(db) as store:
        return fold(dep, await store.events(dep)).canaries
