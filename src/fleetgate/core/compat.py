"""Can this device run this release? (spec PREPARE step 4)

Checks, each giving a reason a person can act on:

- architecture: the device's arch is one the release lists (an empty list means any);
- RAM: the device has at least ``requires.ram_mb``;
- disk: the device can hold the new release *and* a rollback copy (Guardrail 2: no stage may
  destroy the previous known-good state). At plan time the registry only knows total disk, so
  the rollback copy is estimated at the new release's size: ``2 × requires.disk_mb``. The agent
  re-checks real free space before it downloads anything;
- GPU: a release that needs a GPU goes only to devices that have one;
- software: every ``requires.software`` entry is a PEP 440 specifier that the device's version
  must satisfy; a device without that software, or with a version that is not PEP 440, fails.

Many devices share one hardware profile, so results are memoised per profile: a 100 000-device
fleet costs one check per distinct profile, not per device.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache

from packaging.specifiers import SpecifierSet
from packaging.version import InvalidVersion, Version

from fleetgate.core.model import Arch, Device, Requirements


@dataclass(frozen=True, slots=True)
class Compatibility:
    ok: bool
    reasons: tuple[str, ...] = ()


_Profile = tuple[Arch, int, int, bool, tuple[tuple[str, str], ...]]


def _profile(d: Device) -> _Profile:
    # The planner excludes facts-unknown devices before it asks; nothing is guessed here.
    if d.arch is None or d.resources is None:
        raise ValueError(f"device {d.id}: facts unknown ({', '.join(d.unknown_facts)})")
    return (
        d.arch,
        d.resources.ram_mb,
        d.resources.disk_mb,
        d.resources.gpu,
        tuple(sorted(d.software.items())),
    )


@lru_cache(maxsize=256)
def _specifier(spec: str) -> SpecifierSet:
    return SpecifierSet(spec)


def _check(req: Requirements, prof: _Profile) -> Compatibility:
    arch, ram, disk, gpu, software = prof
    reasons: list[str] = []
    if req.arch and arch not in req.arch:
        wanted = ", ".join(a.value for a in req.arch)
        reasons.append(f"arch {arch.value} not in [{wanted}]")
    if ram < req.ram_mb:
        reasons.append(f"RAM {ram} MB < {req.ram_mb} MB required")
    needed = 2 * req.disk_mb
    if disk < needed:
        reasons.append(f"disk {disk} MB < {needed} MB (release {req.disk_mb} MB + rollback copy)")
    if req.gpu and not gpu:
        reasons.append("no GPU, release requires one")
    have: Mapping[str, str] = dict(software)
    for name, spec in sorted(req.software.items()):
        version = have.get(name)
        if version is None:
            reasons.append(f"{name} not installed, release requires {spec}")
            continue
        try:
            parsed = Version(version)
        except InvalidVersion:
            reasons.append(f"{name} {version!r} is not a PEP 440 version")
            continue
        if not _specifier(spec).contains(parsed, prereleases=True):
            reasons.append(f"{name} {version} does not satisfy {spec}")
    return Compatibility(ok=not reasons, reasons=tuple(reasons))


class CompatibilityChecker:
    """Checks devices against one release's requirements, memoised per hardware profile."""

    def __init__(self, requires: Requirements) -> None:
        self._requires = requires
        self._cache: dict[_Profile, Compatibility] = {}

    def check(self, device: Device) -> Compatibility:
        prof = _profile(device)
        hit = self._cache.get(prof)
        if hit is None:
            hit = self._cache[prof] = _check(self._requires, prof)
        return hit
