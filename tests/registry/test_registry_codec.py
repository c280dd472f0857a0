"""Device JSON codec: exact shape, round trip (Hypothesis), validation of stored records."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fleetgate.core.model import Arch, Device, DeviceState, Monitoring, Resources
from fleetgate.errors import ValidationError
from fleetgate.registry import (
    device_from_dict,
    device_to_dict,
    devices_to_yaml,
    load_inventory,
)

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
_ID = st.from_regex(r"[A-Za-z0-9._-]{1,24}", fullmatch=True)
_TEXT = st.text(
    st.characters(codec="utf-8", exclude_categories=("Cs", "Cc", "Zs", "Zl", "Zp")),
    min_size=1,
    max_size=20,
)


@st.composite
def devices(draw: st.DrawFn) -> Device:
    token = draw(st.sampled_from(["env", "file", "both", "none"]))
    return Device(
        id=draw(_ID),
        hardware=draw(_TEXT),
        arch=draw(st.sampled_from(list(Arch))),
        group=draw(_TEXT),
        address=draw(st.sampled_from(["http://127.0.0.1:7601", "https://[::1]/x", "mqtt://a"])),
        resources=Resources(
            ram_mb=draw(st.integers(0, 2**40)),
            disk_mb=draw(st.integers(0, 2**40)),
            gpu=draw(st.booleans()),
        ),
        token_env="FLEETGATE_TOKEN_X" if token in ("env", "both") else None,
        token_file="/run/token" if token in ("file", "both") else None,
        software=draw(st.dictionaries(_ID, _TEXT, max_size=4)),
        monitoring=draw(st.sampled_from(list(Monitoring))),
        critical=draw(st.booleans()),
        state=draw(st.sampled_from(list(DeviceState))),
    )


@settings(max_examples=200, deadline=None)
@given(devices())
def test_round_trip_through_json(device: Device) -> None:
    encoded = json.dumps(device_to_dict(device))
    assert device_from_dict(json.loads(encoded)) == device


def test_shape_matches_fleet_yaml() -> None:
    device = load_inventory(EXAMPLES / "fleet.yaml")[0]
    assert device_to_dict(device) == {
        "id": "orin-a-01",
        "hardware": "jetson-orin-nano",
        "arch": "arm64",
        "group": "plant-a",
        "address": "http://127.0.0.1:7601",
        "token_env": "FLEETGATE_TOKEN_ORIN_A_01",
        "resources": {"ram_mb": 8192, "disk_mb": 120000, "gpu": True},
        "software": {"jetpack": "6.0", "os": "ubuntu-22.04"},
        "monitoring": "high",
        "critical": True,
        "state": "active",
    }


def test_yaml_writer_round_trips_the_example_fleet(tmp_path: Path) -> None:
    fleet = load_inventory(EXAMPLES / "fleet.yaml")
    out = tmp_path / "copy.yaml"
    out.write_text(devices_to_yaml(fleet, header="written by a test\nsecond line"))
    text = out.read_text()
    assert text.startswith("# written by a test\n# second line\ndevices:\n")
    assert "jetpack: '6.0'" in text  # quoted: any YAML reader keeps it a string
    assert load_inventory(out) == fleet


def test_bad_record_names_every_field() -> None:
    record = device_to_dict(load_inventory(EXAMPLES / "fleet.yaml")[0])
    record["arch"] = "mips"
    record["resources"] = {"ram_mb": "x", "disk_mb": 1.5}
    record["colour"] = "red"
    with pytest.raises(ValidationError) as info:
        device_from_dict(record, where="store row 7")
    assert info.value.problems == [
        "store row 7: device 'orin-a-01' (record): colour: unknown key; allowed: id, hardware,"
        " arch, group, address, token_env, token_file, resources, software, monitoring,"
        " critical, state, state_reason",
        "store row 7: device 'orin-a-01' (record): arch: must be one of arm64, armv7, x86_64,"
        " got 'mips'",
        "store row 7: device 'orin-a-01' (record): resources.ram_mb: expected a whole number of"
        " MB (0 or more), got 'x'",
        "store row 7: device 'orin-a-01' (record): resources.disk_mb: expected a whole number of"
        " MB (0 or more), got 1.5",
    ]


def test_non_mapping_record() -> None:
    with pytest.raises(ValidationError, match="expected a mapping"):
        device_from_dict(["nope"])  # type: ignore[arg-type]
