"""Real ``fleetgate serve`` processes for the service's end-to-end tests, and a tiny HTTP
client speaking the API with a bearer token (urllib: the tests stay synchronous around their
subprocesses)."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from crash_harness import Workspace

from ports import free_port


class Api:
    def __init__(self, token: str) -> None:
        self.token = token

    def call(
        self, base: str, method: str, path: str, body: Any = None, raw: bytes | None = None
    ) -> tuple[int, Any]:
        data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
        req = urllib.request.Request(base + path, data=data, method=method)
        req.add_header("Authorization", f"Bearer {self.token}")
        if raw is not None:
            req.add_header("Content-Type", "application/octet-stream")
        elif body is not None:
            req.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(req, timeout=30) as resp:
                return resp.status, json.loads(resp.read() or b"null")
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read() or b"null")


class Controllers:
    """``n`` serve processes; ``kill`` SIGKILLs one and starts it again on a new port,
    ``stop`` ends one with SIGTERM and returns its exit code."""

    def __init__(self, ws: Workspace, pubkey: Path, n: int = 2) -> None:
        self.ws, self.pubkey = ws, pubkey
        self.procs: list[subprocess.Popen[bytes] | None] = [None] * n
        self.urls: list[str] = [""] * n
        self.starts = 0
        for i in range(n):
            self.start(i)

    def start(self, i: int) -> None:
        port = free_port()
        self.starts += 1
        env = {
            **self.ws.env,
            "FLEETGATE_PUBKEY": str(self.pubkey),
            "FLEETGATE_POLL_S": "0.2",
            "FLEETGATE_PARK_AFTER_S": "0.5",
            "FLEETGATE_LEASE_TTL": "6",
            "FLEETGATE_BLOB_DIR": str(self.ws.root / "blobs"),
        }
        log = self.ws.root / "logs" / f"serve-{self.starts:02d}.out"
        self.procs[i] = self.ws.procs.spawn(
            self.ws.argv("serve", "--listen", f"127.0.0.1:{port}"),
            cwd=self.ws.root,
            env=env,
            log=log,
        )
        self.urls[i] = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(self.urls[i] + "/api/v1/health", timeout=2):
                    return
            except OSError:
                time.sleep(0.1)
        raise RuntimeError(f"serve did not start: {log.with_suffix('.err').read_text()}")

    def kill(self, i: int) -> None:
        proc = self.procs[i]
        assert proc is not None
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        self.start(i)

    def stop(self, i: int) -> int:
        proc = self.procs[i]
        assert proc is not None
        os.kill(proc.pid, signal.SIGTERM)
        return proc.wait(timeout=30)

    def any_url(self) -> str:
        return self.urls[random.randrange(len(self.urls))]
