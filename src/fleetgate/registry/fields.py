"""From raw inventory entries to validated ``Device`` values, with every problem reported.

Every inventory format (fleet.yaml, fleet.csv, Ansible INI/YAML) first turns each device into a
``RawEntry``: the values the user wrote, keyed by *canonical field* (``id``, ``hardware``,
``arch``, ``group``, ``address``, ``token_env``, ``token_file``, ``ram_mb``, ``disk_mb``,
``gpu``, ``monitoring``, ``critical``, ``state``; plus ``software`` names), and the key the user
actually wrote for each (``resources.ram_mb``, ``fleetgate_ram_mb`` …) so messages quote the
user's own spelling. ``build_devices`` then checks all entries at once.

Contract:
- All problems are collected; a bad inventory raises one ``ValidationError`` whose lines read
  ``FILE: device 'ID' (WHERE): FIELD: what is wrong`` — WHERE is ``entry N`` / ``line N`` /
  ``host 'NAME'``, as the format knows it. A duplicate id names both places.
- Values may arrive as text (CSV cells, INI values, YAML scalars: see ``yaml_text``) or as
  native JSON values (the store's codec); numbers and booleans are parsed from either, but a
  boolean is never a number and a number is never text.
- ``None``/absent means "not given": required fields report ``missing``, optional ones take the
  defaults (monitoring=medium, critical=false, state=active, gpu=false, software={}).
- ``inventory_rules`` adds the rules for files a human edits: exactly one of token_env /
  token_file, an http(s):// or mqtt(s):// address with a host, selector-friendly software
  names. The facts (hardware, arch, ram_mb, disk_mb) may be absent: see ``Device``.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import TypeVar
from urllib.parse import urlparse

from fleetgate.core.model import (
    DEVICE_ID_RE,
    NAME_RE,
    Arch,
    Device,
    DeviceState,
    Monitoring,
    Resources,
)
from fleetgate.errors import ValidationError

FIELDS = (
    "id",
    "hardware",
    "arch",
    "group",
    "address",
    "token_env",
    "token_file",
    "ram_mb",
    "disk_mb",
    "gpu",
    "monitoring",
    "critical",
    "state",
    "state_reason",
)
# Device fields: a software entry named like one would be shadowed by the field in selectors
# and canary cover (``Device.attribute`` reads fields first) or be confused with it.
RESERVED_SOFTWARE = frozenset({*FIELDS, "resources", "software"})
ENV_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_TRUE = frozenset({"true", "yes", "on", "1"})
_FALSE = frozenset({"false", "no", "off", "0"})
# Keys that would put a credential into the inventory itself.
INLINE_TOKEN_KEYS = frozenset({"token", "password", "secret", "api_key"})
# How the controller reaches a device (transports/router.py picks the channel by scheme).
ADDRESS_SCHEMES = ("http", "https", "mqtt", "mqtts")
ADDRESS_HINT = "http://, https://, mqtt:// or mqtts://"
_ARCH_HINTS = {"aarch64": "arm64", "armv7l": "armv7", "armhf": "armv7", "amd64": "x86_64"}

E = TypeVar("E", bound=Enum)


@dataclass
class RawEntry:
    """One device as written in a file, before validation."""

    where: str
    values: dict[str, object] = field(default_factory=dict)
    software: dict[str, object] = field(default_factory=dict)
    labels: dict[str, str] = field(default_factory=dict)
    software_prefix: str = "software."
    # (field label, message) found while reading the entry's shape, e.g. unknown keys.
    problems: list[tuple[str, str]] = field(default_factory=list)
    # An inline credential was refused: "token_env missing" would only repeat that message.
    inline_credential: bool = False

    def refuse_inline_credential(self, key: str, message: str) -> None:
        self.problems.append((key, message))
        self.inline_credential = True

    def label(self, name: str) -> str:
        return self.labels.get(name, name)

    def who(self) -> str:
        ident = self.values.get("id")
        shown = repr(ident) if isinstance(ident, str) and ident else "?"
        return f"device {shown} ({self.where})"


def unknown_key_message(key: str, allowed: Iterable[str], what: str = "key") -> str:
    """``unknown key (did you mean 'x'?); allowed: a, b, c`` — typo protection with a hint."""
    allowed = list(allowed)
    close = difflib.get_close_matches(key, allowed, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return f"unknown {what}{hint}; allowed: {', '.join(allowed)}"


def inline_token_message(env_key: str = "token_env", file_key: str = "token_file") -> str:
    return (
        "inline credentials are not allowed (they leak into logs and version control); "
        f"use {env_key} (an environment variable name) or {file_key} (a file path)"
    )


def describe(value: object) -> str:
    """A short rendering of a bad value for a message."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list | tuple):
        return "a list"
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


