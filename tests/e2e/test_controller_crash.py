"""The controller SIGKILLed at 20+ random points of one deployment, resumed each time.

Real processes on loopback: a 40-device virtual fleet (``fleetgate sim run``), controllers run
as ``fleetgate deploy start|resume|approve`` and killed with SIGKILL wherever they are (start-up,
mid-stage between a device's commands, mid-soak, mid-approval), the SQLite store shared by all.
After the end the deployment must be exactly what an uninterrupted one is:

- COMPLETE, the audit chain verifies (``audit verify``);
- no device executed ``stage`` or ``activate`` of the release twice (the simulator's own
  counters: a resumed command is re-sent with its logged seq and answered from the device's
  record), every targeted device runs the release;
- one human approval, before the first fleet wave; every soak started once and served in full
  (a resumed soak serves only what is left); every activated device smoke-tested; one
  ``stage.deployed`` per stage;
- the same ``confirm.completed`` counts and report ``confirm`` section as the same deployment
  run without kills on a fresh fleet and store.
"""

from __future__ import annotations

import json
import random
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from crash_harness import (
    POLICY_TOML,
    CrashLoop,
    LogReader,
    Procs,
    Sim,
    Workspace,
    build_release,
    start_sim,
)
from engine_harness import harness

from fleetgate.clock import parse_iso
from fleetgate.core.machine import fold
from fleetgate.core.state import Phase

SIM_ARGS = ("--devices", "40", "--seed", "3")
MIN_KILLS = 20
KILLS = 30  # aimed at; a few land after their run stopped writing
EXPECTED = 12 * 40  # milestones of this deployment, roughly: ~12 per device


@pytest.fixture
def procs() -> Iterator[Procs]:
    p = Procs()
    try:
        yield p
    finally:
        p.kill_all()


def _fleet(ws: Workspace) -> Sim:
    sim = start_sim(ws, *SIM_ARGS)
    res = ws.cli("registry", "import", "fleet.yaml")
    assert res.returncode == 0, res.stderr
    return sim


def _report_confirm(ws: Workspace, dep: str) -> dict[str, Any]:
    res = ws.cli("deploy", "report", dep, "--format", "json")
    assert res.returncode == 0, res.stderr
    confirm = json.loads(res.stdout)["confirm"]
    return {
        "result": confirm["result"],
        "rows": {r["status"]: r["count"] for r in confirm["rows"]},
        "health": confirm["health"],
        "recorded_counts": confirm["recorded_counts"],
        "rollback_copies": {k: len(v) for k, v in confirm["rollback_copies"].items()},
    }


def _executed(snap: dict[str, Any]) -> dict[tuple[str, str], int]:
    return {(r["command"], r["release"]): int(r["count"]) for r in snap["executed"]}


def _per_device(events: list[Any], action: str) -> Counter[str | None]:
    return Counter(e.device_id for e in events if e.action == action)


def _confirm_counts(events: list[Any]) -> list[dict[str, Any]]:
    return [dict(e.details["counts"]) for e in events if e.action == "confirm.completed"]


def _uninterrupted(
    root: Path, procs: Procs, bundle: Path, pubkey: Path, policy: Path
) -> tuple[Workspace, Sim, str]:
    ws = Workspace(root, procs)
    sim = _fleet(ws)
    common = ("--pubkey", str(pubkey), "--json")
    res = ws.cli("deploy", "start", str(bundle), "--policy", str(policy), *common)
    assert res.returncode == 4, res.stderr
    dep = str(json.loads(res.stdout)["deployment_id"])
    res = ws.cli("deploy", "approve", dep, "--as", "tester", *common)
    assert res.returncode == 0, res.stderr
    return ws, sim, dep


def _events(ws: Workspace, dep: str) -> list[Any]:
    reader = LogReader(ws.db)
    try:
        return reader.events(dep)
    finally:
        reader.close()


