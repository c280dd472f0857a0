"""The fault grammar and which devices a fault selects (deterministic by seed)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from fleetgate.errors import InputError
from fleetgate.sim.faults import KINDS, FaultSpec, parse_fault, select_devices
from fleetgate.sim.fleet import SimFleet
from fleetgate.sim.fleetspec import FleetSpec


@pytest.mark.parametrize(
    ("text", "kind", "params", "canonical"),
    [
        ("unreachable", "unreachable", {}, "unreachable"),
        ("flaky:k=2", "flaky", {"k": 2}, "flaky:k=2"),
        ("flaky", "flaky", {"k": 1}, "flaky:k=1"),
        ("slow-link:kbps=500", "slow-link", {"kbps": 500}, "slow-link:kbps=500"),
        ("low-disk:free_mb=50", "low-disk", {"free_mb": 50}, "low-disk:free_mb=50"),
        ("start-fail", "start-fail", {"code": 3}, "start-fail:code=3"),
        (" errors : rate=0.2 , group=plant-b ", "errors", {"rate": 0.2},
         "errors:rate=0.2,group=plant-b"),
        ("latency:factor=3", "latency", {"factor": 3, "delay": 0}, "latency:factor=3,delay=0"),
        ("hot:temp=95", "hot", {"temp": 95}, "hot:temp=95"),
        ("rollback-fail:device=orin-a-03", "rollback-fail", {}, "rollback-fail:device=orin-a-03"),
        ("crash-loop:fraction=0.3,version=2.0.0", "crash-loop", {},
         "crash-loop:fraction=0.3,version=2.0.0"),
        ("unreachable:hardware=rpi4,fraction=0.25", "unreachable", {},
         "unreachable:fraction=0.25,hardware=rpi4"),
        ("surge", "surge", {"latency": 0.3, "errors": 0.01, "start": 0, "duration": math.inf},
         "surge:latency=0.3,errors=0.01,start=0,duration=inf"),
        ("surge:duration=900,start=600,latency=0.5", "surge",
         {"latency": 0.5, "errors": 0.01, "start": 600, "duration": 900},
         "surge:latency=0.5,errors=0.01,start=600,duration=900"),
        ("surge:duration=inf,group=plant-a", "surge",
         {"latency": 0.3, "errors": 0.01, "start": 0, "duration": math.inf},
         "surge:latency=0.3,errors=0.01,start=0,duration=inf,group=plant-a"),
        ("leak", "leak", {"mb_per_min": 5}, "leak:mb_per_min=5"),
        ("leak:version=2.0.0,mb_per_min=8", "leak", {"mb_per_min": 8},
         "leak:mb_per_min=8,version=2.0.0"),
        ("silent:fraction=0.1", "silent", {}, "silent:fraction=0.1"),
    ],
)  # fmt: skip
def test_valid_specs_parse_and_print_canonically(text, kind, params, canonical):
    spec = parse_fault(text)
    assert spec.kind == kind and dict(spec.params) == params
    assert str(spec) == canonical
    assert parse_fault(str(spec)) == spec


def test_selectors_take_alternatives():
    spec = parse_fault("hot:group=plant-a|plant-c,hardware=rpi4,device=a|b,version=2.0.0|2.0.1")
    assert spec.group == {"plant-a", "plant-c"} and spec.hardware == {"rpi4"}
    assert spec.device == {"a", "b"} and spec.version == {"2.0.0", "2.0.1"}
    assert spec.applies_to_version("2.0.1") and not spec.applies_to_version("1.0.0")
    assert not spec.applies_to_version(None)
    assert parse_fault("hot").applies_to_version(None)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("melt", "unknown fault kind 'melt'"),
        ("errors", "errors needs rate="),
        ("errors:rat=0.2", "unknown key 'rat' (errors takes rate; selectors: fraction"),
        ("unreachable:k=2", "unknown key 'k' (unreachable takes no parameters"),
        ("errors:rate=lots", "rate='lots' is not a number"),
        ("errors:rate=1.5", "rate=1.5 must be <= 1"),
        ("slow-link:kbps=0", "kbps=0 must be > 0"),
        ("flaky:k=1.5", "k='1.5' must be a whole number"),
        ("hot:fraction=0", "fraction=0 must be > 0"),
        ("hot:fraction=2", "fraction=2 must be <= 1"),
        ("hot:temp=90,temp=91", "key 'temp' given twice"),
        ("hot:temp", "'temp' is not key=value"),
        ("hot:group=", "'group=' is not key=value"),
        ("hot:group=|", "group= needs a value"),
        ("errors:rate=nan", "rate='nan' must be a finite number"),
        ("hot:temp=inf", "temp='inf' must be a finite number"),
        ("surge:start=inf", "start='inf' must be a finite number"),
        ("surge:duration=0", "duration=0 must be > 0"),
        ("surge:latency=-0.1", "latency=-0.1 must be >= 0"),
        ("surge:errors=2", "errors=2 must be <= 1"),
        ("surge:rate=0.1", "unknown key 'rate' (surge takes latency, errors, start, duration"),
        ("leak:mb_per_min=0", "mb_per_min=0 must be > 0"),
        ("silent:k=1", "unknown key 'k' (silent takes no parameters"),
    ],
)
def test_bad_specs_name_the_spec_and_the_problem(text, message):
    with pytest.raises(InputError) as info:
        parse_fault(text)
    assert str(info.value).startswith(f"--fault {text!r}: ")
    assert message in str(info.value)


def test_every_kind_is_documented():
    doc = (Path(__file__).resolve().parents[2] / "docs" / "simulator.md").read_text()
    for kind in KINDS:
        assert f"`{kind}" in doc, kind


def test_fault_spec_validates_when_built_directly():
    with pytest.raises(InputError, match="rate= is required"):
        FaultSpec("errors")
    with pytest.raises(InputError, match="unknown parameter 'k'"):
        FaultSpec("hot", {"k": 1})


def fleet(seed: int = 0, devices: int = 60) -> SimFleet:
    return SimFleet(FleetSpec(devices=devices, seed=seed, token="t"))


def test_static_selectors_pick_by_hardware_group_and_device():
    f = fleet()
    rpi_b = f.inject("hot:hardware=rpi4,group=plant-b")
    assert rpi_b and all(
        (f.device(i).device.hardware, f.device(i).device.group) == ("rpi4", "plant-b")
        for i in rpi_b
    )
    expected = [d.id for d in f.devices if d.hardware == "rpi4" and d.group == "plant-b"]
    assert rpi_b == expected
    assert f.inject("rollback-fail:device=orin-a-03") == ["orin-a-03"]
    assert "rollback-fail" in f.device_state("orin-a-03").faults[0]


def test_fraction_is_exact_and_deterministic_by_seed():
    picks = [fleet(seed=1).inject("unreachable:hardware=rpi4,fraction=0.25") for _ in range(3)]
    assert picks[0] == picks[1] == picks[2]
    assert len(picks[0]) == 6  # 24 rpi4 in a 60-device 40/40/20 fleet
    others = {tuple(fleet(seed=s).inject("unreachable:fraction=0.25")) for s in range(2, 8)}
    assert len(others) > 1  # another seed, another pick
    assert all(len(o) == 15 for o in others)
    tiny = fleet(seed=1).inject("errors:rate=0.3,fraction=0.01")
    assert len(tiny) == 1  # a fraction never rounds a fault away


def test_selection_does_not_depend_on_the_order_of_the_candidates():
    f = fleet(seed=4)
    spec = parse_fault("crash-loop:fraction=0.5,group=plant-a")
    forward = select_devices(spec, f.devices, seed=4)
    backward = select_devices(spec, list(reversed(f.devices)), seed=4)
    assert {d.id for d in forward} == {d.id for d in backward}


def test_selectors_naming_things_the_fleet_lacks_are_input_errors():
    f = fleet()
    for text, what in (
        ("rollback-fail:device=orin-z-99", "device 'orin-z-99'"),
        ("hot:hardware=rpi5", "hardware 'rpi5'"),
        ("hot:group=plant-q", "group 'plant-q'"),
    ):
        with pytest.raises(InputError, match=what):
            f.inject(text)
