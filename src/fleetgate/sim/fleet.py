"""``SimFleet``: the virtual fleet's model — devices by id, fault injection, inventory output.

No network here: ``VirtualFleet`` (sim/server.py) puts it behind aiohttp, a ``MemoryChannel``
calls ``dispatch`` (sim/dispatch.py) directly. Contract:
- Built from a ``FleetSpec`` and an address function; deterministic in the spec.
- ``inject(fault)`` selects devices with ``select_devices`` (seeded by the fleet seed and the
  injection's ordinal) and returns their ids; a ``device=``/``hardware=``/``group=`` selector
  naming something the fleet does not have is an ``InputError`` (a typo must not silently make
  a fault that hits nobody).
- Lookups are dict lookups by id: no per-request work grows with the fleet.
- ``clock`` (seconds, default ``time.monotonic``) is every device's: uptime, fault windows
  (``surge``), leaks. A test on a virtual clock passes it here so the fleet ages with it.
- ``write_inventory(path)`` writes a fleet.yaml that ``fleetgate.registry.load_inventory``
  accepts, with ``token_file`` pointing at a token file written with mode 0600.
"""

from __future__ import annotations

import dataclasses
import os
import secrets
import time
from collections.abc import Awaitable, Callable, Iterable
from pathlib import Path
from typing import Any

from fleetgate.core.model import Device
from fleetgate.errors import InputError
from fleetgate.sim.device import VirtualDevice
from fleetgate.sim.device_state import DeviceSnapshot
from fleetgate.sim.dispatch import dispatch
from fleetgate.sim.faults import FaultSpec, parse_fault, select_devices
from fleetgate.sim.fleetspec import PROFILES, FleetSpec, build_inventory
from fleetgate.transports.channel import Reply

MEMORY_BASE = "http://sim.invalid"


class SimFleet:
    def __init__(
        self,
        spec: FleetSpec,
        address_for: Callable[[int, str], str] | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.spec = spec
        self.token = spec.token or secrets.token_urlsafe(24)
        addr = address_for or (lambda _i, dev_id: f"{MEMORY_BASE}/d/{dev_id}")
        self.devices: list[Device] = build_inventory(spec, addr)
        self.by_id: dict[str, VirtualDevice] = {
            d.id: VirtualDevice(d, PROFILES[d.hardware or ""], spec, self.token, clock)
            for d in self.devices
        }
        self.injected: list[tuple[FaultSpec, list[str]]] = []  # (fault, device ids hit)
        for fault in spec.faults:
            self.inject(fault)

    def __len__(self) -> int:
        return len(self.devices)

    def device(self, device_id: str) -> VirtualDevice:
        try:
            return self.by_id[device_id]
        except KeyError:
            raise InputError(f"no virtual device {device_id!r}") from None

    def dispatch(
        self, device: Device, command: str, body: dict[str, Any] | None, token: str | None
    ) -> Awaitable[Reply]:
        """One protocol message to one device: what a ``MemoryChannel`` calls."""
        return dispatch(self.by_id, self.token, device, command, body, token)

    def device_state(self, device_id: str) -> DeviceSnapshot:
        return self.device(device_id).snapshot()

    def inject(self, fault: FaultSpec | str) -> list[str]:
        """Add ``fault`` to the devices it selects; returns their ids (inventory order)."""
        spec = parse_fault(fault) if isinstance(fault, str) else fault
        self._check_selectors(spec)
        chosen = select_devices(spec, self.devices, self.spec.seed, len(self.injected))
        for d in chosen:
            self.by_id[d.id].add_fault(spec)
        ids = [d.id for d in chosen]
        self.injected.append((spec, ids))
        return ids

    def clear_faults(self, device_ids: Iterable[str] | None = None) -> None:
        if device_ids is None:
            self.injected.clear()  # the ordinal salts selection: a cleared fleet starts over
        targets = self.by_id.values() if device_ids is None else map(self.device, device_ids)
        for dev in targets:
            dev.clear_faults()

    def _check_selectors(self, spec: FaultSpec) -> None:
        known = {
            "device": set(self.by_id),
            "hardware": {d.hardware or "" for d in self.devices},
            "group": {d.group for d in self.devices},
        }
        for name, have in known.items():
            wanted: frozenset[str] = getattr(spec, name)
            missing = sorted(wanted - have)
            if missing:
                raise InputError(
                    f"fault {spec}: {name} {', '.join(map(repr, missing))} is not in the fleet"
                )

    def write_inventory(self, path: Path, token_file: Path | None = None) -> Path:
        """Write fleet.yaml at ``path`` and the token file (default ``<path stem>.token``
        next to it, mode 0600). Returns the token file's path."""
        from fleetgate.registry.codec import devices_to_yaml

        path = Path(path).absolute()
        token_path = Path(token_file).absolute() if token_file else path.with_suffix(".token")
        path.parent.mkdir(parents=True, exist_ok=True)
        token_path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(token_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.fchmod(fd, 0o600)  # an existing file keeps its old mode through O_CREAT
            os.write(fd, (self.token + "\n").encode())
        finally:
            os.close(fd)
        devices = [dataclasses.replace(d, token_file=str(token_path)) for d in self.devices]
        header = (
            f"Virtual fleet: {len(devices)} devices, seed {self.spec.seed}, written by "
            f"fleetgate sim.\nEvery device's credential is in {token_path.name} (mode 0600)."
        )
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(devices_to_yaml(devices, header=header), encoding="utf-8")
        tmp.replace(path)
        return token_path


class RunningFleet:
    """What a running fleet (``VirtualFleet`` over HTTP, ``MqttFleet`` on a broker) offers
    about its devices: the model's, whatever front end carries the calls."""

    model: SimFleet

    @property
    def devices(self) -> list[Device]:
        return self.model.devices

    @property
    def token(self) -> str:
        return self.model.token

    @property
    def spec(self) -> FleetSpec:
        return self.model.spec

    def device(self, device_id: str) -> VirtualDevice:
        return self.model.device(device_id)

    def device_state(self, device_id: str) -> DeviceSnapshot:
        return self.model.device_state(device_id)

    def inject(self, fault: FaultSpec | str) -> list[str]:
        return self.model.inject(fault)

    def clear_faults(self, device_ids: list[str] | None = None) -> None:
        self.model.clear_faults(device_ids)

    def write_inventory(self, path: Path, token_file: Path | None = None) -> Path:
        return self.model.write_inventory(path, token_file)
