"""Issue 7 item 8 through the real ``fleetgate`` entry point: refusals exit 2 or 3, not 5; a
blank ``--as`` is no name; a 5-20 % pause waits for a human (4); deciding needs no public key;
``deploy report --json``.

Deployments in a given phase are made of the report scenarios' events (``tests/report``) written
to a fresh SQLite store, so no device is needed; ``deploy start`` runs as a subprocess in its own
directory (``FLEETGATE_HOME``) so that stderr, exit codes and the default key path are the real
ones.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "report"))
from report_scenarios import DEP, SHA, happy, partial, rollback_failure, wave_rolled_back

from fleetgate.cli import deploy_run
from fleetgate.cli.main import EXIT_HALTED, EXIT_INPUT, EXIT_OK, EXIT_WAITING, run
from fleetgate.core.events import Event
from fleetgate.core.machine import fold
from fleetgate.core.state import Phase
from fleetgate.store import Store

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty FLEETGATE_HOME (no keys in it) for the in-process CLI, and no key in the env."""
    h = tmp_path / "home"
    h.mkdir()
    monkeypatch.setattr(deploy_run, "HOME", h)
    monkeypatch.delenv("FLEETGATE_PUBKEY", raising=False)
    return h


@pytest.fixture
def db(tmp_path: Path) -> str:
    return f"sqlite+aiosqlite:///{tmp_path}/fg.db"


def store_events(db: str, events: list[Event]) -> None:
    async def go() -> None:
        async with Store.open(db) as store:
            await store.create_deployment(DEP, "vision v2.4.1", SHA, {})
            await store.append_many(events)

    asyncio.run(go())


def read_events(db: str) -> list[Any]:
    async def go() -> list[Any]:
        async with Store.open(db) as store:
            return list(await store.events(DEP))

    return asyncio.run(go())


def upto(scenario: Callable[[], list[Event]], action: str) -> list[Event]:
    """The scenario's events before its first ``action``."""
    events = scenario()
    return events[: next(i for i, e in enumerate(events) if e.action == action)]


def one_error_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1, lines
    assert "Traceback" not in err
    return lines[0]


