"""The pure parts of commit-or-revert and the downgrade floor (issue 10): config keys, the state
file read tolerantly (a state.json from before the trial fields), version order, the
authorisation's rules and the start-up decision."""

from __future__ import annotations

from pathlib import Path

import pytest

from fleetgate.agent import trial
from fleetgate.agent.config import load_config
from fleetgate.agent.downgrade import authorization_problem, is_below, raise_floor
from fleetgate.agent.state import AgentState, CommandRecord
from fleetgate.errors import ValidationError


def _cfg(tmp_path: Path, pub: Path, extra: str) -> Path:
    path = tmp_path / "agent.toml"
    path.write_text(
        '[device]\nid = "d1"\nhardware = "pi4"\n[agent]\ndata_dir = "data"\n'
        f'token_env = "FG_T"\npublic_key = "{pub}"\n{extra}\n'
    )
    return path


def test_trial_config_defaults_and_problems(tmp_path, kit, monkeypatch):
    monkeypatch.setenv("FG_T", "x")
    cfg = load_config(_cfg(tmp_path, kit.pub_path, ""))
    assert (cfg.trial_s, cfg.trial_max_starts, cfg.on_commit, cfg.on_revert) == (
        300.0,
        3,
        None,
        None,
    )
    (tmp_path / "hook").write_text("#!/bin/sh\n")  # not executable
    path = _cfg(
        tmp_path,
        kit.pub_path,
        'trial_s = 0\ntrial_max_starts = 0\non_commit = "hook"\non_revert = "missing"',
    )
    with pytest.raises(ValidationError) as err:
        load_config(path)
    fields = sorted(p.split(": ")[1] for p in err.value.problems)
    assert fields == [
        "agent.on_commit",
        "agent.on_revert",
        "agent.trial_max_starts",
        "agent.trial_s",
    ]
    (tmp_path / "hook").chmod(0o755)
    cfg = load_config(_cfg(tmp_path, kit.pub_path, 'on_commit = "hook"'))
    assert cfg.on_commit == tmp_path / "hook"


def test_state_from_before_the_trial_fields_loads_and_round_trips():
    old = {"version": 1, "current": "a-1-00000000", "previous": None, "last_seq": 4, "commands": []}
    st = AgentState.from_dict(old)
    assert (st.trial, st.reverted, st.committed, st.downgrades) == (None, None, {}, {})
    st.trial = trial.new_trial("a-2-11111111", "a-1-00000000", 100.0, 300.0)
    st.committed = {"a": "1"}
    st.downgrades = {"a-0.9-22222222": 123.0}
    again = AgentState.from_dict(st.to_dict())
    assert again.trial == st.trial and again.committed == {"a": "1"}
    assert again.downgrades == {"a-0.9-22222222": 123.0}
    junk = AgentState.from_dict({**old, "trial": "x", "committed": [1], "downgrades": {"r": "s"}})
    assert (junk.trial, junk.committed, junk.downgrades) == (None, {}, {})


def test_versions_are_ordered_by_pep440_and_fail_closed():
    assert is_below("9.0.0", "10.0.0") and not is_below("10.0.0", "9.0.0")  # not string order
    assert not is_below("1.0", "1.0.0")  # the same version, spelled differently
    assert is_below("2.0.0rc1", "2.0.0") and not is_below("2.0.1", "2.0.0")
    assert not is_below("0.1", None)
    assert is_below("build-7", "2.0.0")  # cannot be ordered: counts as below
    floors: dict[str, str] = {}
    assert raise_floor(floors, "a", "2.0.0") == "2.0.0"
    assert raise_floor(floors, "a", "1.0.0") == "2.0.0"  # an authorised downgrade's commit
    assert raise_floor(floors, "a", "2.1.0") == "2.1.0"
    assert raise_floor(floors, "b", "1.0.0") == "1.0.0" and floors == {"a": "2.1.0", "b": "1.0.0"}


def test_authorisation_rules():
    doc = {
        "kind": "fleetgate.downgrade-authorization",
        "name": "demo",
        "version": "0.9.0",
        "devices": ["d1", "d2"],
        "valid_until": "2030-01-01T00:00:00Z",
    }
    now = 1_800_000_000.0  # 2027
    assert authorization_problem(doc, "d1", "demo", "0.9.0", now) is None
    assert authorization_problem({**doc, "devices": "*"}, "d9", "demo", "0.9.0", now) is None
    for bad, why in (
        ({**doc, "kind": "other"}, "kind"),
        ({**doc, "name": "x"}, "name"),
        ({**doc, "version": "0.9"}, "version"),
        ({**doc, "devices": ["d2"]}, "does not name this device"),
        ({**doc, "devices": "d1"}, "devices"),
        ({**doc, "devices": [1]}, "devices"),
        ({**doc, "valid_until": "2020-01-01T00:00:00Z"}, "expired"),
        ({**doc, "valid_until": "2030-01-01T00:00:00"}, "no timezone"),
        ({**doc, "valid_until": "soon"}, "ISO 8601"),
        ([], "kind"),
    ):
        problem = authorization_problem(bad, "d1", "demo", "0.9.0", now)
        assert problem is not None and why in problem, (bad, problem)


def test_startup_decision():
    st = AgentState(current="r2", previous="r1")
    assert trial.startup_problem(st, 3) is None  # not on trial: just start it
    st.trial = trial.new_trial("r2", "r1", 0.0, 300.0)
    assert trial.startup_problem(st, 3) is None
    st.trial["starts"] = 3
    problem = trial.startup_problem(st, 3)
    assert problem is not None and problem[0] == "start-limit"
    st.trial["state"] = trial.KEPT
    assert trial.startup_problem(st, 3) is None  # kept at its deadline: starts do not count
    st.trial = {**trial.new_trial("r2", "r1", 0.0, 300.0), "reverting": {"reason": "crash-loop"}}
    assert trial.startup_problem(st, 3) == ("crash-loop", "interrupted revert")


def test_reconcile_finishes_a_revert_and_starts_the_trial_of_an_interrupted_activate():
    st = AgentState(current="r1", previous="r2")  # the link said r1: a revert died after it
    st.trial = {
        **trial.new_trial("r2", "r1", 0.0, 300.0),
        "reverting": {"reason": "start-limit", "message": "m", "logs": ["l"], "at": "t"},
    }
    trial.reconcile(st, "r1", None)
    assert st.trial is None and st.previous is None
    assert st.reverted is not None
    assert (st.reverted["from"], st.reverted["to"], st.reverted["reason"]) == (
        "r2",
        "r1",
        "start-limit",
    )
    st = AgentState(current="r2", previous="r1")  # an activate died after its switch
    rec = CommandRecord(7, "activate", "d", params={"from": "r1", "to": "r2"})
    trial.reconcile(st, "r2", rec)
    assert st.trial is not None and st.trial["release"] == "r2" and st.trial["starts"] == 0
