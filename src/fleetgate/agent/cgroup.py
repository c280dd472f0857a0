"""Keeping a release's processes where the agent can kill all of them: a cgroup (a systemd
scope or a cgroup v2 directory).

A process group or a session is not a container: a child that calls ``setsid()`` (or
``setpgid``) leaves it, and survives a rollback that kills the group. A cgroup cannot be left
without privileges the release does not have, and ``cgroup.kill`` kills every process in it at
once (forks in flight included).

Contract:
- ``Cgroups.detect(data_dir)``: None when this machine offers no writable cgroup v2 hierarchy
  (no ``cgroup2`` mount, a read-only one, or no permission to create a child of the agent's own
  cgroup); the supervisor then falls back to killing the process group and the session.
- ``create(release_id)`` makes ``<agent's cgroup>/fg-<tag>-<release_id>`` (``tag`` hashes the
  data dir, so several agents on one machine never touch each other's releases). Processes are
  moved in with ``enter(path, pid)`` *before* they exec the release (the supervisor's start
  handshake), so not even the release's first instruction runs outside it.
- ``kill(path)``: ``cgroup.kill`` where the kernel has it (5.14+), else freeze, SIGKILL every pid
  in ``cgroup.procs``, thaw; then wait until the cgroup is empty and remove it. ``signal_all``
  sends a signal (SIGTERM for a graceful stop) to every process in it.
- ``sweep()`` kills and removes every ``fg-<tag>-*`` cgroup: what an agent that crashed left.
- ``SystemdScopes``: on a machine that runs systemd (``/run/systemd/system``) with
  ``systemd-run`` available and an agent running as root (probed once at start-up with
  ``systemd-run --scope /bin/true``), each start is wrapped in ``systemd-run --scope --unit
  fg-<tag>-<release>-<n>``: systemd creates the cgroup (a transient scope unit, visible to
  ``systemctl``) and moves the process in before it execs the release; the supervisor finds
  the scope's cgroup in ``/proc/<pid>/cgroup`` and kills it the same way (``cgroup.kill``),
  leaving the directory to systemd (``--collect`` removes the unit once it is empty).
- ``choose(mode, data_dir, systemd_run)``: ``auto`` picks a systemd scope, else a cgroup
  directory, else None (the process group); ``systemd-scope`` / ``cgroup`` force one (None when
  it is not available here); ``process-group`` is None.

Standard library only; every method is cheap (a few small file writes).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import shutil
import signal
import time
from pathlib import Path

log = logging.getLogger("fleetgate.agent")

PREFIX = "fg-"


def cgroup2_mount(mountinfo: str | None = None) -> Path | None:
    """Where the cgroup v2 hierarchy is mounted (``/sys/fs/cgroup`` on a unified system,
    ``/sys/fs/cgroup/unified`` on a hybrid one), from ``/proc/self/mountinfo``."""
    if mountinfo is None:
        try:
            mountinfo = Path("/proc/self/mountinfo").read_text()
        except OSError:
            return None
    for line in mountinfo.splitlines():
        left, sep, right = line.partition(" - ")
        if sep and right.split(" ", 1)[0] == "cgroup2":
            fields = left.split()
            if len(fields) >= 5:
                return Path(fields[4])
    return None


def own_cgroup(text: str | None = None) -> str | None:
    """This process's cgroup v2 path (the ``0::`` line of ``/proc/self/cgroup``)."""
    if text is None:
        try:
            text = Path("/proc/self/cgroup").read_text()
        except OSError:
            return None
    for line in text.splitlines():
        if line.startswith("0::"):
            return line[3:].strip() or "/"
    return None


class Cgroups:
    def __init__(self, parent: Path, tag: str) -> None:
        self.parent = parent  # the agent's own cgroup directory
        self.tag = tag

    @classmethod
    def detect(cls, data_dir: Path) -> Cgroups | None:
        mount, own = cgroup2_mount(), own_cgroup()
        if mount is None or own is None:
            return None
        parent = mount / own.lstrip("/")
        tag = _tag(data_dir)
        probe = parent / f"{PREFIX}{tag}-probe-{os.getpid()}"
        try:
            probe.mkdir()
            writable = os.access(probe / "cgroup.procs", os.W_OK)
        except OSError:
            return None
        finally:
            with contextlib.suppress(OSError):
                probe.rmdir()
        return cls(parent, tag) if writable else None

    def path_for(self, release_id: str) -> Path:
        return self.parent / f"{PREFIX}{self.tag}-{release_id}"

    def owns(self, path: Path) -> bool:
        """A recorded path is ours: a direct child with our prefix (app.json is not trusted
        to name just any cgroup)."""
        return path.parent == self.parent and path.name.startswith(f"{PREFIX}{self.tag}-")

    def create(self, release_id: str) -> Path:
        path = self.path_for(release_id)
        if path.exists():
            kill(path)  # left over from an earlier run of the same release
        path.mkdir()
        return path

    def sweep(self) -> list[Path]:
        """Kill and remove every cgroup of ours (a crashed agent's releases)."""
        found = []
        with contextlib.suppress(OSError):
            for path in self.parent.iterdir():
                if path.is_dir() and self.owns(path):
                    found.append(path)
        for path in found:
            if pids(path):
                log.warning("killing cgroup %s left by a previous agent", path.name)
            kill(path)
        return found


