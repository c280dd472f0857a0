"""Keeping a release's processes where the agent can kill all of them: a cgroup v2 directory.

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
- Under systemd, give the agent's unit ``Delegate=yes``: its subtree is then the agent's to
  manage this way (docs/agent.md "Containment").

Standard library only; every method is cheap (a few small file writes).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
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
        tag = hashlib.sha256(str(data_dir.resolve()).encode()).hexdigest()[:8]
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


def kill(path: Path, timeout_s: float = 5.0) -> bool:
    """SIGKILL everything in ``path`` and remove it; False if something survived."""
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
    try:
        path.rmdir()
    except OSError as exc:
        log.error("cgroup %s not removed: %s (pids %s)", path, exc.strerror, pids(path))
        return False
    return True
