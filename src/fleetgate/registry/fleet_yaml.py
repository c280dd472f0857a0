"""The fleetgate inventory format: a YAML document with a top-level ``devices:`` list.

Shape (DESIGN.md §3 "Fleet inventory")::

    devices:
      - id: orin-a-01
        hardware: jetson-orin-nano
        arch: arm64
        group: plant-a
        address: http://127.0.0.1:7601
        token_env: FLEETGATE_TOKEN_ORIN_A_01      # or token_file
        resources: {ram_mb: 8192, disk_mb: 120000, gpu: true}
        software: {jetpack: "6.0", os: "ubuntu-22.04"}
        monitoring: high
        critical: false
        state: active

Top-level keys other than ``devices`` are errors, except ``x-…`` keys (as in Compose files),
which hold YAML anchors for shared values: ``x-rpi: &rpi {hardware: rpi4, arch: arm64}`` and
``- <<: *rpi`` in an entry.

``entry_from_mapping`` turns one device mapping into a ``RawEntry`` (fields.py validates it);
it is also the decoder behind the store's JSON codec, which uses the same shape. Unknown keys
are errors that list the allowed ones; an inline ``token:`` is refused outright, because a
credential written into the inventory ends up in logs, backups and version control.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from fleetgate.registry.fields import (
    INLINE_TOKEN_KEYS,
    RawEntry,
    describe,
    inline_token_message,
    unknown_key_message,
)

DEVICE_KEYS = (
    "id",
    "hardware",
    "arch",
    "group",
    "address",
    "token_env",
    "token_file",
    "resources",
    "software",
    "monitoring",
    "critical",
    "state",
    "state_reason",
)
RESOURCE_KEYS = ("ram_mb", "disk_mb", "gpu")


def entry_from_mapping(data: Mapping[Any, Any], where: str) -> RawEntry:
    """One device mapping in the fleet.yaml shape -> ``RawEntry`` (no validation of values)."""
    entry = RawEntry(where=where, labels={k: f"resources.{k}" for k in RESOURCE_KEYS})
    for key, value in data.items():
        name = str(key)
        if name in INLINE_TOKEN_KEYS:
            entry.refuse_inline_credential(name, inline_token_message())
        elif name == "resources":
            _read_resources(entry, value)
        elif name == "software":
            _read_software(entry, value)
        elif name in DEVICE_KEYS:
            entry.values[name] = value
        elif name in RESOURCE_KEYS:
            entry.problems.append((name, f"belongs under resources: (resources.{name})"))
        else:
            entry.problems.append((name, unknown_key_message(name, DEVICE_KEYS)))
    return entry


def _read_resources(entry: RawEntry, value: object) -> None:
    if not isinstance(value, Mapping):
        entry.problems.append(("resources", f"expected a mapping, got {describe(value)}"))
        return
    for key, item in value.items():
        name = str(key)
        if name in RESOURCE_KEYS:
            entry.values[name] = item
        else:
            entry.problems.append((f"resources.{name}", unknown_key_message(name, RESOURCE_KEYS)))


def _read_software(entry: RawEntry, value: object) -> None:
    if value is None:
        return
    if not isinstance(value, Mapping):
        entry.problems.append(("software", f"expected a mapping, got {describe(value)}"))
        return
    entry.software = {str(k): v for k, v in value.items()}


def read_fleet_yaml(doc: object, source: str) -> tuple[list[RawEntry], list[str]]:
    """A parsed fleet.yaml document -> its entries and any file-level problems."""
    if not isinstance(doc, Mapping) or "devices" not in doc:
        return [], [f"{source}: expected a top-level 'devices:' list"]
    problems = [
        f"{source}: {key}: {unknown_key_message(str(key), ['devices'], 'top-level key')}"
        for key in doc
        if key != "devices" and not str(key).startswith("x-")
    ]
    devices = doc["devices"]
    if devices is None:
        devices = []
    if not isinstance(devices, list):
        return [], [*problems, f"{source}: devices: expected a list, got {describe(devices)}"]
    entries: list[RawEntry] = []
    for n, item in enumerate(devices, start=1):
        if isinstance(item, Mapping):
            entries.append(entry_from_mapping(item, f"entry {n}"))
        else:
            problems.append(
                f"{source}: entry {n}: expected a mapping of device fields, got {describe(item)}"
            )
    return entries, problems
