"""A real ``fleetgate serve`` stack in the test's event loop: the FastAPI app under uvicorn on
a loopback port (real HTTP), the worker, and the engine harness's virtual fleet and virtual
clock (soaks are measured but take no wall time)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import uvicorn

from fleetgate.api.app import create_app
from fleetgate.api.context import ApiContext
from fleetgate.api.metrics import Metrics
from fleetgate.api.tokens import hash_token, new_token
from fleetgate.server.worker import Worker

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "engine"))
from engine_harness import Harness, harness

ROLES = ("viewer", "operator", "approver", "admin")


@dataclass
class Service:
    url: str
    h: Harness
    worker: Worker
    tokens: dict[str, str]
    session: aiohttp.ClientSession
    blob_dir: Path
    extra: dict[str, Any] = field(default_factory=dict)

    def auth(self, role: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.tokens[role]}"}

    async def call(
        self, method: str, path: str, role: str | None = "operator", **kw: Any
    ) -> tuple[int, Any]:
        headers = dict(kw.pop("headers", {}))
        if role is not None:
            headers.update(self.auth(role))
        async with self.session.request(method, self.url + path, headers=headers, **kw) as r:
            raw = await r.read()
            try:
                body: Any = json.loads(raw) if raw else None
            except ValueError:
                body = raw.decode(errors="replace")
            return r.status, body

    async def upload(self, bundle: Path, role: str = "operator") -> tuple[int, Any]:
        return await self.call(
            "POST",
            "/api/v1/releases",
            role,
            data=bundle.read_bytes(),
            headers={"Content-Type": "application/octet-stream"},
        )

    async def wait_phase(self, dep: str, *phases: str, timeout: float = 60.0) -> dict[str, Any]:
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            status, doc = await self.call("GET", f"/api/v1/deployments/{dep}", "viewer")
            assert status == 200, doc
            if doc["phase"] in phases:
                return dict(doc)
            if asyncio.get_running_loop().time() > deadline:
                raise AssertionError(f"{dep} still {doc['phase']}, wanted {phases}")
            await asyncio.sleep(0.05)


@contextlib.asynccontextmanager
async def service(
    tmp: Path, trust: Path | None = None, tls: tuple[Path, Path] | None = None, **harness_kw: Any
) -> AsyncIterator[Service]:
    """``trust``: what the service verifies releases with instead of the harness's public key
    (a ``root.json``); ``tls``: (certificate, key) to serve HTTPS with."""
    async with harness(tmp, **harness_kw) as h:
        if trust is not None:
            h.controller.config.public_key = trust
        tokens = {}
        for role in ROLES:
            tokens[role] = new_token()
            await h.store.add_user(f"{role}-user", role, hash_token(tokens[role]))
        metrics = Metrics()
        worker = Worker(h.store, h.controller, parallel=4, poll_s=0.05, metrics=metrics)
        blob_dir = h.controller.config.blob_dir
        ctx = ApiContext(
            store=h.store,
            controller=h.controller,
            blob_dir=blob_dir,
            public_key=h.controller.config.public_key,
            max_upload_bytes=64 * 1024 * 1024,
            metrics=metrics,
            poke=worker.poke,
        )
        server = uvicorn.Server(
            uvicorn.Config(
                create_app(ctx),
                host="127.0.0.1",
                port=0,
                log_level="warning",
                ssl_certfile=str(tls[0]) if tls else None,
                ssl_keyfile=str(tls[1]) if tls else None,
            )
        )
        server.install_signal_handlers = lambda: None  # type: ignore[method-assign]
        serving = asyncio.create_task(server.serve())
        while not server.started:
            await asyncio.sleep(0.01)
        port = server.servers[0].sockets[0].getsockname()[1]
        working = asyncio.create_task(worker.run())
        try:
            async with aiohttp.ClientSession() as session:
                scheme = "https" if tls else "http"
                url = f"{scheme}://127.0.0.1:{port}"
                yield Service(url, h, worker, tokens, session, blob_dir)
        finally:
            working.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await working
            server.should_exit = True
            await serving
