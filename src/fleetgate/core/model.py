"""Domain values shared by every part of fleetgate.

Frozen dataclasses, validated on construction: a ``Device`` or ``Manifest`` that exists is a
valid one, so the planner, the engine and the agent never re-check shapes. Parsing files into
these values (with file/entry/field error messages) is the job of ``registry/`` and ``config/``;
this module only states what a valid value is.

Pure: no I/O, no clock, no randomness. The agent imports this module, so it must stay light
(standard library plus ``packaging``).
"""

from __future__ import annotations

import math
import re
import sys
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
    # Self-enrolled, waiting for an operator's ``registry accept`` (docs/enrolment.md).
    PENDING = "pending"


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


# The facts a plan needs from every device (compatibility, canary cover, strata).
FACT_FIELDS = ("hardware", "arch", "ram_mb", "disk_mb")


@dataclass(frozen=True, slots=True)
class Device:
    """One device of the inventory. ``address`` is the agent's base URL (``http(s)://``,
    ``mqtt(s)://``).

    ``hardware``, ``arch`` and ``resources`` are the device's *facts*: ``None`` until the device
    reported them (an Ansible entry with only id, address, group and credential; filled by
    ``registry refresh`` or enrolment). A device whose facts are unknown is never planned
    (``core.plan`` excludes it with that reason): nothing here guesses them.
    """

    id: str
    hardware: str | None
    arch: Arch | None
    group: str
    address: str
    resources: Resources | None
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
        if self.hardware == "" or not self.group:
            raise ValueError("hardware and group must not be empty")
        object.__setattr__(self, "software", _frozen_map(self.software))

    @property
    def unknown_facts(self) -> tuple[str, ...]:
        """The facts this device has not reported yet (empty: all known)."""
        out = []
        if self.hardware is None:
            out.append("hardware")
        if self.arch is None:
            out.append("arch")
        if self.resources is None:
            out.extend(("ram_mb", "disk_mb"))
        return tuple(out)

    @property
    def facts_known(self) -> bool:
        return self.hardware is not None and self.arch is not None and self.resources is not None

    def attribute(self, name: str) -> str:
        """The device's value for a selector/cover attribute, as text."""
        value: object
        if name in ("id", "hardware", "group", "address"):
            value = getattr(self, name) or ""  # unknown hardware: absent, never matched
        elif name == "arch":
            value = self.arch.value if self.arch is not None else ""
        elif name in ("monitoring", "state"):
            value = getattr(self, name).value
        elif name == "critical":
            value = "true" if self.critical else "false"
        elif name == "gpu":
            if self.resources is None:
                return ""
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
class PayloadFile:
    """One member of a built payload, as the signed manifest lists it (``files``): what a
    device's release slot must hold, byte for byte. ``kind`` is ``file`` (``size``, ``sha256``,
    ``executable``: mode 0755, else 0644), ``dir`` (mode 0755) or ``link`` (``target``, the
    symlink's text)."""

    path: str
    kind: str
    size: int = 0
    sha256: str = ""
    executable: bool = False
    target: str = ""


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
    # Set once built, signed with the rest: every payload member (sorted by path), and the date
    # (ISO 8601 UTC, ``YYYY-MM-DDTHH:MM:SSZ``) after which no device stages the release.
    files: tuple[PayloadFile, ...] | None = None
    valid_until: str | None = None

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


# The readings every agent reports besides the app's own metrics. A sample that has none of
# them (and no app metrics) carries no evidence, whatever ``app_up`` says.
STANDARD_METRICS = (
    "latency_ms",
    "error_rate",
    "cpu_percent",
    "mem_used_mb",
    "mem_total_mb",
    "disk_free_mb",
    "gpu_percent",
    "temperature_c",
)
_METRIC_NAME_RE = re.compile(r"^[A-Za-z_:][A-Za-z0-9_:]*$")
_LABEL_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def metric_key(name: str, labels: Mapping[str, str] | None = None) -> str:
    r"""The key of one app metric series in ``HealthSample.metrics``: ``name`` without labels,
    else ``name{a="x",b="y"}`` with the labels sorted by name and the values escaped as in the
    Prometheus text format (``\\``, ``\"``, ``\n``). The agent builds its keys with this, so
    ``metric_key("inference_latency_seconds", {"quantile": "0.95"})`` is what a policy looks up.
    """
    if not _METRIC_NAME_RE.match(name):
        raise ValueError(f"metric name {name!r} must match [A-Za-z_:][A-Za-z0-9_:]*")
    if not labels:
        return name
    parts = []
    for key in sorted(labels):
        if not _LABEL_NAME_RE.match(key):
            raise ValueError(f"label name {key!r} must match [A-Za-z_][A-Za-z0-9_]*")
        value = labels[key].replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
        parts.append(f'{key}="{value}"')
    return f"{name}{{{','.join(parts)}}}"


@dataclass(frozen=True, slots=True)
class HealthSample:
    """One health reading of one device, as the agent reports it.

    ``error_rate`` is a fraction (0.01 = 1 %). ``None`` means the device could not measure it;
    nothing fills a gap with a default, so a sample whose standard readings are all ``None``
    stays distinguishable from a full one (``has_no_data``). ``metrics`` are the app's own
    series (``metric_key`` format) → finite value, read from the release's ``metrics_url``;
    empty when the release has none or the app could not be scraped.
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
    metrics: Mapping[str, float] = field(default_factory=dict)
    # Whether the device holds its rollback copy (the previous release on disk), when the
    # agent reports it with its health (issue 12): CONFIRM then needs no ``facts`` call.
    # None: not reported (an older agent); ask ``facts``.
    rollback_available: bool | None = None

    def __post_init__(self) -> None:
        frozen: dict[str, float] = {}
        for key, value in self.metrics.items():
            if not isinstance(key, str) or not key:
                raise ValueError(f"metric name {key!r} must be a non-empty string")
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ValueError(f"metric {key}: {value!r} is not a number")
            if not math.isfinite(value):
                raise ValueError(f"metric {key}: {value!r} is not finite")
            # Interned: every sample of a fleet names the same few series, and a controller
            # keeps a sample per device (its baseline) — one copy of each name, not 100,000
            # (~0.7 KiB per sample; issue 12). An interned string still dies with its last user.
            frozen[sys.intern(key)] = float(value)
        object.__setattr__(self, "metrics", MappingProxyType(frozen))

    @property
    def has_no_data(self) -> bool:
        """No standard reading and no app metric: silence, which must never count as health
        (an ``app_up: true`` answer with nothing measured is "no data", not a pass)."""
        return not self.metrics and all(getattr(self, k) is None for k in STANDARD_METRICS)
