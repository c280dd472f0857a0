"""Processes for the controller crash test: a virtual fleet, CLI controllers to kill, the log.

Everything runs as real processes on 127.0.0.1, the way an operator runs fleetgate: the
simulator (``fleetgate sim run``) in one process, each controller (``deploy start|resume|
approve``) in its own, the SQLite store shared through the file system. ``Procs`` remembers every
process started so a finaliser can kill them all by pid, whatever the test did.

``CrashLoop`` drives one deployment to its end while SIGKILLing its controllers, each at a
random point of the deployment (see its docstring). A kill *lands* when the process had not
exited by itself; it lands *while working* when that run had also written to the log. Kill
points come from a seeded RNG; exactly where they fall depends on timing, which is the point:
every instant must be a safe one.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fleetgate.core.machine import fold
from fleetgate.core.state import DeploymentState, Phase
from fleetgate.store import Store

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "engine"))
from engine_harness import build_release

__all__ = ["build_release"]

POLICY_TOML = """\
allow_short_soak = true

[soak]
canary = "2s"
between_waves = "1s"

[retries]
backoff = "0.2s"
"""

EXIT_OK, EXIT_WAITING = 0, 4


class Procs:
    """Every process the test started; ``kill_all`` ends the ones still running, by pid."""

    def __init__(self) -> None:
        self.started: list[subprocess.Popen[bytes]] = []

    def spawn(
        self, argv: list[str], *, cwd: Path, env: dict[str, str], log: Path
    ) -> subprocess.Popen[bytes]:
        with log.open("wb") as out, log.with_suffix(".err").open("wb") as err:
            proc = subprocess.Popen(argv, cwd=cwd, env=env, stdout=out, stderr=err)
        self.started.append(proc)
        return proc

    def kill_all(self) -> None:
        for proc in self.started:
            if proc.poll() is None:
                os.kill(proc.pid, signal.SIGKILL)
            proc.wait()


@dataclass
class Workspace:
    """One fleetgate installation: a directory used as cwd and FLEETGATE_HOME, one store."""

    root: Path
    procs: Procs
    runs: int = 0

    def __post_init__(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        (self.root / "logs").mkdir(exist_ok=True)
        self.db = f"sqlite+aiosqlite:///{self.root / 'fg.db'}"
        self.env = {**os.environ, "FLEETGATE_HOME": str(self.root / "home")}
        self.env.pop("FLEETGATE_DB", None)
        self.env.pop("FLEETGATE_PUBKEY", None)

    def argv(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "fleetgate", "--db", self.db, *args]

    def spawn(self, *args: str) -> Run:
        self.runs += 1
        log = self.root / "logs" / f"{self.runs:03d}-{args[0]}-{args[1]}.out"
        return Run(self.procs.spawn(self.argv(*args), cwd=self.root, env=self.env, log=log), log)

    def cli(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        run = self.spawn(*args)
        try:
            rc = run.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            run.kill()
            raise
        return subprocess.CompletedProcess(run.proc.args, rc, run.stdout(), run.stderr())

    def status(self, dep: str | None = None) -> tuple[int, dict[str, Any] | None]:
        """``deploy status [ID] --json``: (exit code, document or None)."""
        res = self.cli("deploy", "status", *([dep] if dep else []), "--json")
        return res.returncode, (json.loads(res.stdout) if res.stdout.strip() else None)


@dataclass
class Run:
    """One CLI process and the files holding its stdout and stderr."""

    proc: subprocess.Popen[bytes]
    log: Path

    def kill(self) -> None:
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait()  # reaped: the next controller sees the lease holder is gone

    def stdout(self) -> str:
        return self.log.read_text(errors="replace")

    def stderr(self) -> str:
        return self.log.with_suffix(".err").read_text(errors="replace")


@dataclass
class Sim:
    """A running ``fleetgate sim run``; ``device`` is its ``/_sim/devices/<id>`` snapshot."""

    url: str
    token: str
    proc: subprocess.Popen[bytes]

    def device(self, device_id: str) -> dict[str, Any]:
        req = urllib.request.Request(
            f"{self.url}/_sim/devices/{device_id}",
            headers={"Authorization": f"Bearer {self.token}"},
        )
        with urllib.request.urlopen(req, timeout=10) as resp:
            doc: dict[str, Any] = json.loads(resp.read())
        return doc


def start_sim(ws: Workspace, *extra: str, timeout: float = 30) -> Sim:
    """``fleetgate sim run`` in ``ws``; returns once it printed ``ready``."""
    proc = ws.procs.spawn(
        [sys.executable, "-m", "fleetgate", "sim", "run", "--registry-out", "fleet.yaml", *extra],
        cwd=ws.root,
        env=ws.env,
        log=ws.root / "logs" / "sim.out",
    )
    out = ws.root / "logs" / "sim.out"
    deadline = time.monotonic() + timeout
    while True:
        lines = out.read_text().splitlines()
        if "ready" in lines:
            break
        if proc.poll() is not None or time.monotonic() > deadline:
            err = out.with_suffix(".err").read_text()
            raise RuntimeError(f"sim did not get ready (rc={proc.poll()}): {lines} {err}")
        time.sleep(0.05)
    fields = dict(line.split(": ", 1) for line in lines if ": " in line)
    token = Path(fields["token file"]).read_text().strip()
    return Sim(fields["url"].split(" ")[0], token, proc)


Key = tuple[str, str | None, Any, Any]

# Events every controller run writes again: no progress of the deployment.
REWORK = frozenset({"registry.imported", "distribution.started"})


def milestone(ev: Any) -> Key:
    """What an event marks in a deployment: a device's step in a stage, a round, a gate."""
    return (ev.action, ev.device_id, ev.details.get("stage"), ev.details.get("round"))


