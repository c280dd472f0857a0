"""What virtual fleet to build: ``FleetSpec``, hardware profiles, and the inventory it yields.

Contract:
- ``build_inventory(spec, address_for)`` is deterministic in ``spec`` (seed included): the same
  spec always gives the same devices, ids, groups, critical flags and monitoring levels.
- Hardware counts follow the mix proportions (largest remainder, so they sum to ``devices``);
  devices are dealt to groups round-robin, so every group gets every hardware type as evenly as
  the counts allow.
- Ids are ``<prefix>-<group suffix>-<nn>`` (``orin-a-03`` = third Orin of ``plant-a``); the
  group suffix is the part after the group's last ``-`` unless that would be ambiguous.
- About ``critical_fraction`` of the devices are critical, chosen by the seed, but never every
  device of one (hardware, group) cell: canary selection must always find a candidate.
- Monitoring is mixed (≈30 % high, 50 % medium, 20 % low), again by the seed.
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from fleetgate.core.model import Arch, Device, DeviceState, Monitoring, Resources
from fleetgate.errors import InputError
from fleetgate.sim.faults import FaultSpec

GROUP_RE = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
RELEASE_ID_RE = re.compile(r"^(?P<name>.+)-(?P<version>[^-]+)-(?P<sha>[0-9a-f]{8})$")


@dataclass(frozen=True, slots=True)
class HardwareProfile:
    """A device type as the simulator presents it (facts and health)."""

    name: str
    prefix: str
    arch: Arch
    ram_mb: int  # nominal, in the inventory
    ram_usable_mb: float  # what /proc/meminfo would say, in facts and health
    disk_mb: int
    disk_free_mb: float
    gpu: bool
    software: Mapping[str, str]
    mem_used_fraction: tuple[float, float] = (0.25, 0.45)


def _profile(
    name: str, prefix: str, arch: Arch, ram: tuple[int, float], disk: tuple[int, float], gpu: bool,
    **software: str,
) -> HardwareProfile:  # fmt: skip
    return HardwareProfile(name, prefix, arch, ram[0], ram[1], disk[0], disk[1], gpu, software)


# ram = (nominal MB, usable MB), disk = (size MB, free MB at provisioning)
PROFILES: Mapping[str, HardwareProfile] = {
    p.name: p
    for p in (
        _profile("jetson-orin-nano", "orin", Arch.ARM64, (8192, 7620.0), (120_000, 51_234.5),
                 True, jetpack="6.0", os="ubuntu-22.04"),
        _profile("rpi4", "rpi", Arch.ARM64, (4096, 3794.0), (32_000, 18_240.0), False,
                 os="raspios-bookworm"),
        _profile("rpi5", "rpi5", Arch.ARM64, (8192, 7930.0), (64_000, 41_100.0), False,
                 os="raspios-bookworm"),
        _profile("gateway", "gw", Arch.X86_64, (16384, 15_870.0), (256_000, 182_400.0), False,
                 os="debian-12"),
    )
}  # fmt: skip
DEFAULT_MIX: tuple[tuple[str, float], ...] = (
    ("jetson-orin-nano", 40.0),
    ("rpi4", 40.0),
    ("gateway", 20.0),
)
DEFAULT_GROUPS = ("plant-a", "plant-b", "plant-c")
DEFAULT_INITIAL_RELEASE = "app-1.0.0-00000000"


def parse_mix(text: str) -> tuple[tuple[str, float], ...]:
    """``"jetson-orin-nano:40,rpi4:40,gateway:20"`` -> pairs. ``InputError`` if malformed."""
    pairs: list[tuple[str, float]] = []
    for item in (i.strip() for i in text.split(",") if i.strip()):
        name, sep, raw = item.rpartition(":")
        if not sep:
            name, raw = item, "1"
        try:
            weight = float(raw)
        except ValueError:
            raise InputError(f"--mix {text!r}: {item!r}: weight {raw!r} is not a number") from None
        pairs.append((name.strip(), weight))
    if not pairs:
        raise InputError(f"--mix {text!r}: give hardware:weight pairs")
    return tuple(pairs)


def release_version(release_id: str) -> str | None:
    """The version inside ``<name>-<version>-<sha8>`` (versions contain no ``-`` here)."""
    m = RELEASE_ID_RE.match(release_id)
    return m.group("version") if m else None


@dataclass(frozen=True)
class FleetSpec:
    """Everything that decides a virtual fleet. Validated on construction (``InputError``)."""

    devices: int = 60
    mix: tuple[tuple[str, float], ...] = DEFAULT_MIX
    groups: tuple[str, ...] = DEFAULT_GROUPS
    faults: tuple[FaultSpec, ...] = ()
    seed: int = 0
    token: str | None = None  # None: a random token is made when the fleet starts
    initial_release: str | None = DEFAULT_INITIAL_RELEASE
    link_kbps: float = 100_000.0  # 100 Mbit/s: stage of 1 MB takes 0.08 s
    activate_s: float = 0.0  # simulated app start time
    reserve_mb: float = 64.0  # free space a device keeps beyond artifact + unpacked
    critical_fraction: float = 0.05
    per_device_address: bool = False
    public_key: Any = field(default=None, compare=False)  # Ed25519PublicKey: verify stages

    def __post_init__(self) -> None:
        if self.devices < 1:
            raise InputError("--devices must be at least 1")
        if not self.mix:
            raise InputError("--mix: give at least one hardware type")
        for name, weight in self.mix:
            if name not in PROFILES:
                raise InputError(f"--mix: unknown hardware {name!r} (known: {', '.join(PROFILES)})")
            if not weight > 0:
                raise InputError(f"--mix: {name}: weight must be > 0")
        if len({n for n, _ in self.mix}) != len(self.mix):
            raise InputError("--mix: a hardware type is listed twice")
        if not self.groups or len(set(self.groups)) != len(self.groups):
            raise InputError("--groups: give distinct group names")
        for g in self.groups:
            if not GROUP_RE.match(g):
                raise InputError(f"--groups: {g!r} must match [A-Za-z0-9._-]")
        if self.initial_release is not None and release_version(self.initial_release) is None:
            raise InputError(
                f"initial release {self.initial_release!r} is not <name>-<version>-<sha8>"
            )
        if not self.link_kbps > 0:
            raise InputError("link speed must be > 0 kbit/s")
        if not 0 <= self.critical_fraction < 1:
            raise InputError("critical fraction must be in [0, 1)")


def hardware_counts(spec: FleetSpec) -> list[tuple[str, int]]:
    total = sum(w for _, w in spec.mix)
    exact = [(name, spec.devices * w / total) for name, w in spec.mix]
    counts = {name: int(x) for name, x in exact}
    left = spec.devices - sum(counts.values())
    by_remainder = sorted(exact, key=lambda nx: (-(nx[1] - int(nx[1])), nx[0]))
    for name, _ in by_remainder[:left]:
        counts[name] += 1
    return [(name, counts[name]) for name, _ in spec.mix]


def _group_suffixes(groups: tuple[str, ...]) -> dict[str, str]:
    short = {g: g.rsplit("-", 1)[-1] for g in groups}
    if len(set(short.values())) != len(groups) or any(not s for s in short.values()):
        return {g: g for g in groups}
    return short


def build_inventory(spec: FleetSpec, address_for: Callable[[int, str], str]) -> list[Device]:
    """The fleet's devices; ``address_for(index, device_id)`` gives each agent URL."""
    rng = random.Random(f"fleet/{spec.seed}")
    suffix = _group_suffixes(spec.groups)
    plan: list[tuple[str, str]] = []  # (hardware, group) in inventory order
    for hw, count in hardware_counts(spec):
        for _ in range(count):
            plan.append((hw, spec.groups[len(plan) % len(spec.groups)]))
    cells: dict[tuple[str, str], int] = {}
    for cell in plan:
        cells[cell] = cells.get(cell, 0) + 1
    width = max(2, len(str(max(cells.values()))))
    n_critical = round(spec.devices * spec.critical_fraction)
    critical = set(rng.sample(range(len(plan)), n_critical)) if n_critical else set()
    for cell in cells:  # never a whole cell critical
        members = [i for i, c in enumerate(plan) if c == cell]
        if all(i in critical for i in members):
            critical.discard(members[0])
    numbers: dict[tuple[str, str], int] = {}
    devices: list[Device] = []
    for i, (hw, group) in enumerate(plan):
        profile = PROFILES[hw]
        numbers[(hw, group)] = numbers.get((hw, group), 0) + 1
        dev_id = f"{profile.prefix}-{suffix[group]}-{numbers[(hw, group)]:0{width}d}"
        roll = rng.random()
        monitoring = (
            Monitoring.HIGH if roll < 0.3 else Monitoring.MEDIUM if roll < 0.8 else Monitoring.LOW
        )
        devices.append(
            Device(
                id=dev_id,
                hardware=hw,
                arch=profile.arch,
                group=group,
                address=address_for(i, dev_id),
                resources=Resources(profile.ram_mb, profile.disk_mb, profile.gpu),
                software=dict(profile.software),
                monitoring=monitoring,
                critical=i in critical,
                state=DeviceState.ACTIVE,
            )
        )
    return devices
