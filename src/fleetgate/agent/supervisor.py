"""Supervising the app: a child process (default) or a systemd unit.

Contract of ``ProcessSupervisor``:
- ``start(launch)`` stops whatever runs, then runs ``launch.argv`` with cwd = the release dir in
  its own session/process group *and its own cgroup* (``agent/cgroup.py``; when the machine
  has no writable cgroup v2, the session is all there is), stdout+stderr captured line by line
  into ``logs`` (a ring buffer). The process is started through ``/bin/sh`` that waits on a
  pipe until the agent has moved it into the cgroup, then execs the release: nothing of the
  release runs outside it. With ``run_as`` the process gets that uid/gid (no supplementary
  groups). Its pid, kernel start time and cgroup go to ``<data_dir>/app.json`` (mode 0600) so
  an agent restarted after a crash can find and reap an orphan (``reap_orphan``) instead of
  fighting it for its port.
- When the app exits without being asked to, it is restarted with exponential backoff
  (0.5 s doubling to 10 s; back to 0.5 s once a run lasted 30 s). ``restarts`` counts those
  restarts since the last ``start``; ``crash_loop`` is ≥ 3 restarts within 60 s.
- ``stop()`` sends SIGTERM to the whole process group and every process of the cgroup, then
  after ``grace_s`` kills the whole cgroup (``cgroup.kill``) and the group: a child that
  called ``setsid`` dies with the rest. It never runs anything from the release (no stop
  hooks): that is what makes rollback safe when the release being left is broken.

``SystemdSupervisor`` offers the same surface over ``systemctl restart/stop/is-active UNIT``.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import logging
import os
import shutil
import signal
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from fleetgate.agent import cgroup
from fleetgate.agent.cgroup import Cgroups, SystemdScopes

Containment = Cgroups | SystemdScopes

log = logging.getLogger("fleetgate.agent")

BACKOFF_MIN_S = 0.5
BACKOFF_MAX_S = 10.0
STABLE_RUN_S = 30.0
CRASH_LOOP_RESTARTS = 3
CRASH_LOOP_WINDOW_S = 60.0
APP_FILE = "app.json"


@dataclass(frozen=True, slots=True)
class Launch:
    """Everything needed to run one release's app (already ``${APP_PORT}``-substituted)."""

    release_id: str
    cwd: Path
    argv: tuple[str, ...]
    env: Mapping[str, str]
    uid: int | None = None  # run_as: the release's user and group (None: the agent's)
    gid: int | None = None


# Started in place of the release, with the handshake pipe as stdin: waits until the agent has
# moved it into the release's cgroup (a line on the pipe), then becomes the release with stdin
# from /dev/null. EOF (the agent died first) → exit. (Stdin rather than a numbered descriptor:
# dash, a common /bin/sh, cannot redirect descriptors above 9.)
HANDSHAKE = 'read -r _ || exit 111; exec "$@" </dev/null'


