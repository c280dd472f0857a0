"""Test harness for real agent processes on loopback.

``AgentProc`` writes an ``agent.toml`` (free ports for the agent and its app), runs
``python -m fleetgate agent run`` as a real process, and talks to it with plain urllib.
``BlobServer`` runs the artifacts ``DistributionServer`` in a thread with its own event loop,
so synchronous tests can share one across a whole session. Every process started here is
killed by pid in ``cleanup()`` (and the app's process group found through ``app.json``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fleetgate.artifacts.bundle import BuiltBundle, build_bundle
from fleetgate.artifacts.container import read_bundle
from fleetgate.artifacts.distribution import DistributionServer, publish_bundle
from fleetgate.core.seqwindow import SEQ_BLOCK
from ports import free_port

REPO = Path(__file__).resolve().parents[2]
DEMO_APP = REPO / "src" / "fleetgate" / "sim" / "demo_app.py"
TOKEN = "t0ken-for-tests"
# Run the agents under another interpreter (e.g. a Python 3.10 venv with the agent's four
# dependencies) to check the device-side promise: FLEETGATE_TEST_AGENT_PYTHON=/path/to/python.
AGENT_PYTHON = os.environ.get("FLEETGATE_TEST_AGENT_PYTHON") or sys.executable


def make_app_dir(
    root: Path,
    name: str,
    version: str,
    mode: str = "ok",
    *,
    extra: bytes | None = None,
    requires: str = "disk_mb = 1",
    metrics_url: bool = True,
) -> Path:
    """A demo-app source dir ready for ``build_bundle`` (``metrics_url=False``: the manifest
    names no metrics URL)."""
    src = root / f"src-{name}-{version}"
    src.mkdir(parents=True)
    shutil.copy(DEMO_APP, src / "app.py")
    (src / "demo.toml").write_text(f'mode = "{mode}"\nversion = "{version}"\ncrash_after_s = 1.0\n')
    (src / "fleetgate.toml").write_text(
        f"""[artifact]
name = "{name}"
version = "{version}"
kind = "bundle"
[requires]
{requires}
[run]
command = ["python3", "app.py", "--port", "${{APP_PORT}}"]
health_url = "http://127.0.0.1:${{APP_PORT}}/healthz"
"""
        + ('metrics_url = "http://127.0.0.1:${APP_PORT}/metrics"\n' if metrics_url else "")
    )
    if extra is not None:
        (src / "blob.bin").write_bytes(extra)
    return src


def build(
    root: Path, key: Any, name: str, version: str, mode: str = "ok", **kw: Any
) -> BuiltBundle:
    src = make_app_dir(root, name, version, mode, **kw)
    return build_bundle(src, key, root / "bundles")


@dataclass
class Release:
    bundle: BuiltBundle
    stage: dict[str, str]  # manifest, signature, url for POST /v1/stage

    @property
    def id(self) -> str:
        return self.bundle.manifest.release_id


class BlobServer:
    """A DistributionServer on 127.0.0.1 in a background thread."""

    def __init__(self, blob_dir: Path) -> None:
        self.blob_dir = blob_dir
        self.url = ""
        self._loop = asyncio.new_event_loop()
        self._stop: asyncio.Event | None = None
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="blob-server")

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._loop.run_until_complete(self._serve())

    async def _serve(self) -> None:
        self._stop = asyncio.Event()
        async with DistributionServer(self.blob_dir) as srv:
            self.url = srv.url
            self._ready.set()
            await self._stop.wait()

    def __enter__(self) -> BlobServer:
        self._thread.start()
        assert self._ready.wait(10)
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._stop is not None
        self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)

    def publish(self, bundle: BuiltBundle) -> dict[str, str]:
        """Publish and return the stage-body fields (manifest, signature, url)."""
        sha, _size = publish_bundle(bundle.path, self.blob_dir)
        contents = read_bundle(bundle.path)
        return {
            "manifest": contents.manifest_json.decode(),
            "signature": contents.signature.decode().strip(),
            "url": f"{self.url}/v1/blobs/{sha}",
        }


class AgentProc:
    def __init__(
        self,
        workdir: Path,
        public_key: Path,  # a PEM key, or a root.json (written as ``root = …``)
        *,
        device_id: str = "dev-1",
        data_dir: Path | None = None,
        agent_extra: str = "",
    ) -> None:
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        self.device_id = device_id
        self.port = free_port()
        self.app_port = free_port()
        self.data_dir = data_dir or workdir / "data"
        self.config = workdir / "agent.toml"
        self.config.write_text(
            f"""[device]