class LogReader:
    """The store read from the test process (the same fold as ``deploy status``), on a private
    event loop so the test itself stays synchronous around its subprocesses. ``poll`` follows
    the whole log incrementally and collects the milestones reached so far."""

    def __init__(self, db: str) -> None:
        async def open_store() -> Any:
            return await Store.open(db)

        self._loop = asyncio.new_event_loop()
        self._store: Any = self._loop.run_until_complete(open_store())
        self.last = 0
        self.reached: set[Key] = set()
        self.latest: Key | None = None  # the last milestone reached for the first time

    def poll(self) -> int:
        """Read what was appended since the last call; the log's last seq."""
        for ev in self._loop.run_until_complete(self._store.events(None, self.last)):
            self.last = ev.seq
            key = milestone(ev)
            if ev.action not in REWORK and key not in self.reached:
                self.reached.add(key)
                self.latest = key
        return self.last

    def progress(self) -> int:
        """How many distinct milestones the log shows, after reading what is new."""
        self.poll()
        return len(self.reached)

    def events(self, dep: str) -> list[Any]:
        return list(self._loop.run_until_complete(self._store.events(dep)))

    def state(self, dep: str) -> DeploymentState:
        return fold(dep, self.events(dep))

    def close(self) -> None:
        self._loop.run_until_complete(self._store.close())
        self._loop.close()


@dataclass
class CrashStats:
    runs: int = 0
    landed: int = 0  # killed while still running
    working: int = 0  # ... and after it had written to the log
    exited: list[tuple[str, int]] = field(default_factory=list)  # (command, rc) of unkilled runs
    history: list[str] = field(default_factory=list)  # one line per controller run


