"""Verified slots, on real agent processes: a slot edited on disk after staging is never run.

The script of issue 10 ("edited slot"): stage a release, edit its slot (a config file, a
truncated ``app.py``, an added file, a symlink pointed elsewhere), then ask the agent to run it —
by activate, by rollback, or by restarting the agent on it. Each time the switch is refused with
``422 integrity-error`` naming the file, and the device stays on the release it ran.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
from agent_harness import DEMO_APP, Release

from fleetgate.artifacts.bundle import build_bundle


def _release_with_link(kit, version: str) -> Release:
    """The demo app plus ``conf/`` and a symlink ``current.toml -> conf/a.toml``."""
    src = kit.root / f"src-linked-{version}"
    src.mkdir()
    shutil.copy(DEMO_APP, src / "app.py")
    (src / "demo.toml").write_text(f'mode = "ok"\nversion = "{version}"\n')
    (src / "conf").mkdir()
    (src / "conf" / "a.toml").write_text("threshold = 0.5\n")
    (src / "conf" / "b.toml").write_text("threshold = 0.0\n")
    (src / "current.toml").symlink_to("conf/a.toml")
    (src / "fleetgate.toml").write_text(
        f'[artifact]\nname = "linked"\nversion = "{version}"\nkind = "bundle"\n'
        '[requires]\ndisk_mb = 1\n[run]\ncommand = ["python3", "app.py", "--port", '
        '"${APP_PORT}"]\nhealth_url = "http://127.0.0.1:${APP_PORT}/healthz"\n'
    )
    bundle = build_bundle(src, kit.key, kit.root / "bundles")
    return Release(bundle, kit.server.publish(bundle))


def _edit_config(slot: Path) -> str:
    (slot / "demo.toml").write_text((slot / "demo.toml").read_text().replace("ok", "ok "))
    return "demo.toml"


def _truncate_app(slot: Path) -> str:
    with (slot / "app.py").open("r+b") as fh:
        fh.truncate(100)
    return "app.py"


def _add_file(slot: Path) -> str:
    (slot / "sitecustomize.py").write_text("print('owned')\n")
    return "sitecustomize.py"


def _replace_link(slot: Path) -> str:
    (slot / "current.toml").unlink()
    (slot / "current.toml").symlink_to("conf/b.toml")
    return "current.toml"


def _same_size_flip(slot: Path) -> str:
    data = bytearray((slot / "app.py").read_bytes())
    data[-2] ^= 0x01  # same size, same mode: only the hash can tell
    (slot / "app.py").write_bytes(bytes(data))
    return "app.py"


def _chmod_world_writable(slot: Path) -> str:
    (slot / "conf" / "a.toml").chmod(0o666)
    return "conf/a.toml"


TAMPERS: dict[str, Callable[[Path], str]] = {
    "edited-config": _edit_config,
    "truncated-app": _truncate_app,
    "added-file": _add_file,
    "replaced-symlink": _replace_link,
    "same-size-flip": _same_size_flip,
    "world-writable": _chmod_world_writable,
}


@pytest.fixture(scope="module")
def linked(kit) -> tuple[Release, Release]:
    return _release_with_link(kit, "1.0.0"), _release_with_link(kit, "2.0.0")


@pytest.mark.parametrize("tamper", list(TAMPERS))
def test_activate_of_an_edited_slot_is_refused_and_the_device_stays(make_agent, linked, tamper):
    v1, v2 = linked
    a = make_agent()
    assert a.post("stage", deployment_id="d", seq=1, **v1.stage)[1]["status"] == "staged"
    assert a.post("activate", deployment_id="d", seq=2, release=v1.id)[1]["status"] == "active"
    assert a.post("stage", deployment_id="d", seq=3, **v2.stage)[1]["status"] == "staged"
    name = TAMPERS[tamper](a.data_dir / "releases" / v2.id)

    status, body = a.post("activate", deployment_id="d", seq=4, release=v2.id)
    assert (status, body["error"]) == (422, "integrity-error"), body
    assert name in body["message"] and v2.id in body["message"]
    facts = a.facts()
    assert facts["current"] == v1.id and facts["app_running"] is True
    assert os.readlink(a.data_dir / "current") == f"releases/{v1.id}"
    assert a.app_version() == "1.0.0"


def test_rollback_to_an_edited_previous_is_refused_and_the_device_stays(make_agent, kit):
    a = make_agent()
    for seq, rel in ((1, kit.v1), (3, kit.v2)):
        assert a.post("stage", deployment_id="d", seq=seq, **rel.stage)[0] == 200
        assert a.post("activate", deployment_id="d", seq=seq + 1, release=rel.id)[0] == 200
    _truncate_app(a.data_dir / "releases" / kit.v1.id)

    status, body = a.post("rollback", deployment_id="d", seq=5)
    assert (status, body["error"]) == (422, "integrity-error"), body
    assert "app.py" in body["message"]
    facts = a.facts()
    assert facts["current"] == kit.v2.id and facts["previous"] == kit.v1.id
    assert a.app_version() == "2.0.0"


def test_a_tampered_current_release_is_not_started_at_agent_restart(make_agent, kit):
    a = make_agent()
    assert a.post("stage", deployment_id="d", seq=1, **kit.v1.stage)[0] == 200
    assert a.post("activate", deployment_id="d", seq=2, release=kit.v1.id)[1]["status"] == "active"
    a.stop()
    a.cleanup()  # the app too: a reboot
    assert a.app_version() is None
    _add_file(a.data_dir / "releases" / kit.v1.id)

    a.start()
    facts = a.facts()
    assert facts["current"] == kit.v1.id and facts["app_running"] is False
    assert "sitecustomize.py" in facts["integrity_error"]
    assert a.app_version() is None
    assert a.health()["app_up"] is False
    _status, logs = a.get("/v1/logs?lines=50")
    assert any("not starting" in line and "sitecustomize.py" in line for line in logs["agent"])


def test_a_rewritten_stored_manifest_is_caught_at_restart_without_a_signature_check(
    make_agent, kit
):
    """An attacker who edits app.py *and* the stored file list to match: start-up compares the
    stored manifest with the digest the stage recorded."""
    a = make_agent()
    assert a.post("stage", deployment_id="d", seq=1, **kit.v1.stage)[0] == 200
    assert a.post("activate", deployment_id="d", seq=2, release=kit.v1.id)[0] == 200
    a.stop()
    a.cleanup()
    slot = a.data_dir / "releases" / kit.v1.id
    (slot / "app.py").write_text("print('owned')\n")
    meta = slot / ".fleetgate" / "manifest.json"
    doc = json.loads(meta.read_bytes())
    for f in doc["files"]:
        if f["path"] == "app.py":
            f["size"] = (slot / "app.py").stat().st_size
            f["sha256"] = hashlib.sha256((slot / "app.py").read_bytes()).hexdigest()
    meta.write_text(json.dumps(doc, sort_keys=True, separators=(",", ":")))

    a.start()
    facts = a.facts()
    assert facts["app_running"] is False and "stored manifest changed" in facts["integrity_error"]
    # …and activate, which checks the signature, refuses it too.
    status, body = a.post("activate", deployment_id="d", seq=3, release=kit.v1.id)
    assert (status, body["error"]) == (422, "integrity-error")


def test_an_untouched_slot_still_activates_and_the_check_is_logged(make_agent, kit):
    a = make_agent()
    assert a.post("stage", deployment_id="d", seq=1, **kit.v1.stage)[0] == 200
    assert a.post("activate", deployment_id="d", seq=2, release=kit.v1.id)[1]["status"] == "active"
    _status, logs = a.get("/v1/logs?lines=50")
    assert any(kit.v1.id in line and "verified in" in line for line in logs["agent"])


def test_a_slot_staged_before_stage_records_starts_and_is_recorded_at_the_next_switch(
    make_agent, kit
):
    """An agent upgraded on a device whose slots were staged by an older agent (no record in
    ``trust/accepted``): start-up checks the files and starts it; the next activate checks the
    signature and writes the record, which start-up then holds the manifest to."""
    a = make_agent()
    assert a.post("stage", deployment_id="d", seq=1, **kit.v1.stage)[0] == 200
    assert a.post("activate", deployment_id="d", seq=2, release=kit.v1.id)[0] == 200
    record = a.data_dir / "trust" / "accepted" / f"{kit.v1.id}.json"
    assert json.loads(record.read_text())["root_version"] == 0  # the bare key's implicit root
    a.stop()
    a.cleanup()
    record.unlink()

    a.start()
    assert a.facts()["integrity_error"] is None and a.facts()["app_running"] is True
    assert a.post("activate", deployment_id="d", seq=3, release=kit.v1.id)[1]["status"] == "active"
    assert record.is_file()


def test_a_python_app_importing_its_own_modules_leaves_its_slot_verifiable(make_agent, kit):
    """Python writes ``__pycache__`` next to the modules it imports; in a release slot that
    would be an added file and the next switch or start-up would refuse the release. The agent
    runs apps with PYTHONDONTWRITEBYTECODE=1."""
    src = kit.root / "src-imports"
    src.mkdir()
    shutil.copy(DEMO_APP, src / "app.py")
    (src / "helper.py").write_text("VALUE = 1\n")
    (src / "demo.toml").write_text('mode = "ok"\nversion = "1.0.0"\n')
    (src / "fleetgate.toml").write_text(
        '[artifact]\nname = "imports"\nversion = "1.0.0"\nkind = "bundle"\n'
        '[requires]\ndisk_mb = 1\n[run]\ncommand = ["python3", "-c", "import helper, runpy; '
        'runpy.run_path(\'app.py\', run_name=\'__main__\')", "--port", "${APP_PORT}"]\n'
        'health_url = "http://127.0.0.1:${APP_PORT}/healthz"\n'
    )
    rel = Release(b := build_bundle(src, kit.key, kit.root / "bundles"), kit.server.publish(b))
    # The agent's own environment allows bytecode (an empty value turns the switch off), as on
    # a device; the test runner's environment may have it on.
    allow = {"PYTHONDONTWRITEBYTECODE": ""}
    a = make_agent(start=False).start(env=allow)
    assert a.post("stage", deployment_id="d", seq=1, **rel.stage)[0] == 200
    assert a.post("activate", deployment_id="d", seq=2, release=rel.id)[1]["status"] == "active"
    assert not (a.data_dir / "releases" / rel.id / "__pycache__").exists()
    a.stop()
    a.cleanup()
    a.start(env=allow)
    assert a.facts()["integrity_error"] is None and a.facts()["app_running"] is True


def test_a_truncated_stored_manifest_is_reported_at_restart(make_agent, kit):
    a = make_agent()
    assert a.post("stage", deployment_id="d", seq=1, **kit.v1.stage)[0] == 200
    assert a.post("activate", deployment_id="d", seq=2, release=kit.v1.id)[0] == 200
    a.stop()
    a.cleanup()
    meta = a.data_dir / "releases" / kit.v1.id / ".fleetgate" / "manifest.json"
    meta.write_bytes(meta.read_bytes()[:100])
    a.start()
    facts = a.facts()
    assert (
        facts["app_running"] is False and "stored manifest unreadable" in facts["integrity_error"]
    )


@pytest.mark.slow
def test_a_tampered_release_on_trial_is_not_started_and_the_device_reverts_it(make_agent, kit):
    """Verified slots meet commit-or-revert: a release still on trial whose slot was edited is
    not started at agent start-up; it fails its trial deadline and the device goes back to the
    release it came from (checked like a rollback) by itself."""
    a = make_agent(agent_extra="trial_s = 3")
    assert a.post("stage", deployment_id="d", seq=1, **kit.v1.stage)[0] == 200
    assert a.post("activate", deployment_id="d", seq=2, release=kit.v1.id)[0] == 200
    assert a.post("commit", deployment_id="d", seq=3, release=kit.v1.id)[0] == 200
    assert a.post("stage", deployment_id="d", seq=4, **kit.v2.stage)[0] == 200
    assert a.post("activate", deployment_id="d", seq=5, release=kit.v2.id)[1]["status"] == "active"
    a.stop()
    a.cleanup()
    _truncate_app(a.data_dir / "releases" / kit.v2.id)
    a.start()
    facts = a.facts()
    assert facts["current"] == kit.v2.id and facts["app_running"] is False
    assert "app.py" in facts["integrity_error"]
    a.wait_for(lambda: a.facts()["current"] == kit.v1.id, timeout=20, what="the self-revert")
    facts = a.facts()
    assert facts["reverted"]["from"] == kit.v2.id and facts["integrity_error"] is None
    a.wait_for(lambda: a.app_version() == "1.0.0", what="1.0.0 running again")
