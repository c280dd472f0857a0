"""The virtual fleet: thousands of simulated agents in one process, with fault injection.

Public API (imported lazily, so ``fleetgate.sim.demo_app`` stays importable without aiohttp's
server side)::

    from fleetgate.sim import FleetSpec, VirtualFleet, parse_fault
    async with VirtualFleet.start(FleetSpec(devices=100, seed=7)) as fleet:
        fleet.write_inventory(tmp / "fleet.yaml")
        fleet.inject("crash-loop:fraction=0.3,version=2.0.0")
        fleet.device_state("orin-a-01").executed

``SimFleet`` is the same model without a server (a ``MemoryChannel`` drives it directly).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from fleetgate.sim.device_state import DeviceSnapshot
    from fleetgate.sim.faults import FaultSpec, parse_fault
    from fleetgate.sim.fleet import SimFleet
    from fleetgate.sim.fleetspec import FleetSpec, parse_mix
    from fleetgate.sim.server import VirtualFleet

__all__ = [
    "DeviceSnapshot",
    "FaultSpec",
    "FleetSpec",
    "SimFleet",
    "VirtualFleet",
    "parse_fault",
    "parse_mix",
]

_WHERE = {
    "DeviceSnapshot": "fleetgate.sim.device_state",
    "FaultSpec": "fleetgate.sim.faults",
    "parse_fault": "fleetgate.sim.faults",
    "SimFleet": "fleetgate.sim.fleet",
    "FleetSpec": "fleetgate.sim.fleetspec",
    "parse_mix": "fleetgate.sim.fleetspec",
    "VirtualFleet": "fleetgate.sim.server",
}


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'fleetgate.sim' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(module), name)
