"""Two ``fleetgate serve`` controllers on one PostgreSQL store share three deployments of a
200-device virtual fleet while one of them is SIGKILLed at random points 20 times (and started
again). Everything is a real process on loopback; the API is driven over HTTP with an
operator's and an approver's tokens.

Afterwards every deployment must have ended as an uninterrupted run does (COMPLETE, every
targeted device on the release), no device executed ``stage`` or ``activate`` twice (the
simulator's own counters; the rollback drill's canary activates twice by design), every soak
started once and was served in full by the store's clock, parks included, and ``audit verify``
says the chain is whole.
"""

from __future__ import annotations

import random
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from crash_harness import LogReader, Procs, Workspace, build_release, start_sim
from serve_harness import Api, Controllers

from fleetgate.core.machine import fold
from fleetgate.core.state import Phase

pytestmark = [pytest.mark.slow, pytest.mark.postgres]

POLICY = """\
allow_short_soak = true
[soak]
canary = "4s"
between_waves = "3s"
[retries]
backoff = "0.2s"
"""
GROUPS = ("plant-a", "plant-b", "plant-c")
KILLS = 20


@pytest.fixture
def procs() -> Iterator[Procs]:
    p = Procs()
    try:
        yield p
    finally:
        p.kill_all()


def test_two_controllers_share_three_deployments_through_twenty_sigkills(
    tmp_path: Path, procs: Procs, pg_server: Any
) -> None:
    t0 = time.monotonic()
    bundle, pubkey = build_release(tmp_path / "release")
    ws = Workspace(tmp_path / "cluster", procs)
    ws.db = pg_server.new_schema_url().replace("postgresql://", "postgresql+asyncpg://")
    sim = start_sim(ws, "--devices", "200", "--seed", "5", "--groups", ",".join(GROUPS))
    assert ws.cli("registry", "import", "fleet.yaml").returncode == 0
    tokens = {}
    for name, role in (("olga", "operator"), ("arne", "approver")):
        res = ws.cli("users", "add", name, "--role", role)
        assert res.returncode == 0, res.stderr
        tokens[role] = res.stdout.strip()
    op, ap = Api(tokens["operator"]), Api(tokens["approver"])
    ctls = Controllers(ws, pubkey)

    status, rel = op.call(ctls.any_url(), "POST", "/api/v1/releases", raw=bundle.read_bytes())
    assert status == 201, rel
    deps = []
    for g in GROUPS:
        status, created = op.call(
            ctls.any_url(),
            "POST",
            "/api/v1/deployments",
            {"release": rel["sha256"], "policy_toml": POLICY, "select": f"group={g}"},
        )
        assert status == 201, created
        deps.append(created["id"])

    rng = random.Random(20261129)
    kills = 0
    phases: dict[str, str] = {}
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        for dep in deps:
            status, doc = ap.call(ctls.any_url(), "GET", f"/api/v1/deployments/{dep}")
            assert status == 200, doc
            phases[dep] = doc["phase"]
            if doc["phase"] == "AWAITING_APPROVAL":
                status, body = ap.call(ctls.any_url(), "POST", f"/api/v1/deployments/{dep}/approve")
                assert status in (200, 409), body  # 409: approved a moment ago
        if (
            all(
                p in ("COMPLETE", "PARTIAL", "ROLLED_BACK", "ABORTED", "HALTED")
                for p in phases.values()
            )
            and kills >= KILLS
        ):
            break
        if kills < KILLS:
            # Kills come while the deployments run (a faster engine finishes them sooner;
            # a kill after they ended moves no work and the holder count below would starve).
            time.sleep(rng.uniform(0.2, 1.2))
            ctls.kill(rng.randrange(2))
            kills += 1
        else:
            time.sleep(0.5)
    print(f"\nserve cluster: {kills} SIGKILLs, phases {phases}, {time.monotonic() - t0:.1f} s")
    assert kills >= KILLS
    assert set(phases.values()) == {"COMPLETE"}, phases

    res = ws.cli("audit", "verify")
    assert res.returncode == 0, res.stdout + res.stderr
    reader = LogReader(ws.db)
    holders: set[str] = set()
    try:
        for dep in deps:
            events = reader.events(dep)
            state = fold(dep, events)
            assert state.phase is Phase.COMPLETE
            release = str(events[0].details["release"]["release_id"])
            drill = {str(e.details["device"]) for e in events if e.action == "drill.started"}
            for dev in state.devices:
                snap = sim.device(dev)
                executed = {(r["command"], r["release"]): int(r["count"]) for r in snap["executed"]}
                assert executed.get(("stage", release), 0) == 1, (dev, snap["history"])
                allowed = 2 if dev in drill else 1
                assert 1 <= executed.get(("activate", release), 0) <= allowed, (dev, snap)
                assert snap["current"] == release, dev
            soaks = Counter(
                (e.details["stage"], e.details["round"])
                for e in events
                if e.action == "soak.started"
            )
            assert soaks and set(soaks.values()) == {1}, soaks
            done = [e for e in events if e.action == "soak.completed"]
            assert len(done) == len(soaks)
            for e in done:
                assert float(e.details["served_s"]) >= float(e.details["seconds"]), e
            approvals = [e for e in events if e.action == "approval.granted"]
            assert [e.actor for e in approvals] == ["arne"]
            holders |= {
                str(e.details["holder"]) for e in events if e.action == "distribution.started"
            }
    finally:
        reader.close()
    # The work really moved between controller processes (each holder is one process).
    print(f"serve cluster: {len(holders)} controller processes drove the three deployments")
    assert len(holders) >= 5, holders
