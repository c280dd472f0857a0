"""``Device`` <-> JSON-safe dict, in the fleet.yaml shape; and a fleet.yaml writer.

The store keeps devices as JSON and other tools (the simulator's ``--registry-out``) write
fleet.yaml files, so both directions use the one documented shape::

    {"id": …, "hardware": …, "arch": "arm64", "group": …, "address": …,
     (hardware, arch and resources are absent while the device's facts are unknown)
     "token_env": …  (and/or "token_file"; a key is present only when set),
     "resources": {"ram_mb": int, "disk_mb": int, "gpu": bool},
     "software": {name: str}, "monitoring": …, "critical": bool, "state": …,
     "state_reason": …  (present only when set: why the device is not active)}

Round trip: ``device_from_dict(device_to_dict(d)) == d`` for every valid ``Device`` whose text
fields and software versions are not blank (an inventory never produces blank ones).
``device_from_dict`` validates with the same reader as fleet.yaml but without the rules that
only concern hand-edited files (exactly one token source, http(s) address, software-name
syntax), because a stored record was already checked when it was imported.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import yaml

from fleetgate.core.model import Device
from fleetgate.errors import ValidationError
from fleetgate.registry.fields import build_devices
from fleetgate.registry.fleet_yaml import entry_from_mapping


def device_to_dict(d: Device) -> dict[str, Any]:
    """The device as plain JSON types; keys in the fleet.yaml order."""
    # Unknown facts are left out (not written as null): the shape stays fleet.yaml's.
    out: dict[str, Any] = {"id": d.id}
    if d.hardware is not None:
        out["hardware"] = d.hardware
    if d.arch is not None:
        out["arch"] = d.arch.value
    out["group"] = d.group
    out["address"] = d.address
    if d.token_env is not None:
        out["token_env"] = d.token_env
    if d.token_file is not None:
        out["token_file"] = d.token_file
    if d.resources is not None:
        out["resources"] = {
            "ram_mb": d.resources.ram_mb,
            "disk_mb": d.resources.disk_mb,
            "gpu": d.resources.gpu,
        }
    out["software"] = dict(sorted(d.software.items()))
    out["monitoring"] = d.monitoring.value
    out["critical"] = d.critical
    out["state"] = d.state.value
    if d.state_reason:
        out["state_reason"] = d.state_reason
    return out


def device_from_dict(data: Mapping[str, Any], where: str = "device record") -> Device:
    """Inverse of ``device_to_dict``. Raises ``ValidationError`` naming every bad field."""
    if not isinstance(data, Mapping):
        raise ValidationError([f"{where}: expected a mapping of device fields"])
    entry = entry_from_mapping(data, "record")
    return build_devices(where, [entry], inventory_rules=False)[0]


def devices_to_yaml(devices: Iterable[Device], header: str = "") -> str:
    """A fleet.yaml document for ``devices`` (``header`` lines become ``#`` comments).

    Versions are written as quoted strings, so ``jetpack: "6.0"`` survives any YAML reader.
    """
    comment = "".join(f"# {line}".rstrip() + "\n" for line in header.splitlines())
    body = yaml.safe_dump(
        {"devices": [device_to_dict(d) for d in devices]},
        sort_keys=False,
        default_flow_style=None,
        allow_unicode=True,
        width=100,
    )
    return comment + body
