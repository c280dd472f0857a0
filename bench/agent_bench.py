"""Device agent benchmark: idle RSS, cold start, stage+activate of a 10 MiB bundle.

    .venv/bin/python bench/agent_bench.py [--runs 5] [--mib 10]

- idle RSS: VmRSS from /proc/<pid>/status of a freshly started agent with no release (no app),
  one second after it first answered /v1/ping.
- cold start: from ``Popen`` of ``python -m fleetgate agent run`` to the first successful
  ``GET /v1/ping`` (median and best of ``--runs``), and the CPU time the agent used until then
  (a figure that does not depend on what else the machine is doing).
- RSS right after that deploy, and of the agent restarted on that release (app running, the
  agent idle): the steady state of a device between deployments.
- stage + activate: a bundle whose app dir holds ``--mib`` MiB of random (incompressible) bytes
  next to the demo app, served by the DistributionServer on loopback; stage = verify, disk check,
  download, sha256, safe extraction, fsync, rename; activate = switch, start, first healthy probe.

Targets (issue 3): idle RSS < 40 MiB, cold start < 1 s. Everything runs on 127.0.0.1.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

from fleetgate.artifacts.bundle import build_bundle
from fleetgate.artifacts.container import read_bundle
from fleetgate.artifacts.distribution import DistributionServer, publish_bundle
from fleetgate.artifacts.keys import generate_keypair, load_private_key

REPO = Path(__file__).resolve().parents[1]
TOKEN = "bench-token"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Agent:
    def __init__(self, root: Path, pub: Path) -> None:
        self.port, self.app_port = free_port(), free_port()
        root.mkdir(parents=True)
        self.config = root / "agent.toml"
        self.config.write_text(
            f'[device]\nid = "bench"\nhardware = "bench"\n[agent]\n'
            f'listen = "127.0.0.1:{self.port}"\ndata_dir = "{root / "data"}"\n'
            f'token_env = "FG_BENCH_TOKEN"\npublic_key = "{pub}"\nprobe_interval_s = 5\n'
            f"[app]\nport = {self.app_port}\n"
        )
        self.proc: subprocess.Popen[bytes] | None = None

    def call(self, method: str, path: str, body: object = None) -> tuple[int, dict[str, object]]:
        req = urllib.request.Request(
            f"http://127.0.0.1:{self.port}{path}",
            data=None if body is None else json.dumps(body).encode(),
            method=method,
            headers={
                "Authorization": f"Bearer {TOKEN}",
                "X-Fleetgate-Device": "bench",
                "Content-Type": "application/json",
            },
        )
        try:
            with urllib.request.urlopen(req, timeout=120) as resp:
                return resp.status, json.loads(resp.read())
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read())

    def cpu_s(self) -> float:
        """CPU time (user + system) the agent process has used so far."""
        assert self.proc is not None
        raw = Path(f"/proc/{self.proc.pid}/stat").read_text()
        fields = raw[raw.rfind(")") + 2 :].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def start(self) -> float:
        """Start the agent; seconds until the first successful ping."""
        env = {**os.environ, "FG_BENCH_TOKEN": TOKEN}
        t0 = time.perf_counter()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "fleetgate", "agent", "run", "--config", str(self.config)],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        while True:
            try:
                if self.call("GET", "/v1/ping")[0] == 200:
                    return time.perf_counter() - t0
            except OSError:
                pass
            if self.proc.poll() is not None:
                raise SystemExit(f"agent exited with {self.proc.returncode}")
            time.sleep(0.002)

    def rss_mib(self) -> float:
        return self.status_mib("VmRSS")

    def status_mib(self, field: str) -> float:
        """A /proc/<pid>/status memory field (VmRSS, RssAnon = private, RssFile = mapped files)."""
        assert self.proc is not None
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith(f"{field}:"):
                return int(line.split()[1]) / 1024
        raise RuntimeError(f"no {field}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(20)


def make_bundle(root: Path, key_path: Path, mib: int) -> Path:
    src = root / "app"
    src.mkdir()
    shutil.copy(REPO / "src" / "fleetgate" / "sim" / "demo_app.py", src / "app.py")
    (src / "demo.toml").write_text('mode = "ok"\nversion = "1.0.0"\n')
    (src / "model.bin").write_bytes(os.urandom(mib * 1024 * 1024))
    (src / "fleetgate.toml").write_text(
        '[artifact]\nname = "bench"\nversion = "1.0.0"\nkind = "bundle"\n'
        f"[requires]\ndisk_mb = {mib + 1}\n"
        '[run]\ncommand = ["python3", "app.py", "--port", "${APP_PORT}"]\n'
        'health_url = "http://127.0.0.1:${APP_PORT}/healthz"\n'
    )
    return build_bundle(src, load_private_key(key_path), root / "out").path


async def stage_activate(agent: Agent, bundle: Path, blob_dir: Path) -> tuple[float, float]:
    sha, _size = publish_bundle(bundle, blob_dir)
    contents = read_bundle(bundle)
    async with DistributionServer(blob_dir) as srv:
        body = {
            "deployment_id": "bench",
            "seq": 1,
            "seq_base": 0,
            "manifest": contents.manifest_json.decode(),
            "signature": contents.signature.decode().strip(),
            "url": srv.blob_url(sha),
        }
        t0 = time.perf_counter()
        status, reply = await asyncio.to_thread(agent.call, "POST", "/v1/stage", body)
        t1 = time.perf_counter()
        assert status == 200 and reply["status"] == "staged", reply
        release = reply["release"]
        status, reply = await asyncio.to_thread(
            agent.call,
            "POST",
            "/v1/activate",
            {"deployment_id": "bench", "seq": 2, "seq_base": 0, "release": release},
        )
        t2 = time.perf_counter()
        assert status == 200 and reply["status"] == "active", reply
    return t1 - t0, t2 - t1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--mib", type=int, default=10)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="fg-agent-bench-") as tmp:
        root = Path(tmp)
        key, pub = generate_keypair(root / "keys")

        starts: list[float] = []
        cpu: list[float] = []
        rss: list[float] = []
        for i in range(args.runs):
            agent = Agent(root / f"cold-{i}", pub)
            try:
                starts.append(agent.start())
                cpu.append(agent.cpu_s())
                time.sleep(1.0)
                rss.append(agent.rss_mib())
                anon = agent.status_mib("RssAnon")
            finally:
                agent.stop()

        bundle = make_bundle(root, key, args.mib)
        agent = Agent(root / "deploy", pub)
        try:
            agent.start()
            stage_s, activate_s = asyncio.run(stage_activate(agent, bundle, root / "blobs"))
            rss_app = agent.rss_mib()
            anon_app = agent.status_mib("RssAnon")
            agent.stop()
            # The steady state of a device: the agent (re)started, supervising a release.
            restart_s = agent.start()
            time.sleep(1.0)
            rss_restarted = agent.rss_mib()
        finally:
            agent.stop()

    print(f"python {sys.version.split()[0]} on {os.uname().machine}, {os.cpu_count()} CPUs")
    print(
        f"agent idle RSS (no app):        {statistics.median(rss):6.1f} MiB "
        f"(max {max(rss):.1f}, private {anon:.1f}; target < 40)"
    )
    print(
        f"agent cold start to first ping: {statistics.median(starts) * 1000:6.0f} ms "
        f"(best {min(starts) * 1000:.0f}; target < 1000)"
    )
    print(
        f"  CPU used until then:          {statistics.median(cpu) * 1000:6.0f} ms "
        "(load-independent: wall time grows when other processes compete)"
    )
    print(
        f"stage {args.mib} MiB bundle:            {stage_s * 1000:6.0f} ms "
        "(verify, download, sha256, extract, fsync)"
    )
    print(f"activate (switch + healthy):    {activate_s * 1000:6.0f} ms")
    print(f"stage + activate:               {(stage_s + activate_s) * 1000:6.0f} ms")
    print(
        f"agent RSS right after deploying:{rss_app:6.1f} MiB (private {anon_app:.1f}; "
        "cryptography + tarfile now loaded)"
    )
    print(
        f"agent RSS restarted, app running:{rss_restarted:5.1f} MiB "
        f"(cold start {restart_s * 1000:.0f} ms)"
    )


if __name__ == "__main__":
    main()
