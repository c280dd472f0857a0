"""Real Mosquitto brokers for the MQTT tests.

``OwnBroker`` runs ``/usr/sbin/mosquitto`` on a free 127.0.0.1 port with a generated password
file and ACL (transports/mosquitto_auth.py), ``persistence false``, and is killed by pid at
``stop()``; ``restart(sig)`` kills it (SIGTERM or SIGKILL) and starts it again on the same
port. ``SYSTEM_BROKER`` is the machine's Mosquitto on 127.0.0.1:1883 (anonymous, open ACL):
tests there use unique device ids and clear what they retained.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import time
import uuid
from pathlib import Path

from fleetgate.transports.mosquitto_auth import write_mosquitto_config
from ports import free_port

MOSQUITTO = "/usr/sbin/mosquitto"
SYSTEM_BROKER = "mqtt://127.0.0.1:1883"
CONTROLLER = "fleetgate-controller"


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def accepts(port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
        return True
    return False


class OwnBroker:
    def __init__(self, workdir: Path, devices: list[str]) -> None:
        self.workdir = workdir
        self.port = free_port()
        written = write_mosquitto_config(
            workdir, CONTROLLER, dict.fromkeys(devices), listener=f"{self.port} 127.0.0.1"
        )
        # Run as whoever runs the tests (root in CI: no drop to a `mosquitto` user that
        # could not read the 0600 files), no persistence: a restart forgets everything.
        with written.conf.open("a") as fh:
            fh.write(f"user {os.environ.get('USER') or 'root'}\npersistence false\n")
        self.conf = written.conf
        self.creds = written.credentials
        self.url = f"mqtt://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    def password(self, user: str) -> str:
        return (self.creds / f"{user}.password").read_text().strip()

    def start(self) -> OwnBroker:
        self.starts += 1
        log = (self.workdir / f"mosquitto-{self.starts}.log").open("wb")
        self.proc = subprocess.Popen(
            [MOSQUITTO, "-c", str(self.conf)], stdout=log, stderr=subprocess.STDOUT
        )
        log.close()
        deadline = time.monotonic() + 10
        while not accepts(self.port):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"mosquitto did not start:\n{self.log_text()}")
            time.sleep(0.02)
        return self

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
            self.proc.wait(10)

    def restart(self, sig: int = signal.SIGKILL) -> None:
        self.kill(sig)
        self.start()

    def stop(self) -> None:
        self.kill(signal.SIGKILL)

    def log_text(self) -> str:
        return "\n".join(
            p.read_text(errors="replace") for p in self.workdir.glob("mosquitto-*.log")
        )


async def clear_retained(broker: str, *topics: str) -> None:
    """Empty retained messages (a status left on the system broker by a test)."""
    import aiomqtt

    from fleetgate.core.mqttwire import parse_broker

    address, _ = parse_broker(broker)
    async with aiomqtt.Client(
        address.host, address.port, protocol=aiomqtt.ProtocolVersion.V5
    ) as client:
        for topic in topics:
            await client.publish(topic, b"", qos=1, retain=True)


async def eventually(predicate: object, timeout: float = 20.0, what: object = "condition") -> None:
    """Poll ``predicate``; ``what`` (a string, or a callable giving one at failure time, e.g.
    a log) names what was awaited."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if callable(predicate) and predicate():
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what() if callable(what) else what}")
