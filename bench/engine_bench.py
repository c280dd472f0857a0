"""Deployment-engine benchmark: a full deployment and a fleet-wide rollback on a virtual fleet.

    .venv/bin/python bench/engine_bench.py [--devices 1000 10000] [--concurrency 200 500]
                                           [--db sqlite|postgresql+asyncpg://USER@HOST/DB]
                                           [--skip-rollback] [--profile DIR] [--timeout S]
                                           [--writer-process] [--lean-append]

For each fleet size × controller concurrency, in a fresh worker process (so its CPU time and
peak RSS are its own) and a fresh temporary directory:

1. ``python -m fleetgate sim run --devices N --registry-out fleet.yaml`` is started as a separate
   process on 127.0.0.1 (the controller's CPU time must not include the devices' work); the
   worker waits for its ``ready`` line and kills it by pid at the end.
2. The worker builds a signed release of the example app (``app`` 2.0.0 over the sim's
   ``app-1.0.0-00000000``), a store with the inventory imported (by ``fleetgate registry
   import`` in its own process: parsing the YAML is not the controller's memory) — ``--db
   sqlite`` (default): a SQLite file in the tmp dir; ``--db postgresql[+asyncpg]://…`` (no
   ``schema=``): a fresh schema ``bench_<random>`` in that database, dropped at the end of the
   run — and a ``Controller`` over ``HttpTransport`` (real loopback HTTP, TokenSource reading
   the sim's token file), concurrency C for both.
3. Timed (wall = ``perf_counter``, CPU = ``process_time`` of the controller process):
   ``start`` (verify bundle, plan, publish), ``drive`` to AWAITING_APPROVAL (canary + verify,
   zero soak), then — timed apart, it is a human's step — ``record_human(approval.granted)``,
   then ``drive`` to COMPLETE (3 waves: the default 25/50/100 %, zero soak between waves).
   "deployment" = start + to-approval + rollout: controller work only.
4. "load+fold": ``Controller.state`` of the finished deployment with the controller's kept fold
   dropped first (what a resumed controller pays) — reading the whole log in pages and
   folding it, which every later ``drive``/``record_human`` (and a resumed controller) pays first.
5. Unless ``--skip-rollback``: ``record_human(rollback.requested, devices=[])`` and ``drive``
   until ROLLED_BACK — every device of the fleet back on 1.0.0. The spec's bound: < 5 minutes.
6. Events written to the hash-chained log (count, events/s), peak RSS of the controller
   (``ru_maxrss``) and of the sim (``VmHWM``), CPU seconds the sim used (``/proc/PID/stat``).
7. Agent calls: the sim counts every request that reaches a device (``GET /_sim/calls``, read
   between phases, outside the timings); deployment (start + to-approval + rollout) and rollback
   are counted apart and divided by the fleet size; controller CPU per agent call =
   ``deploy_cpu_s`` / deployment calls (compare with ``bench/floor_bench.py``'s floor).

Each run's report ends with ONE JSON line that scripts parse (the last line of the run):
``devices``, ``deploy_cpu_s``, ``deploy_wall_s``, ``rollback_cpu_s``, ``rollback_wall_s``,
``agent_calls_deploy``, ``agent_calls_rollback`` (per device), ``peak_rss_mib`` (controller), and
more (``ctl_us_per_call_deploy``/``_rollback``, calls by name, outcome, db, load average).
Unless ``--no-floor``, the floor of ``bench/floor_bench.py`` (the raw asyncio client's CPU per
request) is measured first, in the same run: ``floor_us_per_call`` and
``ctl_per_call_x_floor_deploy`` / ``_rollback`` (issue 12's "≤ 3× the floor") are in the line.
``--devices 100000`` works (on PostgreSQL too); it takes long, so give ``--timeout``.

Where the controller's CPU goes (issue 12 item 5, "use both cores"): per phase, from
``/proc/self/task/<tid>/stat`` (utime + stime, clock ticks), the event loop's thread
(``main_thread_cpu_deploy_s`` / ``_rollback_s``), aiosqlite's connection threads — SQLite's own
work, which a writer process could take over — (``store_thread_cpu_…``) and the rest
(``other_thread_cpu_…``: the process's CPU minus those two, so threads that ended count there);
on PostgreSQL the CPU of the server's backends serving this controller (matched by client
port) and of its background processes (``db_server_cpu_…``: the store writer that already is
another process); and the whole
machine's busy CPU seconds (``machine_cpu_…``, /proc/stat: the controller, the sim, the
database, and anything else running — the machine is shared, compare back-to-back runs only).
``--writer-process``: the recorders append through ``bench/writer_child.py``'s prototype writer
process (its CPU: ``writer_cpu_deploy_s`` / ``_rollback_s``) — a measurement, not a feature.
``--lean-append`` (SQLite): they append with ``bench/lean_append.py`` (sqlite3, one thread hop
per batch): in this process that is what the store itself does since ADR 0019 (kept for the
combination), in the writer process with both flags.

``--profile DIR`` writes a cProfile of each worker (``DIR/engine-N-cC.prof``) and prints its top
functions. Nothing here asserts: it prints figures (docs/performance.md quotes them).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import resource
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TypeVar

ROOT = Path(__file__).resolve().parents[1]
POLICY: dict[str, Any] = {"allow_short_soak": True, "soak": {"canary": 0, "between_waves": 0}}
ROLLBACK_LIMIT_S = 300.0  # the spec: fleet-wide rollback in under 5 minutes
T = TypeVar("T")


@dataclass
class Timing:
    wall_s: float
    cpu_s: float
    sim_cpu_s: float = 0.0
    events: int = 0
    rss_mib: float = 0.0  # the controller's peak RSS so far, at the end of this phase
    gc_s: float = 0.0  # time in the cyclic garbage collector during this phase
    gc_full_s: float = 0.0  # of which in full collections
    # The controller's CPU split by thread (issue 12 item 5: what could a second process take?)
    main_cpu_s: float = 0.0  # the event loop's thread
    store_cpu_s: float = 0.0  # aiosqlite's connection threads (SQLite's own work)
    other_cpu_s: float = 0.0  # every other thread, and threads that ended during the phase
    db_server_cpu_s: float = 0.0  # PostgreSQL's server processes (0 on SQLite)
    writer_cpu_s: float = 0.0  # the writer process's (``--writer-process``; else 0)
    machine_cpu_s: float = 0.0  # busy CPU seconds of the whole machine (/proc/stat)
    sys_cpu_s: float = 0.0  # the controller's CPU in the kernel (``os.times().system``)


@dataclass
class RunResult:
    devices: int
    concurrency: int
    outcome: str = ""
    sim_start_s: float = 0.0
    phases: dict[str, Timing] = field(default_factory=dict)
    rollback_outcome: str = ""
    controller_rss_deploy_mib: float = 0.0
    controller_rss_mib: float = 0.0
    sim_hwm_mib: float = 0.0
    error: str = ""
    running: str = ""  # the phase in progress (names the one a timeout interrupted)
    db: str = "sqlite"
    writer_process: bool = False
    lean_append: bool = False
    # agent calls (requests the sim served) per phase, by call name
    calls: dict[str, dict[str, int]] = field(default_factory=dict)
    # bench/floor_bench.py's floor, measured by the parent in the same run (None: --no-floor)
    floor_us: float | None = None


# -- the virtual fleet process -------------------------------------------------------------------
class SimProcess:
    """``fleetgate sim run`` in its own process; ``stop()`` kills exactly that pid."""

    def __init__(self, devices: int, work: Path) -> None:
        self.inventory = work / "fleet.yaml"
        self._log = (work / "sim.stderr").open("wb")
        t0 = time.perf_counter()
        self.proc = subprocess.Popen(
            [
                *(sys.executable, "-m", "fleetgate", "sim", "run", "--devices", str(devices)),
                *("--registry-out", str(self.inventory), "--host", "127.0.0.1", "--seed", "1"),
            ],
            stdout=subprocess.PIPE,
            stderr=self._log,
            cwd=work,
            start_new_session=True,
        )
        assert self.proc.stdout is not None
        self.url = ""
        for raw in self.proc.stdout:
            if raw.startswith(b"url: "):
                self.url = raw.decode().split()[1]
            if raw.strip() == b"ready":
                break
        else:
            self.stop()
            raise RuntimeError(f"sim exited before ready: {(work / 'sim.stderr').read_text()}")
        self.start_s = time.perf_counter() - t0

    async def calls(self) -> dict[str, int]:
        """Requests the sim has served so far, by call name (``GET /_sim/calls``)."""
        import aiohttp

        token = self.inventory.with_suffix(".token").read_text().strip()
        async with (
            aiohttp.ClientSession(headers={"Authorization": f"Bearer {token}"}) as s,
            s.get(f"{self.url}/_sim/calls") as r,
        ):
            r.raise_for_status()
            body = await r.json()
        return {str(k): int(v) for k, v in body["by_call"].items()}

    def cpu_s(self) -> float:
        """utime + stime of the sim process so far."""
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rpartition(")")[2].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def hwm_mib(self) -> float:
        m = re.search(r"VmHWM:\s+(\d+) kB", Path(f"/proc/{self.proc.pid}/status").read_text())
        return int(m.group(1)) / 1024 if m else 0.0

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self._log.close()


# -- the release -----------------------------------------------------------------------------------
def build_release(work: Path) -> tuple[Path, Path]:
    """A signed bundle of the example app as ``app`` 2.0.0; returns (bundle, public key)."""
    from fleetgate.artifacts.bundle import build_bundle
    from fleetgate.artifacts.keys import generate_keypair, load_private_key

    key, pub = generate_keypair(work / "keys")
    src = work / "app-2.0.0"
    shutil.copytree(ROOT / "examples" / "app", src, ignore=shutil.ignore_patterns("__pycache__"))
    toml = src / "fleetgate.toml"
    text = re.sub(r'(?m)^name = ".*"$', 'name = "app"', toml.read_text(), count=1)
    toml.write_text(re.sub(r'(?m)^version = ".*"$', 'version = "2.0.0"', text, count=1))
    return build_bundle(src, load_private_key(key), work / "dist").path, pub


# -- the store -------------------------------------------------------------------------------------
def store_url(db: str, work: Path) -> tuple[str, str | None]:
    """(store URL, PostgreSQL schema to drop afterwards or None) for ``--db``."""
    if db == "sqlite":
        return f"sqlite+aiosqlite:///{work}/fg.db", None
    from sqlalchemy.engine import make_url

    url = make_url(db)
    if not url.drivername.startswith("postgres"):
        raise SystemExit(f"--db {db!r}: expected 'sqlite' or a postgresql:// URL")
    if "schema" in url.query:
        raise SystemExit(f"--db {db!r}: give no schema; each run gets a fresh bench_<random>")
    schema = f"bench_{secrets.token_hex(6)}"
    return url.update_query_dict({"schema": schema}).render_as_string(False), schema


async def drop_schema(url: str, schema: str) -> None:
    import asyncpg
    from sqlalchemy.engine import make_url

    plain = make_url(url).difference_update_query(["schema"]).set(drivername="postgresql")
    conn = await asyncpg.connect(plain.render_as_string(False), timeout=10)
    try:
        await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    finally:
        await conn.close()


def db_kind(db: str) -> str:
    return "sqlite" if db == "sqlite" else "postgresql"


def diff(after: dict[str, int], before: dict[str, int]) -> dict[str, int]:
    return {k: n - before.get(k, 0) for k, n in after.items() if n - before.get(k, 0)}


# -- one run (worker process) ----------------------------------------------------------------------
async def timed(
    res: RunResult, name: str, sim: SimProcess, coro: Awaitable[T], url: str = ""
) -> tuple[T, Timing]:
    """Run ``coro``; its wall, controller-CPU and sim-CPU seconds become ``res.phases[name]``."""
    w0, c0, s0, g0 = time.perf_counter(), time.process_time(), sim.cpu_s(), GcClock.total
    f0 = GcClock.full
    pg = res.db == "postgresql"
    pg0 = await postgres_cpu(url) if pg else {}
    th0, m0, sys0 = thread_cpu(), machine_busy_s(), os.times().system
    remote = [w for w in WRITER if hasattr(w, "cpu_s")]
    k0 = remote[0].cpu_s() if remote else 0.0
    res.running = f"{name} (started {time.strftime('%H:%M:%S')})"
    out = await coro
    res.running = ""
    t = Timing(time.perf_counter() - w0, time.process_time() - c0, sim.cpu_s() - s0)
    t.gc_s, t.gc_full_s = GcClock.total - g0, GcClock.full - f0
    t.main_cpu_s, t.store_cpu_s = split_threads(th0, thread_cpu())
    t.other_cpu_s = max(0.0, t.cpu_s - t.main_cpu_s - t.store_cpu_s)
    if pg:
        pg1 = await postgres_cpu(url)
        t.db_server_cpu_s = sum(max(0.0, v - pg0.get(i, 0.0)) for i, v in pg1.items())
    t.machine_cpu_s = machine_busy_s() - m0
    t.sys_cpu_s = os.times().system - sys0
    t.writer_cpu_s = remote[0].cpu_s() - k0 if remote else 0.0
    t.rss_mib = rss_mib()
    res.phases[name] = t
    print(f"  [{res.devices} c{res.concurrency}] {name}: {t.wall_s:.2f} s", file=sys.stderr)
    return out, t


WRITER: list[Any] = []  # the prototype writer process's sink, with --writer-process


class GcClock:
    """CPU seconds spent in cyclic garbage collection (``gc.callbacks``: ``thread_time`` at the
    start and stop of each collection, which runs in the thread that allocates)."""

    total = 0.0
    full = 0.0  # of which in full (oldest-generation) collections: they scan the whole heap
    _t0 = 0.0

    @classmethod
    def install(cls) -> None:
        import gc

        def cb(phase: str, info: dict[str, Any]) -> None:
            if phase == "start":
                cls._t0 = time.thread_time()
            else:
                spent = time.thread_time() - cls._t0
                cls.total += spent
                if info.get("generation") == 2:
                    cls.full += spent

        gc.callbacks.append(cb)


_TICK = os.sysconf("SC_CLK_TCK")


def _stat_cpu_s(stat: str) -> float:
    """utime + stime from a /proc/…/stat line (fields after the ``(comm)``)."""
    fields = stat.rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / _TICK


def thread_cpu() -> dict[int, tuple[str, float]]:
    """CPU seconds of every live thread of this process, by native id, with a role:
    ``main`` (the event loop), ``store`` (an aiosqlite connection's worker thread: aiosqlite
    names none, so it is known by its target, ``_connection_worker_thread``; or
    ``--lean-append``'s thread) or ``other``."""
    import threading

    main = threading.main_thread().native_id
    names = {t.native_id: t.name for t in threading.enumerate()}
    out: dict[int, tuple[str, float]] = {}
    for task in Path("/proc/self/task").iterdir():
        tid = int(task.name)
        try:
            cpu = _stat_cpu_s((task / "stat").read_text())
        except OSError:
            continue  # the thread ended meanwhile: its CPU falls into "other"
        name = names.get(tid, "")
        store = "_connection_worker" in name or name.startswith("lean-append")
        role = "main" if tid == main else "store" if store else "other"
        out[tid] = (role, cpu)
    return out


def split_threads(
    before: dict[int, tuple[str, float]], after: dict[int, tuple[str, float]]
) -> tuple[float, float]:
    """(main thread, store threads) CPU seconds between two ``thread_cpu`` samples; a thread
    born in between counts from zero (one that ended is lost here and lands in "other")."""
    main = store = 0.0
    for tid, (role, cpu) in after.items():
        spent = cpu - before.get(tid, (role, 0.0))[1]
        if role == "main":
            main += spent
        elif role == "store":
            store += spent
    return main, store


async def postgres_cpu(url: str) -> dict[int, float]:
    """CPU seconds so far of the PostgreSQL server processes that work for this controller, by
    pid: the backends whose client port is one of this process's connections to the server
    (``pg_stat_activity.client_port``), and the server's own background processes (WAL writer,
    checkpointer …: they work for every writer). Other clients' backends are left out — the
    machine is shared, and another session's tests may use the same server."""
    import asyncpg
    from sqlalchemy.engine import make_url

    plain = make_url(url).difference_update_query(["schema"]).set(drivername="postgresql")
    conn = await asyncpg.connect(plain.render_as_string(False), timeout=10)
    try:
        rows = await conn.fetch("SELECT pid, backend_type, client_port FROM pg_stat_activity")
    finally:
        await conn.close()
    mine = own_ports(int(plain.port or 5432))
    out: dict[int, float] = {}
    for row in rows:
        if row["backend_type"] == "client backend" and row["client_port"] not in mine:
            continue
        try:
            out[int(row["pid"])] = _stat_cpu_s(Path(f"/proc/{row['pid']}/stat").read_text())
        except OSError:
            continue
    return out


def own_ports(server_port: int) -> set[int]:
    """Local TCP ports of this process's connections to ``server_port`` (/proc/net/tcp*, the
    sockets matched to this process's descriptors by inode)."""
    inodes: set[str] = set()
    for fd in Path("/proc/self/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    ports: set[int] = set()
    for table in ("/proc/self/net/tcp", "/proc/self/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            cols = line.split()
            if cols[9] in inodes and int(cols[2].rpartition(":")[2], 16) == server_port:
                ports.add(int(cols[1].rpartition(":")[2], 16))
    return ports


def machine_busy_s() -> float:
    """Busy CPU seconds of the whole machine since boot, all CPUs (/proc/stat: everything but
    idle and iowait), so a phase's figure covers the controller, the sim, the database and
    whatever else ran."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:8]]
    return (sum(fields) - fields[3] - fields[4]) / _TICK


def rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kB on Linux


async def drive_run(res: RunResult, sim: SimProcess, work: Path, rollback: bool, db: str) -> None:
    url, schema = store_url(db, work)
    try:
        await _drive_run(res, sim, work, rollback, url)
    finally:
        while WRITER:
            await WRITER.pop().close()
        if schema is not None:
            await drop_schema(url, schema)


def use_sink(ctl: Any, url: str, writer_process: bool, lean: bool) -> Any:
    """Make ``ctl``'s recorders append through a prototype sink (issue 12 item 5) instead of
    ``ctl.store``: ``writer_child.RemoteSink`` (a writer process; ``lean``: it writes with
    ``bench/lean_append.py``) or, ``lean`` alone, ``lean_append.LeanSqliteSink`` in this process.
    Returns the sink (a RemoteSink is not started yet)."""
    from lean_append import LeanSqliteSink
    from writer_child import RemoteSink

    if not url.startswith("sqlite") and lean:
        raise SystemExit("--lean-append: SQLite only")
    sink: Any = (
        RemoteSink(url, lean=lean) if writer_process else LeanSqliteSink(url.partition(":///")[2])
    )
    ctl.event_sink = sink
    return sink


async def _drive_run(res: RunResult, sim: SimProcess, work: Path, rollback: bool, url: str) -> None:
    from fleetgate.config.policy_file import policy_from_dict
    from fleetgate.core.state import Phase as P
    from fleetgate.engine.service import Controller, ControllerConfig
    from fleetgate.store import Store
    from fleetgate.transports.http import HttpTransport
    from fleetgate.transports.tokens import TokenSource

    bundle, pub = build_release(work)
    policy = policy_from_dict(POLICY, "bench policy")
    c = res.concurrency
    # The inventory is imported by its own process, as an operator's `registry import` is:
    # parsing a 100,000-device fleet.yaml peaks at ~1.7 GiB, which is not the controller's.
    imported = subprocess.run(
        [sys.executable, "-m", "fleetgate", "--db", url, "registry", "import", str(sim.inventory)],
        cwd=work,
        capture_output=True,
        text=True,
    )
    if imported.returncode != 0:
        raise RuntimeError(f"registry import failed: {imported.stderr.strip()}")
    async with (
        Store.open(url) as store,
        HttpTransport(TokenSource(), concurrency=c) as transport,
    ):
        ctl = Controller(store, transport, ControllerConfig(work / "blobs", pub, concurrency=c))
        if res.writer_process or res.lean_append:
            sink = use_sink(ctl, url, res.writer_process, res.lean_append)
            WRITER.append(sink)
            if res.writer_process:
                await sink.start()
        seen = (await store.chain_head())[0]

        async def count() -> int:
            """Events appended since the last call: the chain head's seq moves by exactly that
            (this store holds one deployment), without loading the log into this process."""
            nonlocal seen
            head = (await store.chain_head())[0]
            new, seen = head - seen, head
            return new

        calls0 = await sim.calls()
        start = ctl.start(bundle, policy, policy_doc=POLICY, actor="bench")
        dep, ph = await timed(res, "start", sim, start, url)
        ph.events = await count()
        state, ph = await timed(res, "to_approval", sim, ctl.drive(dep), url)
        ph.events = await count()
        calls1 = await sim.calls()
        res.calls["deploy"] = diff(calls1, calls0)
        if state.phase is not P.AWAITING_APPROVAL:
            res.outcome = f"{state.phase.value} before approval: {state.halt_reason}"
            return
        approve = ctl.record_human(dep, "approval.granted", "bench", comment="benchmark")
        _, ph = await timed(res, "approval", sim, approve, url)
        ph.events = await count()
        calls2 = await sim.calls()
        res.calls["approval"] = diff(calls2, calls1)  # the human's step: not the deployment's
        state, ph = await timed(res, "rollout", sim, ctl.drive(dep), url)
        ph.events = await count()
        calls3 = await sim.calls()
        for k, n in diff(calls3, calls2).items():
            res.calls["deploy"][k] = res.calls["deploy"].get(k, 0) + n
        res.outcome = state.phase.value
        res.controller_rss_deploy_mib = rss_mib()
        # What a resumed controller pays before it acts: read the deployment's whole log and
        # fold it. (Before issue 12 every drive/record_human paid it too; since then the
        # controller keeps its fold, so it is dropped here to measure a fold from the start.)
        views = getattr(ctl, "views", None)
        if views is not None:
            views.drop(dep)
        _, ph = await timed(res, "load+fold", sim, ctl.state(dep), url)
        ph.events = seen  # the log's length (this store holds one deployment)
        if state.phase is P.COMPLETE and rollback:

            async def roll_back() -> Any:
                await ctl.record_human(
                    dep, "rollback.requested", "bench", devices=[], reason="bench"
                )
                return await ctl.drive(dep)

            calls4 = await sim.calls()  # load+fold calls no agent; read again all the same
            state, ph = await timed(res, "rollback", sim, roll_back(), url)
            ph.events = await count()
            res.calls["rollback"] = diff(await sim.calls(), calls4)
            back = sum(1 for s in state.devices.values() if s.value == "rolled_back")
            res.rollback_outcome = f"{state.phase.value} ({back}/{len(state.devices)} rolled back)"


def worker(
    devices: int,
    concurrency: int,
    rollback: bool,
    profile: Path | None,
    db: str,
    writer_process: bool = False,
    lean_append: bool = False,
) -> RunResult:
    res = RunResult(devices, concurrency, db=db_kind(db), writer_process=writer_process)
    res.lean_append = lean_append
    with tempfile.TemporaryDirectory(prefix="fg-engine-bench-") as tmp:
        work = Path(tmp)
        sim = SimProcess(devices, work)
        res.sim_start_s = sim.start_s
        prof = None
        GcClock.install()
        try:
            if profile is not None:
                import cProfile

                prof = cProfile.Profile()
                prof.enable()
            asyncio.run(drive_run(res, sim, work, rollback, db))
        except KeyboardInterrupt:
            res.error = f"interrupted (SIGINT/SIGTERM) during {res.running or 'set-up'}"
        except Exception as exc:  # a benchmark reports what broke instead of a traceback only
            res.error = f"{type(exc).__name__}: {exc}"
            import traceback

            traceback.print_exc()
        finally:
            if prof is not None and profile is not None:
                prof.disable()
                profile.mkdir(parents=True, exist_ok=True)
                out = profile / f"engine-{devices}-c{concurrency}.prof"
                prof.dump_stats(out)
                import pstats

                pstats.Stats(str(out), stream=sys.stderr).sort_stats("tottime").print_stats(25)
            res.sim_hwm_mib = sim.hwm_mib() if sim.proc.poll() is None else 0.0
            sim.stop()
    res.controller_rss_mib = rss_mib()
    return res


# -- the parent: one worker per run, then the table ----------------------------------------------
def run_worker(n: int, c: int, args: argparse.Namespace) -> RunResult:
    cmd = [sys.executable, __file__, "--worker", str(n), str(c), "--db", args.db]
    if args.skip_rollback:
        cmd.append("--skip-rollback")
    if args.writer_process:
        cmd.append("--writer-process")
    if args.lean_append:
        cmd.append("--lean-append")
    if args.profile:
        cmd += ["--profile", str(args.profile)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, cwd=ROOT, text=True)
    try:
        stdout, _ = proc.communicate(timeout=args.timeout)
    except subprocess.TimeoutExpired:
        # SIGTERM: the worker stops its sim and still prints the phases it finished.
        os.kill(proc.pid, signal.SIGTERM)
        stdout, _ = proc.communicate()
    last = (stdout.strip().splitlines() or ["{}"])[-1]
    try:
        doc = json.loads(last)
    except ValueError:
        return RunResult(
            n, c, error=f"worker exit {proc.returncode}: {last[:200]}", db=db_kind(args.db)
        )
    phases = {k: Timing(**v) for k, v in doc.pop("phases").items()}
    return RunResult(**doc, phases=phases)


def report(r: RunResult) -> None:
    print(f"\n== {r.devices:,} devices, concurrency {r.concurrency} ==")
    if r.error:
        print(f"   ERROR: {r.error}")
    print(f"   outcome: {r.outcome}   (sim ready in {r.sim_start_s:.1f} s)")
    ph = r.phases
    rows: list[tuple[str, Timing]] = [
        (k, ph[k]) for k in ("start", "to_approval", "approval", "rollout") if k in ph
    ]
    dep = [ph[k] for k in ("start", "to_approval", "rollout") if k in ph]
    if "rollout" in ph:
        rows.append(
            (
                "deployment",
                Timing(
                    sum(p.wall_s for p in dep),
                    sum(p.cpu_s for p in dep),
                    sum(p.sim_cpu_s for p in dep),
                    sum(p.events for p in dep),
                    max(p.rss_mib for p in dep),
                ),
            )
        )
    rows += [(k, ph[k]) for k in ("load+fold", "rollback") if k in ph]
    head = f"{'phase':<12}{'wall s':>9}{'ctl CPU s':>11}{'sim CPU s':>11}{'events':>9}{'ev/s':>9}"
    print(f"   {head}{'ctl RSS MiB':>13}")
    for name, p in rows:
        rate = p.events / p.wall_s if p.wall_s > 0 else 0.0
        print(
            f"   {name:<12}{p.wall_s:>9.2f}{p.cpu_s:>11.2f}{p.sim_cpu_s:>11.2f}"
            f"{p.events:>9,}{rate:>9,.0f}{p.rss_mib:>13.0f}"
        )
    if "rollback" in ph:
        met = "met" if ph["rollback"].wall_s < ROLLBACK_LIMIT_S else "NOT met"
        print(
            f"   rollback: {r.rollback_outcome}; spec < {ROLLBACK_LIMIT_S:.0f} s: {met} "
            f"({ph['rollback'].wall_s:.1f} s)"
        )
    print(
        f"   peak RSS: controller {r.controller_rss_deploy_mib:.0f} MiB after the deployment, "
        f"{r.controller_rss_mib:.0f} MiB at the end; sim {r.sim_hwm_mib:.0f} MiB (VmHWM)"
    )
    print("   (ctl RSS = the controller's peak RSS so far, at the end of that phase)")
    summary = figures(r)
    for kind in ("deploy", "rollback"):
        if kind in r.calls:
            by = ", ".join(f"{k} {n / r.devices:.2f}" for k, n in sorted(r.calls[kind].items()))
            x = summary[f"ctl_per_call_x_floor_{kind}"]
            print(
                f"   agent calls/device, {kind}: {summary[f'agent_calls_{kind}']:.2f} ({by}); "
                f"controller CPU per call {summary[f'ctl_us_per_call_{kind}']:.0f} µs"
                + (f" ({x:.1f}x the floor)" if x else "")
            )
    for kind in ("deploy", "rollback"):
        if summary[f"{kind}_cpu_s"]:
            print(
                f"   controller CPU by thread, {kind}: event loop "
                f"{summary[f'main_thread_cpu_{kind}_s']:.2f} s, store (aiosqlite) "
                f"{summary[f'store_thread_cpu_{kind}_s']:.2f} s, other "
                f"{summary[f'other_thread_cpu_{kind}_s']:.2f} s; PostgreSQL server "
                f"{summary[f'db_server_cpu_{kind}_s']:.2f} s; writer process "
                f"{summary[f'writer_cpu_{kind}_s']:.2f} s; machine busy "
                f"{summary[f'machine_cpu_{kind}_s']:.2f} CPU s"
            )
    print(json.dumps(summary), flush=True)


# JSON key prefix -> per-phase figure: each gives ``<prefix>_deploy_s`` (summed over the
# deployment's phases) and ``<prefix>_rollback_s``.
PER_PHASE = {
    "sim_cpu": "sim_cpu_s",
    "gc": "gc_s",
    "gc_full": "gc_full_s",
    # issue 12 item 5: the controller's CPU by thread, the database server's, the machine's
    "main_thread_cpu": "main_cpu_s",
    "store_thread_cpu": "store_cpu_s",
    "other_thread_cpu": "other_cpu_s",
    "db_server_cpu": "db_server_cpu_s",
    "machine_cpu": "machine_cpu_s",
    # the controller's kernel share (page-cache reads and WAL writes, sends, epoll)
    "sys_cpu": "sys_cpu_s",
    "writer_cpu": "writer_cpu_s",
}


def per_phase(dep: list[Any], rb: Any) -> dict[str, float]:
    out: dict[str, float] = {}
    for key, attr in PER_PHASE.items():
        out[f"{key}_deploy_s"] = round(sum(getattr(p, attr) for p in dep), 3)
        out[f"{key}_rollback_s"] = round(getattr(rb, attr), 3)
    return out


def figures(r: RunResult) -> dict[str, Any]:
    """The run's machine-readable line (module docstring: the keys scripts rely on)."""
    ph = r.phases
    dep = [ph[k] for k in ("start", "to_approval", "rollout") if k in ph]
    deploy_cpu = sum(p.cpu_s for p in dep)
    rb = ph.get("rollback", Timing(0.0, 0.0))
    n_dep = sum(r.calls.get("deploy", {}).values())
    n_rb = sum(r.calls.get("rollback", {}).values())
    return {
        "devices": r.devices,
        "deploy_cpu_s": round(deploy_cpu, 3),
        "deploy_wall_s": round(sum(p.wall_s for p in dep), 3),
        "rollback_cpu_s": round(rb.cpu_s, 3),
        "rollback_wall_s": round(rb.wall_s, 3),
        "agent_calls_deploy": round(n_dep / r.devices, 3),
        "agent_calls_rollback": round(n_rb / r.devices, 3),
        "peak_rss_mib": round(r.controller_rss_mib, 1),
        "ctl_us_per_call_deploy": round(deploy_cpu / n_dep * 1e6, 1) if n_dep else None,
        "ctl_us_per_call_rollback": round(rb.cpu_s / n_rb * 1e6, 1) if n_rb else None,
        "floor_us_per_call": round(r.floor_us, 1) if r.floor_us else None,
        "ctl_per_call_x_floor_deploy": ratio(deploy_cpu, n_dep, r.floor_us),
        "ctl_per_call_x_floor_rollback": ratio(rb.cpu_s, n_rb, r.floor_us),
        "calls_deploy": r.calls.get("deploy", {}),
        "calls_rollback": r.calls.get("rollback", {}),
        "concurrency": r.concurrency,
        "db": r.db,
        "outcome": r.outcome,
        "rollback_outcome": r.rollback_outcome,
        **per_phase(dep, rb),
        "writer_process": r.writer_process,
        "lean_append": r.lean_append,
        "events_deploy": sum(p.events for p in dep),
        "events_rollback": rb.events,
        "load_avg_1m": round(os.getloadavg()[0], 2),
        "error": r.error or None,
    }


def ratio(cpu_s: float, calls: int, floor_us: float | None) -> float | None:
    """Controller CPU per agent call over the floor (issue 12: at most 3)."""
    if not calls or not floor_us:
        return None
    return round(cpu_s / calls * 1e6 / floor_us, 2)


def revision() -> str:
    """The commit measured (``+dirty`` when src/ has uncommitted changes)."""
    try:
        rev = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
        ).stdout.strip()
        dirty = subprocess.run(["git", "diff", "--quiet", "HEAD", "--", "src"], cwd=ROOT)
    except OSError:
        return "unknown revision"
    return (rev or "unknown revision") + ("+dirty" if dirty.returncode else "")


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    ap.add_argument("--devices", type=int, nargs="+", default=[1000, 10_000])
    ap.add_argument("--concurrency", type=int, nargs="+", default=[200])
    ap.add_argument(
        "--db",
        default="sqlite",
        help="'sqlite' (a file per run) or postgresql[+asyncpg]://USER@HOST/DB (fresh schema)",
    )
    ap.add_argument("--skip-rollback", action="store_true")
    ap.add_argument(
        "--writer-process",
        action="store_true",
        help="append events through a prototype store writer in a second process "
        "(bench/writer_child.py; issue 12 item 5)",
    )
    ap.add_argument(
        "--lean-append",
        action="store_true",
        help="SQLite: append events with sqlite3 in one thread hop per batch "
        "(bench/lean_append.py; the store's own append since ADR 0019); with --writer-process, "
        "in the writer process",
    )
    ap.add_argument("--profile", type=Path, default=None, metavar="DIR")
    ap.add_argument(
        "--floor",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="measure bench/floor_bench.py's floor first (~10 s) and report each run's "
        "controller CPU per call as a multiple of it",
    )
    ap.add_argument(
        "--timeout", type=float, default=3600.0, help="stop a run after this many seconds"
    )
    ap.add_argument("--worker", type=int, nargs=2, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.db != "sqlite":
        store_url(args.db, Path("."))  # a bad --db fails here, before any sim starts
    if args.worker:
        n, c = args.worker
        signal.signal(signal.SIGTERM, _interrupt)
        res = worker(
            n,
            c,
            not args.skip_rollback,
            args.profile,
            args.db,
            args.writer_process,
            args.lean_append,
        )
        print(json.dumps(asdict(res)), flush=True)
        return
    print(
        f"fleetgate engine bench ({revision()}): {os.cpu_count()} CPUs, "
        f"Python {sys.version.split()[0]}, load average {os.getloadavg()[0]:.1f}; "
        f"sim in its own process, HttpTransport over 127.0.0.1, {db_kind(args.db)} store, "
        "zero soak"
        + (", events appended by a writer process" if args.writer_process else "")
        + (", lean sqlite3 appends" if args.lean_append else "")
    )
    floor = None
    if args.floor:
        from floor_bench import floor_us

        # The raw client's CPU per request, in this period: each run's ratio is against it.
        floor = floor_us(concurrency=max(args.concurrency))
        print(f"floor_us_per_call={floor:.1f} (bench/floor_bench.py, measured now)")
    for n in args.devices:
        for c in args.concurrency:
            res = run_worker(n, c, args)
            res.floor_us = floor
            report(res)


if __name__ == "__main__":
    main()
