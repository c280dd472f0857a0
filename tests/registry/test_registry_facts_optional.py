"""Inventories as a new user has them: id, address (ansible_host), group (with :children) and
a credential, and no facts; what the device will report is filled at first contact."""

from __future__ import annotations

from pathlib import Path

import pytest

from fleetgate.errors import ValidationError
from fleetgate.registry import device_to_dict, load_inventory
from fleetgate.registry.codec import device_from_dict
from fleetgate.registry.facts import apply_facts, read_facts

ANSIBLE = """\
[orin]
orin-[01:02] ansible_host=10.0.0.1[1:2]

[rpi]
rpi-a ansible_host=10.0.1.5

[plant_a:children]
orin
rpi

[plant_a:vars]
fleetgate_token_file=/etc/fleetgate/plant-a.token
"""


def test_an_ansible_inventory_without_facts_is_accepted(tmp_path: Path) -> None:
    path = tmp_path / "hosts"
    path.write_text(ANSIBLE.replace("10.0.0.1[1:2]", "10.0.0.11"))
    devices = {d.id: d for d in load_inventory(path)}
    assert set(devices) == {"orin-01", "orin-02", "rpi-a"}
    orin = devices["orin-01"]
    assert orin.group == "orin"  # the most specific group that lists it
    assert orin.address == "http://10.0.0.11:7601"
    assert orin.token_file == "/etc/fleetgate/plant-a.token"  # from plant_a:vars (parent)
    assert not orin.facts_known
    assert orin.unknown_facts == ("hardware", "arch", "ram_mb", "disk_mb")
    # The store's codec keeps "unknown" as absent keys, and reads it back the same.
    doc = device_to_dict(orin)
    assert "hardware" not in doc and "resources" not in doc
    assert device_from_dict(doc) == orin


def test_half_of_resources_is_still_a_mistake(tmp_path: Path) -> None:
    path = tmp_path / "hosts"
    path.write_text("[g]\nh fleetgate_ram_mb=512 fleetgate_token_env=T\n")
    with pytest.raises(ValidationError) as info:
        load_inventory(path)
    assert info.value.problems == [
        f"{path}: device 'h' (line 2): fleetgate_disk_mb: missing: give both fleetgate_ram_mb "
        "and fleetgate_disk_mb, or neither (the device reports them)"
    ]


def test_mqtt_addresses_are_device_addresses(tmp_path: Path) -> None:
    path = tmp_path / "hosts"
    path.write_text("[g]\nh fleetgate_address=mqtts://broker:8883 fleetgate_token_env=T\n")
    assert load_inventory(path)[0].address == "mqtts://broker:8883"


def test_reported_facts_fill_the_device_and_keep_what_the_inventory_owns(tmp_path: Path) -> None:
    path = tmp_path / "hosts"
    path.write_text("[g]\nh fleetgate_token_env=T fleetgate_software_jetpack=6.0\n")
    (d,) = load_inventory(path)
    facts = read_facts(
        {
            "hardware": "rpi4",
            "arch": "aarch64",
            "ram_mb": 3796.4,
            "disk_mb": 29000.0,
            "disk_free_mb": 100.0,
            "gpu": None,
            "software": {"python": "3.11.2"},
        }
    )
    filled = apply_facts(d, facts)
    assert filled.facts_known and filled.arch is not None and filled.arch.value == "arm64"
    assert filled.resources is not None and filled.resources.ram_mb == 3796
    assert filled.resources.disk_mb == 29000 and not filled.resources.gpu
    assert dict(filled.software) == {"jetpack": "6.0", "python": "3.11.2"}
    assert (filled.id, filled.group, filled.token_env) == (d.id, d.group, d.token_env)


@pytest.mark.parametrize(
    ("facts", "problem"),
    [
        ({"arch": "arm64", "ram_mb": 1, "disk_mb": 1}, "facts.hardware: expected a name"),
        ({"hardware": "x", "arch": "sparc", "ram_mb": 1, "disk_mb": 1}, "facts.arch: must be"),
        ({"hardware": "x", "arch": "arm64", "ram_mb": -1, "disk_mb": 1}, "facts.ram_mb:"),
        ({"hardware": "x", "arch": "arm64", "ram_mb": 1}, "facts.disk_free_mb: expected"),
        ({"hardware": "x", "arch": "arm64", "ram_mb": 1, "disk_mb": 1, "gpu": "y"}, "facts.gpu"),
        (
            {"hardware": "x", "arch": "arm64", "ram_mb": 1, "disk_mb": 1, "software": {"id": "1"}},
            "facts.software: 'id' is not a software name",
        ),
    ],
)
def test_malformed_facts_name_the_field(facts: dict[str, object], problem: str) -> None:
    with pytest.raises(ValidationError) as info:
        read_facts(facts)
    assert info.value.problems[0].startswith(problem), info.value.problems
