"""fleet.csv: the example, column mapping, comments, line numbers in messages."""

from __future__ import annotations

from pathlib import Path

import pytest

from fleetgate.core.model import Arch, DeviceState, Monitoring
from fleetgate.errors import ValidationError
from fleetgate.registry import load_inventory

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
HEADER = "id,hardware,arch,group,address,token_env,ram_mb,disk_mb,gpu,software.jetpack\n"
ROW = "d1,jetson-orin-nano,arm64,lab,http://127.0.0.1:7701,T_D1,8192,64000,true,6.0\n"


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "fleet.csv"
    path.write_text(text)
    return path


def problems_of(path: Path) -> list[str]:
    with pytest.raises(ValidationError) as info:
        load_inventory(path)
    return info.value.problems


def test_example_csv_loads() -> None:
    devices = load_inventory(EXAMPLES / "fleet.csv")
    assert len(devices) == 10
    assert len({d.id for d in devices}) == 10
    by_id = {d.id: d for d in devices}
    orin = by_id["lab-orin-03"]
    assert orin.token_file == "/etc/fleetgate/tokens/lab-orin-03" and orin.token_env is None
    assert orin.software == {"jetpack": "5.1.2", "os": "ubuntu-20.04"}
    assert orin.resources.gpu is True
    # Empty cells take the defaults.
    rpi = by_id["lab-rpi-04"]
    assert (rpi.monitoring, rpi.critical, rpi.state) == (
        Monitoring.MEDIUM,
        False,
        DeviceState.ACTIVE,
    )
    assert rpi.software == {"os": "debian-12"}
    assert by_id["lab-rpi-03"].arch is Arch.ARMV7
    assert by_id["lab-gw-01"].critical is True


def test_columns_in_any_order_with_bom_and_comments(tmp_path: Path) -> None:
    text = "\ufeff# a comment, with commas\n\n"
    text += "address,id,arch,hardware,group,token_file,disk_mb,ram_mb\n"
    text += "https://gw.example,gw1,x86_64,gateway,g,/t,10,20\n#gw2,commented out\n"
    (device,) = load_inventory(write(tmp_path, text))
    assert (device.id, device.address, device.resources.ram_mb, device.resources.disk_mb) == (
        "gw1",
        "https://gw.example",
        20,
        10,
    )


def test_problems_are_located_by_file_line(tmp_path: Path) -> None:
    bad_arch = ROW.replace("d1,", "d2,").replace(",arm64,", ",arm65,")
    bad_ram = ROW.replace("d1,", "d3,").replace(",8192,", ",lots,").replace(",true,", ",maybe,")
    path = write(tmp_path, "# header comment\n" + HEADER + ROW + "\n" + bad_arch + bad_ram + ROW)
    assert problems_of(path) == [
        f"{path}: device 'd2' (line 5): arch: must be one of arm64, armv7, x86_64, got 'arm65'",
        f"{path}: device 'd3' (line 6): ram_mb: expected a whole number of MB (0 or more),"
        " got 'lots'",
        f"{path}: device 'd3' (line 6): gpu: expected true or false, got 'maybe'",
        f"{path}: device 'd1' (line 7): id: duplicate id, already used by line 3",
    ]


def test_multiline_cell_keeps_later_line_numbers_right(tmp_path: Path) -> None:
    quoted = ROW.replace("jetson-orin-nano", '"jetson\norin"')
    later = ROW.replace("d1,", "d2,").replace(",arm64,", ",bad,")
    problems = problems_of(write(tmp_path, HEADER + quoted + later))
    assert len(problems) == 1
    assert "device 'd2' (line 4): arch" in problems[0]


def test_header_problems_are_reported_once(tmp_path: Path) -> None:
    header = "id,hardwre,arch,address,token,ram_mb,disk_mb,software.\n"
    path = write(tmp_path, header + "x,y,z,http://h,t,1,2,\n" * 5)
    assert problems_of(path) == [
        f"{path}: line 1: column 'hardwre': unknown column (did you mean 'hardware'?); allowed: "
        "id, hardware, arch, group, address, token_env, token_file, ram_mb, disk_mb, gpu, "
        "monitoring, critical, state, state_reason, software.NAME",
        f"{path}: line 1: column 'token': inline credentials are not allowed (they leak into logs"
        " and version control); use token_env (an environment variable name) or token_file"
        " (a file path)",
        f"{path}: line 1: column 'software.': unknown column (did you mean"
        " 'software.NAME'?); allowed: id, hardware, arch, group, address, token_env, token_file,"
        " ram_mb, disk_mb, gpu, monitoring, critical, state, state_reason, software.NAME",
        f"{path}: line 1: column 'group': missing (required columns: id, group, address)",
    ]


def test_row_with_wrong_cell_count(tmp_path: Path) -> None:
    path = write(tmp_path, HEADER + ROW + "d2,rpi4,arm64\n")
    assert problems_of(path) == [f"{path}: line 3: 3 cells, but the header has 10 columns"]


def test_malformed_csv_names_the_line(tmp_path: Path) -> None:
    path = write(tmp_path, HEADER + ROW + 'd2,"rpi4"x,arm64\n')
    (problem,) = problems_of(path)
    assert problem.startswith(f"{path}: line 3: malformed CSV:")


def test_empty_csv(tmp_path: Path) -> None:
    path = write(tmp_path, "# nothing here\n")
    (problem,) = problems_of(path)
    assert problem.startswith(f"{path}: no header row")
    assert problems_of(write(tmp_path, HEADER)) == [f"{tmp_path / 'fleet.csv'}: no devices found"]
