"""fleet.yaml loading: the example fleet, defaults, and every error class with exact messages."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from fleetgate.core.model import Arch, DeviceState, Monitoring
from fleetgate.errors import InputError, ValidationError
from fleetgate.registry import load_inventory

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"

GOOD = """\
  - id: dev-1
    hardware: rpi4
    arch: arm64
    group: plant-a
    address: http://127.0.0.1:7601
    token_env: FLEETGATE_TOKEN_DEV_1
    resources: {ram_mb: 4096, disk_mb: 32000}
"""


def write(tmp_path: Path, body: str, name: str = "fleet.yaml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(body))
    return path


def problems_of(path: Path) -> list[str]:
    with pytest.raises(ValidationError) as info:
        load_inventory(path)
    return info.value.problems


def test_example_fleet_loads_sixty_unique_devices() -> None:
    devices = load_inventory(EXAMPLES / "fleet.yaml")
    assert len(devices) == 60
    assert len({d.id for d in devices}) == 60
    assert len({d.address for d in devices}) == 60
    assert {d.group for d in devices} == {"plant-a", "plant-b", "plant-c"}
    assert {d.hardware for d in devices} == {"jetson-orin-nano", "rpi4", "gateway"}
    assert {d.arch for d in devices} == {Arch.ARM64, Arch.ARMV7, Arch.X86_64}
    assert any(d.critical for d in devices)
    states = [d.state for d in devices]
    assert states.count(DeviceState.QUARANTINE) == 1
    assert DeviceState.MAINTENANCE in states
    assert {d.monitoring for d in devices} == set(Monitoring)
    for d in devices:
        assert d.token_env == "FLEETGATE_TOKEN_" + d.id.upper().replace("-", "_")
        assert d.token_file is None
        assert d.resources.gpu == (d.hardware == "jetson-orin-nano")
    jetpacks = {d.software["jetpack"] for d in devices if "jetpack" in d.software}
    assert jetpacks == {"6.0", "5.1.2"}  # versions stay text: "6.0" is not the float 6.0


def test_defaults_apply(tmp_path: Path) -> None:
    (device,) = load_inventory(write(tmp_path, "devices:\n" + GOOD))
    assert device.monitoring is Monitoring.MEDIUM
    assert device.critical is False
    assert device.state is DeviceState.ACTIVE
    assert device.software == {}
    assert device.resources.gpu is False
    assert device.token_env == "FLEETGATE_TOKEN_DEV_1"


def test_token_file_instead_of_token_env(tmp_path: Path) -> None:
    body = "devices:\n" + GOOD.replace("token_env: FLEETGATE_TOKEN_DEV_1", "token_file: /run/t")
    (device,) = load_inventory(write(tmp_path, body))
    assert device.token_file == "/run/t"
    assert device.token_env is None


def test_versions_and_numeric_looking_ids_keep_their_text(tmp_path: Path) -> None:
    body = "devices:\n" + GOOD.replace("dev-1", "0012").replace(
        "resources:", "software: {jetpack: 5.10, os: 022}\n    resources:"
    )
    (device,) = load_inventory(write(tmp_path, body))
    assert device.id == "0012"
    assert device.software == {"jetpack": "5.10", "os": "022"}


def test_missing_file_is_an_input_error_naming_it(tmp_path: Path) -> None:
    missing = tmp_path / "nope.yaml"
    with pytest.raises(InputError) as info:
        load_inventory(missing)
    assert str(info.value) == f"{missing}: no such file"
    assert not isinstance(info.value, ValidationError)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("devices:\n  - id: x\n    software: {a: 1\n", "line 4, column 1: malformed YAML"),
        ("devices:\n  - id: x\n  id: y\n   z: 1\n", "line 3, column 3: malformed YAML"),
        (
            "devices:\n  - id: x\n    id: y\n",
            "line 3, column 5: malformed YAML: duplicate key 'id'",
        ),
    ],
)
def test_malformed_yaml_is_one_line_with_file_and_line(
    tmp_path: Path, body: str, message: str
) -> None:
    path = write(tmp_path, body)
    with pytest.raises(InputError) as info:
        load_inventory(path)
    text = str(info.value)
    assert "\n" not in text
    assert text.startswith(f"{path}: {message}")


def test_duplicate_ids_name_both_entries(tmp_path: Path) -> None:
    other = GOOD.replace("7601", "7602")
    path = write(tmp_path, "devices:\n" + GOOD + other)
    assert problems_of(path) == [
        f"{path}: device 'dev-1' (entry 2): id: duplicate id, already used by entry 1"
    ]


@pytest.mark.parametrize(
    ("old", "new", "problem"),
    [
        ("arch: arm64", "arch: mips", "arch: must be one of arm64, armv7, x86_64, got 'mips'"),
        (
            "arch: arm64",
            "arch: aarch64",
            "arch: must be one of arm64, armv7, x86_64, got 'aarch64' (did you mean 'arm64'?)",
        ),
        ("    hardware: rpi4\n", "    hardware: ''\n", "hardware: must not be empty"),
        ("ram_mb: 4096", "ram_mb: lots", "resources.ram_mb: expected a whole number of MB"),
        ("ram_mb: 4096", "ram_mb: -1", "resources.ram_mb: expected a whole number of MB"),
        ("ram_mb: 4096", "ram_mb: true", "resources.ram_mb: expected a whole number of MB"),
        ("group: plant-a", "group: [a, b]", "group: expected text, got a list"),
        (
            "address: http://127.0.0.1:7601",
            "address: 127.0.0.1:7601",
            "address: '127.0.0.1:7601' must be an http://, https://, mqtt:// or mqtts:// URL",
        ),
        (
            "address: http://127.0.0.1:7601",
            "address: http://",
            "address: 'http://' must be an http://, https://, mqtt:// or mqtts:// URL with a host",
        ),
        (
            "address: http://127.0.0.1:7601",
            "address: http://127.0.0.1:99999",
            "address: 'http://127.0.0.1:99999' is not a valid URL",
        ),
        ("id: dev-1", "id: dev 1", "id: 'dev 1' must be 1-128 characters of A-Z a-z 0-9 . _ -"),
        (
            "group: plant-a",
            "group: plant-a\n    monitoring: extreme",
            "monitoring: must be one of high, medium, low, got 'extreme'",
        ),
        (
            "group: plant-a",
            "group: plant-a\n    critical: maybe",
            "critical: expected true or false, got 'maybe'",
        ),
        (
            "group: plant-a",
            "group: plant-a\n    hardwre: rpi4",
            "hardwre: unknown key (did you mean 'hardware'?); allowed: id, hardware, arch,",
        ),
        (
            "disk_mb: 32000}",
            "disk_mb: 32000, gpus: true}",
            "resources.gpus: unknown key (did you mean 'gpu'?); allowed: ram_mb, disk_mb, gpu",
        ),
        (
            "token_env: FLEETGATE_TOKEN_DEV_1",
            "token: s3cret",
            "token: inline credentials are not allowed",
        ),
        (
            "token_env: FLEETGATE_TOKEN_DEV_1",
            "token_env: A\n    token_file: /b",
            "token_env: give only one of token_env and token_file",
        ),
        (
            "token_env: FLEETGATE_TOKEN_DEV_1",
            "token_env: not-an-env",
            "token_env: 'not-an-env' is not an environment variable name",
        ),
        (
            "group: plant-a",
            "group: plant-a\n    software: {arch: x}",
            "software.arch: 'arch' is a device field, not a software name",
        ),
        (
            "group: plant-a",
            "group: plant-a\n    software: {os: [a]}",
            "software.os: expected a version or name as text, got a list",
        ),
    ],
)
def test_each_error_names_file_device_entry_and_field(
    tmp_path: Path, old: str, new: str, problem: str
) -> None:
    assert old in GOOD
    path = write(tmp_path, "devices:\n" + GOOD.replace(old, new))
    problems = problems_of(path)
    ident = "'dev 1'" if "dev 1" in new else "'dev-1'"
    assert len(problems) == 1, problems
    assert problems[0].startswith(f"{path}: device {ident} (entry 1): {problem}")


def test_missing_token_says_how_to_give_one(tmp_path: Path) -> None:
    path = write(
        tmp_path, "devices:\n" + GOOD.replace("    token_env: FLEETGATE_TOKEN_DEV_1\n", "")
    )
    (problem,) = problems_of(path)
    assert problem.startswith(
        f"{path}: device 'dev-1' (entry 1): token_env: missing: give token_env"
    )
    assert "token_file" in problem


def test_inline_token_is_refused_even_next_to_token_env(tmp_path: Path) -> None:
    body = GOOD.replace("token_env: FLEETGATE_TOKEN_DEV_1", "token_env: T\n    token: abc")
    (problem,) = problems_of(write(tmp_path, "devices:\n" + body))
    assert ": token: inline credentials are not allowed" in problem
    assert "use token_env" in problem and "token_file" in problem
    assert "abc" not in problem  # the secret is never echoed


def test_all_problems_are_reported_one_line_each(tmp_path: Path) -> None:
    body = GOOD.replace("arch: arm64", "arch: sparc").replace("ram_mb: 4096", "ram_mb: lots")
    body = body.replace("address: http://127.0.0.1:7601", "address: ftp://x")
    second = GOOD.replace("dev-1", "dev-2").replace("    group: plant-a\n", "")
    path = write(tmp_path, "devices:\n" + body + second)
    problems = problems_of(path)
    assert problems == [
        f"{path}: device 'dev-1' (entry 1): arch: must be one of arm64, armv7, x86_64, got 'sparc'",
        f"{path}: device 'dev-1' (entry 1): address: 'ftp://x' must be an http://, https://,"
        " mqtt:// or mqtts:// URL with a host",
        f"{path}: device 'dev-1' (entry 1): resources.ram_mb: expected a whole number of MB"
        " (0 or more), got 'lots'",
        f"{path}: device 'dev-2' (entry 2): group: missing",
    ]
    with pytest.raises(ValidationError) as info:
        load_inventory(path)
    assert str(info.value).count("\n") == 3


def test_entry_without_id_and_non_mapping_entries(tmp_path: Path) -> None:
    body = "devices:\n  - just-a-string\n" + GOOD.replace("    id: dev-1\n", "").replace(
        "  - hardware", "  - hardware"
    )
    path = write(tmp_path, body.replace("  - id: dev-1", "  -"))
    problems = problems_of(path)
    assert problems[0] == (
        f"{path}: entry 1: expected a mapping of device fields, got 'just-a-string'"
    )
    assert problems[1] == f"{path}: device ? (entry 2): id: missing"


@pytest.mark.parametrize(
    ("body", "problem"),
    [
        ("devices: []\n", "no devices found"),
        ("devices:\n", "no devices found"),
        ("devices: {a: 1}\n", "devices: expected a list, got a mapping"),
        ("[1, 2]\n", "not an inventory: expected a top-level 'devices:' list"),
        ("devices:\n" + GOOD + "version: 2\n", "version: unknown top-level key"),
    ],
)
def test_file_level_problems(tmp_path: Path, body: str, problem: str) -> None:
    path = write(tmp_path, body)
    problems = problems_of(path)
    assert problems[0].startswith(f"{path}: {problem}")


def test_resource_keys_at_top_level_point_to_resources(tmp_path: Path) -> None:
    body = GOOD.replace("    resources: {ram_mb: 4096, disk_mb: 32000}\n", "    ram_mb: 1\n")
    problems = problems_of(write(tmp_path, "devices:\n" + body))
    assert any("ram_mb: belongs under resources: (resources.ram_mb)" in p for p in problems)
    # The facts may be left out altogether: only the misplaced key is reported.
    assert not any("resources.disk_mb" in p for p in problems)


def test_yaml_anchors_under_x_keys_and_merge_keys_work(tmp_path: Path) -> None:
    body = """\
    x-rpi: &rpi
      hardware: rpi4
      arch: armv7
    devices:
      - <<: *rpi
        id: r1
        group: g
        address: https://r1.example:7601
        token_env: T_R1
        resources: {ram_mb: 1, disk_mb: 2}
    """
    (device,) = load_inventory(write(tmp_path, body))
    assert (device.hardware, device.arch) == ("rpi4", Arch.ARMV7)


def test_a_device_reached_through_a_broker_has_an_mqtt_address(tmp_path: Path) -> None:
    """docs/transports.md "MQTT": the broker from the address, the path its topic id."""
    body = GOOD.replace("address: http://127.0.0.1:7601", "address: mqtt://127.0.0.1:1883/dev-1")
    (dev,) = load_inventory(write(tmp_path, "devices:\n" + body))
    assert dev.address == "mqtt://127.0.0.1:1883/dev-1"
    for bad in ("mqtt://127.0.0.1:1883/a/b", "mqtts://h/+"):
        body = GOOD.replace("address: http://127.0.0.1:7601", f"address: {bad}")
        (problem,) = problems_of(write(tmp_path, "devices:\n" + body))
        assert "address:" in problem and "one device id" in problem
