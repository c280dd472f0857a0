"""Domain values shared by every part of fleetgate.

Frozen dataclasses, validated on construction: a ``Device`` or ``Manifest`` that exists is a
valid one, so the planner, the engine and the agent never re-check shapes. Parsing files into
these values (with file/entry/field error messages) is the job of ``registry/`` and ``config/``;
this module only states what a valid value is.

Pure: no I/O, no clock, no randomness. The agent imports this module, so it must stay light
(standard library plus ``packaging``).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import Enum
from types import MappingProxyType

from packaging.specifiers import InvalidSpecifier, SpecifierSet

DEVICE_ID_RE = re.compile(r"^[A-Za-z0-9._-]{1,128}$")
NAME_RE = re.compile(r"^[A-Za-z0-9._-]{1,128}$")
SHA256_RE = re.compile(r"^[0-9a-f]{64}$")


class Arch(str, Enum):
    ARM64 = "arm64"
    ARMV7 = "armv7"
    X86_64 = "x86_64"


class DeviceState(str, Enum):
    ACTIVE = "active"
    MAINTENANCE = "maintenance"
    QUARANTINE = "quarantine"


class Monitoring(str, Enum):
    HIGH = "high"
    MEDIUM = "medium"
    LOW = "low"

    @property
    def rank(self) -> int:
        """Higher is better monitored: canary selection prefers higher ranks."""
        return {"high": 3, "medium": 2, "low": 1}[self.value]


class ArtifactKind(str, Enum):
    BUNDLE = "bundle"
    BINARY = "binary"
    CONFIG = "config"


def _frozen_map(m: Mapping[str, str] | None) -> Mapping[str, str]:
    return MappingProxyType(dict(m or {}))


@dataclass(frozen=True, slots=True)
class Resources:
    ram_mb: int
    disk_mb: int
    gpu: bool = False

    def __post_init__(self) -> None:
        if self.ram_mb < 0 or self.disk_mb < 0:
            raise ValueError("resources must not be negative")


@dataclass(frozen=True, slots=True)
class Device:
    """One device of the inventory. ``address`` is the agent's base URL."""

    id: str
    hardware: str
    arch: Arch
    group: str
    address: str
    resources: Resources
    token_env: str | None = None
    token_file: str | None = None
    software: Mapping[str, str] = field(default_factory=dict)
    monitoring: Monitoring = Monitoring.MEDIUM
    critical: bool = False
    state: DeviceState = DeviceState.ACTIVE
    # Why the device is not active (a quarantine names the deployment and the failure);
    # written by fleetgate when it sets a device aside, or by hand in the inventory.
    state_reason: str = ""

    def __post_init__(self) -> None:
        if not DEVICE_ID_RE.match(self.id):
            raise ValueError(f"device id {self.id!r} must match [A-Za-z0-9._-]")
        if not self.hardware or not self.group:
            raise ValueError("hardware and group must not be empty")
        object.__setattr__(self, "software", _frozen_map(self.software))

    def attribute(self, name: str) -> str:
        """The device's value for a selector/cover attribute, as text."""
        value: object
        if name in ("id", "hardware", "group", "address"):
            value = getattr(self, name)
        elif name in ("arch", "monitoring", "state"):
            value = getattr(self, name).value
        elif name == "critical":
            value = "true" if self.critical else "false"
        elif name == "gpu":
            value = "true" if self.resources.gpu else "false"
        elif name in self.software:
            value = self.software[name]
        else:
            return ""
        return str(value)


@dataclass(frozen=True, slots=True)
class Requirements:
    """What a release needs from a device. ``software`` maps a name to a PEP 440 specifier."""

    arch: tuple[Arch, ...] = ()
    ram_mb: int = 0
    disk_mb: int = 0
    gpu: bool = False
    software: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.ram_mb < 0 or self.disk_mb < 0:
            raise ValueError("requirements must not be negative")
        for name, spec in self.software.items():
            try:
                SpecifierSet(spec)
            except InvalidSpecifier as exc:
                raise ValueError(f"software.{name}: {spec!r} is not a version specifier") from exc
        object.__setattr__(self, "software", _frozen_map(self.software))


@dataclass(frozen=True, slots=True)
class RunSpec:
    """How the agent runs a release. ``reload_command`` is for ``config`` artifacts."""

    command: tuple[str, ...] = ()
    health_url: str | None = None
    metrics_url: str | None = None
    reload_command: tuple[str, ...] = ()
    env: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "env", _frozen_map(self.env))


@dataclass(frozen=True, slots=True)
class Manifest:
    """An artifact's manifest (``fleetgate.toml``). ``size``/``sha256`` are set once built:
    they describe the payload and are covered by the bundle's signature."""

    name: str
    version: str
    kind: ArtifactKind
    requires: Requirements = field(default_factory=Requirements)
    run: RunSpec = field(default_factory=RunSpec)
    size: int | None = None
    sha256: str | None = None

    def __post_init__(self) -> None:
        if not NAME_RE.match(self.name):
            raise ValueError(f"artifact name {self.name!r} must match [A-Za-z0-9._-]")
        if not NAME_RE.match(self.version):
            raise ValueError(f"artifact version {self.version!r} must match [A-Za-z0-9._-]")
        if self.sha256 is not None and not SHA256_RE.match(self.sha256):
            raise ValueError("sha256 must be 64 lowercase hex digits")
        if self.size is not None and self.size < 0:
            raise ValueError("size must not be negative")

    @property
    def label(self) -> str:
        return f"{self.name} v{self.version}"

    @property
    def release_id(self) -> str:
        """The directory name a release gets on a device."""
        suffix = f"-{self.sha256[:8]}" if self.sha256 else ""
        return f"{self.name}-{self.version}{suffix}"


@dataclass(frozen=True, slots=True)
class HealthSample:
    """One health reading of one device, as the agent reports it.

    ``error_rate`` is a fraction (0.01 = 1 %). ``None`` means the device could not measure it.
    """

    device_id: str
    app_up: bool
    latency_ms: float | None = None
    error_rate: float | None = None
    cpu_percent: float | None = None
    mem_used_mb: float | None = None
    mem_total_mb: float | None = None
    disk_free_mb: float | None = None
    gpu_percent: float | None = None
    temperature_c: float | None = None
    restarts: int = 0
    crash_loop: bool = False
    release: str | None = None
