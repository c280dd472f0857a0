"""The other artifact kinds and odd commands: a ``config`` release (switch + reload command run
from the release becoming active, rollback included) and a command that cannot even be spawned."""

from __future__ import annotations

from pathlib import Path

from agent_harness import Release

from fleetgate.artifacts.bundle import build_bundle

RELOAD = (
    "import os, pathlib; pathlib.Path(os.environ['MARKER']).write_text("
    "pathlib.Path('settings.conf').read_text())"
)


def _config_release(kit, root: Path, version: str, marker: Path):
    src = root / f"cfg-{version}"
    src.mkdir(parents=True)
    (src / "settings.conf").write_text(f"threshold={version}\n")
    (src / "fleetgate.toml").write_text(
        f"""[artifact]
name = "settings"
version = "{version}"
kind = "config"
[run]
reload_command = ["python3", "-c", "{RELOAD}"]
env = {{ MARKER = "{marker}" }}
"""
    )
    bundle = build_bundle(src, kit.key, root / "out")
    return Release(bundle, kit.server.publish(bundle))


def test_config_release_reloads_from_the_active_release(make_agent, kit, tmp_path):
    marker = tmp_path / "reloaded"
    c1 = _config_release(kit, tmp_path, "1", marker)
    c2 = _config_release(kit, tmp_path, "2", marker)
    a = make_agent()
    a.post("stage", deployment_id="d", seq=1, **c1.stage)
    assert a.post("activate", deployment_id="d", seq=2, release=c1.id)[1]["status"] == "active"
    assert marker.read_text() == "threshold=1\n"
    assert (a.data_dir / "current" / "settings.conf").read_text() == "threshold=1\n"
    a.post("stage", deployment_id="d", seq=3, **c2.stage)
    assert a.post("activate", deployment_id="d", seq=4, release=c2.id)[1]["status"] == "active"
    assert marker.read_text() == "threshold=2\n"
    assert a.health()["app_up"] is True
    # Rollback runs the reload command of the restored release, nothing of the one left.
    _status, body = a.post("rollback", deployment_id="d", seq=5)
    assert body["status"] == "rolled-back" and body["release"] == c1.id and body["app_healthy"]
    assert marker.read_text() == "threshold=1\n"
    assert (a.data_dir / "current" / "settings.conf").read_text() == "threshold=1\n"


def test_a_command_that_cannot_start_is_reported_at_once(make_agent, kit, tmp_path):
    src = tmp_path / "ghost"
    src.mkdir()
    (src / "README").write_text("no program here\n")
    (src / "fleetgate.toml").write_text(
        '[artifact]\nname = "ghost"\nversion = "1"\nkind = "bundle"\n'
        '[run]\ncommand = ["./does-not-exist"]\nhealth_url = "http://127.0.0.1:${APP_PORT}/"\n'
    )
    bundle = build_bundle(src, kit.key, tmp_path / "out")
    stage = kit.server.publish(bundle)
    a = make_agent()
    a.post("stage", deployment_id="d", seq=1, **stage)
    status, body = a.post("activate", deployment_id="d", seq=2, release=bundle.manifest.release_id)
    assert status == 200 and body["status"] == "start-failed"
    assert "cannot start './does-not-exist'" in body["error"]
    assert a.facts()["app_running"] is False
