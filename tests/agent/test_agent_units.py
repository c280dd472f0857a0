"""In-process unit tests of the agent's pure parts: config validation, the idempotency rules,
the Prometheus parser and /proc readers, the release store's switch/cleanup/prune; plus the
``systemd`` app mode against a stand-in ``systemctl``."""

from __future__ import annotations

import contextlib
import math
import os
import sys
from pathlib import Path

import pytest

from fleetgate.agent.config import load_config
from fleetgate.agent.probes import (
    HealthProber,
    gpu_percent,
    memory_mb,
    parse_prometheus,
    temperature_c,
)
from fleetgate.agent.promtext import parse_exposition
from fleetgate.agent.releases import MANIFEST_FILE, META_DIR, ReleaseStore, valid_release_id
from fleetgate.agent.state import (
    DONE,
    INTERRUPTED,
    RETRYABLE,
    AgentState,
    CommandRecord,
    Decision,
    classify,
    load_state,
    save_state,
)
from fleetgate.errors import ValidationError

REPO = Path(__file__).resolve().parents[2]


def test_example_app_ships_the_demo_app_verbatim():
    demo = REPO / "src" / "fleetgate" / "sim" / "demo_app.py"
    assert (REPO / "examples" / "app" / "app.py").read_bytes() == demo.read_bytes()


def _cfg(tmp_path: Path, body: str, pub: Path) -> Path:
    path = tmp_path / "agent.toml"
    path.write_text(body.replace("PUB", str(pub)))
    return path


def test_config_reads_token_and_never_shows_it(tmp_path, kit, monkeypatch):
    monkeypatch.setenv("FG_SECRET", "s3cr3t-value")
    path = _cfg(
        tmp_path,
        '[device]\nid = "d1"\nhardware = "pi4"\narch = "armv7"\n'
        '[agent]\ndata_dir = "data"\ntoken_env = "FG_SECRET"\npublic_key = "PUB"\n'
        "[app]\nport = 9100\n",
        kit.pub_path,
    )
    cfg = load_config(path)
    assert cfg.token == "s3cr3t-value" and "s3cr3t" not in repr(cfg)
    assert cfg.data_dir == tmp_path / "data" and cfg.arch == "armv7" and cfg.app_port == 9100
    assert (cfg.host, cfg.port, cfg.keep_releases) == ("127.0.0.1", 7601, 2)

    (tmp_path / "tok").write_text("from-file\n")
    path = _cfg(
        tmp_path,
        '[device]\nid = "d1"\nhardware = "pi4"\n[agent]\ndata_dir = "data"\n'
        'token_file = "tok"\npublic_key = "PUB"\n',
        kit.pub_path,
    )
    assert load_config(path).token == "from-file"


def test_config_problems_are_all_listed_with_file_and_field(tmp_path, kit, monkeypatch):
    monkeypatch.delenv("FG_UNSET", raising=False)
    path = _cfg(
        tmp_path,
        '[device]\nid = "bad id!"\n[agent]\nlisten = "x"\ndata_dir = "d"\n'
        'token_env = "FG_UNSET"\npublic_key = "nope.pub"\nkeep_releases = 0\n'
        '[app]\nmode = "systemd"\n',
        kit.pub_path,
    )
    with pytest.raises(ValidationError) as err:
        load_config(path)
    fields = [p.split(": ")[1] for p in err.value.problems]
    assert all(p.startswith(str(path)) for p in err.value.problems)
    assert set(fields) == {
        "device.id",
        "device.hardware",
        "agent.listen",
        "agent.public_key",
        "agent.token_env",
        "agent.keep_releases",
        "app.unit",
    }
    path.write_text("not toml [")
    with pytest.raises(ValidationError, match="not valid TOML"):
        load_config(path)


def test_idempotency_rules():
    state = AgentState()
    assert classify(state, 1, "stage", "d") is Decision.NEW
    state.record(CommandRecord(5, "stage", "d", status=DONE, code=200, body={}))
    assert state.last_seq == 5
    assert classify(state, 5, "stage", "d") is Decision.REPLAY
    assert classify(state, 5, "activate", "d") is Decision.CONFLICT
    assert classify(state, 5, "stage", "other") is Decision.CONFLICT
    assert classify(state, 4, "stage", "d") is Decision.STALE
    assert classify(state, 6, "stage", "d") is Decision.NEW
    state.record(CommandRecord(6, "activate", "d", status=RETRYABLE))
    assert classify(state, 6, "activate", "d") is Decision.REEXECUTE
    state.record(CommandRecord(7, "activate", "d"))  # in progress
    assert classify(state, 7, "activate", "d") is Decision.IN_PROGRESS
    for seq in range(8, 200):
        state.record(CommandRecord(seq, "stage", "d", status=DONE, code=200, body={}))
    assert len(state.commands) == 100 and min(state.commands) == 100
    assert classify(state, 50, "stage", "d") is Decision.STALE


