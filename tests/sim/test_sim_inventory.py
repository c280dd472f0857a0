"""The fleet a ``FleetSpec`` builds, and the inventory it writes."""

from __future__ import annotations

import stat
from collections import Counter

import pytest

from fleetgate.core.model import Arch, Monitoring
from fleetgate.errors import InputError
from fleetgate.registry import load_inventory
from fleetgate.sim.fleet import SimFleet
from fleetgate.sim.fleetspec import FleetSpec, hardware_counts, parse_mix


def test_mix_groups_and_ids():
    f = SimFleet(FleetSpec(devices=60, seed=0, token="t"))
    hw = Counter(d.hardware for d in f.devices)
    assert hw == {"jetson-orin-nano": 24, "rpi4": 24, "gateway": 12}
    cells = Counter((d.hardware, d.group) for d in f.devices)
    assert set(cells.values()) == {8, 4}  # every group gets every type, evenly
    ids = [d.id for d in f.devices]
    assert len(set(ids)) == 60
    assert {"orin-a-01", "orin-a-03", "rpi-b-08", "gw-c-04"} <= set(ids)
    orin = f.device("orin-a-01").device
    assert orin.arch is Arch.ARM64 and orin.resources.gpu and orin.software["jetpack"] == "6.0"
    gw = f.device("gw-c-04").device
    assert gw.arch is Arch.X86_64 and gw.resources.ram_mb == 16384 and not gw.resources.gpu
    rpi = f.device("rpi-b-08").device
    assert rpi.resources.ram_mb == 4096 and not rpi.resources.gpu


def test_counts_follow_proportions_and_sum_up():
    spec = FleetSpec(devices=7, mix=parse_mix("jetson-orin-nano:1,rpi4:1,gateway:1"), token="t")
    assert sorted(n for _, n in hardware_counts(spec)) == [2, 2, 3]
    assert sum(n for _, n in hardware_counts(FleetSpec(devices=10_001, token="t"))) == 10_001


def test_critical_and_monitoring_are_mixed_deterministically():
    a = SimFleet(FleetSpec(devices=200, seed=11, token="t"))
    b = SimFleet(FleetSpec(devices=200, seed=11, token="t"))
    assert a.devices == b.devices
    critical = [d for d in a.devices if d.critical]
    assert len(critical) == 10
    levels = Counter(d.monitoring for d in a.devices)
    assert set(levels) == set(Monitoring) and levels[Monitoring.MEDIUM] > levels[Monitoring.LOW]
    c = SimFleet(FleetSpec(devices=200, seed=12, token="t"))
    assert [d.critical for d in c.devices] != [d.critical for d in a.devices]


def test_no_cell_is_all_critical():
    # 3 devices, 3 groups, one type: each cell is a single device; never make one critical.
    spec = FleetSpec(devices=3, mix=(("rpi4", 1.0),), critical_fraction=0.9, token="t")
    assert not any(d.critical for d in SimFleet(spec).devices)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"devices": 0}, "--devices must be at least 1"),
        ({"mix": (("toaster", 1.0),)}, "unknown hardware 'toaster'"),
        ({"mix": (("rpi4", 0.0),)}, "weight must be > 0"),
        ({"groups": ()}, "--groups"),
        ({"groups": ("a b",)}, "'a b' must match"),
        ({"initial_release": "nope"}, "is not <name>-<version>-<sha8>"),
    ],
)
def test_bad_specs_are_input_errors(kwargs, message):
    with pytest.raises(InputError, match=message):
        FleetSpec(**kwargs)


def test_bad_mix_text():
    with pytest.raises(InputError, match="weight 'x' is not a number"):
        parse_mix("rpi4:x")
    assert parse_mix("rpi4, gateway:3") == (("rpi4", 1.0), ("gateway", 3.0))


def test_written_inventory_loads_and_matches(tmp_path):
    f = SimFleet(FleetSpec(devices=30, seed=2, token="tok-123"))
    token_path = f.write_inventory(tmp_path / "out" / "fleet.yaml")
    assert token_path == tmp_path / "out" / "fleet.token"
    assert token_path.read_text().strip() == "tok-123"
    assert stat.S_IMODE(token_path.stat().st_mode) == 0o600
    loaded = load_inventory(tmp_path / "out" / "fleet.yaml")
    assert [d.id for d in loaded] == [d.id for d in f.devices]
    for got, want in zip(loaded, f.devices, strict=True):
        assert got.token_file == str(token_path) and got.token_env is None
        assert (got.hardware, got.arch, got.group, got.address, got.critical) == (
            want.hardware,
            want.arch,
            want.group,
            want.address,
            want.critical,
        )
        assert got.resources == want.resources and dict(got.software) == dict(want.software)
    assert "tok-123" not in (tmp_path / "out" / "fleet.yaml").read_text()


def test_existing_token_file_gets_mode_0600(tmp_path):
    token = tmp_path / "shared.token"
    token.write_text("old")
    token.chmod(0o644)
    SimFleet(FleetSpec(devices=3, token="new")).write_inventory(tmp_path / "f.yaml", token)
    assert stat.S_IMODE(token.stat().st_mode) == 0o600 and token.read_text().strip() == "new"
