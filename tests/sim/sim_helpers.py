"""Helpers shared by the simulator and transport tests (imported by both conftests).

``make_manifest`` builds the manifest JSON a controller would send in ``stage`` (the simulator
does not fetch bytes, so no bundle is needed); ``open_channel`` gives a fleet and a transport to
it either over real loopback HTTP (``VirtualFleet`` + ``HttpTransport``), in memory
(``SimFleet`` + ``MemoryTransport``), or through the local Mosquitto (``MqttFleet`` +
``HttpTransport``, whose router sends ``mqtt://`` devices to its ``MqttChannel``), so one test
body checks several front ends.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

from fleetgate.core.manifest import canonical_manifest
from fleetgate.core.model import Arch, ArtifactKind, Manifest, Requirements, RunSpec
from fleetgate.sim.fleet import SimFleet
from fleetgate.sim.fleetspec import FleetSpec
from fleetgate.sim.server import VirtualFleet
from fleetgate.transports.base import CallTimeouts
from fleetgate.transports.client import DeviceClient
from fleetgate.transports.http import HttpTransport
from fleetgate.transports.memory import MemoryTransport
from fleetgate.transports.tokens import TokenSource

TOKEN = "sim-test-token"
BROKER = "mqtt://127.0.0.1:1883"
BASE = "app-1.0.0-00000000"


def make_manifest(
    version: str = "2.0.0",
    *,
    name: str = "app",
    size: int = 100_000,
    arch: tuple[str, ...] = (),
    disk_mb: int = 0,
) -> Manifest:
    sha = hashlib.sha256(f"{name}-{version}-{size}".encode()).hexdigest()
    return Manifest(
        name=name,
        version=version,
        kind=ArtifactKind.BUNDLE,
        requires=Requirements(arch=tuple(Arch(a) for a in arch), disk_mb=disk_mb),
        run=RunSpec(command=("python3", "app.py")),
        size=size,
        sha256=sha,
    )


def stage_args(manifest: Manifest, deployment_id: str, seq: int) -> dict[str, Any]:
    return {
        "deployment_id": deployment_id,
        "seq": seq,
        "manifest_json": canonical_manifest(manifest).decode(),
        "signature": "c2lnbmF0dXJl",
        "url": "http://127.0.0.1:9/v1/blobs/x",
    }


@asynccontextmanager
async def open_channel(
    kind: str,
    spec: FleetSpec | None = None,
    timeouts: CallTimeouts | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> AsyncIterator[tuple[Any, DeviceClient]]:
    """``(fleet, transport)``; the fleet has ``devices``, ``inject``, ``device_state``.
    ``clock`` is the device model's (fault windows, leaks)."""
    spec = spec or FleetSpec(devices=12, seed=3, token=TOKEN)
    if kind == "memory":
        model = SimFleet(spec, clock=clock)
        async with MemoryTransport(model, timeouts=timeouts) as transport:
            yield model, transport
        return
    if kind == "mqtt":
        from fleetgate.sim.mqtt_fleet import MqttFleet

        async with MqttFleet.start(spec, BROKER, clock=clock) as mqtt_fleet:
            tokens = TokenSource(overrides={d.id: mqtt_fleet.token for d in mqtt_fleet.devices})
            async with HttpTransport(tokens, timeouts=timeouts) as transport:
                yield mqtt_fleet, transport
        return
    async with VirtualFleet.start(spec, clock=clock) as fleet:
        tokens = TokenSource(overrides={d.id: fleet.token for d in fleet.devices})
        async with HttpTransport(tokens, timeouts=timeouts) as transport:
            yield fleet, transport
