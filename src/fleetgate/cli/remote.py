"""``fleetgate deploy … --server URL``: the same commands against a running service.

The token comes from ``FLEETGATE_TOKEN``; the API records the token's person as the actor, so
``--as`` is not sent. Output and exit codes are the local commands': the state block, then 0
complete, 1 partial, 2 bad input (a 4xx naming the field), 3 refused/halted/rolled back, 4
waiting for a human, 5 the service failed. A command that would drive locally (start, approve,
resume, …) waits here until the service's worker has driven the deployment to its next wait,
unless ``--no-drive``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp

from fleetgate.errors import FleetgateError, GuardrailError, InputError

WAITS = {"AWAITING_APPROVAL", "HALTED", "COMPLETE", "PARTIAL", "ROLLED_BACK", "ABORTED"}
ENDED = {"COMPLETE", "PARTIAL", "ROLLED_BACK", "ABORTED"}


class Remote:
    def __init__(self, url: str, token: str) -> None:
        if not url.startswith(("http://", "https://")):
            raise InputError(f"--server: expected an http(s) URL, got {url!r}")
        if not token:
            raise InputError("FLEETGATE_TOKEN is not set: the service needs your API token")
        self.url = url.rstrip("/")
        self.headers = {"Authorization": f"Bearer {token}"}
        self.session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=None, connect=10))

    async def close(self) -> None:
        await self.session.close()

    async def call(self, method: str, path: str, **kw: Any) -> Any:
        headers = {**self.headers, **kw.pop("headers", {})}
        try:
            async with self.session.request(method, self.url + path, headers=headers, **kw) as resp:
                raw = await resp.read()
                status = resp.status
                ctype = resp.headers.get("Content-Type", "")
        except aiohttp.ClientError as exc:
            raise FleetgateError(f"{self.url}: {exc}", retryable=True) from None
        if status < 400:
            return json.loads(raw) if "json" in ctype else raw.decode()
        try:
            err = json.loads(raw)["error"]
            msg = str(err["message"])
        except (ValueError, KeyError, TypeError):
            msg = f"HTTP {status}"
        if status == 409:
            raise GuardrailError(msg)
        if status < 500:
            raise InputError(msg)
        raise FleetgateError(f"{self.url}: {msg}")

    async def latest(self) -> str:
        deps = (await self.call("GET", "/api/v1/deployments"))["deployments"]
        if not deps:
            raise InputError("no deployment yet: fleetgate deploy start ARTIFACT")
        return str(deps[-1]["id"])

    async def state(self, dep: str) -> dict[str, Any]:
        doc: dict[str, Any] = await self.call("GET", f"/api/v1/deployments/{dep}")
        return doc

    async def events(self, dep: str, after: int) -> AsyncIterator[dict[str, Any]]:
        """The deployment's events after ``after`` from the SSE stream, forever."""
        headers = {**self.headers, "Accept": "text/event-stream", "Last-Event-ID": str(after)}
        async with self.session.get(
            f"{self.url}/api/v1/deployments/{dep}/stream", headers=headers
        ) as resp:
            if resp.status != 200:
                raise InputError(f"stream: HTTP {resp.status}")
            data: list[str] = []
            async for raw in resp.content:
                line = raw.decode().rstrip("\r\n")
                if line.startswith("data:"):
                    data.append(line[5:].lstrip())
                elif not line and data:
                    yield json.loads("\n".join(data))
                    data = []

    async def until(self, dep: str, phases: set[str]) -> dict[str, Any]:
        """Follow the stream until the deployment is in one of ``phases``: the events are
        folded here (one read of the state at each end, not one per event)."""
        from fleetgate.core.events import StoredEvent
        from fleetgate.core.machine import apply
        from fleetgate.core.state import DeploymentState

        doc = await self.state(dep)
        if doc["phase"] in phases:
            return doc
        now = int(doc["last_seq"])
        state = DeploymentState.empty(dep)
        async for ev in self.events(dep, 0):
            state = apply(state, StoredEvent(**ev))
            if ev["seq"] >= now and state.phase.value in phases:
                break
        return await self.state(dep)