id = "{device_id}"
hardware = "test-board"
software = {{ os = "test" }}
[agent]
listen = "127.0.0.1:{self.port}"
data_dir = "{self.data_dir}"
token_env = "FG_TEST_TOKEN"
{"root" if public_key.suffix == ".json" else "public_key"} = "{public_key}"
health_timeout_s = 6
probe_interval_s = 0.2
stop_grace_s = 2
{agent_extra}
[app]
port = {self.app_port}
"""
        )
        self.base = f"http://127.0.0.1:{self.port}"
        self.ssl_context: Any = None  # ``use_tls``: the client side of a TLS agent
        self.proc: subprocess.Popen[bytes] | None = None
        self.runs = 0

    def use_tls(self, context: Any) -> AgentProc:
        """Talk HTTPS with ``context`` (an ``ssl.SSLContext``: CA, maybe a client cert)."""
        self.base = f"https://127.0.0.1:{self.port}"
        self.ssl_context = context
        return self

    # -- process ---------------------------------------------------------------------------------
    def start(self, env: dict[str, str] | None = None, wait: bool = True) -> AgentProc:
        assert self.proc is None or self.proc.poll() is not None
        self.runs += 1
        log = (self.workdir / f"agent-{self.runs}.log").open("wb")
        base_env = {k: v for k, v in os.environ.items() if not k.startswith("FLEETGATE_AGENT_")}
        full_env = {**base_env, "FG_TEST_TOKEN": TOKEN, **(env or {})}
        if sys.executable != AGENT_PYTHON:
            full_env["PYTHONPATH"] = str(REPO / "src")
        self.proc = subprocess.Popen(
            [AGENT_PYTHON, "-m", "fleetgate", "agent", "run", "--config", str(self.config)],
            env=full_env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()
        if wait:
            self.wait_ready()
        return self

    def wait_ready(self, timeout: float = 15.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError(f"agent exited {self.proc.returncode}:\n{self.log_text()}")
            with contextlib.suppress(OSError):
                status, _ = self.get("/v1/ping", timeout=1)
                if status == 200:
                    return
            time.sleep(0.05)
        raise AssertionError(f"agent not answering:\n{self.log_text()}")

    def log_text(self) -> str:
        return "\n".join(p.read_text(errors="replace") for p in sorted(self.workdir.glob("*.log")))

    def kill(self) -> None:
        """SIGKILL the agent (not its app: that is what a crash looks like)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)

    def app_pid(self) -> int | None:
        try:
            return int(json.loads((self.data_dir / "app.json").read_text())["pid"])
        except (OSError, ValueError, KeyError):
            return None

    def cleanup(self) -> None:
        self.stop()
        pid = self.app_pid()
        if pid is not None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, signal.SIGKILL)

    # -- HTTP ------------------------------------------------------------------------------------
    def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        token: str | None = TOKEN,
        device: str | None = "",
        timeout: float = 30,
    ) -> tuple[int, Any]:
        headers = {"Content-Type": "application/json"}
        if token is not None:
            headers["Authorization"] = f"Bearer {token}"
        if device is not None:
            headers["X-Fleetgate-Device"] = device or self.device_id
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.base + path, data=data, headers=headers, method=method)
        try:
            with urllib.request.urlopen(req, timeout=timeout, context=self.ssl_context) as resp:
                return resp.status, json.loads(resp.read())
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read())

    def get(self, path: str, **kw: Any) -> tuple[int, Any]:
        return self.request("GET", path, **kw)

    def post(self, command: str, **body: Any) -> tuple[int, Any]:
        """A command; ``seq_base`` is the seq's block unless the test sets it (the controller's
        transports send it the same way)."""
        seq = body.get("seq")
        if "seq_base" not in body and isinstance(seq, int) and not isinstance(seq, bool):
            body["seq_base"] = seq // SEQ_BLOCK
        return self.request("POST", f"/v1/{command}", body)

    def facts(self) -> dict[str, Any]:
        status, body = self.get("/v1/facts")
        assert status == 200, body
        return dict(body)

    def health(self) -> dict[str, Any]:
        status, body = self.get("/v1/health")
        assert status == 200, body
        return dict(body)

    def app_version(self) -> str | None:
        """The version the running demo app reports, straight from the app."""
        url = f"http://127.0.0.1:{self.app_port}/healthz"
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                return str(json.loads(resp.read())["version"])
        except (OSError, ValueError):
            return None

    def wait_for(self, predicate: Any, timeout: float = 10.0, what: str = "condition") -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate():
                return
            time.sleep(0.05)
        raise AssertionError(f"timed out waiting for {what}\n{self.log_text()}")

    def release_entries(self) -> list[str]:
        """Everything in releases/, hidden entries included."""
        return sorted(p.name for p in (self.data_dir / "releases").iterdir())


class FlakyBlobServer:
    """Serves one blob; the first response is cut off halfway (connection closed), later ones
    honour ``Range: bytes=N-``. ``ranges`` records what each request asked for."""

    def __init__(self, payload: bytes) -> None:
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        self.payload = payload
        self.ranges: list[str | None] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                rng = self.headers.get("Range")
                outer.ranges.append(rng)
                data = outer.payload
                if len(outer.ranges) == 1:
                    self.send_response(200)
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data[: len(data) // 2])
                    self.wfile.flush()
                    self.close_connection = True
                    self.connection.shutdown(socket.SHUT_RDWR)
                    return
                start = int(rng.removeprefix("bytes=").split("-")[0]) if rng else 0
                self.send_response(206 if rng else 200)
                if rng:
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                self.send_header("Content-Length", str(len(data) - start))
                self.end_headers()
                self.wfile.write(data[start:])

            def log_message(self, *args: object) -> None:
                return

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/blob"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> FlakyBlobServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
        self._thread.join(10)