class SystemdScopes:
    """Releases in transient systemd scope units (see the module docstring)."""

    def __init__(self, mount: Path, own: str, tag: str, systemd_run: str) -> None:
        self.mount = mount
        self.own = own  # the agent's cgroup: a started process has left it once it is in scope
        self.tag = tag
        self.systemd_run = systemd_run
        self._n = 0

    @classmethod
    def detect(
        cls, data_dir: Path, systemd_run: str, *, probe: bool = True
    ) -> SystemdScopes | None:
        """``probe``: only when systemd is PID 1, the agent is root (a system scope needs it:
        an agent under ``DynamicUser`` gets "access denied") and one ``systemd-run --scope
        /bin/true`` works; without it (``containment = "systemd-scope"``) the caller insists."""
        mount, own = cgroup2_mount(), own_cgroup()
        if mount is None or own is None or shutil.which(systemd_run) is None:
            return None
        if probe and not (
            Path("/run/systemd/system").is_dir() and os.geteuid() == 0 and _scope_works(systemd_run)
        ):
            return None
        return cls(mount, own, _tag(data_dir), systemd_run)

    def wrap(self, release_id: str, argv: tuple[str, ...]) -> tuple[str, ...]:
        self._n += 1
        unit = f"{PREFIX}{self.tag}-{release_id}-{os.getpid()}-{self._n}"
        return (self.systemd_run, "--scope", "--quiet", "--collect", f"--unit={unit}", "--", *argv)

    def owns(self, path: Path) -> bool:
        return (
            path.is_relative_to(self.mount)
            and path.name.startswith(f"{PREFIX}{self.tag}-")
            and path.name.endswith(".scope")
        )

    def scope_of(self, pid: int) -> Path | None:
        """The cgroup of ``pid`` once systemd has moved it out of the agent's, else None."""
        try:
            path = own_cgroup(Path(f"/proc/{pid}/cgroup").read_text())
        except OSError:
            return None
        if path is None or path == self.own:
            return None
        found = self.mount / path.lstrip("/")
        return found if self.owns(found) else None


def _scope_works(systemd_run: str) -> bool:
    import subprocess

    try:
        done = subprocess.run(
            [systemd_run, "--scope", "--quiet", "--collect", "--", "/bin/true"],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=10,
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    if done.returncode != 0:
        log.warning("systemd-run --scope does not work here: %s", done.stderr.decode()[-200:])
    return done.returncode == 0


def _tag(data_dir: Path) -> str:
    return hashlib.sha256(str(data_dir.resolve()).encode()).hexdigest()[:8]


def choose(mode: str, data_dir: Path, systemd_run: str) -> Cgroups | SystemdScopes | None:
    if mode == "process-group":
        return None
    if not os.access("/bin/sh", os.X_OK):  # the start handshake needs it
        log.error("no /bin/sh: releases cannot be started inside a cgroup")
        return None
    if mode in ("auto", "systemd-scope"):
        scopes = SystemdScopes.detect(data_dir, systemd_run, probe=mode == "auto")
        if scopes is not None or mode == "systemd-scope":
            return scopes
    return Cgroups.detect(data_dir)


def enter(path: Path, pid: int) -> None:
    (path / "cgroup.procs").write_text(str(pid))


def pids(path: Path) -> list[int]:
    try:
        return [int(x) for x in (path / "cgroup.procs").read_text().split()]
    except (OSError, ValueError):
        return []


def populated(path: Path) -> bool:
    try:
        for line in (path / "cgroup.events").read_text().splitlines():
            key, _, value = line.partition(" ")
            if key == "populated":
                return value.strip() == "1"
    except OSError:
        return bool(pids(path))
    return bool(pids(path))


def signal_all(path: Path, sig: int) -> None:
    for pid in pids(path):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, sig)


def kill(path: Path, timeout_s: float = 5.0, *, remove: bool = True) -> bool:
    """SIGKILL everything in ``path`` and (``remove``) remove it; False if something survived.
    A systemd scope's directory is systemd's to remove."""
    if not path.exists():
        return True
    killer = path / "cgroup.kill"
    try:
        killer.write_text("1")
    except OSError:
        # Kernels before 5.14: freeze so nothing forks while we kill, then thaw so the
        # SIGKILLs are delivered.
        freeze = path / "cgroup.freeze"
        with contextlib.suppress(OSError):
            freeze.write_text("1")
        signal_all(path, signal.SIGKILL)
        with contextlib.suppress(OSError):
            freeze.write_text("0")
    deadline = time.monotonic() + timeout_s
    while populated(path) and time.monotonic() < deadline:
        signal_all(path, signal.SIGKILL)
        time.sleep(0.01)
    if not remove:
        return not populated(path)
    try:
        path.rmdir()
    except OSError as exc:
        log.error("cgroup %s not removed: %s (pids %s)", path, exc.strerror, pids(path))
        return False
    return True