def remote(args: argparse.Namespace) -> Remote:
    return Remote(args.server, os.environ.get("FLEETGATE_TOKEN", "").strip())


def emit(args: argparse.Namespace, doc: dict[str, Any]) -> int:
    code = int(doc["exit_code"])
    if getattr(args, "json", False):
        out = {
            "deployment_id": doc["id"],
            "phase": doc["phase"],
            "exit_code": code,
            "state": doc["state"],
        }
        json.dump(out, sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        print(f"deployment {doc['id']}: {doc['phase']}")
        if doc.get("halt_reason") and doc["phase"] == "HALTED":
            print(f"reason: {doc['halt_reason']}")
        print("<fleet-deploy-state>")
        for k, v in doc["state"].items():
            print(f"{k}: {v}")
        print("</fleet-deploy-state>")
    return code


def _actor_note(args: argparse.Namespace) -> None:
    if getattr(args, "actor", None):
        print(
            "note: --as is ignored with --server: the service records your token's person",
            file=sys.stderr,
        )


async def start(args: argparse.Namespace) -> int:
    _actor_note(args)
    r = remote(args)
    try:
        bundle: Path = args.artifact
        try:
            body = await asyncio.to_thread(bundle.read_bytes)
        except OSError as exc:
            raise InputError(f"{bundle}: cannot read: {exc.strerror}") from None
        rel = await r.call(
            "POST",
            "/api/v1/releases",
            data=body,
            headers={"Content-Type": "application/octet-stream"},
        )
        req: dict[str, Any] = {"release": rel["sha256"]}
        if args.policy is not None:
            try:
                req["policy_toml"] = await asyncio.to_thread(
                    Path(args.policy).read_text, encoding="utf-8"
                )
            except OSError as exc:
                raise InputError(f"{args.policy}: cannot read: {exc.strerror}") from None
        if args.select:
            req["select"] = args.select
        created = await r.call("POST", "/api/v1/deployments", json=req)
        dep = str(created["id"])
        print(f"started {dep}", file=sys.stderr)
        doc = await r.until(dep, ENDED if args.follow else WAITS)
        return emit(args, doc)
    finally:
        await r.close()


async def status(args: argparse.Namespace) -> int:
    r = remote(args)
    try:
        dep = args.id or await r.latest()
        return emit(args, await r.state(dep))
    finally:
        await r.close()


PATHS = {
    "approval.granted": "approve",
    "approval.rejected": "reject",
    "deployment.resumed": "resume",
    "deployment.halted": "halt",
    "rollback.requested": "rollback",
}


async def decide(args: argparse.Namespace) -> int:
    _actor_note(args)
    r = remote(args)
    try:
        body: dict[str, Any] = {"comment": args.comment}
        if getattr(args, "accept_inconclusive", False):
            body["accept_inconclusive"] = True
        if getattr(args, "exclude_failed_cells", False):
            body["exclude_failed_cells"] = True
        if args.action == "rollback.requested":
            body["devices"] = list(args.device)
        doc = await r.call("POST", f"/api/v1/deployments/{args.id}/{PATHS[args.action]}", json=body)
        if not getattr(args, "no_drive", False) and args.action != "deployment.halted":
            await asyncio.sleep(0)  # the worker was poked; follow it to the next wait
            doc = await r.until(args.id, WAITS)
        return emit(args, doc)
    finally:
        await r.close()


async def recover(args: argparse.Namespace) -> int:
    _actor_note(args)
    r = remote(args)
    try:
        doc = await r.call(
            "POST",
            f"/api/v1/devices/{args.device}/recover",
            json={"deployment": args.id, "comment": args.comment},
        )
        print(f"{args.device}: recovered", file=sys.stderr)
        return emit(args, doc)
    finally:
        await r.close()


async def report(args: argparse.Namespace) -> int:
    r = remote(args)
    try:
        dep = args.id or await r.latest()
        fmt = "json" if (args.format == "json" or args.json) else "md"
        out = await r.call("GET", f"/api/v1/deployments/{dep}/report?format={fmt}")
        if isinstance(out, str):
            sys.stdout.write(out)
        else:
            json.dump(out, sys.stdout, indent=2)
            sys.stdout.write("\n")
        return 0
    finally:
        await r.close()