# -- deploy start: refusals are 2 (bad input) or 3 (a guardrail), never 5 -------------------------
def fg(cwd: Path, db: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "FLEETGATE_HOME": str(cwd / "home")}
    env.pop("FLEETGATE_PUBKEY", None)
    env.pop("FLEETGATE_DB", None)
    return subprocess.run(
        [sys.executable, "-m", "fleetgate", "--db", db, *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=env,
        timeout=120,
    )


@pytest.fixture(scope="module")
def release(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A bundle of the example app signed by key ``a``, and a second key pair ``b``."""
    tmp = tmp_path_factory.mktemp("release")
    from fleetgate.artifacts.bundle import build_bundle
    from fleetgate.artifacts.keys import generate_keypair, load_private_key

    key_a, pub_a = generate_keypair(tmp / "a")
    _, pub_b = generate_keypair(tmp / "b")
    built = build_bundle(EXAMPLES / "app", load_private_key(key_a), tmp / "dist")
    truncated = tmp / "truncated.fgb"
    data = built.path.read_bytes()
    truncated.write_bytes(data[: len(data) // 2])
    return {"bundle": built.path, "pub_a": pub_a, "pub_b": pub_b, "truncated": truncated}


@pytest.fixture
def fleet_db(tmp_path: Path, db: str) -> str:
    res = fg(tmp_path, db, "registry", "import", str(EXAMPLES / "fleet.yaml"))
    assert res.returncode == 0, res.stderr
    return db


@pytest.mark.parametrize(
    ("bundle", "key", "needle"),
    [
        ("missing", "pub_a", "cannot read bundle"),
        ("truncated", "pub_a", "truncated"),
        ("bundle", "pub_b", "bad signature: manifest not signed by the trusted key"),
    ],
)
def test_start_with_a_bad_bundle_is_an_input_error(
    tmp_path: Path, fleet_db: str, release: dict[str, Path], bundle: str, key: str, needle: str
) -> None:
    path = tmp_path / "nope.fgb" if bundle == "missing" else release[bundle]
    res = fg(tmp_path, fleet_db, "deploy", "start", str(path), "--pubkey", str(release[key]))
    assert res.returncode == EXIT_INPUT, res.stderr
    line = one_error_line(res.stderr)
    assert line.startswith(f"fleetgate: error: {path}: ") and needle in line
    assert not list((tmp_path / "home").glob("blobs/*")), "nothing may be published"


def test_start_blocked_by_an_unresolved_rollback_failure_is_a_refusal(
    tmp_path: Path, fleet_db: str, release: dict[str, Path]
) -> None:
    store_events(fleet_db, rollback_failure())
    assert fold(DEP, read_events(fleet_db)).manual_intervention
    res = fg(
        tmp_path,
        fleet_db,
        "deploy",
        "start",
        str(release["bundle"]),
        "--pubkey",
        str(release["pub_a"]),
    )
    assert res.returncode == EXIT_HALTED, res.stderr
    assert "rollback failed and is unresolved" in one_error_line(res.stderr)


def test_start_without_a_public_key_says_how_to_give_one(
    tmp_path: Path, fleet_db: str, release: dict[str, Path]
) -> None:
    res = fg(tmp_path, fleet_db, "deploy", "start", str(release["bundle"]))
    assert res.returncode == EXIT_INPUT
    assert "give --pubkey or set FLEETGATE_PUBKEY" in one_error_line(res.stderr)


# -- --as: a person's name, stripped, never blank -----------------------------------------------
@pytest.mark.parametrize(
    "argv",
    [
        ["deploy", "approve", DEP, "--as", "   "],
        ["deploy", "reject", DEP, "--as", ""],
        ["deploy", "resume", DEP, "--as", " \t "],
        ["deploy", "rollback", DEP, "--as", "  "],
    ],
)
def test_a_blank_name_is_refused(
    db: str,
    home: Path,
    release: dict[str, Path],
    capsys: pytest.CaptureFixture[str],
    argv: list[str],
) -> None:
    store_events(db, upto(happy, "approval.granted"))
    before = len(read_events(db))
    code = run(["--db", db, *argv, "--pubkey", str(release["pub_a"]), "--no-drive"])
    assert code == EXIT_INPUT
    assert "--as: a blank name does not name a person" in one_error_line(capsys.readouterr().err)
    assert len(read_events(db)) == before, "nothing recorded"


def test_registry_import_refuses_a_blank_name(db: str, capsys: pytest.CaptureFixture[str]) -> None:
    code = run(["--db", db, "registry", "import", str(EXAMPLES / "fleet.yaml"), "--as", " "])
    assert code == EXIT_INPUT
    assert "--as: a blank name" in one_error_line(capsys.readouterr().err)


# -- deciding needs no public key ----------------------------------------------------------------
def test_approve_without_a_public_key_records_the_stripped_name(
    db: str, home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    store_events(db, upto(happy, "approval.granted"))
    assert fold(DEP, read_events(db)).phase is Phase.AWAITING_APPROVAL
    assert not list(home.rglob("*.pub"))
    code = run(["--db", db, "deploy", "approve", DEP, "--as", "  alice ", "--no-drive", "--json"])
    assert code == EXIT_WAITING, capsys.readouterr().err  # recorded, not driven (--no-drive)
    granted = [e for e in read_events(db) if e.action == "approval.granted"]
    assert [e.actor for e in granted] == ["alice"]
    assert json.loads(capsys.readouterr().out)["phase"] == Phase.ROLLOUT.value


def test_a_named_public_key_that_is_missing_is_still_an_error(
    db: str, home: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    store_events(db, upto(happy, "approval.granted"))
    missing = tmp_path / "nope.pub"
    code = run(["--db", db, "deploy", "approve", DEP, "--as", "alice", "--pubkey", str(missing)])
    assert code == EXIT_INPUT
    assert one_error_line(capsys.readouterr().err).startswith(f"fleetgate: error: {missing}: ")


# -- exit codes of a state -----------------------------------------------------------------------
def test_a_wave_paused_for_a_human_exits_4(db: str, capsys: pytest.CaptureFixture[str]) -> None:
    store_events(db, upto(partial, "deployment.resumed"))
    state = fold(DEP, read_events(db))
    assert state.phase is Phase.HALTED and state.pending_quarantine
    assert deploy_run.exit_code(state) == EXIT_WAITING
    assert run(["--db", db, "deploy", "status", DEP, "--json"]) == EXIT_WAITING
    assert json.loads(capsys.readouterr().out)["exit_code"] == EXIT_WAITING


def test_a_wave_rolled_back_and_halted_still_exits_3(
    db: str, capsys: pytest.CaptureFixture[str]
) -> None:
    store_events(db, wave_rolled_back())
    state = fold(DEP, read_events(db))
    assert state.phase is Phase.HALTED and not state.pending_quarantine
    assert run(["--db", db, "deploy", "status", DEP]) == EXIT_HALTED


# -- deploy report --json ------------------------------------------------------------------------
def test_report_takes_json_like_every_other_command(
    db: str, capsys: pytest.CaptureFixture[str]
) -> None:
    store_events(db, happy())
    assert run(["--db", db, "deploy", "report", DEP, "--format", "json"]) == EXIT_OK
    by_format = json.loads(capsys.readouterr().out)
    assert run(["--db", db, "deploy", "report", DEP, "--json"]) == EXIT_OK
    assert json.loads(capsys.readouterr().out) == by_format
