"""Ansible inventories (INI and YAML) mapped to devices: vars, children, groups, arch, errors."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from fleetgate.core.model import Arch, DeviceState, Monitoring
from fleetgate.errors import ValidationError
from fleetgate.registry import load_inventory
from fleetgate.registry.ansible import expand_hosts

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
COMMON = (
    "fleetgate_hardware=rpi4 fleetgate_ram_mb=4096 fleetgate_disk_mb=32000 "
    "fleetgate_token_env=T ansible_architecture=aarch64"
)


def write(tmp_path: Path, text: str, name: str = "hosts") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def problems_of(path: Path) -> list[str]:
    with pytest.raises(ValidationError) as info:
        load_inventory(path)
    return info.value.problems


def test_example_ini() -> None:
    devices = {d.id: d for d in load_inventory(EXAMPLES / "inventory.ini")}
    assert len(devices) == 8
    assert {d.group for d in devices.values()} == {"plant-d"}  # [plant-d:vars] fleetgate_group
    orin = devices["orin-d-01"]
    assert orin.hardware == "jetson-orin-nano"
    assert orin.arch is Arch.ARM64  # from ansible_architecture=aarch64 in group vars
    assert orin.address == "http://127.0.1.11:7601"  # default from ansible_host
    assert orin.resources.gpu is True
    assert orin.monitoring is Monitoring.HIGH
    assert orin.software == {"jetpack": "6.0", "os": "ubuntu-22.04"}
    # Host vars beat group vars.
    assert devices["orin-d-03"].software == {"jetpack": "5.1.2", "os": "ubuntu-20.04"}
    assert devices["rpi-d-03"].arch is Arch.ARMV7
    assert devices["rpi-d-03"].resources.ram_mb == 4096
    assert devices["rpi-d-02"].state is DeviceState.MAINTENANCE
    assert devices["gw-d-01"].critical is True
    assert devices["gw-d-01"].token_file == "/etc/fleetgate/tokens/gw-d-01"
    assert devices["gw-d-01"].arch is Arch.X86_64


def test_example_yaml() -> None:
    devices = {d.id: d for d in load_inventory(EXAMPLES / "inventory.yml")}
    assert len(devices) == 8
    assert devices["orin-e-01"].group == "plant-e"
    assert devices["orin-e-01"].arch is Arch.ARM64
    assert devices["orin-e-01"].software["jetpack"] == "6.0"
    assert devices["orin-e-02"].monitoring is Monitoring.MEDIUM  # all: vars
    assert devices["orin-e-01"].monitoring is Monitoring.HIGH  # host var wins
    assert devices["rpi-e-01"].resources.disk_mb == 32000  # host var beats plant-e's vars
    assert devices["orin-e-01"].resources.disk_mb == 120000  # plant-e's vars
    legacy = devices["rpi-f-04"]
    assert legacy.group == "plant-f-legacy"  # most specific group listing it
    assert (legacy.hardware, legacy.arch, legacy.resources.ram_mb) == ("rpi4", Arch.ARMV7, 4096)
    assert legacy.address == "http://127.0.2.44:7601"


def test_ini_children_vars_and_most_specific_group(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        f"""\
        # comment
        [all:vars]
        fleetgate_monitoring=low

        [site:children]
        cams

        [site:vars]
        fleetgate_monitoring=high
        fleetgate_disk_mb=1

        [cams]
        cam-[01:03] {COMMON}
        solo ansible_host=10.1.2.3 {COMMON} fleetgate_id=solo-renamed

        [cams:vars]
        fleetgate_disk_mb=2

        [site]
        cam-01
        """,
    )
    devices = {d.id: d for d in load_inventory(path)}
    assert sorted(devices) == ["cam-01", "cam-02", "cam-03", "solo-renamed"]
    for d in devices.values():
        assert d.group == "cams"  # site lists cam-01 too, but cams is more specific
        assert d.monitoring is Monitoring.HIGH  # parent group beats all
        assert d.resources.disk_mb == 32000  # host var beats group vars
        assert d.arch is Arch.ARM64
    assert devices["solo-renamed"].address == "http://10.1.2.3:7601"
    assert devices["cam-02"].address == "http://cam-02:7601"


def test_child_group_vars_beat_parent_group_vars(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """\
        [parent:children]
        child
        [parent:vars]
        fleetgate_state=maintenance
        fleetgate_ram_mb=1
        [child:vars]
        fleetgate_ram_mb=2
        [child]
        h1 fleetgate_hardware=x fleetgate_arch=armv7 fleetgate_disk_mb=3 fleetgate_token_file=/t
        """,
    )
    (device,) = load_inventory(path)
    assert (device.resources.ram_mb, device.state, device.group) == (
        2,
        DeviceState.MAINTENANCE,
        "child",
    )


@pytest.mark.parametrize(
    ("raw", "arch"), [("aarch64", Arch.ARM64), ("armv7l", Arch.ARMV7), ("x86_64", Arch.X86_64)]
)
def test_ansible_architecture_mapping(tmp_path: Path, raw: str, arch: Arch) -> None:
    common = COMMON.replace("ansible_architecture=aarch64", f"ansible_architecture={raw}")
    (device,) = load_inventory(write(tmp_path, f"[g]\nh {common}\n"))
    assert device.arch is arch


def test_fleetgate_arch_beats_ansible_architecture(tmp_path: Path) -> None:
    (device,) = load_inventory(write(tmp_path, f"[g]\nh {COMMON} fleetgate_arch=armv7\n"))
    assert device.arch is Arch.ARMV7


def test_unknown_ansible_architecture_is_reported_under_its_name(tmp_path: Path) -> None:
    path = write(tmp_path, "[g]\nh " + COMMON.replace("aarch64", "ppc64le") + "\n")
    assert problems_of(path) == [
        f"{path}: device 'h' (line 2): ansible_architecture: must be one of arm64, armv7, x86_64,"
        " got 'ppc64le'"
    ]


def test_host_in_two_groups_without_fleetgate_group(tmp_path: Path) -> None:
    path = write(tmp_path, f"[plant-a]\nh1 {COMMON}\n[plant-b]\nh1\n")
    assert problems_of(path) == [
        f"{path}: device 'h1' (line 2): fleetgate_group: host is in groups 'plant-a' and"
        " 'plant-b'; set fleetgate_group to choose one"
    ]
    fixed = write(tmp_path, f"[plant-a]\nh1 {COMMON} fleetgate_group=plant-b\n[plant-b]\nh1\n")
    (device,) = load_inventory(fixed)
    assert device.group == "plant-b"


def test_ungrouped_host_needs_a_group(tmp_path: Path) -> None:
    path = write(tmp_path, f"h1 {COMMON}\n")
    assert problems_of(path) == [
        f"{path}: device 'h1' (line 1): fleetgate_group: missing: list the host under a group or"
        " set fleetgate_group"
    ]


def test_ini_errors_are_all_reported(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        f"""\
        [g]
        h1 {COMMON} fleetgate_ram=5 fleetgate_token=abc
        h2 {COMMON} fleetgate_ram_mb=lots fleetgate_address=ftp://h2
        h3 {COMMON} fleetgate_id=h1
        [broken
        h4 novalue
        [g:vars]
        justtext
        """,
        name="inventory.ini",
    )
    assert problems_of(path) == [
        f"{path}: line 5: malformed section header '[broken'",
        f"{path}: line 8: expected key=value in [g:vars]",
        f"{path}: device 'h1' (line 2): fleetgate_ram: unknown variable (did you mean"
        " 'fleetgate_ram_mb'?); allowed: fleetgate_id, fleetgate_hardware, fleetgate_arch,"
        " fleetgate_group, fleetgate_address, fleetgate_token_env, fleetgate_token_file,"
        " fleetgate_ram_mb, fleetgate_disk_mb, fleetgate_gpu, fleetgate_monitoring,"
        " fleetgate_critical, fleetgate_state, fleetgate_state_reason, fleetgate_software_NAME",
        f"{path}: device 'h1' (line 2): fleetgate_token: inline credentials are not allowed (they"
        " leak into logs and version control); use fleetgate_token_env (an environment variable"
        " name) or fleetgate_token_file (a file path)",
        f"{path}: device 'h2' (line 3): fleetgate_address: 'ftp://h2' must be an http://,"
        " https://, mqtt:// or mqtts:// URL with a host",
        f"{path}: device 'h2' (line 3): fleetgate_ram_mb: expected a whole number of MB"
        " (0 or more), got 'lots'",
        f"{path}: device 'h1' (line 4): fleetgate_id: duplicate id, already used by line 2",
    ]


def test_children_cycle_is_reported(tmp_path: Path) -> None:
    path = write(tmp_path, f"[a:children]\nb\n[b:children]\na\n[a]\nh {COMMON}\n")
    problems = problems_of(path)
    assert f"{path}: group 'a': its children lead back to itself" in problems
    assert f"{path}: group 'b': its children lead back to itself" in problems


def test_yaml_form_with_ranges_and_groups(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """\
        all:
          children:
            plant-a:
              vars: {fleetgate_hardware: gateway, ansible_architecture: x86_64,
                     fleetgate_ram_mb: 2048, fleetgate_disk_mb: 4096, fleetgate_token_env: T}
              hosts:
                gw-[a:c]:
                gw-z: {ansible_host: "::1", fleetgate_critical: yes}
        """,
        name="inventory.yaml",
    )
    devices = {d.id: d for d in load_inventory(path)}
    assert sorted(devices) == ["gw-a", "gw-b", "gw-c", "gw-z"]
    assert devices["gw-z"].address == "http://[::1]:7601"
    assert devices["gw-z"].critical is True
    assert all(d.group == "plant-a" and d.arch is Arch.X86_64 for d in devices.values())


def test_yaml_form_errors(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """\
        all:
          children:
            g1:
              host:
                h1: {}
            g2:
              hosts:
                h2: [1]
                h3: {fleetgate_hardware: x, fleetgate_arch: arm64, fleetgate_ram_mb: 1,
                     fleetgate_disk_mb: 1, fleetgate_token_file: /t, fleetgate_gpus: true}
        """,
        name="inventory.yml",
    )
    problems = problems_of(path)
    assert problems == [
        f"{path}: all.children.g1.host: unknown key (did you mean 'hosts'?); allowed: hosts,"
        " vars, children",
        f"{path}: all.children.g2.hosts.h2: expected host vars, got a list",
        f"{path}: device 'h3' (host 'h3'): fleetgate_gpus: unknown variable (did you mean"
        " 'fleetgate_gpu'?); allowed: fleetgate_id, fleetgate_hardware, fleetgate_arch,"
        " fleetgate_group, fleetgate_address, fleetgate_token_env, fleetgate_token_file,"
        " fleetgate_ram_mb, fleetgate_disk_mb, fleetgate_gpu, fleetgate_monitoring,"
        " fleetgate_critical, fleetgate_state, fleetgate_state_reason, fleetgate_software_NAME",
    ]


def test_ini_detected_without_extension_and_yaml_detected_by_content(tmp_path: Path) -> None:
    ini = write(tmp_path, f"[g]\nh {COMMON}\n", name="hosts")
    yml = write(tmp_path, "all:\n  children:\n    g:\n      hosts:\n        h:\n", name="inv")
    assert load_inventory(ini)[0].group == "g"
    problems = problems_of(yml)  # parsed as Ansible YAML: the credential is missing
    assert problems[0].startswith(f"{yml}: device 'h' (host 'h'): fleetgate_token_env: missing")


def test_expand_hosts() -> None:
    assert expand_hosts("web-[08:11].x") == ["web-08.x", "web-09.x", "web-10.x", "web-11.x"]
    assert expand_hosts("n[1:3]") == ["n1", "n2", "n3"]
    assert expand_hosts("n[0:6:3]") == ["n0", "n3", "n6"]
    assert expand_hosts("r[a:b]-[1:2]") == ["ra-1", "ra-2", "rb-1", "rb-2"]
    for bad in ("n[3:1]", "n[a:1]", "n[1:2", "n[1:2:0]"):
        with pytest.raises(ValueError, match="range"):
            expand_hosts(bad)
