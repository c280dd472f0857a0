"""The SSE stream delivers every stored event of a deployment in order, and a client that
reconnects with Last-Event-ID misses none and sees none twice; 50 watchers see the same."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from api_harness import Service, service

FAST_TOML = 'allow_short_soak = true\n[soak]\ncanary = "10m"\nbetween_waves = "5m"\n'


async def read_stream(
    svc: Service, dep: str, *, last_id: int | None, stop_after: int | None, until: str | None
) -> list[dict[str, Any]]:
    """Events from the stream until ``stop_after`` of them, or an event named ``until``."""
    headers = {**svc.auth("viewer"), "Accept": "text/event-stream"}
    if last_id is not None:
        headers["Last-Event-ID"] = str(last_id)
    got: list[dict[str, Any]] = []
    async with svc.session.get(
        f"{svc.url}/api/v1/deployments/{dep}/stream", headers=headers
    ) as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"].startswith("text/event-stream")
        fields: dict[str, str] = {}
        async for raw in resp.content:
            line = raw.decode().rstrip("\r\n")
            if not line:
                if "data" in fields:
                    ev = json.loads(fields["data"])
                    assert fields["id"] == str(ev["seq"]) and fields["event"] == ev["action"]
                    got.append(ev)
                    if stop_after is not None and len(got) >= stop_after:
                        return got
                    if until is not None and ev["action"] == until:
                        return got
                fields = {}
                continue
            if line.startswith(":"):
                continue
            key, _, value = line.partition(":")
            fields[key] = value.lstrip()
    return got


async def test_stream_resumes_with_last_event_id_without_gaps_or_repeats(tmp_path: Path) -> None:
    async with service(tmp_path) as svc:
        _s, rel = await svc.upload(svc.h.bundle)
        _s, created = await svc.call(
            "POST", "/api/v1/deployments", json={"release": rel["sha256"], "policy_toml": FAST_TOML}
        )
        dep = created["id"]
        seen: list[dict[str, Any]] = []
        # Connect, read a few, drop the connection; reconnect from the last id, repeatedly.
        last: int | None = None
        for _ in range(5):
            part = await asyncio.wait_for(
                read_stream(svc, dep, last_id=last, stop_after=7, until=None), 30
            )
            seen += part
            last = part[-1]["seq"]
        rest = await asyncio.wait_for(
            read_stream(svc, dep, last_id=last, stop_after=None, until="approval.requested"), 60
        )
        seen += rest
        await svc.call("POST", f"/api/v1/deployments/{dep}/approve", "approver")
        tail = await asyncio.wait_for(
            read_stream(
                svc, dep, last_id=seen[-1]["seq"], stop_after=None, until="confirm.completed"
            ),
            60,
        )
        seen += tail
        stored = [e.seq for e in await svc.h.store.events(dep)]
        assert [e["seq"] for e in seen] == stored  # every event, in order, once
        # ?after= works as Last-Event-ID does, and a bad Last-Event-ID is a 400.
        mid = stored[len(stored) // 2]
        again = await read_stream(svc, dep, last_id=mid, stop_after=3, until=None)
        assert [e["seq"] for e in again] == stored[stored.index(mid) + 1 :][:3]
        status, body = await svc.call(
            "GET", f"/api/v1/deployments/{dep}/stream", "viewer", headers={"Last-Event-ID": "x"}
        )
        assert status == 400 and body["error"]["field"] == "Last-Event-ID"


async def test_fifty_watchers_each_see_every_event(tmp_path: Path) -> None:
    async with service(tmp_path) as svc:
        _s, rel = await svc.upload(svc.h.bundle)
        _s, created = await svc.call(
            "POST", "/api/v1/deployments", json={"release": rel["sha256"], "policy_toml": FAST_TOML}
        )
        dep = created["id"]
        watchers = [
            asyncio.create_task(
                read_stream(svc, dep, last_id=None, stop_after=None, until="approval.requested")
            )
            for _ in range(50)
        ]
        results = await asyncio.wait_for(asyncio.gather(*watchers), 120)
        stored = [e.seq for e in await svc.h.store.events(dep)]
        upto = stored[: stored.index(results[0][-1]["seq"]) + 1]
        for got in results:
            assert [e["seq"] for e in got] == upto
