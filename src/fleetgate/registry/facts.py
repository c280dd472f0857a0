"""A device's reported facts -> the inventory's fact fields (hardware, arch, resources,
software). Pure.

Used for what an enrolling device sends (``POST /api/v1/enroll``) and for what a device's
agent answers to ``facts`` (``registry refresh``, the pre-plan refresh). The agent's facts
report ``ram_mb`` (what the kernel says), ``disk_mb`` (the size of the agent's filesystem; an
older agent sends only ``disk_free_mb``, taken as the size — a lower bound, so compatibility
errs on the refusing side), ``gpu`` (absent: no GPU was found, so a GPU release never goes
there) and ``software`` (name -> version text).

Contract: ``read_facts(data, where)`` returns ``ReportedFacts`` or raises ``ValidationError``
whose lines name the field as ``facts.FIELD``; ``apply_facts(device, facts)`` returns the
device with its facts replaced (software merged) and everything the inventory owns (id,
group, address, credential, state, monitoring, critical) unchanged.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

from fleetgate.core.model import NAME_RE, Arch, Device, Resources
from fleetgate.errors import ValidationError
from fleetgate.registry.fields import RESERVED_SOFTWARE, describe

_ARCH_ALIASES = {"aarch64": "arm64", "armv7l": "armv7", "armhf": "armv7", "amd64": "x86_64"}
MAX_SOFTWARE = 256


@dataclass(frozen=True, slots=True)
class ReportedFacts:
    hardware: str
    arch: Arch
    resources: Resources
    software: Mapping[str, str]


def _mb(data: Mapping[str, Any], key: str, problems: list[str], where: str) -> int | None:
    value = data.get(key)
    if isinstance(value, bool) or not isinstance(value, int | float):
        got = "nothing" if value is None else describe(value)
        problems.append(f"{where}.{key}: expected a number of MB, got {got}")
        return None
    if not math.isfinite(value) or value < 0:
        problems.append(f"{where}.{key}: expected a number of MB (0 or more), got {value!r}")
        return None
    return int(value)


def read_facts(data: object, where: str = "facts") -> ReportedFacts:
    if not isinstance(data, Mapping):
        raise ValidationError([f"{where}: expected an object, got {describe(data)}"])
    problems: list[str] = []
    hardware = data.get("hardware")
    if not isinstance(hardware, str) or not NAME_RE.match(hardware):
        problems.append(
            f"{where}.hardware: expected a name of A-Z a-z 0-9 . _ - (1-128), got "
            + ("nothing" if hardware is None else describe(hardware))
        )
    raw_arch = data.get("arch")
    arch: Arch | None = None
    if isinstance(raw_arch, str):
        with contextlib.suppress(ValueError):
            arch = Arch(_ARCH_ALIASES.get(raw_arch.lower(), raw_arch.lower()))
    if arch is None:
        got = "nothing" if raw_arch is None else describe(raw_arch)
        problems.append(f"{where}.arch: must be one of arm64, armv7, x86_64, got {got}")
    ram = _mb(data, "ram_mb", problems, where)
    disk_key = "disk_mb" if data.get("disk_mb") is not None else "disk_free_mb"
    disk = _mb(data, disk_key, problems, where)
    gpu = data.get("gpu", False)
    if gpu is None:
        gpu = False
    if not isinstance(gpu, bool):
        problems.append(f"{where}.gpu: expected true or false, got {describe(gpu)}")
    software_raw = data.get("software", {})
    software: dict[str, str] = {}
    if software_raw is None:
        software_raw = {}
    if not isinstance(software_raw, Mapping):
        problems.append(f"{where}.software: expected an object of name: version")
    elif len(software_raw) > MAX_SOFTWARE:
        problems.append(f"{where}.software: more than {MAX_SOFTWARE} entries")
    else:
        for name, version in software_raw.items():
            if not isinstance(name, str) or not NAME_RE.match(name) or name in RESERVED_SOFTWARE:
                problems.append(f"{where}.software: {describe(name)} is not a software name")
            elif not isinstance(version, str) or not version.strip() or len(version) > 128:
                problems.append(f"{where}.software.{name}: expected a version as text")
            else:
                software[name] = version.strip()
    if problems:
        raise ValidationError(problems)
    assert isinstance(hardware, str) and arch is not None and ram is not None and disk is not None
    return ReportedFacts(hardware, arch, Resources(ram, disk, bool(gpu)), software)


def apply_facts(device: Device, facts: ReportedFacts) -> Device:
    return replace(
        device,
        hardware=facts.hardware,
        arch=facts.arch,
        resources=facts.resources,
        # Merged: what the device reports wins, a version written by hand that the device
        # does not report (``jetpack`` on an agent that only knows ``python``) stays.
        software={**device.software, **facts.software},
    )
