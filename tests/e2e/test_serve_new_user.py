"""Tried as a new user would: ``fleetgate serve`` on the SQLite default, a virtual fleet
(``fleetgate sim run``), and the REST API alone take a deployment from upload to COMPLETE; the
approval is refused for an operator's token and given by an approver's. SIGTERM then stops the
service with exit 0 and leaves no lease held."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from crash_harness import LogReader, Procs, Workspace, build_release, start_sim
from serve_harness import Api, Controllers

pytestmark = pytest.mark.slow

POLICY = """\
allow_short_soak = true
[soak]
canary = "3s"
between_waves = "1s"
[retries]
backoff = "0.2s"
"""


@pytest.fixture
def procs() -> Iterator[Procs]:
    p = Procs()
    try:
        yield p
    finally:
        p.kill_all()


def test_upload_to_complete_with_serve_and_the_api_alone(tmp_path: Path, procs: Procs) -> None:
    bundle, pubkey = build_release(tmp_path / "release")
    ws = Workspace(tmp_path / "svc", procs)
    start_sim(ws, "--devices", "30", "--seed", "9")
    inventory = (ws.root / "fleet.yaml").read_bytes()
    tokens = {}
    for name, role in (("olga", "operator"), ("arne", "approver")):
        res = ws.cli("users", "add", name, "--role", role)
        assert res.returncode == 0, res.stderr
        tokens[role] = res.stdout.strip()
        assert len(res.stdout.strip().splitlines()) == 1  # the token alone on stdout
    assert tokens["operator"] not in (ws.root / "fg.db").read_bytes().decode("latin-1")
    op, ap = Api(tokens["operator"]), Api(tokens["approver"])
    ctl = Controllers(ws, pubkey, n=1)
    url = ctl.urls[0]

    status, body = op.call(url, "POST", "/api/v1/devices:import", raw=inventory)
    assert status == 200 and body["devices"] == 30, body
    status, rel = op.call(url, "POST", "/api/v1/releases", raw=bundle.read_bytes())
    assert status == 201, rel
    status, created = op.call(
        url, "POST", "/api/v1/deployments", {"release": rel["sha256"], "policy_toml": POLICY}
    )
    assert status == 201, created
    dep = created["id"]

    def wait(*phases: str) -> dict[str, object]:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            status, doc = op.call(url, "GET", f"/api/v1/deployments/{dep}")
            assert status == 200, doc
            if doc["phase"] in phases:
                return dict(doc)
            time.sleep(0.2)
        raise AssertionError(f"{dep} never reached {phases}")

    wait("AWAITING_APPROVAL")
    status, body = op.call(url, "POST", f"/api/v1/deployments/{dep}/approve")
    assert status == 403 and body["error"]["code"] == "forbidden", body
    status, body = ap.call(url, "POST", f"/api/v1/deployments/{dep}/approve", {"comment": "ok"})
    assert status == 200, body
    doc = wait("COMPLETE", "HALTED", "ROLLED_BACK", "ABORTED", "PARTIAL")
    assert doc["phase"] == "COMPLETE", doc
    # The devices fetched the release from the service's standing distribution point.
    events = LogReader(ws.db)
    try:
        started = [e for e in events.events(dep) if e.action == "distribution.started"]
        assert started and all(str(e.details["url"]).startswith(f"{url}/blobs/") for e in started)
        approvals = [e.actor for e in events.events(dep) if e.action == "approval.granted"]
        assert approvals == ["arne"]
    finally:
        events.close()
    status, verify = ap.call(url, "GET", "/api/v1/audit/verify")
    assert status == 200 and verify["ok"] is True

    assert ctl.stop(0) == 0  # SIGTERM: clean exit
    reader = LogReader(ws.db)
    try:
        lease = reader._loop.run_until_complete(reader._store.get_lease(dep))
        now = reader._loop.run_until_complete(reader._store.now())
    finally:
        reader.close()
    from fleetgate.clock import parse_iso

    assert lease is None or parse_iso(lease.expires_at) <= now