@dataclass
class CrashLoop:
    """Drive one deployment to a terminal phase, SIGKILLing its controllers at random points.

    Each run is aimed at a random number of *new* milestones (log events marking a step the
    deployment had not reached before the run: repeated health rounds and pre-flights do not
    count) and killed as soon as the log shows them (0–20 ms later; 0.1–0.9 s into the soak when
    the last one was a ``soak.started``). The number is drawn so that the ``kills`` still wanted
    spread over what is left of the deployment (``expected`` milestones in all, a rough count),
    aiming short since a kill lands a little after its aim: kills fall all over the deployment
    and every killed run made progress. One run in ten is instead killed 0.3–2 s after its spawn
    wherever it is (start-up, lease, bundle checks). Each run gets a random ``--concurrency``
    (2, 4, 8 or 200): the outcome must not depend on it, and a small one leaves a stage's devices
    at different steps when the kill lands. Once enough kills landed, runs finish by themselves.
    """

    ws: Workspace
    bundle: Path
    pubkey: Path
    policy: Path
    rng: random.Random
    kills: int
    expected: int
    max_runs: int = 90
    stats: CrashStats = field(default_factory=CrashStats)

    def run(self) -> str:
        reader = LogReader(self.ws.db)  # the store exists: the registry was imported
        try:
            return self._drive(reader)
        finally:
            reader.close()

    def _drive(self, reader: LogReader) -> str:
        dep: str | None = None
        while self.stats.runs < self.max_runs:
            if dep is None:
                dep = self._start(reader)
                continue
            phase = reader.state(dep).phase
            if phase.terminal:
                return dep
            if phase is Phase.AWAITING_APPROVAL:
                # The approval of a killed `approve` may or may not be in the log: ask the CLI,
                # as an operator would, before approving again.
                _rc, doc = self.ws.status(dep)
                assert doc is not None, _rc
                if doc["phase"] == Phase.AWAITING_APPROVAL.value:
                    self._killable(reader, "approve", dep, "--as", "tester")
                    continue
            self._killable(reader, "resume", dep)
        raise AssertionError(f"deployment not finished after {self.stats.runs} controller runs")

    def _start(self, reader: LogReader) -> str | None:
        run = self._killable(reader, "start", str(self.bundle), "--policy", str(self.policy))
        if run is not None:
            return str(json.loads(run.stdout())["deployment_id"])
        # Killed: the deployment may or may not have been created; status names the latest.
        _rc, doc = self.ws.status()
        return None if doc is None else str(doc["deployment_id"])

    def _aim(self, reader: LogReader) -> int | None:
        """How many new milestones this run may reach before it is killed; None: no kill."""
        wanted = self.kills - self.stats.working
        if wanted <= 0:
            return None
        left = max(wanted, self.expected - len(reader.reached))
        # Aim well short: a kill lands a little after its aim, and a fast run overshoots more.
        return 1 + self.rng.randrange(max(1, left // (6 * wanted)))

    def _killable(self, reader: LogReader, cmd: str, *args: str) -> Run | None:
        """Run ``deploy CMD ARGS``, SIGKILL it at a random point; the run if it exited."""
        conc = self.rng.choice(("2", "4", "8", "200"))
        base = reader.poll()
        known = len(reader.reached)
        aim = self._aim(reader)
        spawn_relative = aim is not None and self.rng.random() < 0.1
        delay = self.rng.uniform(0.3, 2.0)
        extra = ("--pubkey", str(self.pubkey), "--json", "--concurrency", conc)
        run = self.ws.spawn("deploy", cmd, *args, *extra)
        self.stats.runs += 1
        t0 = time.monotonic()
        label = f"{delay:.1f} s after spawn" if spawn_relative else f"+{aim} milestones"
        if aim is None:
            rc: int | None = run.proc.wait(timeout=300)
        elif spawn_relative:
            rc = _wait(run, lambda: time.monotonic() - t0 >= delay)
        else:
            rc = _wait(run, lambda: reader.progress() - known >= aim)
            if rc is None:
                soak = reader.latest is not None and reader.latest[0] == "soak.started"
                delay = self.rng.uniform(0.1, 0.9) if soak else self.rng.uniform(0.0, 0.02)
                t0 = time.monotonic()
                rc = _wait(run, lambda: time.monotonic() - t0 >= delay)
                label += f" ({' '.join(str(k) for k in reader.latest or () if k is not None)})"
        wrote = reader.poll() - base
        self.stats.history.append(
            f"{cmd} c={conc} {label}: wrote {wrote}, {'killed' if rc is None else f'rc={rc}'}"
        )
        if rc is None:
            run.kill()
            self.stats.landed += 1
            self.stats.working += wrote > 0
            return None
        self.stats.exited.append((cmd, rc))
        if rc not in (EXIT_OK, EXIT_WAITING):
            raise AssertionError(f"deploy {cmd} exited {rc}: {run.stderr()}")
        return run


def _wait(run: Run, until: Callable[[], bool], limit: float = 300) -> int | None:
    """Poll until ``until()`` holds (None) or the process exits by itself (its exit code)."""
    deadline = time.monotonic() + limit
    while (rc := run.proc.poll()) is None:
        if until() or time.monotonic() > deadline:
            return None
        time.sleep(0.01)
    return rc
