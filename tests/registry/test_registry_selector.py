"""Selector grammar: AND, negation, alternatives, globs, software keys, malformed terms."""

from __future__ import annotations

from pathlib import Path

import pytest

from fleetgate.core.model import Arch, Device, DeviceState, Monitoring, Resources
from fleetgate.errors import InputError
from fleetgate.registry import load_inventory, parse_selector, select_devices

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def dev(ident: str, **kw: object) -> Device:
    base: dict[str, object] = {
        "hardware": "rpi4",
        "arch": Arch.ARM64,
        "group": "plant-a",
        "address": f"http://127.0.0.1:7601/{ident}",
        "resources": Resources(ram_mb=4096, disk_mb=32000),
        "token_env": "T",
    }
    base.update(kw)
    return Device(id=ident, **base)  # type: ignore[arg-type]


FLEET = [
    dev(
        "orin-1",
        hardware="jetson-orin-nano",
        software={"jetpack": "6.0"},
        resources=Resources(8192, 1, gpu=True),
        monitoring=Monitoring.HIGH,
    ),
    dev(
        "orin-2",
        hardware="jetson-orin-nano",
        software={"jetpack": "5.1.2"},
        group="plant-b",
        resources=Resources(8192, 1, gpu=True),
    ),
    dev("rpi-1", software={"os": "debian-12"}, state=DeviceState.MAINTENANCE),
    dev("rpi-2", arch=Arch.ARMV7, group="plant-c"),
    dev("gw-1", hardware="gateway", arch=Arch.X86_64, critical=True, state=DeviceState.QUARANTINE),
]


def ids(expr: str | None) -> list[str]:
    return [d.id for d in select_devices(FLEET, expr)]


@pytest.mark.parametrize(
    ("expr", "expected"),
    [
        ("hardware=rpi4", ["rpi-1", "rpi-2"]),
        ("hardware=rpi4,group=plant-c", ["rpi-2"]),
        ("hardware=rpi4|gateway", ["rpi-1", "rpi-2", "gw-1"]),
        ("hardware!=rpi4", ["orin-1", "orin-2", "gw-1"]),
        ("!hardware=rpi4", ["orin-1", "orin-2", "gw-1"]),
        ("!state=maintenance|quarantine", ["orin-1", "orin-2", "rpi-2"]),
        ("id=orin-*", ["orin-1", "orin-2"]),
        ("id=*-[12],group=plant-?", ["orin-1", "orin-2", "rpi-1", "rpi-2", "gw-1"]),
        ("jetpack=6.0", ["orin-1"]),
        ("jetpack=5.*|6.*", ["orin-1", "orin-2"]),
        ("jetpack=*", ["orin-1", "orin-2"]),  # "has a jetpack"
        ("jetpack!=*", ["rpi-1", "rpi-2", "gw-1"]),  # "has none"
        ("jetpack!=6.0", ["orin-2", "rpi-1", "rpi-2", "gw-1"]),
        ("os=debian-12", ["rpi-1"]),
        ("nosuchkey=x", []),
        ("critical=true", ["gw-1"]),
        ("critical=TRUE", ["gw-1"]),  # enumerations ignore case
        ("gpu=true,arch=ARM64", ["orin-1", "orin-2"]),
        ("arch=armv7", ["rpi-2"]),
        ("monitoring=high", ["orin-1"]),
        ("monitoring=medium", ["orin-2", "rpi-1", "rpi-2", "gw-1"]),
        ("address=http://127.0.0.1:7601/gw-1", ["gw-1"]),
        ("id=ORIN-1", []),  # text fields are case-sensitive
        (" hardware = rpi4 , group = plant-a ", ["rpi-1"]),
    ],
)
def test_selects(expr: str, expected: list[str]) -> None:
    assert ids(expr) == expected


def test_none_selects_everything_in_order() -> None:
    assert ids(None) == [d.id for d in FLEET]


@pytest.mark.parametrize(
    ("expr", "term", "why"),
    [
        ("hardware", "hardware", "expected key=value"),
        ("=x", "=x", "missing key"),
        ("a==b", "a==b", "unexpected '='"),
        ("a=b=c", "a=b=c", "unexpected '='"),
        ("a=", "a=", "empty value"),
        ("a=x|", "a=x|", "empty value"),
        ("group=a,", "", "empty term"),
        ("group=a,,arch=arm64", "", "empty term"),
        ("!a!=b", "!a!=b", "negated twice"),
        ("ha rd=x", "ha rd=x", "key 'ha rd' must be"),
        ("!=x", "!=x", "missing key"),
    ],
)
def test_malformed_terms_name_selector_and_term(expr: str, term: str, why: str) -> None:
    with pytest.raises(InputError) as info:
        parse_selector(expr)
    message = str(info.value)
    assert message.startswith(f"selector {expr!r}: term {term!r}: {why}")
    assert "\n" not in message


def test_empty_selector_is_an_error() -> None:
    with pytest.raises(InputError, match="empty"):
        select_devices(FLEET, "  ")


def test_parsed_selector_renders_and_reuses() -> None:
    sel = parse_selector("!state=quarantine, hardware=rpi4|gateway")
    assert str(sel) == "state!=quarantine,hardware=rpi4|gateway"
    assert [d.id for d in FLEET if sel.matches(d)] == ["rpi-1", "rpi-2"]


def test_selectors_on_example_fleet() -> None:
    devices = load_inventory(EXAMPLES / "fleet.yaml")
    orins_a = select_devices(devices, "group=plant-a,hardware=jetson-orin-nano")
    assert len(orins_a) == 8
    deployable = select_devices(devices, "state=active,critical=false")
    assert deployable and all(d.state is DeviceState.ACTIVE and not d.critical for d in deployable)
    old_jetpack = select_devices(devices, "jetpack=5.*")
    assert old_jetpack and all(d.software["jetpack"].startswith("5.") for d in old_jetpack)
