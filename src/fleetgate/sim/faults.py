"""Fault specs for the virtual fleet: grammar, validation, and which devices a fault hits.

Grammar (``--fault SPEC``, repeatable; docs/simulator.md)::

    SPEC     := KIND [ ":" ITEM ( "," ITEM )* ]
    ITEM     := KEY "=" VALUE
    selector := fraction=F (0 < F <= 1) | hardware=H | group=G | device=ID | version=V
                (H, G, ID, V may list alternatives with "|": group=plant-a|plant-b)

Kinds and their parameters (default in brackets; no default = required):
``unreachable``, ``flaky`` (k [1]), ``slow-link`` (kbps), ``low-disk`` (free_mb [50]),
``crash-loop``, ``start-fail`` (code [3]), ``errors`` (rate), ``latency`` (factor [3],
delay [0] seconds added to every answer), ``hot`` (temp [95]), ``rollback-fail``,
``surge`` (latency [0.3] relative and errors [0.01] absolute increase, from start [0] for
duration [inf] seconds after injection), ``leak`` (mb_per_min [5]), ``silent``,
``reboot-loop`` (the release kills the agent or the device at each start: the device reverts
it by itself during the activate, as the real agent's start counter does, issue 10),
``offline`` (after [0]: the device is connected, then ``after`` seconds after injection its
connection drops and stays down), ``late`` (after [5]: the device connects only ``after``
seconds after injection; until then it is not there). Over HTTP both refuse the connection
while the device is away (its listener is closed); over MQTT they are the device's broker
connection itself (sim/mqtt_fleet.py).

Contract:
- ``parse_fault(text)`` returns a ``FaultSpec`` or raises ``InputError`` naming the spec and the
  bad key or value; nothing is guessed.
- ``hardware``/``group``/``device`` select devices once, when the fault is injected; ``version``
  is checked on every use: the fault acts only while a release of that version is current, so a
  rollback heals it (``rollback-fail`` is checked against the release being left).
- Times are on the device model's clock (``SimFleet(clock=...)``, monotonic by default):
  a ``surge`` window is relative to the moment the fault was injected, a ``leak`` grows from the
  later of its injection and the device's last switch of release.
- Numbers are finite unless a parameter says otherwise (``surge:duration=inf``, the default).
- ``fraction`` picks exactly ``round(F * n)`` (at least one) of the ``n`` devices the other
  selectors match: those whose hash of (fleet seed, injection ordinal, spec, device id) is
  lowest. The same seed, fleet and spec always pick the same devices, whatever order the
  candidates come in.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType

from fleetgate.core.model import Device
from fleetgate.errors import InputError


@dataclass(frozen=True, slots=True)
class Param:
    default: float | None  # None: required
    minimum: float | None = None
    maximum: float | None = None
    integer: bool = False
    exclusive_min: bool = False
    infinite: bool = False  # "inf" is a valid value (forever)


KINDS: Mapping[str, Mapping[str, Param]] = {
    "unreachable": {},
    "flaky": {"k": Param(1, minimum=1, integer=True)},
    "slow-link": {"kbps": Param(None, minimum=0, exclusive_min=True)},
    "low-disk": {"free_mb": Param(50, minimum=0)},
    "crash-loop": {},
    "start-fail": {"code": Param(3, minimum=1, maximum=255, integer=True)},
    "errors": {"rate": Param(None, minimum=0, maximum=1)},
    "latency": {
        "factor": Param(3, minimum=0, exclusive_min=True),
        "delay": Param(0, minimum=0),
    },
    "hot": {"temp": Param(95, minimum=-50, maximum=200)},
    "rollback-fail": {},
    "surge": {
        "latency": Param(0.3, minimum=0),
        "errors": Param(0.01, minimum=0, maximum=1),
        "start": Param(0, minimum=0),
        "duration": Param(math.inf, minimum=0, exclusive_min=True, infinite=True),
    },
    "leak": {"mb_per_min": Param(5, minimum=0, exclusive_min=True)},
    "silent": {},
    "reboot-loop": {},
    "offline": {"after": Param(0, minimum=0)},
    "late": {"after": Param(5, minimum=0)},
}
SELECTORS = ("fraction", "hardware", "group", "device", "version")


@dataclass(frozen=True, slots=True)
class FaultSpec:
    """One fault and the devices it targets. Build with ``parse_fault`` or directly."""

    kind: str
    params: Mapping[str, float] = field(default_factory=dict)
    fraction: float = 1.0
    hardware: frozenset[str] = frozenset()
    group: frozenset[str] = frozenset()
    device: frozenset[str] = frozenset()
    version: frozenset[str] = frozenset()

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise InputError(f"fault kind {self.kind!r} is not one of {', '.join(KINDS)}")
        full = dict(self.params)
        for key in full:
            if key not in KINDS[self.kind]:
                raise InputError(f"fault {self.kind}: unknown parameter {key!r}")
        for key, param in KINDS[self.kind].items():
            if key not in full:
                if param.default is None:
                    raise InputError(f"fault {self.kind}: {key}= is required")
                full[key] = param.default
        if not 0 < self.fraction <= 1:
            raise InputError(f"fault {self.kind}: fraction must be in (0, 1]")
        ordered = {key: full[key] for key in KINDS[self.kind]}  # one spelling per spec
        object.__setattr__(self, "params", MappingProxyType(ordered))

    def param(self, key: str) -> float:
        return self.params[key]

    def matches_device(self, device: Device) -> bool:
        """The static selectors (everything but ``fraction`` and ``version``)."""
        return (
            (not self.hardware or device.hardware in self.hardware)
            and (not self.group or device.group in self.group)
            and (not self.device or device.id in self.device)
        )

    def applies_to_version(self, version: str | None) -> bool:
        return not self.version or (version is not None and version in self.version)

    def __str__(self) -> str:
        items = [f"{k}={_num(v)}" for k, v in self.params.items()]
        if self.fraction != 1.0:
            items.append(f"fraction={_num(self.fraction)}")
        for name in ("hardware", "group", "device", "version"):
            values: frozenset[str] = getattr(self, name)
            if values:
                items.append(f"{name}={'|'.join(sorted(values))}")
        return self.kind + (":" + ",".join(items) if items else "")


def _num(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(value)


def _fail(text: str, why: str) -> InputError:
    return InputError(f"--fault {text!r}: {why}")


def _number(text: str, kind: str, key: str, raw: str, param: Param) -> float:
    try:
        value = float(raw)
    except ValueError:
        raise _fail(text, f"{key}={raw!r} is not a number") from None
    if math.isnan(value) or (math.isinf(value) and not param.infinite):
        raise _fail(text, f"{key}={raw!r} must be a finite number")
    if param.integer and not value.is_integer():
        raise _fail(text, f"{key}={raw!r} must be a whole number")
    low, high = param.minimum, param.maximum
    if low is not None and (value < low or (param.exclusive_min and value == low)):
        rel = ">" if param.exclusive_min else ">="
        raise _fail(text, f"{key}={raw} must be {rel} {_num(low)}")
    if high is not None and value > high:
        raise _fail(text, f"{key}={raw} must be <= {_num(high)}")
    return value


def parse_fault(text: str) -> FaultSpec:
    """``"crash-loop:fraction=0.3,version=2.0.0"`` -> ``FaultSpec``. ``InputError`` if bad."""
    kind, _, rest = text.strip().partition(":")
    kind = kind.strip()
    if kind not in KINDS:
        raise _fail(text, f"unknown fault kind {kind!r} (one of {', '.join(KINDS)})")
    allowed = KINDS[kind]
    params: dict[str, float] = {}
    fraction = 1.0
    sets: dict[str, frozenset[str]] = {}
    seen: set[str] = set()
    for item in (i.strip() for i in rest.split(",")) if rest.strip() else ():
        key, eq, raw = item.partition("=")
        key, raw = key.strip(), raw.strip()
        if not eq or not key or not raw:
            raise _fail(text, f"{item!r} is not key=value")
        if key in seen:
            raise _fail(text, f"key {key!r} given twice")
        seen.add(key)
        if key in allowed:
            params[key] = _number(text, kind, key, raw, allowed[key])
        elif key == "fraction":
            fraction = _number(text, kind, key, raw, Param(1, 0, 1, exclusive_min=True))
        elif key in SELECTORS:
            values = frozenset(v.strip() for v in raw.split("|") if v.strip())
            if not values:
                raise _fail(text, f"{key}= needs a value")
            sets[key] = values
        else:
            takes = ", ".join(allowed) or "no parameters"
            raise _fail(
                text,
                f"unknown key {key!r} ({kind} takes {takes}; selectors: {', '.join(SELECTORS)})",
            )
    for key, param in allowed.items():
        if param.default is None and key not in params:
            raise _fail(text, f"{kind} needs {key}=")
    return FaultSpec(
        kind=kind,
        params=params,
        fraction=fraction,
        hardware=sets.get("hardware", frozenset()),
        group=sets.get("group", frozenset()),
        device=sets.get("device", frozenset()),
        version=sets.get("version", frozenset()),
    )


def select_devices(
    spec: FaultSpec, devices: Sequence[Device], seed: int, salt: int = 0
) -> list[Device]:
    """The devices ``spec`` hits among ``devices`` (inventory order), deterministic by seed.

    ``salt`` distinguishes two injections of the same spec (the n-th injection of a fleet)."""
    candidates = [d for d in devices if spec.matches_device(d)]
    if spec.fraction >= 1.0 or not candidates:
        return candidates
    count = max(1, round(spec.fraction * len(candidates)))

    def rank(d: Device) -> bytes:
        return hashlib.blake2b(f"fault/{seed}/{salt}/{spec}/{d.id}".encode()).digest()

    chosen = {d.id for d in sorted(candidates, key=rank)[:count]}
    return [d for d in candidates if d.id in chosen]
