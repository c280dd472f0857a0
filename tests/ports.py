"""Free TCP ports on 127.0.0.1 for servers the tests start in other processes.

``free_port()`` hands out a port that nothing listens on and that no other test process on
this machine was given in the last ``HOLD_S`` seconds. Binding port 0 and closing the socket
(the usual trick) is not enough once tests run in parallel (pytest-xdist workers, or another
checkout's suite on the same machine): the port is free again until the agent, broker or
controller binds it, and another worker's ``bind(0)`` or any process's outgoing ``connect()``
can take it in that gap. So the ports come from below the kernel's ephemeral range (which
``connect()`` and ``bind(0)`` draw from), and each one handed out is recorded, under an
exclusive ``flock``, in a small file in the temp dir that every test process consults.
A test may restart a server on its port: the hold covers a whole test (pytest-timeout is
300 s).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import random
import socket
import tempfile
import time
from pathlib import Path

HOLD_S = 900.0
REGISTRY = Path(tempfile.gettempdir()) / "fleetgate-test-ports.json"
LOCK = REGISTRY.with_suffix(".lock")
LOWEST = 10_000
_pick = random.SystemRandom()  # leaves the global `random` (seeded by some tests) alone


def _candidates() -> range:
    """Ports below the ephemeral range (Linux default 32768–60999)."""
    try:
        low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        low = 32768
    return range(LOWEST, max(low, LOWEST + 2_000))


def _bindable(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_port() -> int:
    ports = _candidates()
    with LOCK.open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        now = time.time()
        held: dict[str, float] = {}
        with contextlib.suppress(OSError, ValueError):
            held = {p: t for p, t in json.loads(REGISTRY.read_text()).items() if now - t < HOLD_S}
        for _ in range(1_000):
            port = _pick.choice(ports)
            if str(port) not in held and _bindable(port):
                held[str(port)] = now
                tmp = REGISTRY.with_suffix(".tmp")
                tmp.write_text(json.dumps(held))
                tmp.replace(REGISTRY)
                return port
    raise RuntimeError(f"no free port in {ports.start}-{ports.stop - 1} after 1,000 tries")
