"""A deployment from upload to COMPLETE through the REST API alone, over real HTTP, with the
worker driving it: the approval is refused for an operator's token and given by an approver's."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from api_harness import service

from fleetgate.engine.service import Decision

FAST_TOML = """allow_short_soak = true
[soak]
canary = "10m"
between_waves = "5m"
[retries]
backoff = "1s"
"""


async def test_upload_to_complete_through_the_api(tmp_path: Path) -> None:
    async with service(tmp_path) as svc:
        status, rel = await svc.upload(svc.h.bundle)
        assert status == 201, rel
        assert rel["name"] == "app" and rel["version"] == "2.0.0"
        assert (svc.blob_dir / rel["sha256"]).is_file()
        # The same bytes again: the same release, not a second one.
        status, again = await svc.upload(svc.h.bundle)
        assert status == 201 and again["sha256"] == rel["sha256"]
        status, listed = await svc.call("GET", "/api/v1/releases", "viewer")
        assert [r["sha256"] for r in listed["releases"]] == [rel["sha256"]]

        status, plan = await svc.call(
            "POST",
            "/api/v1/plans",
            "viewer",
            json={"release": rel["sha256"], "policy_toml": FAST_TOML},
        )
        assert status == 200 and plan["blockers"] == [], plan
        assert await svc.h.store.list_deployments() == []  # a dry run writes nothing

        status, created = await svc.call(
            "POST",
            "/api/v1/deployments",
            json={"release": rel["sha256"], "policy_toml": FAST_TOML},
        )
        assert status == 201, created
        dep = created["id"]
        doc = await svc.wait_phase(dep, "AWAITING_APPROVAL")
        assert doc["canary_verdict"] == "PASS" and doc["started_by"] == "operator-user"
        assert doc["state"]["phase"] == "AWAITING_APPROVAL"

        status, refused = await svc.call("POST", f"/api/v1/deployments/{dep}/approve", "operator")
        assert status == 403 and refused["error"]["code"] == "forbidden", refused
        assert "approver" in refused["error"]["message"]
        status, ok = await svc.call(
            "POST", f"/api/v1/deployments/{dep}/approve", "approver", json={"comment": "lgtm"}
        )
        assert status == 200, ok
        await svc.wait_phase(dep, "COMPLETE")

        events = await svc.h.store.events(dep)
        approvals = [e for e in events if e.action == "approval.granted"]
        assert [e.actor for e in approvals] == ["approver-user"]  # the token's person
        refusals = [e for e in await svc.h.store.events(None) if e.action == "api.refused"]
        assert refusals and refusals[-1].actor == "operator-user"
        assert refusals[-1].details["deployment"] == dep and refusals[-1].deployment_id is None

        status, report = await svc.call("GET", f"/api/v1/deployments/{dep}/report", "viewer")
        assert status == 200 and "<fleet-deploy-state>" in report
        status, rj = await svc.call(
            "GET", f"/api/v1/deployments/{dep}/report?format=json", "viewer"
        )
        assert status == 200 and isinstance(rj, dict)
        status, verify = await svc.call("GET", "/api/v1/audit/verify", "viewer")
        assert status == 200 and verify["ok"] is True
        status, listing = await svc.call("GET", "/api/v1/deployments?phase=COMPLETE", "viewer")
        assert [d["id"] for d in listing["deployments"]] == [dep]
        status, metrics = await svc.call("GET", "/metrics", "viewer")
        assert status == 200 and 'fleetgate_deployments{phase="COMPLETE"} 1.0' in metrics


async def test_four_eyes_rule_refuses_the_starter_as_approver(tmp_path: Path) -> None:
    toml = FAST_TOML + "[approval]\ndistinct_approver = true\n"
    async with service(tmp_path) as svc:
        _s, rel = await svc.upload(svc.h.bundle, role="admin")
        status, created = await svc.call(
            "POST",
            "/api/v1/deployments",
            "admin",
            json={"release": rel["sha256"], "policy_toml": toml},
        )
        assert status == 201
        dep = created["id"]
        await svc.wait_phase(dep, "AWAITING_APPROVAL")
        status, body = await svc.call("POST", f"/api/v1/deployments/{dep}/approve", "admin")
        assert status == 409 and "four-eyes" in body["error"]["message"], body
        # The CLI path (Python API, any name) is held to the same rule by the state machine.
        try:
            await svc.h.controller.decide(
                dep, Decision("approval.granted", "admin-user"), drive=False
            )
        except Exception as exc:
            assert "four-eyes" in str(exc)
        else:
            raise AssertionError("the starter approved their own deployment")
        status, _ = await svc.call("POST", f"/api/v1/deployments/{dep}/approve", "approver")
        assert status == 200
        await svc.wait_phase(dep, "COMPLETE")