class _Checker:
    """Reads one entry's fields, remembering every problem."""

    def __init__(self, entry: RawEntry) -> None:
        self.entry = entry
        self.problems: list[tuple[str, str]] = list(entry.problems)

    def bad(self, name: str, message: str) -> None:
        self.problems.append((self.entry.label(name), message))

    def missing(self, name: str, message: str = "missing") -> None:
        # The reader may already have said why the field is absent (e.g. an ambiguous group).
        if all(label != self.entry.label(name) for label, _ in self.problems):
            self.bad(name, message)

    def text(self, name: str, *, required: bool) -> str | None:
        value = self.entry.values.get(name)
        if value is None:
            if required:
                self.missing(name)
            return None
        if not isinstance(value, str):
            self.bad(name, f"expected text, got {describe(value)}")
            return None
        if not value.strip():
            self.bad(name, "must not be empty")
            return None
        return value

    def number(self, name: str, *, required: bool = True) -> int | None:
        value = self.entry.values.get(name)
        if value is None:
            if required:
                self.missing(name)
            return None
        if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
            return value
        if isinstance(value, str) and value.strip().isdigit() and value.strip().isascii():
            return int(value.strip())
        self.bad(name, f"expected a whole number of MB (0 or more), got {describe(value)}")
        return None

    def flag(self, name: str, default: bool) -> bool:
        value = self.entry.values.get(name)
        if value is None:
            return default
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
            return value.strip().lower() in _TRUE
        self.bad(name, f"expected true or false, got {describe(value)}")
        return default

    def choice(
        self, name: str, enum: type[E], default: E | None, *, required: bool = True
    ) -> E | None:
        value = self.entry.values.get(name)
        allowed = ", ".join(str(m.value) for m in enum)
        if value is None:
            if default is None and required:
                self.missing(name, f"missing (one of {allowed})")
            return default
        if isinstance(value, str):
            try:
                return enum(value.strip())
            except ValueError:
                pass
        hint = ""
        if isinstance(value, str) and value.strip().lower() in _ARCH_HINTS and enum is Arch:
            hint = f" (did you mean {_ARCH_HINTS[value.strip().lower()]!r}?)"
        self.bad(name, f"must be one of {allowed}, got {describe(value)}{hint}")
        return None


def _check_address(c: _Checker, address: str | None) -> None:
    if address is None:
        return
    try:
        parsed = urlparse(address)
        parsed.port  # noqa: B018 - raises ValueError on a malformed port
    except ValueError as exc:
        c.bad("address", f"{address!r} is not a valid URL ({exc})")
        return
    if parsed.scheme not in ADDRESS_SCHEMES or not parsed.hostname:
        c.bad("address", f"{address!r} must be an {ADDRESS_HINT} URL with a host")
        return
    if parsed.scheme in ("mqtt", "mqtts"):
        # Reached through a broker (docs/transports.md "MQTT"): the path is at most one topic
        # segment, the device's topic id.
        from fleetgate.core.mqttwire import WireError, parse_broker

        try:
            parse_broker(address)
        except WireError as exc:
            c.bad("address", str(exc))


def _check_tokens(c: _Checker, token_env: str | None, token_file: str | None) -> None:
    if token_env is not None and token_file is not None:
        c.bad(
            "token_env",
            f"give only one of {c.entry.label('token_env')} and {c.entry.label('token_file')}",
        )
    elif (
        token_env is None
        and token_file is None
        and not c.entry.inline_credential
        and not any(c.entry.values.get(k) is not None for k in ("token_env", "token_file"))
    ):
        c.bad(
            "token_env",
            f"missing: give {c.entry.label('token_env')} (an environment variable name) or "
            f"{c.entry.label('token_file')} (a file path) for the device credential",
        )
    if token_env is not None and not ENV_NAME_RE.match(token_env):
        c.bad("token_env", f"{token_env!r} is not an environment variable name")


