"""SIGKILL of the agent at every step of stage, activate and rollback.

The agent is paused at a named point by the test-only hook (``FLEETGATE_AGENT_PAUSE_AT``),
killed there for real, and restarted. Whatever the point, the restarted agent must be on exactly
the old or the new release (which one is fixed by the point), with its app running, a valid
``current`` link, ``state.json`` agreeing with the link, no partial work left, the interrupted
command visible in the facts; and repeating the same command (same ``seq``) must finish it.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import threading
from pathlib import Path

import pytest
from agent_harness import AgentProc

# point -> (release current after the restart: "old"|"new", previous after the restart)
POINTS = {
    "stage:after-verify": ("old", None),
    "stage:after-download": ("old", None),
    "stage:after-extract": ("old", None),
    "stage:after-rename": ("old", None),
    "activate:after-stop": ("old", None),
    "activate:after-link": ("new", "old"),
    "activate:after-state": ("new", "old"),
    "activate:after-start": ("new", "old"),
    "rollback:after-stop": ("old", "new"),
    "rollback:after-link": ("new", None),
    "rollback:after-state": ("new", None),
}


@pytest.fixture(scope="module")
def before(kit, tmp_path_factory):
    """Data dirs as each command finds them, built once by a real agent and copied per test:
    stage → v1 running; activate → v1 running, v2 staged; rollback → v2 running, v1 previous."""
    root = tmp_path_factory.mktemp("crash-templates")
    a = AgentProc(root / "builder", kit.pub_path)
    dirs = {}
    try:
        a.start()
        a.post("stage", deployment_id="setup", seq=1, **kit.v1.stage)
        assert a.post("activate", deployment_id="setup", seq=2, release=kit.v1.id)[0] == 200
        dirs["stage"] = _snapshot(a, root / "stage")
        a.post("stage", deployment_id="setup", seq=3, **kit.v2.stage)
        dirs["activate"] = _snapshot(a, root / "activate")
        assert a.post("activate", deployment_id="setup", seq=4, release=kit.v2.id)[0] == 200
        dirs["rollback"] = _snapshot(a, root / "rollback")
    finally:
        a.cleanup()
    return dirs


def _snapshot(a: AgentProc, dest: Path) -> Path:
    """Copy the data dir of a *stopped* agent (so state.json is final and no app runs)."""
    a.stop()
    shutil.copytree(a.data_dir, dest, symlinks=True)
    a.start()
    return dest


@pytest.mark.parametrize("point", list(POINTS))
def test_sigkill_at_each_step_comes_back_on_old_or_new(make_agent, kit, before, tmp_path, point):
    command = point.split(":")[0]
    a = make_agent(start=False)
    shutil.copytree(before[command], a.data_dir, symlinks=True)
    if command == "rollback":
        # Seen from a rollback, "old" is what runs before it (v2), "new" what it restores (v1).
        rel = {"old": kit.v2, "new": kit.v1, None: None}
        body = {}
        final = {
            "status": "rolled-back",
            "release": kit.v1.id,
            "from": kit.v2.id,
            "app_healthy": True,
        }
    elif command == "activate":
        rel = {"old": kit.v1, "new": kit.v2, None: None}
        body = {"release": kit.v2.id}
        final = {"status": "active", "release": kit.v2.id, "previous": kit.v1.id}
    else:
        rel = {"old": kit.v1, "new": kit.v2, None: None}
        body = kit.v2.stage
        final = {"status": "staged", "release": kit.v2.id}

    marker = tmp_path / "paused-at"
    a.start(env={"FLEETGATE_AGENT_PAUSE_AT": point, "FLEETGATE_AGENT_PAUSE_MARKER": str(marker)})
    sent = threading.Thread(
        target=lambda: _swallow(a.post, command, deployment_id="crash", seq=10, **body),
        daemon=True,
    )
    sent.start()
    a.wait_for(marker.exists, what=f"agent paused at {point}")
    assert marker.read_text() == point
    a.kill()
    sent.join(10)

    a.start()
    current_key, previous_key = POINTS[point]
    current, previous = rel[current_key], rel[previous_key]
    version = current.bundle.manifest.version
    a.wait_for(lambda: a.app_version() == version, what=f"app {version} running after restart")
    facts = a.facts()
    assert facts["current"] == current.id
    assert facts["previous"] == (previous.id if previous else None)
    assert facts["app_running"] is True and facts["state"] == "idle"
    assert facts["interrupted"] == {"seq": 10, "command": command, "deployment_id": "crash"}
    assert os.readlink(a.data_dir / "current") == f"releases/{current.id}"
    state = json.loads((a.data_dir / "state.json").read_text())
    assert (state["current"], state["previous"]) == (facts["current"], facts["previous"])
    leftovers = [e for e in a.release_entries() if e.startswith(".")]
    leftovers += [p.name for p in a.data_dir.iterdir() if ".tmp" in p.name]
    assert leftovers == []
    assert a.health()["app_up"] is True

    # The controller repeats the command it never got an answer to: it completes.
    status, reply = a.post(command, deployment_id="crash", seq=10, **body)
    assert (status, reply) == (200, final)
    final_version = (
        "1.0.0" if command == "rollback" else ("2.0.0" if command == "activate" else "1.0.0")
    )
    assert a.app_version() == final_version
    facts = a.facts()
    assert facts["interrupted"] is None and facts["last_seq"] == 10
    assert kit.v2.id in facts["releases"]
    assert a.post(command, deployment_id="crash", seq=10, **body)[1] == {**final, "replayed": True}


def _swallow(fn, *args, **kwargs) -> None:
    # The agent is SIGKILLed while this request waits: that is the test.
    with contextlib.suppress(Exception):
        fn(*args, **kwargs)