def test_in_progress_commands_come_back_interrupted(tmp_path):
    state = AgentState(current="a-1-00000000", last_seq=3)
    state.record(CommandRecord(3, "activate", "d", params={"to": "b"}))
    save_state(tmp_path / "state.json", state)
    loaded = load_state(tmp_path / "state.json")
    assert loaded.commands[3].status == INTERRUPTED and loaded.commands[3].params == {"to": "b"}
    assert loaded.interrupted() is loaded.commands[3]
    assert classify(loaded, 3, "activate", "d") is Decision.REEXECUTE
    save_state(tmp_path / "state.json", loaded)  # the second save keeps the first as .prev
    # no temp files left
    assert sorted(p.name for p in tmp_path.iterdir()) == ["state.json", "state.json.prev"]


def test_prometheus_parser_keeps_every_series_and_sums_counters_over_labels():
    text = (
        "# HELP app_requests_total x\n# TYPE app_requests_total counter\n"
        'app_requests_total{code="200",path="/a b"} 90\n'
        'app_requests_total{code="500"} 10 1700000000\n'
        "app_errors_total 10\n"
        "app_request_latency_ms 12.5\n"
        "garbage line\nbroken{ 3\nnan_metric NaN\n\n"
    )
    assert parse_prometheus(text) == {
        'app_requests_total{code="200",path="/a b"}': 90.0,
        'app_requests_total{code="500"}': 10.0,
        "app_errors_total": 10.0,
        "app_request_latency_ms": 12.5,
        "nan_metric": pytest.approx(math.nan, nan_ok=True),
    }
    totals = parse_exposition(text, sum_of=("app_requests_total", "nan_metric")).totals
    assert totals == {"app_requests_total": 100.0}  # NaN is no number to add


def test_prober_error_rate_prefers_counters_and_survives_counter_resets():
    prober = HealthProber(session=None)  # type: ignore[arg-type]  # no HTTP in this test
    assert prober.error_rate() is None
    prober.probes.extend([(True, 3.0), (False, 0.0), (True, 5.0), (True, 4.0)])
    assert prober.error_rate() == 0.25
    assert prober.latency_ms(None) == 4.0
    prober.counters.extend([(100.0, 1.0), (200.0, 11.0)])
    assert prober.error_rate() == 0.1
    prober.latency_gauge = 42.0
    assert prober.latency_ms(1.0) == 42.0


def test_proc_and_sys_readers(tmp_path):
    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemTotal:  2048000 kB\nMemFree: 1 kB\nMemAvailable:  1024000 kB\n")
    assert memory_mb(meminfo) == (1000.0, 2000.0)
    assert memory_mb(tmp_path / "missing") == (None, None)
    for i, milli in enumerate((41000, 67500)):
        zone = tmp_path / "thermal" / f"thermal_zone{i}"
        zone.mkdir(parents=True)
        (zone / "temp").write_text(f"{milli}\n")
    assert temperature_c(tmp_path / "thermal") == 67.5
    assert temperature_c(tmp_path / "none") is None
    load = tmp_path / "load"
    load.write_text("731\n")  # Jetson: per-mille
    assert gpu_percent(load) == 73.1


def _fake_release(store: ReleaseStore, rid: str) -> None:
    meta = store.release_dir(rid) / META_DIR
    meta.mkdir(parents=True)
    (meta / MANIFEST_FILE).write_text("{}")


def test_release_store_switch_cleanup_and_prune(tmp_path):
    store = ReleaseStore(tmp_path)
    store.ensure_layout()
    for i, rid in enumerate(["a-1-00000001", "a-2-00000002", "a-3-00000003", "a-4-00000004"]):
        _fake_release(store, rid)
        os.utime(store.release_dir(rid) / META_DIR / MANIFEST_FILE, (1000 + i, 1000 + i))
    assert store.read_current() is None
    store.switch_current("a-1-00000001")
    store.switch_current("a-2-00000002")
    assert store.read_current() == "a-2-00000002"
    assert os.readlink(tmp_path / "current") == "releases/a-2-00000002"

    (store.releases_dir / ".staging-a-9-9").mkdir()
    (store.releases_dir / ".staging-a-9-9.blob").write_text("x")
    (tmp_path / "current.tmp-dead").symlink_to("releases/x")
    (tmp_path / "state.json.tmp-1234").write_text("{")
    removed = store.cleanup_leftovers()
    assert len(removed) == 4
    assert store.list_releases() == ["a-1-00000001", "a-2-00000002", "a-3-00000003", "a-4-00000004"]
    # Keep current + previous + the newest other one; never the kept ones, however old.
    assert store.prune({"a-2-00000002", "a-1-00000001"}, 1) == ["a-3-00000003"]
    assert store.list_releases() == ["a-1-00000001", "a-2-00000002", "a-4-00000004"]
    assert not [p for p in store.releases_dir.iterdir() if p.name.startswith(".")]

    assert valid_release_id("demo-1.0.0-abcdef12")
    for bad in ("", ".hidden", "../x", "a/b", "a..b", None, 3):
        assert not valid_release_id(bad)