def _software(c: _Checker, inventory_rules: bool) -> dict[str, str]:
    result: dict[str, str] = {}
    for name, value in c.entry.software.items():
        label = f"{c.entry.software_prefix}{name}"
        if inventory_rules and not NAME_RE.match(name):
            c.problems.append((label, "software names must match [A-Za-z0-9._-]"))
            continue
        if inventory_rules and name in RESERVED_SOFTWARE:
            c.problems.append((label, f"{name!r} is a device field, not a software name"))
            continue
        if not isinstance(value, str) or not value.strip():
            got = "nothing" if value is None else describe(value)
            c.problems.append((label, f"expected a version or name as text, got {got}"))
            continue
        result[name] = value
    return result


def build_device(
    entry: RawEntry, *, inventory_rules: bool = True
) -> tuple[Device | None, list[tuple[str, str]]]:
    """Validate one entry: the device, or ``None`` and the (field, message) problems."""
    c = _Checker(entry)
    ident = c.text("id", required=True)
    if ident is not None and not DEVICE_ID_RE.match(ident):
        c.bad("id", f"{ident!r} must be 1-128 characters of A-Z a-z 0-9 . _ -")
    # Facts (hardware, arch, ram_mb, disk_mb) may be left out: the device reports them at
    # first contact (``registry refresh``); until then it is never planned.
    hardware = c.text("hardware", required=False)
    arch = c.choice("arch", Arch, None, required=False)
    group = c.text("group", required=True)
    address = c.text("address", required=True)
    token_env = c.text("token_env", required=False)
    token_file = c.text("token_file", required=False)
    if inventory_rules:
        _check_address(c, address)
        _check_tokens(c, token_env, token_file)
    ram = c.number("ram_mb", required=False)
    disk = c.number("disk_mb", required=False)
    gpu = c.flag("gpu", False)
    given = [n for n in ("ram_mb", "disk_mb") if entry.values.get(n) is not None]
    if len(given) == 1:
        other = "disk_mb" if given[0] == "ram_mb" else "ram_mb"
        c.missing(
            other,
            f"missing: give both {c.entry.label('ram_mb')} and "
            f"{c.entry.label('disk_mb')}, or neither (the device reports them)",
        )
    monitoring = c.choice("monitoring", Monitoring, Monitoring.MEDIUM)
    critical = c.flag("critical", False)
    state = c.choice("state", DeviceState, DeviceState.ACTIVE)
    state_reason = c.text("state_reason", required=False) or ""
    software = _software(c, inventory_rules)
    if c.problems:
        return None, c.problems
    assert ident and group and address and monitoring and state
    device = Device(
        id=ident,
        hardware=hardware,
        arch=arch,
        group=group,
        address=address,
        resources=None if ram is None or disk is None else Resources(ram, disk, gpu),
        token_env=token_env,
        token_file=token_file,
        software=software,
        monitoring=monitoring,
        critical=critical,
        state=state,
        state_reason=state_reason,
    )
    return device, []


def build_devices(
    source: str,
    entries: Sequence[RawEntry],
    problems: Sequence[str] = (),
    *,
    inventory_rules: bool = True,
) -> list[Device]:
    """Validate every entry of one file (``source``) and check ids are unique.

    ``problems`` are lines the reader already found (malformed header, bad section …); they
    are reported together with the entries' problems. Raises ``ValidationError`` if anything
    is wrong, including an inventory with no devices at all.
    """
    lines = list(problems)
    devices: list[Device] = []
    first_seen: dict[str, RawEntry] = {}
    for entry in entries:
        device, issues = build_device(entry, inventory_rules=inventory_rules)
        lines.extend(f"{source}: {entry.who()}: {name}: {msg}" for name, msg in issues)
        ident = entry.values.get("id")
        if isinstance(ident, str) and ident.strip():
            if ident in first_seen:
                lines.append(
                    f"{source}: {entry.who()}: {entry.label('id')}: duplicate id, "
                    f"already used by {first_seen[ident].where}"
                )
                continue
            first_seen[ident] = entry
        if device is not None:
            devices.append(device)
    if not entries and not lines:
        lines.append(f"{source}: no devices found")
    if lines:
        raise ValidationError(lines)
    return devices
