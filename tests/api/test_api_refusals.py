"""Bad input and wrong callers get a 4xx JSON error naming the field, write nothing (but the
refusal itself, for who-may-do-what), and never a 500."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from api_harness import Service, service
from engine_harness import build_release

FAST_TOML = 'allow_short_soak = true\n[soak]\ncanary = "10m"\nbetween_waves = "5m"\n'


def _error(body: Any) -> dict[str, Any]:
    assert isinstance(body, dict) and set(body) == {"error"}, body
    err: dict[str, Any] = body["error"]
    assert isinstance(err["code"], str) and isinstance(err["message"], str)
    assert "\n" not in err["message"] and "Traceback" not in err["message"]
    return err


async def _head(svc: Service) -> tuple[int, str]:
    head: tuple[int, str] = await svc.h.store.chain_head()
    return head


async def _written_since(svc: Service, head: tuple[int, str]) -> list[str]:
    """What was appended after ``head`` (for a failure message that says what)."""
    return [f"{e.seq} {e.action} {e.actor}" for e in await svc.h.store.events(None, head[0])]


async def test_who_may_do_what(tmp_path: Path) -> None:
    async with service(tmp_path) as svc:
        status, body = await svc.call("GET", "/api/v1/deployments", role=None)
        assert status == 401 and _error(body)["code"] == "unauthorized"
        status, body = await svc.call(
            "GET", "/api/v1/deployments", role=None, headers={"Authorization": "Bearer nope"}
        )
        assert status == 401
        status, body = await svc.call(
            "GET", "/api/v1/deployments", role=None, headers={"Authorization": "Basic eDp5"}
        )
        assert status == 401
        # A viewer reads but cannot upload, start or import.
        assert (await svc.call("GET", "/api/v1/releases", "viewer"))[0] == 200
        status, body = await svc.upload(svc.h.bundle, role="viewer")
        assert status == 403 and "operate" in _error(body)["message"]
        status, _ = await svc.call("POST", "/api/v1/devices:import", "viewer", data=b"x")
        assert status == 403
        # An approver cannot start or upload either (least privilege).
        status, _ = await svc.upload(svc.h.bundle, role="approver")
        assert status == 403
        # A revoked token stops working at once.
        assert await svc.h.store.revoke_user("viewer-user")
        status, _ = await svc.call("GET", "/api/v1/releases", "viewer")
        assert status == 401
        refusals = [e for e in await svc.h.store.events(None) if e.action == "api.refused"]
        assert len(refusals) == 7
        assert {e.actor for e in refusals} == {"anonymous", "viewer-user", "approver-user"}
        assert all(e.deployment_id is None for e in refusals)
        # The health probe needs no token and says nothing about the fleet.
        status, body = await svc.call("GET", "/api/v1/health", role=None)
        assert status == 200 and body == {"status": "ok"}


async def test_bad_input_is_a_4xx_naming_the_field_and_writes_nothing(tmp_path: Path) -> None:
    async with service(tmp_path) as svc:
        status, rel = await svc.upload(svc.h.bundle)
        assert status == 201
        sha = rel["sha256"]
        head = await _head(svc)
        cases: list[tuple[str, str, dict[str, Any], int, str | None]] = [
            ("GET", "/api/v1/deployments/d-nope", {}, 404, "id"),
            ("GET", "/api/v1/deployments/d-nope/events", {}, 404, "id"),
            ("GET", "/api/v1/deployments/d-nope/stream", {}, 404, "id"),
            ("GET", "/api/v1/deployments/d-nope/report", {}, 404, "id"),
            ("POST", "/api/v1/deployments/d-nope/resume", {}, 404, "id"),
            ("GET", "/api/v1/deployments?phase=BOGUS", {}, 400, "phase"),
            ("GET", "/api/v1/deployments/x/events?after=-1", {}, 400, "after"),
            (
                "POST",
                "/api/v1/deployments",
                {"json": {"release": sha, "policy": {"canary": {"percent": 90}}}},
                400,
                "policy.canary.percent",
            ),
            (
                "POST",
                "/api/v1/deployments",
                {"json": {"release": sha, "policy_toml": "[soak\n"}},
                400,
                "policy_toml",
            ),
            (
                "POST",
                "/api/v1/deployments",
                {"json": {"release": sha, "policy": {}, "policy_toml": ""}},
                400,
                "policy",
            ),
            ("POST", "/api/v1/deployments", {"json": {"release": "abc"}}, 400, "release"),
            ("POST", "/api/v1/deployments", {"json": {"release": "0" * 64}}, 400, None),
            (
                "POST",
                "/api/v1/deployments",
                {"json": {"release": sha, "surprise": 1}},
                400,
                "surprise",
            ),
            (
                "POST",
                "/api/v1/deployments",
                {"data": b"{not json", "headers": {"Content-Type": "application/json"}},
                400,
                None,
            ),
            (
                "POST",
                "/api/v1/deployments",
                {"json": {"release": sha, "select": "hardware=="}},
                400,
                "select",
            ),
            ("GET", "/api/v1/devices?select=nonsense", {}, 400, "select"),
            ("POST", "/api/v1/devices:import", {"data": b"\xff\xfe\x00"}, 400, "body"),
            ("POST", "/api/v1/devices:import", {"data": b"devices: [{id: 1}]"}, 400, None),
            ("POST", "/api/v1/releases", {"data": b""}, 400, "body"),
            ("GET", "/blobs/../../etc/passwd", {}, 404, None),
            ("GET", "/blobs/" + "0" * 64, {}, 404, None),
        ]
        for method, path, kw, want, field in cases:
            status, body = await svc.call(method, path, **kw)
            assert status == want, (path, kw, status, body)
            err = _error(body)
            if field is not None:
                assert err.get("field") == field, (path, err)
        assert await _written_since(svc, head) == []  # nothing written
        assert await svc.h.store.list_deployments() == []


async def test_bundles_that_must_not_be_accepted(tmp_path: Path) -> None:

    async with service(tmp_path) as svc:
        raw = svc.h.bundle.read_bytes()
        other_bundle, _other_pub = build_release(tmp_path / "other-key")
        head = await _head(svc)
        corrupt = bytearray(raw)
        corrupt[len(raw) // 3] ^= 0xFF
        for body in (
            raw[: len(raw) // 2],
            raw[:4096],
            bytes(corrupt),
            b"\x00" * 1024,
            other_bundle.read_bytes(),
        ):
            status, resp = await svc.call(
                "POST",
                "/api/v1/releases",
                data=body,
                headers={"Content-Type": "application/octet-stream"},
            )
            assert status in (400, 422), (status, resp)
            assert _error(resp)["field"] == "body"
        status, resp = await svc.call(
            "POST",
            "/api/v1/releases",
            data=other_bundle.read_bytes(),
            headers={"Content-Type": "application/octet-stream"},
        )
        assert status == 422 and "signature" in _error(resp)["message"]
        assert await _written_since(svc, head) == []
        assert await svc.h.store.list_releases() == []
        assert not [p for p in svc.blob_dir.iterdir() if p.name.startswith(".upload")]


async def test_a_decision_at_the_wrong_time_is_409(tmp_path: Path) -> None:
    async with service(tmp_path) as svc:
        _s, rel = await svc.upload(svc.h.bundle)
        _s, created = await svc.call(
            "POST", "/api/v1/deployments", json={"release": rel["sha256"], "policy_toml": FAST_TOML}
        )
        dep = created["id"]
        await svc.wait_phase(dep, "AWAITING_APPROVAL")
        head = await _head(svc)
        for action, role in (("resume", "operator"), ("halt", "operator")):
            status, body = await svc.call("POST", f"/api/v1/deployments/{dep}/{action}", role)
            if action == "resume":  # resuming what is not halted is driving on: no-op, 200
                assert status == 200
                continue
            assert status == 409 and _error(body)["code"] == "refused", body
        assert await _written_since(svc, head) == []
        await svc.call("POST", f"/api/v1/deployments/{dep}/approve", "approver")
        await svc.wait_phase(dep, "COMPLETE")
        head = await _head(svc)
        status, body = await svc.call("POST", f"/api/v1/deployments/{dep}/approve", "approver")
        assert status == 409 and _error(body)["code"] == "not-now", body
        assert await _written_since(svc, head) == []