def _start_ticks(pid: int) -> int | None:
    """Field 22 of /proc/<pid>/stat: tells a process apart from a later one with the same pid."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) may contain spaces and parentheses: split after the last ')'.
    rest = raw[raw.rfind(")") + 2 :].split()
    try:
        return int(rest[19])
    except (IndexError, ValueError):
        return None


def _not_executable(launch: Launch) -> str | None:
    """Why ``launch.argv[0]`` cannot be run (None: it can). Checked before the start handshake,
    whose ``/bin/sh`` would otherwise turn a missing program into a bare exit code 127."""
    if not launch.argv:
        return "empty command"
    name = launch.argv[0]
    if "/" in name:
        path = launch.cwd / name
        ok = path.is_file() and os.access(path, os.X_OK)
    else:
        ok = shutil.which(name, path=launch.env.get("PATH", os.defpath)) is not None
    return None if ok else "No such file or not executable"


async def _wait_for_scope(
    scopes: SystemdScopes, proc: asyncio.subprocess.Process, timeout_s: float = 10.0
) -> Path | None:
    """The scope systemd-run put ``proc`` in (it moves itself, then execs the handshake)."""
    deadline = time.monotonic() + timeout_s
    while proc.returncode is None and time.monotonic() < deadline:
        found = scopes.scope_of(proc.pid)
        if found is not None:
            return found
        await asyncio.sleep(0.01)
    log.error("pid %d never reached its systemd scope: process group only", proc.pid)
    return None


def _killpg(pgid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


async def reap_orphan(
    data_dir: Path, grace_s: float, cgroups: Containment | None = None
) -> int | None:
    """Kill what a previous (crashed) agent left running: every cgroup of ours (a release's
    setsid children included), the recorded one, then the recorded process group."""
    path = data_dir / APP_FILE
    if isinstance(cgroups, Cgroups):
        await asyncio.to_thread(cgroups.sweep)
    try:
        info = json.loads(path.read_text())
        pid, ticks = int(info["pid"]), int(info["start_ticks"])
    except (OSError, ValueError, KeyError, TypeError):
        path.unlink(missing_ok=True)
        return None
    path.unlink(missing_ok=True)
    recorded = info.get("cgroup")
    if cgroups is not None and isinstance(recorded, str) and cgroups.owns(Path(recorded)):
        # Whatever the leader's fate, everything still in its cgroup goes.
        log.warning("killing cgroup %s left by a previous agent", recorded)
        remove = isinstance(cgroups, Cgroups)
        await asyncio.to_thread(cgroup.kill, Path(recorded), remove=remove)
    if _start_ticks(pid) != ticks:
        return None  # gone, or the pid now belongs to someone else: leave it alone
    log.warning("reaping app process group %d left by a previous agent", pid)
    _killpg(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while _group_alive(pid) and time.monotonic() < deadline:  # noqa: ASYNC110 - polls the kernel
        await asyncio.sleep(0.05)
    _killpg(pid, signal.SIGKILL)
    return pid


class ProcessSupervisor:
    def __init__(
        self,
        data_dir: Path,
        grace_s: float = 5.0,
        log_lines: int = 1000,
        cgroups: Containment | None = None,
    ) -> None:
        self.data_dir = data_dir
        self.cgroups = cgroups
        self.cgroup: Path | None = None  # the running release's cgroup
        self.grace_s = grace_s
        self.logs: collections.deque[str] = collections.deque(maxlen=log_lines)
        self.launch: Launch | None = None
        self.restarts = 0
        self.exits = 0  # exits (expected or not) since the last start()
        self.last_exit: str | None = None
        self._restart_times: collections.deque[float] = collections.deque(maxlen=50)
        self._proc: asyncio.subprocess.Process | None = None
        self._monitor: asyncio.Task[None] | None = None
        self._stopping = False
        self._started_at = 0.0
        self._pumps: set[asyncio.Task[None]] = set()
        # Called with each line of the app's output (agent/trial.py keeps a release on trial's
        # output on disk, so a revert after the agent was killed can still report it).
        self.on_line: Callable[[str], None] | None = None

    # -- state -------------------------------------------------------------------------------
    async def is_running(self) -> bool:
        return self._proc is not None and self._proc.returncode is None

    @property
    def crash_loop(self) -> bool:
        now = time.monotonic()
        recent = [t for t in self._restart_times if now - t <= CRASH_LOOP_WINDOW_S]
        return len(recent) >= CRASH_LOOP_RESTARTS

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    # -- lifecycle -----------------------------------------------------------------------------
    async def start(self, launch: Launch) -> None:
        await self.stop()
        self.launch = launch
        self.restarts = 0
        self.exits = 0
        self.last_exit = None
        self._restart_times.clear()
        self._stopping = False
        self.logs.append(f"--- fleetgate: starting {launch.release_id}: {' '.join(launch.argv)}")
        await self._spawn()
        self._monitor = asyncio.create_task(self._supervise(), name="app-supervisor")

    async def stop(self) -> None:
        self._stopping = True
        proc = self._proc
        if proc is not None:
            _killpg(proc.pid, signal.SIGTERM)
            if self.cgroup is not None:
                cgroup.signal_all(self.cgroup, signal.SIGTERM)
            try:
                await asyncio.wait_for(proc.wait(), self.grace_s)
            except asyncio.TimeoutError:
                log.warning("app pid %d ignored SIGTERM for %.1fs: SIGKILL", proc.pid, self.grace_s)
            # The leader may be gone while children of the group live on: kill the group anyway.
            _killpg(proc.pid, signal.SIGKILL)
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(proc.wait(), 5)
        if self.cgroup is not None:
            # Everything the release started, wherever it moved in the process tree.
            remove = not isinstance(self.cgroups, SystemdScopes)  # a scope is systemd's
            if not await asyncio.to_thread(cgroup.kill, self.cgroup, remove=remove):
                log.error("cgroup %s still has processes after SIGKILL", self.cgroup)
            self.cgroup = None
        if self._monitor is not None:
            self._monitor.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._monitor
            self._monitor = None
        self._proc = None
        (self.data_dir / APP_FILE).unlink(missing_ok=True)

    async def _spawn(self) -> None:
        assert self.launch is not None
        launch = self.launch
        group: Path | None = None
        scopes = self.cgroups if isinstance(self.cgroups, SystemdScopes) else None
        if isinstance(self.cgroups, Cgroups):
            try:
                group = await asyncio.to_thread(self.cgroups.create, launch.release_id)
            except OSError as exc:
                log.error("no cgroup for %s (%s): process group only", launch.release_id, exc)
        argv: tuple[str, ...] = launch.argv
        rfd = wfd = -1
        missing = _not_executable(launch)
        if missing is not None:
            if group is not None:
                await asyncio.to_thread(cgroup.kill, group)
            self._spawn_failed(launch, missing)
            return
        if group is not None or scopes is not None:
            rfd, wfd = os.pipe()
            argv = ("/bin/sh", "-c", HANDSHAKE, launch.release_id, *argv)
            if scopes is not None:
                argv = scopes.wrap(launch.release_id, argv)
        ids: dict[str, object] = {}
        if launch.uid is not None:
            ids = {"user": launch.uid, "group": launch.gid, "extra_groups": []}
        try:
            proc = await asyncio.create_subprocess_exec(
                *argv,
                cwd=launch.cwd,
                env=dict(launch.env),
                stdin=rfd if rfd >= 0 else asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.STDOUT,
                start_new_session=True,
                **ids,  # type: ignore[arg-type]
            )
        except OSError as exc:
            for fd in (rfd, wfd):
                if fd >= 0:
                    os.close(fd)
            if group is not None:
                await asyncio.to_thread(cgroup.kill, group)
            self._spawn_failed(launch, exc.strerror or str(exc))
            return
        if scopes is not None:
            os.close(rfd)
            group = await _wait_for_scope(scopes, proc)
        elif group is not None:
            os.close(rfd)
            try:
                cgroup.enter(group, proc.pid)
            except OSError as exc:
                log.error("cannot move pid %d into %s: %s", proc.pid, group, exc)
                await asyncio.to_thread(cgroup.kill, group)
                group = None
        if wfd >= 0:
            with contextlib.suppress(OSError):
                os.write(wfd, b"go\n")  # the release may exec now
            os.close(wfd)
        self.cgroup = group
        self._proc = proc
        self._started_at = time.monotonic()
        info = {
            "pid": proc.pid,
            "start_ticks": _start_ticks(proc.pid),
            "release": launch.release_id,
            "cgroup": None if group is None else str(group),
        }
        # Tiny file, written once per start; a stale one is checked by start time on reap.
        try:
            fd = os.open(self.data_dir / APP_FILE, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as fh:
                fh.write(json.dumps(info))
        except OSError as exc:  # a full disk: the app runs all the same (the cgroup sweep
            log.error("could not write %s: %s", APP_FILE, exc)  # still finds it after a crash)
        pump = asyncio.create_task(self._pump(proc), name="app-output")
        self._pumps.add(pump)
        pump.add_done_callback(self._pumps.discard)

    def _spawn_failed(self, launch: Launch, why: str) -> None:
        self._proc = None
        self.exits += 1
        self.last_exit = f"cannot start {launch.argv[0]!r}: {why}"
        self.logs.append(f"--- fleetgate: {self.last_exit}")

    async def _pump(self, proc: asyncio.subprocess.Process) -> None:
        assert proc.stdout is not None
        while True:
            try:
                line = await proc.stdout.readline()
            except (ValueError, OSError):  # a line longer than the stream limit
                continue
            if not line:
                return
            text = line.decode("utf-8", "replace").rstrip("\n")
            self.logs.append(text)
            if self.on_line is not None:
                self.on_line(text)

    async def _supervise(self) -> None:
        backoff = BACKOFF_MIN_S
        while not self._stopping:
            proc = self._proc
            if proc is not None:
                code = await proc.wait()
                if self._stopping:
                    return
                self.exits += 1
                self.last_exit = (
                    f"app exited with code {code}"
                    if code >= 0
                    else f"app killed by signal {signal.Signals(-code).name}"
                )
                self.logs.append(f"--- fleetgate: {self.last_exit}")
                if time.monotonic() - self._started_at >= STABLE_RUN_S:
                    backoff = BACKOFF_MIN_S
            log.info("app %s: restarting in %.1fs", self.last_exit, backoff)
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, BACKOFF_MAX_S)
            if self._stopping:
                return
            self.restarts += 1
            self._restart_times.append(time.monotonic())
            await self._spawn()


class SystemdSupervisor:
    """The app is a systemd unit whose ExecStart runs ``<data_dir>/current/...``."""

    def __init__(self, unit: str, systemctl: str = "systemctl") -> None:
        self.unit = unit
        self.systemctl = systemctl
        self.logs: collections.deque[str] = collections.deque(maxlen=200)
        self.launch: Launch | None = None
        self.restarts = 0
        self.exits = 0
        self.last_exit: str | None = None
        self.crash_loop = False
        self.pid: int | None = None

    async def _run(self, *args: str) -> tuple[int, str]:
        proc = await asyncio.create_subprocess_exec(
            self.systemctl,
            *args,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        out, _ = await proc.communicate()
        text = out.decode("utf-8", "replace").strip()
        if text:
            self.logs.append(f"--- systemctl {' '.join(args)}: {text}")
        return proc.returncode or 0, text

    async def is_running(self) -> bool:
        code, _ = await self._run("is-active", "--quiet", self.unit)
        return code == 0

    async def start(self, launch: Launch) -> None:
        self.launch = launch
        self.exits = 0
        self.last_exit = None
        code, text = await self._run("restart", self.unit)
        if code != 0:
            self.exits += 1
            self.last_exit = f"systemctl restart {self.unit} failed ({code}): {text}"

    async def stop(self) -> None:
        await self._run("stop", self.unit)


async def run_oneshot(launch: Launch, timeout_s: float) -> tuple[int | None, list[str]]:
    """Run a ``config`` release's reload command once; returns (exit code or None, output)."""
    try:
        proc = await asyncio.create_subprocess_exec(
            *launch.argv,
            cwd=launch.cwd,
            env=dict(launch.env),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            start_new_session=True,
        )
    except OSError as exc:
        return None, [f"cannot start {launch.argv[0]!r}: {exc.strerror or exc}"]
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), timeout_s)
    except asyncio.TimeoutError:
        _killpg(proc.pid, signal.SIGKILL)
        await proc.wait()
        return None, [f"reload command timed out after {timeout_s:g}s"]
    return proc.returncode, out.decode("utf-8", "replace").splitlines()
