"""Commit or revert, on the device (issue 10), on real agent processes.

The scripts kept for the defect: a release that kills the agent right after every start (on a
real board: reboots the device) must not leave the device in a restart loop on the new,
unconfirmed release; the device goes back to its known-good release by itself, within a bound,
and reports it. A crash-looping release and one whose health URL fails past ``trial_s`` are
reverted the same way; a committed release is never reverted; the controller's later rollback
of a device that already reverted is answered, not refused.
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
import time
from pathlib import Path

import pytest
from agent_harness import AgentProc, Release, make_app_dir

from fleetgate.artifacts.bundle import build_bundle


def _swallow(fn, *args, **kwargs) -> None:
    # The agent is SIGKILLed while this request waits: that is the test.
    with contextlib.suppress(Exception):
        fn(*args, **kwargs)


def _on_v1_committed(a: AgentProc, kit, seq: int = 1) -> int:
    assert a.post("stage", deployment_id="d0", seq=seq, **kit.v1.stage)[0] == 200
    assert a.post("activate", deployment_id="d0", seq=seq + 1, release=kit.v1.id)[0] == 200
    status, body = a.post("commit", deployment_id="d0", seq=seq + 2, release=kit.v1.id)
    assert (status, body["status"]) == (200, "committed"), body
    return seq + 3


def _wait_v2_up(a: AgentProc) -> None:
    """v2 answers, and the agent has read its first output line (so it is in trial.log)."""
    a.wait_for(lambda: a.app_version() == "2.0.0", what="v2 up")
    a.wait_for(
        lambda: any("demo app 2.0.0" in x for x in a.get("/v1/logs")[1]["app"]),
        what="v2's output read by the agent",
    )


def _hook(dir: Path, name: str, code: int = 0) -> Path:
    """A hook script that appends its FLEETGATE_* environment to ``<name>.log``."""
    out = dir / f"{name}.log"
    script = dir / f"{name}.sh"
    script.write_text(
        "#!/bin/sh\n"
        f'env | grep "^FLEETGATE_" | sort >> "{out}"\n'
        f'echo "---" >> "{out}"\n'
        f"exit {code}\n"
    )
    script.chmod(0o755)
    return script


def _hook_runs(dir: Path, name: str) -> list[dict[str, str]]:
    path = dir / f"{name}.log"
    if not path.exists():
        return []
    runs: list[dict[str, str]] = [{}]
    for line in path.read_text().splitlines():
        if line == "---":
            runs.append({})
        else:
            k, _, v = line.partition("=")
            runs[-1][k] = v
    return [r for r in runs if r]


@pytest.mark.slow
def test_release_that_kills_the_agent_at_every_start_is_reverted_by_the_device(
    make_agent, kit, tmp_path
):
    hooks = tmp_path / "hooks"
    hooks.mkdir()
    extra = f'trial_max_starts = 3\non_revert = "{_hook(hooks, "revert")}"'
    a = make_agent(agent_extra=extra)
    seq = _on_v1_committed(a, kit)
    assert a.post("stage", deployment_id="d1", seq=seq, **kit.v2.stage)[0] == 200
    # The activate itself is cut short: the release "kills the agent" right after it starts
    # (SIGKILL at the pause point after the start), so the controller never gets its answer.
    marker = tmp_path / "paused"
    a.stop()
    a.start(
        env={
            "FLEETGATE_AGENT_PAUSE_AT": "activate:after-start",
            "FLEETGATE_AGENT_PAUSE_MARKER": str(marker),
        }
    )
    sent = threading.Thread(
        target=lambda: _swallow(
            a.post, "activate", deployment_id="d1", seq=seq + 1, release=kit.v2.id
        ),
        daemon=True,
    )
    sent.start()
    a.wait_for(marker.exists, what="activate paused after the start")
    _wait_v2_up(a)
    a.kill()
    sent.join(10)
    state = json.loads((a.data_dir / "state.json").read_text())
    assert state["trial"]["release"] == kit.v2.id and state["trial"]["starts"] == 1

    # Every later start of the agent is killed right after v2 is up, as long as it is on v2.
    restarts = 0
    while True:
        a.start()
        facts = a.facts()
        if facts["current"] != kit.v2.id:
            break
        assert facts["trial"]["state"] == "on-trial"
        _wait_v2_up(a)
        a.kill()
        restarts += 1
        assert restarts <= 3, "the device never reverted by itself"
    # Bound: trial_max_starts starts of v2 in all (the activate's + 2 restarts), then the
    # start-up check reverts it before it would run a 4th time.
    assert restarts == 2
    assert facts["current"] == kit.v1.id and facts["previous"] is None
    assert facts["trial"] is None
    rev = facts["reverted"]
    assert (rev["reason"], rev["from"], rev["to"], rev["starts"]) == (
        "start-limit",
        kit.v2.id,
        kit.v1.id,
        3,
    )
    assert isinstance(rev["logs"], list) and any("demo app 2.0.0" in x for x in rev["logs"])
    assert os.readlink(a.data_dir / "current") == f"releases/{kit.v1.id}"
    a.wait_for(lambda: a.app_version() == "1.0.0", what="known-good release running")
    health = a.health()
    assert health["release"] == kit.v1.id
    assert health["reverted"]["from"] == kit.v2.id and health["reverted"]["reason"] == "start-limit"
    assert kit.v2.id in facts["releases"]  # the left release stays on disk, for the post-mortem
    runs = _hook_runs(hooks, "revert")
    assert len(runs) == 1
    assert runs[0]["FLEETGATE_REVERT_FROM"] == kit.v2.id
    assert runs[0]["FLEETGATE_REVERT_TO"] == kit.v1.id
    assert runs[0]["FLEETGATE_REVERT_REASON"] == "start-limit"

    # The controller repeats the activate it never got an answer to: the bad release is NOT
    # put back on; the answer says the device reverted it.
    status, body = a.post("activate", deployment_id="d1", seq=seq + 1, release=kit.v2.id)
    assert status == 200 and body["status"] == "start-failed" and body["reverted"] is True
    assert "reverted by the device" in body["error"]
    assert a.facts()["current"] == kit.v1.id
    # A commit of the reverted release is refused, naming the revert.
    status, body = a.post("commit", deployment_id="d1", seq=seq + 2, release=kit.v2.id)
    assert (status, body["error"]) == (409, "not-current") and "reverted" in body["message"]

    # Its rollback (to = previous, which the revert used up) is answered, not a failure.
    status, body = a.post("rollback", deployment_id="d1", seq=seq + 3)
    assert status == 200, body
    assert (body["status"], body["release"], body["from"], body["app_healthy"]) == (
        "rolled-back",
        kit.v1.id,
        kit.v2.id,
        True,
    )
    assert body["self_reverted"]["reason"] == "start-limit"
    replay = a.post("rollback", deployment_id="d1", seq=seq + 3)[1]
    assert replay == {**body, "replayed": True}
    # An explicit rollback to the release it already runs is answered the same way.
    status, body = a.post("rollback", deployment_id="d1", seq=seq + 4, to=kit.v1.id)
    assert (status, body["release"], body["from"]) == (200, kit.v1.id, kit.v2.id)

    # Killed again now: the known-good release has no trial, so it simply starts again.
    a.kill()
    a.start()
    a.wait_for(lambda: a.app_version() == "1.0.0", what="v1 after another kill")
    assert a.facts()["current"] == kit.v1.id


@pytest.mark.slow
def test_revert_killed_after_its_switch_is_finished_at_start_up(make_agent, kit, tmp_path):
    a = make_agent(agent_extra="trial_max_starts = 2")
    seq = _on_v1_committed(a, kit)
    a.post("stage", deployment_id="d1", seq=seq, **kit.v2.stage)
    assert a.post("activate", deployment_id="d1", seq=seq + 1, release=kit.v2.id)[0] == 200
    a.kill()
    a.start()  # start 2 of 2
    a.kill()
    marker = tmp_path / "paused"
    # The start-up check reverts; the agent dies right after the switch, before the report.
    a.start(
        env={
            "FLEETGATE_AGENT_PAUSE_AT": "revert:after-link",
            "FLEETGATE_AGENT_PAUSE_MARKER": str(marker),
        },
        wait=False,
    )
    a.wait_for(marker.exists, timeout=20, what="revert paused after its switch")
    a.kill()
    a.start()
    facts = a.facts()
    assert (facts["current"], facts["previous"], facts["trial"]) == (kit.v1.id, None, None)
    assert facts["reverted"]["from"] == kit.v2.id and facts["reverted"]["reason"] == "start-limit"
    a.wait_for(lambda: a.app_version() == "1.0.0", what="v1 running")
    state = json.loads((a.data_dir / "state.json").read_text())
    assert state["current"] == kit.v1.id and state["trial"] is None


@pytest.mark.slow
def test_crash_looping_release_is_reverted_and_its_rollback_answered(make_agent, kit):
    a = make_agent()
    seq = _on_v1_committed(a, kit)
    a.post("stage", deployment_id="d2", seq=seq, **kit.bad.stage)
    status, body = a.post("activate", deployment_id="d2", seq=seq + 1, release=kit.bad.id)
    assert status == 200 and body["status"] == "start-failed"
    assert body["release"] == kit.bad.id and body["previous"] == kit.v1.id
    # No controller in sight: the supervisor's crash loop on a release on trial reverts it.
    a.wait_for(lambda: a.facts()["current"] == kit.v1.id, timeout=20, what="self-revert")
    facts = a.facts()
    assert facts["reverted"]["reason"] == "crash-loop" and facts["reverted"]["from"] == kit.bad.id
    assert any("crash-at-start" in x for x in facts["reverted"]["logs"])
    a.wait_for(lambda: a.app_version() == "1.0.0", what="known-good running")
    health = a.health()
    assert health["app_up"] is True and health["crash_loop"] is False
    assert health["release"] == kit.v1.id
    # The controller, late, rolls the failed device back: answered from the revert.
    status, body = a.post("rollback", deployment_id="d2", seq=seq + 2)
    assert (status, body["status"], body["release"], body["from"]) == (
        200,
        "rolled-back",
        kit.v1.id,
        kit.bad.id,
    )


@pytest.mark.slow
def test_release_whose_health_url_fails_past_trial_s_is_reverted(make_agent, kit):
    # The app runs (no crash loop) but its manifest's health URL never answers 2xx.
    app = make_app_dir(kit.root / "unhealthy", "demo", "2.2.0")
    toml = app / "fleetgate.toml"
    toml.write_text(toml.read_text().replace("/healthz", "/no-such-path"))
    bundle = build_bundle(app, kit.key, kit.root / "bundles")
    rel = Release(bundle, kit.server.publish(bundle))

    a = make_agent(agent_extra="trial_s = 2")
    seq = _on_v1_committed(a, kit)
    a.post("stage", deployment_id="d3", seq=seq, **rel.stage)
    status, body = a.post("activate", deployment_id="d3", seq=seq + 1, release=rel.id)
    assert status == 200 and body["status"] == "start-failed" and "not healthy" in body["error"]
    assert a.health()["crash_loop"] is False
    a.wait_for(lambda: a.facts()["current"] == kit.v1.id, timeout=20, what="self-revert")
    rev = a.facts()["reverted"]
    assert (rev["reason"], rev["from"], rev["to"]) == ("health-deadline", rel.id, kit.v1.id)
    a.wait_for(lambda: a.app_version() == "1.0.0", what="known-good running")


@pytest.mark.slow
def test_healthy_at_deadline_stays_uncommitted_and_is_reported(make_agent, kit):
    a = make_agent(agent_extra="trial_s = 1\ntrial_max_starts = 2")
    seq = _on_v1_committed(a, kit)
    a.post("stage", deployment_id="d4", seq=seq, **kit.v2.stage)
    assert a.post("activate", deployment_id="d4", seq=seq + 1, release=kit.v2.id)[0] == 200
    a.wait_for(
        lambda: (a.facts()["trial"] or {}).get("state") == "kept-uncommitted",
        what="trial ended: kept",
    )
    facts = a.facts()
    assert facts["current"] == kit.v2.id and facts["reverted"] is None
    assert facts["committed"] == {"demo": "1.0.0"}  # kept is not committed: the floor stays
    for _ in range(3):  # its starts no longer count
        a.kill()
        a.start()
    assert a.facts()["current"] == kit.v2.id
    a.wait_for(lambda: a.app_version() == "2.0.0", what="v2 still running")
    # A late commit still commits it.
    status, body = a.post("commit", deployment_id="d4", seq=seq + 2, release=kit.v2.id)
    assert (status, body["status"], body["floor"]) == (200, "committed", {"demo": "2.0.0"})
    assert a.facts()["trial"] is None


@pytest.mark.slow
def test_commit_makes_it_stick_with_the_seq_rules(make_agent, kit, tmp_path):
    hooks = tmp_path / "hooks"
    hooks.mkdir()
    failing = _hook(hooks, "commit", code=1)  # a failing hook is logged, never fatal
    a = make_agent(agent_extra=f'trial_max_starts = 2\non_commit = "{failing}"')
    seq = _on_v1_committed(a, kit)
    a.post("stage", deployment_id="d5", seq=seq, **kit.v2.stage)
    seq += 10  # a gap: seq - 5 is older than last_seq and not in the record
    assert a.post("activate", deployment_id="d5", seq=seq + 1, release=kit.v2.id)[0] == 200
    assert a.facts()["trial"]["starts"] == 1

    status, body = a.post("commit", deployment_id="d5", seq=seq + 2, release=kit.v2.id)
    assert (status, body) == (
        200,
        {"status": "committed", "release": kit.v2.id, "floor": {"demo": "2.0.0"}},
    )
    # Replayed, stale, conflicting: the same rules as every command.
    again = a.post("commit", deployment_id="d5", seq=seq + 2, release=kit.v2.id)
    assert again == (200, {**body, "replayed": True})
    status, err = a.post("commit", deployment_id="d5", seq=seq - 5, release=kit.v2.id)
    assert (status, err["error"]) == (409, "stale-seq")
    status, err = a.post("activate", deployment_id="d5", seq=seq + 2, release=kit.v2.id)
    assert (status, err["error"]) == (409, "seq-conflict")
    status, err = a.post("commit", deployment_id="other", seq=seq + 2, release=kit.v2.id)
    assert (status, err["error"]) == (409, "seq-conflict")
    assert a.request("POST", "/v1/commit", {"deployment_id": "d5", "seq": seq + 3})[0] == 400
    status, err = a.post("commit", deployment_id="d5", seq=seq + 3, release=kit.v1.id)
    assert (status, err["error"]) == (409, "not-current")
    status, body = a.post("commit", deployment_id="d5", seq=seq + 4, release=kit.v2.id)
    assert (status, body["status"]) == (200, "already-committed")

    facts = a.facts()
    assert facts["trial"] is None and facts["committed"] == {"demo": "2.0.0"}
    runs = _hook_runs(hooks, "commit")
    assert [r["FLEETGATE_RELEASE"] for r in runs] == [kit.v1.id, kit.v2.id]
    assert "FG_TEST_TOKEN" not in (hooks / "commit.log").read_text()
    assert any("on_commit hook" in x and "failed" in x for x in a.get("/v1/logs")[1]["agent"])

    # Committed: more agent deaths than trial_max_starts do not revert it.
    for _ in range(3):
        a.kill()
        a.start()
    a.wait_for(lambda: a.app_version() == "2.0.0", what="v2 after the kills")
    # An app crash is the supervisor's business: restarted, not reverted.
    pid = a.app_pid()
    assert pid is not None
    os.killpg(pid, 9)
    a.wait_for(lambda: a.health()["restarts"] >= 1, what="app restarted")
    a.wait_for(lambda: a.app_version() == "2.0.0", what="v2 back up")
    facts = a.facts()
    assert facts["current"] == kit.v2.id and facts["reverted"] is None


KILLER_APP = """\
import os, signal, sys, time
print("killer release: SIGKILL to my agent", flush=True)
time.sleep(0.2)
os.kill(os.getppid(), signal.SIGKILL)
time.sleep(1)
sys.exit(1)
"""


@pytest.mark.slow
def test_release_that_sigkills_its_own_agent_under_a_restarting_supervisor(make_agent, kit):
    """The script as a release would play it: the release's first act is SIGKILL to the agent
    (its parent), and systemd (here: this test) restarts the agent every time it dies. The
    device must end on its known-good release by itself, within trial_max_starts restarts."""
    app = make_app_dir(kit.root / "killer", "demo", "6.6.6")
    (app / "app.py").write_text(KILLER_APP)
    bundle = build_bundle(app, kit.key, kit.root / "bundles")
    killer = Release(bundle, kit.server.publish(bundle))

    a = make_agent(agent_extra="trial_max_starts = 3")
    seq = _on_v1_committed(a, kit)
    assert a.post("stage", deployment_id="d6", seq=seq, **killer.stage)[0] == 200
    sent = threading.Thread(
        target=lambda: _swallow(
            a.post, "activate", deployment_id="d6", seq=seq + 1, release=killer.id
        ),
        daemon=True,
    )
    sent.start()
    restarts = 0
    deadline = time.monotonic() + 60
    facts: dict = {}
    while time.monotonic() < deadline:
        assert a.proc is not None
        if a.proc.poll() is not None:  # dead: systemd's Restart=always
            restarts += 1
            assert restarts <= 4, f"still dying after {restarts} restarts\n{a.log_text()}"
            a.start(wait=False)
            continue
        try:
            status, facts = a.get("/v1/facts", timeout=2)
        except OSError:
            time.sleep(0.05)
            continue
        if status == 200 and facts.get("reverted"):
            break
        time.sleep(0.05)
    sent.join(10)
    assert facts.get("current") == kit.v1.id, a.log_text()
    assert restarts == 3  # starts 1 (activate), 2, 3 were killed; the 4th start-up reverted
    assert (facts["reverted"]["reason"], facts["reverted"]["from"]) == ("start-limit", killer.id)
    # What the agent saw before each death is there: its own start markers for sure (written
    # before each start); the release's own line only if the agent read it before it died.
    logs = facts["reverted"]["logs"]
    assert any(f"start 3 of {killer.id} on trial" in line for line in logs), logs
    a.wait_for(lambda: a.app_version() == "1.0.0", what="known-good running")
    time.sleep(1.5)  # it stays up: nothing kills it any more
    assert a.proc is not None and a.proc.poll() is None
    status, body = a.post("rollback", deployment_id="d6", seq=seq + 2)
    assert (status, body["release"], body["from"]) == (200, kit.v1.id, killer.id)
