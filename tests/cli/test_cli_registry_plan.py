"""The user's path through issue 2: import the example fleet, plan a deployment, read the audit
log — through the real ``fleetgate`` entry point, as subprocesses where stderr matters."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from fleetgate.cli.main import run

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"


def fg(db: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "fleetgate", "--db", db, *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
    )


@pytest.fixture
def db(tmp_path: Path) -> str:
    return f"sqlite+aiosqlite:///{tmp_path}/fg.db"


def test_plan_on_example_fleet_covers_and_stages(
    db: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run(["--db", db, "registry", "import", str(EXAMPLES / "fleet.yaml")]) == 0
    capsys.readouterr()
    code = run(
        [
            "--db",
            db,
            "deploy",
            "plan",
            str(EXAMPLES / "app"),
            "--policy",
            str(EXAMPLES / "rollout.toml"),
            "--json",
        ]
    )
    assert code == 0
    plan = json.loads(capsys.readouterr().out)
    from fleetgate.registry import load_inventory

    fleet = {d.id: d for d in load_inventory(EXAMPLES / "fleet.yaml")}
    targeted = [fleet[i] for w in plan["waves"] for i in w["devices"]] + [
        fleet[c["id"]] for c in plan["canaries"]
    ]
    canaries = [fleet[c["id"]] for c in plan["canaries"]]
    assert {d.hardware for d in canaries} == {d.hardware for d in targeted}
    assert {d.group for d in canaries} == {d.group for d in targeted}
    assert not any(d.critical for d in canaries)
    assert any(d.critical for d in targeted), "the example fleet has critical devices"
    # No wave takes the fleet to 100 % in one step, and excluded devices are never staged.
    assert plan["waves"][0]["cumulative_percent"] <= 25
    assert len(plan["waves"]) >= 2
    excluded = {e["id"] for e in plan["excluded"]}
    assert excluded and not excluded & {d.id for d in targeted}
    assert all(fleet[i].state.value != "active" for i in excluded)


def test_plan_markdown_is_the_prepare_report(db: str) -> None:
    assert fg(db, "registry", "import", str(EXAMPLES / "fleet.yaml")).returncode == 0
    out = fg(db, "deploy", "plan", str(EXAMPLES / "app"), "--select", "group=plant-a")
    assert out.returncode == 0, out.stderr
    for heading in (
        "### PREPARE Phase",
        "**Artifact**",
        "**Canary selection**",
        "| Device ID | Type | Group | Reason Selected |",
        "**Compatibility**",
        "**Waves**",
        "Plan only: no device was touched.",
    ):
        assert heading in out.stdout
    assert "plant-b" not in out.stdout.split("**Excluded devices**")[0]


def test_bad_inventory_lists_every_problem_and_keeps_the_old_fleet(db: str, tmp_path: Path) -> None:
    assert fg(db, "registry", "import", str(EXAMPLES / "fleet.yaml")).returncode == 0
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "devices:\n"
        "  - {id: a, hardware: rpi4, arch: sparc, group: g, address: 'http://127.0.0.1:1',"
        " token_env: T, resources: {ram_mb: 1, disk_mb: 1}}\n"
        "  - {id: a, hardware: rpi4, arch: arm64, group: g, address: 'nope',"
        " token_env: T, resources: {ram_mb: lots, disk_mb: 1}}\n"
    )
    out = fg(db, "registry", "import", str(bad))
    assert out.returncode == 2
    assert "Traceback" not in out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) >= 4  # arch, duplicate id, address, ram_mb
    assert all(line.startswith(f"fleetgate: error: {bad}") for line in lines)
    text = out.stderr
    assert "arch" in text and "address" in text and "ram_mb" in text and "duplicate" in text
    listed = fg(db, "registry", "list", "--json")
    assert len(json.loads(listed.stdout)["devices"]) == 60  # nothing half-written


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["deploy", "plan", "examples/missing-app"], "no such artifact"),
        (["deploy", "plan", "examples/app", "--policy", "examples/fleet.yaml"], "not valid TOML"),
        (["deploy", "plan", "examples/app", "--select", "hardware"], "hardware"),
        (["registry", "import", "nope.yaml"], "nope.yaml"),
    ],
)
def test_user_mistakes_are_one_line_exit_2(db: str, args: list[str], needle: str) -> None:
    fg(db, "registry", "import", str(EXAMPLES / "fleet.yaml"))
    out = fg(db, *args)
    assert out.returncode == 2, out
    assert "Traceback" not in out.stderr
    assert needle in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1


def test_guardrail_breaking_policy_is_refused(db: str, tmp_path: Path) -> None:
    fg(db, "registry", "import", str(EXAMPLES / "fleet.yaml"))
    pol = tmp_path / "p.toml"
    pol.write_text("[waves]\ncumulative = [100]\n[approval]\nfleet_rollout = false\n")
    out = fg(db, "deploy", "plan", "examples/app", "--policy", str(pol))
    assert out.returncode == 2
    assert "whole fleet at once" in out.stderr and "cannot be switched off" in out.stderr


def test_import_is_audited_and_tampering_is_detected(db: str, tmp_path: Path) -> None:
    fg(db, "registry", "import", str(EXAMPLES / "fleet.yaml"))
    fg(db, "registry", "import", str(EXAMPLES / "fleet.csv"))
    fg(db, "registry", "import", str(EXAMPLES / "inventory.ini"))
    ok = fg(db, "audit", "verify")
    assert ok.returncode == 0 and "3 events" in ok.stdout
    import sqlite3

    con = sqlite3.connect(tmp_path / "fg.db")
    con.execute("UPDATE events SET actor = 'mallory' WHERE seq = 2")
    con.commit()
    con.close()
    bad = fg(db, "audit", "verify")
    assert bad.returncode != 0
    assert "seq 2" in bad.stdout + bad.stderr