FAKE_SYSTEMCTL = """#!{python}
# Stand-in for systemctl: the "unit" runs <data_dir>/current/app.py like an ExecStart would.
import json, os, signal, subprocess, sys
state = {state!r}
args = sys.argv[1:]
with open(state + ".log", "a") as fh:
    fh.write(" ".join(args) + "\\n")
def pid():
    try:
        return int(open(state).read())
    except (OSError, ValueError):
        return None
def stop():
    p = pid()
    if p:
        try:
            os.killpg(p, signal.SIGKILL)
        except OSError:
            pass
    if os.path.exists(state):
        os.unlink(state)
if args[0] == "restart":
    stop()
    cur = {current!r}
    proc = subprocess.Popen([{python!r}, "app.py", "--port", "{port}"], cwd=cur,
                            start_new_session=True, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    open(state, "w").write(str(proc.pid))
elif args[0] == "stop":
    stop()
elif args[0] == "is-active":
    p = pid()
    try:
        os.kill(p, 0) if p else sys.exit(3)
    except OSError:
        sys.exit(3)
"""


def test_systemd_mode_restarts_the_unit_after_the_switch(make_agent, kit, tmp_path):
    a = make_agent(start=False)
    state = tmp_path / "unit-state"
    fake = tmp_path / "systemctl"
    fake.write_text(
        FAKE_SYSTEMCTL.format(
            python=sys.executable,
            state=str(state),
            current=str(a.data_dir / "current"),
            port=a.app_port,
        )
    )
    fake.chmod(0o755)
    a.config.write_text(
        a.config.read_text().replace(
            "[app]\n", f'[app]\nmode = "systemd"\nunit = "demo.service"\nsystemctl = "{fake}"\n'
        )
    )
    try:
        a.start()
        a.post("stage", deployment_id="d", seq=1, **kit.v1.stage)
        a.post("stage", deployment_id="d", seq=2, **kit.v2.stage)
        assert a.post("activate", deployment_id="d", seq=3, release=kit.v1.id)[1]["status"] == (
            "active"
        )
        assert a.app_version() == "1.0.0" and a.facts()["app_running"] is True
        assert a.post("activate", deployment_id="d", seq=4, release=kit.v2.id)[1]["status"] == (
            "active"
        )
        assert a.app_version() == "2.0.0"
        _status, body = a.post("rollback", deployment_id="d", seq=5)
        assert body["status"] == "rolled-back" and body["app_healthy"] is True
        assert a.app_version() == "1.0.0"
        calls = (tmp_path / "unit-state.log").read_text().splitlines()
        assert calls.count("restart demo.service") == 3
    finally:
        a.cleanup()
        pid = state.read_text() if state.exists() else None
        if pid:
            with contextlib.suppress(OSError):
                os.killpg(int(pid), 9)


def test_demo_app_settings_and_deterministic_errors(tmp_path):
    from fleetgate.sim import demo_app

    (tmp_path / "demo.toml").write_text(
        '# comment\nmode = "errors"  # trailing\nversion = "2.1"\nerror_rate = 0.25\nrps = 40\n'
    )
    settings = demo_app.load_settings(str(tmp_path))
    assert settings["mode"] == "errors" and settings["version"] == "2.1"
    assert settings["error_rate"] == 0.25 and settings["rps"] == 40
    metrics = demo_app.Metrics(settings)
    assert [metrics.health_fails() for _ in range(8)] == [False, False, False, True] * 2
    metrics.tick(100)
    text = metrics.render()
    assert "app_requests_total 100\n" in text and "app_errors_total 25\n" in text
    (tmp_path / "demo.toml").write_text('mode = "explode"\n')
    with pytest.raises(SystemExit, match="explode"):
        demo_app.load_settings(str(tmp_path))


def test_demo_app_crash_at_start_exits_nonzero_at_once(tmp_path):
    import subprocess

    (tmp_path / "demo.toml").write_text('mode = "crash-at-start"\n')
    demo = REPO / "src" / "fleetgate" / "sim" / "demo_app.py"
    proc = subprocess.run(
        [sys.executable, str(demo), "--port", "1"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert proc.returncode == 3 and "crash-at-start" in proc.stderr
