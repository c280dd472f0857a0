"""``state.json`` persistence units (agent/state.py): the previous copy, recovery, the refusal
to guess, and a full disk that leaves both files as they were. The real-process behaviour is in
test_agent_seqlog.py."""

from __future__ import annotations

import errno
import json

import pytest

from fleetgate.agent import state as st
from fleetgate.agent.state import (
    AgentState,
    CommandRecord,
    Decision,
    StateLost,
    classify,
    load_state,
    prev_path,
    save_state,
)
from fleetgate.core.seqwindow import MAX_BASE_AHEAD, SEQ_BLOCK


def _saved(tmp_path, *seqs: int) -> AgentState:
    s = AgentState()
    for seq in seqs:
        s.record(CommandRecord(seq, "stage", "d", status=st.DONE, code=200, body={}))
        save_state(tmp_path / "state.json", s)
    return s


def test_each_save_keeps_the_file_it_replaces(tmp_path):
    _saved(tmp_path, 5, 6, 7)
    main = json.loads((tmp_path / "state.json").read_text())
    prev = json.loads(prev_path(tmp_path / "state.json").read_text())
    assert (main["last_seq"], prev["last_seq"]) == (7, 6)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["state.json", "state.json.prev"]


@pytest.mark.parametrize("damage", [b"", b'{"last_seq": 7, "comm', b"[]", b'{"x": 1}', None])
def test_a_bad_main_file_is_recovered_from_the_copy_and_rewritten(tmp_path, damage):
    _saved(tmp_path, 5, 6, 7)
    path = tmp_path / "state.json"
    if damage is None:
        path.unlink()
    else:
        path.write_bytes(damage)
    loaded = load_state(path)
    assert loaded.last_seq == 6 and sorted(loaded.commands) == [5, 6]
    assert json.loads(path.read_text())["last_seq"] == 6  # the main file is whole again
    assert classify(loaded, 3, "stage", "d") is Decision.STALE


def test_both_bad_is_state_lost_and_neither_is_a_fresh_device(tmp_path):
    path = tmp_path / "state.json"
    assert load_state(path).last_seq == 0  # nothing there: a new device
    _saved(tmp_path, 5, 6)
    path.write_bytes(b"")
    prev_path(path).write_bytes(b"{")
    with pytest.raises(StateLost, match=r"state\.json\.prev"):
        load_state(path)
    assert path.read_bytes() == b""  # evidence untouched


def test_a_full_disk_touches_neither_file(tmp_path, monkeypatch):
    _saved(tmp_path, 5, 6)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}

    def full(*_a, **_k):
        raise OSError(errno.ENOSPC, "No space left on device")

    s = load_state(tmp_path / "state.json")
    s.record(CommandRecord(7, "stage", "d"))
    monkeypatch.setattr(st.os, "fsync", full)
    with pytest.raises(OSError):
        save_state(tmp_path / "state.json", s)
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before


def test_classify_refuses_a_jump_beyond_the_bound_without_recording():
    s = AgentState(last_seq=3 * SEQ_BLOCK + 9)
    far = (3 + MAX_BASE_AHEAD + 1) * SEQ_BLOCK + 1
    assert classify(s, far, "stage", "d") is Decision.OUT_OF_RANGE
    assert classify(s, far - SEQ_BLOCK, "stage", "d") is Decision.NEW
    assert s.last_seq == 3 * SEQ_BLOCK + 9 and not s.commands
