"""The API's overhead: one 1,000-device deployment driven by ``fleetgate serve`` vs by the CLI,
and the SSE fan-out to 50 watchers.

    .venv/bin/python bench/serve_bench.py [--devices 1000] [--watchers 50]

Each mode runs on a fresh virtual fleet (``fleetgate sim run``, its own process) and a fresh
SQLite store, with zero soaks (the audited ``allow_short_soak``):

- **cli**: ``fleetgate deploy start BUNDLE --policy P`` (to AWAITING_APPROVAL), then
  ``fleetgate deploy approve ID --as bench`` (to COMPLETE), each its own process; controller
  CPU = the two processes' user+sys (``RUSAGE_CHILDREN``), wall = start to COMPLETE.
- **serve**: ``fleetgate serve`` on a loopback port; the release uploaded and the deployment
  created over HTTP, the approval given over HTTP by an approver token when the deployment
  waits for it; controller CPU = the serve process's user+sys over the same span (its start-up
  excluded), wall = upload to COMPLETE. ``--watchers`` SSE clients follow the deployment's
  stream from the start, in this process; their delivery lag (receive time - event ``ts``) is
  reported, and every watcher must have received every event in order.
- **replay**: after COMPLETE, the same watchers read the whole stream again from the start
  (Last-Event-ID 0) at once: events delivered per second, serve CPU for it.

Nothing here asserts a speed: it prints figures (docs/performance.md quotes them).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent))
from engine_bench import SimProcess, build_release

PROFILE = os.environ.get("FG_SERVE_PROFILE", "")
POLICY = 'allow_short_soak = true\n[soak]\ncanary = "0s"\nbetween_waves = "0s"\n'


def proc_cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def children_cpu_s() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def fleetgate(
    *args: str, db: str, cwd: Path, env: dict[str, str]
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "fleetgate", "--db", db, *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )


def setup(work: Path, devices: int) -> tuple[SimProcess, Path, Path, str, dict[str, str]]:
    work.mkdir(parents=True)
    sim = SimProcess(devices, work)
    bundle, pub = build_release(work)
    db = f"sqlite+aiosqlite:///{work / 'fg.db'}"
    env = {**os.environ, "FLEETGATE_HOME": str(work / "home")}
    env.pop("FLEETGATE_DB", None)
    res = fleetgate(
        "registry", "import", str(sim.inventory), "--as", "bench", db=db, cwd=work, env=env
    )
    assert res.returncode == 0, res.stderr
    (work / "policy.toml").write_text(POLICY)
    return sim, bundle, pub, db, env


def run_cli(work: Path, devices: int) -> dict[str, Any]:
    sim, bundle, pub, db, env = setup(work, devices)
    try:
        c0, w0 = children_cpu_s(), time.perf_counter()
        res = fleetgate(
            "deploy",
            "start",
            str(bundle),
            "--policy",
            "policy.toml",
            "--pubkey",
            str(pub),
            "--json",
            db=db,
            cwd=work,
            env=env,
        )
        assert res.returncode == 4, res.stderr
        dep = json.loads(res.stdout)["deployment_id"]
        res = fleetgate(
            "deploy", "approve", dep, "--as", "bench", "--json", db=db, cwd=work, env=env
        )
        assert res.returncode == 0, res.stderr
        return {"cpu_s": children_cpu_s() - c0, "wall_s": time.perf_counter() - w0}
    finally:
        sim.stop()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def watch(
    session: aiohttp.ClientSession, url: str, token: str, until: str, after: int = 0
) -> list[tuple[int, float, str]]:
    """(seq, receive time, event ts) for each event until one named ``until``."""
    got: list[tuple[int, float, str]] = []
    headers = {"Authorization": f"Bearer {token}", "Last-Event-ID": str(after)}
    async with session.get(url, headers=headers) as resp:
        data = ""
        async for raw in resp.content:
            line = raw.decode().rstrip("\r\n")
            if line.startswith("data:"):
                data = line[5:].lstrip()
            elif not line and data:
                ev = json.loads(data)
                got.append((ev["seq"], time.time(), ev["ts"]))
                data = ""
                if ev["action"] == until:
                    return got
    return got


async def serve_mode(work: Path, devices: int, watchers: int) -> dict[str, Any]:
    sim, bundle, pub, db, env = setup(work, devices)
    tokens = {}
    for name, role in (("op", "operator"), ("ap", "approver")):
        res = fleetgate("users", "add", name, "--role", role, db=db, cwd=work, env=env)
        tokens[role] = res.stdout.strip()
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    serve_env = {**env, "FLEETGATE_PUBKEY": str(pub), "FLEETGATE_POLL_S": "0.2"}
    log = (work / "serve.log").open("wb")
    # --profile: the service runs under cProfile (written when SIGTERM stops it cleanly).
    prof = ["-m", "cProfile", "-o", PROFILE] if PROFILE and watchers else []
    proc = subprocess.Popen(
        [
            *(sys.executable, *prof, "-m", "fleetgate", "--db", db),
            *("serve", "--listen", f"127.0.0.1:{port}"),
        ],
        cwd=work,
        env=serve_env,
        stdout=log,
        stderr=log,
        start_new_session=True,
    )
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=None)) as s:
            for _ in range(300):
                try:
                    async with s.get(base + "/api/v1/health") as r:
                        if r.status == 200:
                            break
                except aiohttp.ClientError:
                    pass
                await asyncio.sleep(0.05)
            op = {"Authorization": f"Bearer {tokens['operator']}"}
            ap = {"Authorization": f"Bearer {tokens['approver']}"}
            c0, w0 = proc_cpu_s(proc.pid), time.perf_counter()
            async with s.post(base + "/api/v1/releases", data=bundle.read_bytes(), headers=op) as r:
                rel = await r.json()
            body = {"release": rel["sha256"], "policy_toml": POLICY}
            async with s.post(base + "/api/v1/deployments", json=body, headers=op) as r:
                dep = (await r.json())["id"]
            stream = f"{base}/api/v1/deployments/{dep}/stream"
            tasks = [
                asyncio.create_task(watch(s, stream, tokens["approver"], "confirm.completed"))
                for _ in range(watchers)
            ]
            while True:
                async with s.get(f"{base}/api/v1/deployments/{dep}", headers=ap) as r:
                    phase = (await r.json())["phase"]
                if phase == "AWAITING_APPROVAL":
                    async with s.post(f"{base}/api/v1/deployments/{dep}/approve", headers=ap) as r:
                        assert r.status == 200, await r.text()
                if phase in ("COMPLETE", "PARTIAL", "HALTED", "ROLLED_BACK", "ABORTED"):
                    break
                await asyncio.sleep(0.1)
            wall, cpu = time.perf_counter() - w0, proc_cpu_s(proc.pid) - c0
            seen = await asyncio.wait_for(asyncio.gather(*tasks), 120)
            if not seen:
                return {"phase": phase, "cpu_s": cpu, "wall_s": wall}
            seqs = [[q for q, _t, _ts in w] for w in seen]
            complete = all(x == seqs[0] for x in seqs) and seqs[0] == sorted(set(seqs[0]))
            lags = [t - datetime.fromisoformat(ts).timestamp() for w in seen for _q, t, ts in w]
            # Replay: every watcher reads the whole finished stream at once.
            c1, w1 = proc_cpu_s(proc.pid), time.perf_counter()
            replay = await asyncio.gather(
                *(
                    watch(s, stream, tokens["approver"], "confirm.completed")
                    for _ in range(watchers)
                )
            )
            rwall, rcpu = time.perf_counter() - w1, proc_cpu_s(proc.pid) - c1
            return {
                "phase": phase,
                "cpu_s": cpu,
                "wall_s": wall,
                "events": len(seqs[0]),
                "watchers_complete": complete,
                "lag_p50_ms": 1000 * statistics.median(lags),
                "lag_p99_ms": 1000 * sorted(lags)[int(0.99 * (len(lags) - 1))],
                "replay_events_per_s": sum(len(w) for w in replay) / rwall,
                "replay_cpu_s": rcpu,
                "replay_wall_s": rwall,
            }
    finally:
        os.kill(proc.pid, signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()
        sim.stop()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--devices", type=int, default=1000)
    ap.add_argument("--watchers", type=int, default=50)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="fg-serve-bench-") as tmp:
        cli = run_cli(Path(tmp) / "cli", args.devices)
        bare = asyncio.run(serve_mode(Path(tmp) / "serve", args.devices, 0))
        srv = asyncio.run(serve_mode(Path(tmp) / "serve-sse", args.devices, args.watchers))
    load = os.getloadavg()[0]
    print(f"\n{args.devices} devices, zero soak, load average {load:.2f}")
    print(f"{'':<34}{'controller CPU s':>18}{'wall s':>10}")
    print(f"{'CLI (deploy start + approve)':<34}{cli['cpu_s']:>18.2f}{cli['wall_s']:>10.2f}")
    print(f"{'serve (API + worker)':<34}{bare['cpu_s']:>18.2f}{bare['wall_s']:>10.2f}")
    label = f"serve + {args.watchers} SSE watchers"
    print(f"{label:<34}{srv['cpu_s']:>18.2f}{srv['wall_s']:>10.2f}")
    cpu_x, wall_x = bare["cpu_s"] / cli["cpu_s"], bare["wall_s"] / cli["wall_s"]
    print(f"API overhead: CPU x{cpu_x:.2f}, wall x{wall_x:.2f}")
    print(
        f"SSE: {args.watchers} watchers live, {srv['events']} events each, all complete and "
        f"in order: {srv['watchers_complete']}; lag p50 {srv['lag_p50_ms']:.0f} ms, "
        f"p99 {srv['lag_p99_ms']:.0f} ms"
    )
    print(
        f"SSE replay: {args.watchers} x {srv['events']} events in {srv['replay_wall_s']:.2f} s "
        f"({srv['replay_events_per_s']:,.0f} events/s), serve CPU {srv['replay_cpu_s']:.2f} s"
    )
    print(json.dumps({"devices": args.devices, "cli": cli, "serve": bare, "serve_sse": srv}))


if __name__ == "__main__":
    main()