@pytest.mark.slow
def test_sigkilled_controller_resumes_to_the_same_outcome(tmp_path: Path, procs: Procs) -> None:
    t0 = time.monotonic()
    bundle, pubkey = build_release(tmp_path / "release")
    policy = tmp_path / "rollout.toml"
    policy.write_text(POLICY_TOML)

    # The same deployment without kills, on its own fleet and store (the yardstick), runs in a
    # thread meanwhile: it mostly waits for its soaks.
    with ThreadPoolExecutor(max_workers=1) as pool:
        reference = pool.submit(
            _uninterrupted, tmp_path / "reference", procs, bundle, pubkey, policy
        )
        ws = Workspace(tmp_path / "crash", procs)
        sim = _fleet(ws)
        loop = CrashLoop(ws, bundle, pubkey, policy, random.Random(20240611), KILLS, EXPECTED)
        dep = loop.run()
        ref, ref_sim, ref_dep = reference.result()
    stats = loop.stats
    print(
        f"\ncontroller crash test: {stats.landed} SIGKILLs landed "
        f"({stats.working} after the run had written to the log) in {stats.runs} controller "
        f"runs; runs that exited by themselves: {stats.exited}; "
        f"wall time {time.monotonic() - t0:.1f} s\n" + "\n".join(stats.history)
    )
    ref_events = _events(ref, ref_dep)

    rc, doc = ws.status(dep)
    assert doc is not None and doc["phase"] == Phase.COMPLETE.value, (rc, doc)
    res = ws.cli("audit", "verify")
    assert res.returncode == 0, res.stdout + res.stderr

    events = _events(ws, dep)
    state = fold(dep, events)
    release = str(events[0].details["release"]["release_id"])

    # No device got stage/activate of the release twice; every targeted one runs it. The one
    # exception is by design: the rollback drill activates its canary again after rolling it
    # back, in the uninterrupted run too. The device's own counters say which commands ran.
    drill = {str(e.details["device"]) for e in events if e.action == "drill.started"}
    assert len(drill) <= 1, drill
    assert state.devices, "no targeted device"
    for dev in state.devices:
        snap = sim.device(dev)
        executed = _executed(snap)
        assert executed.get(("stage", release), 0) <= 1, (dev, snap["history"])
        allowed = 2 if dev in drill else 1
        assert executed.get(("activate", release), 0) <= allowed, (dev, snap["history"])
        assert snap["current"] == release, (dev, snap["current"])
        assert executed == _executed(ref_sim.device(dev)), (dev, snap["history"])
    # One intent per command (a resumed command reused its logged seq): as many as without kills.
    for intent in (
        "device.stage_requested",
        "device.activate_requested",
        "device.rollback_requested",
    ):
        assert _per_device(events, intent) == _per_device(ref_events, intent), intent
    assert set(_per_device(events, "device.stage_requested").values()) == {1}

    # Gates: one approval, before the fleet rollout; each soak started once; each stage once.
    approvals = [e for e in events if e.action == "approval.granted"]
    assert len(approvals) == 1, approvals
    first_wave = min(
        e.seq for e in events if e.action == "stage.started" and e.details["stage"] == 1
    )
    assert approvals[0].seq < first_wave
    soaks = Counter(
        (e.details["stage"], e.details["round"]) for e in events if e.action == "soak.started"
    )
    assert set(soaks.values()) == {1}, soaks
    for started in (e for e in events if e.action == "soak.started"):
        # Served in full across the kills: a lower bound the engine guarantees, not a speed.
        done = next(
            e
            for e in events
            if e.action == "soak.completed"
            and e.seq > started.seq
            and e.details["stage"] == started.details["stage"]
        )
        served = (parse_iso(done.ts) - parse_iso(started.ts)).total_seconds()
        assert served >= float(started.details["seconds"]) - 0.05, (started, done)
    # Every activated device passed its smoke test (no per-device gate skipped by a kill).
    smoked = {
        e.device_id for e in events if e.action == "device.health" and e.details["round"] == "smoke"
    }
    assert smoked == set(_per_device(events, "device.activated")), smoked
    deployed = Counter(e.details["stage"] for e in events if e.action == "stage.deployed")
    assert deployed == Counter(range(len(state.stages))), deployed

    # The same outcome as without kills.
    assert _confirm_counts(events) == _confirm_counts(ref_events)
    ref_soaks = Counter(
        (e.details["stage"], e.details["round"]) for e in ref_events if e.action == "soak.started"
    )
    assert soaks == ref_soaks
    assert _report_confirm(ws, dep) == _report_confirm(ref, ref_dep)
    assert stats.working >= MIN_KILLS, "\n".join(stats.history)


class Crash(Exception):
    """The controller dies here (in-process stand-in for a SIGKILL)."""


async def test_resume_smoke_tests_a_device_activated_before_the_crash(tmp_path: Path) -> None:
    """A device whose ``device.activated`` is in the log but not its smoke test is left
    DEPLOYED by a crash; the resumed stage must still smoke-test it (the per-device gate),
    exactly as an uninterrupted run does. Found by the SIGKILL test above."""
    async with harness(tmp_path) as h:
        dep = await h.start()
        transport: Any = h.controller.transport
        activated: set[str] = set()
        real_activate, real_health = transport.activate, transport.health

        async def activate(device: Any, **kw: Any) -> Any:
            result = await real_activate(device, **kw)
            activated.add(device.id)
            return result

        async def health(device: Any) -> Any:
            if device.id in activated:
                raise Crash(device.id)  # the first smoke test: die before it is recorded
            return await real_health(device)

        transport.activate, transport.health = activate, health
        with pytest.raises(Exception) as info:  # an ExceptionGroup (the TaskGroup's)
            await h.controller.drive(dep)
        assert info.group_contains(Crash)
        transport.activate, transport.health = real_activate, real_health

        state = await h.controller.drive(dep)
        assert state.phase is Phase.AWAITING_APPROVAL
        events = await h.events(dep)
        smoke = {
            e.device_id
            for e in events
            if e.action == "device.health" and e.details["round"] == "smoke"
        }
        assert activated and smoke == set(state.canaries), (activated, smoke)
