"""The command log cannot be poisoned or lost (issue 10, deliverable 5), on real agent processes:
a seq outside its deployment's window or too far ahead is refused and consumes nothing; a
zero-byte or torn ``state.json`` is recovered from ``state.json.prev`` (never reset to 0); with
both unreadable the agent refuses commands until an operator resets it; a command that cannot
be recorded on a full disk is a 507 JSON error that leaves no record, and the same seq runs
once there is space."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
import time
from pathlib import Path

import pytest
from agent_harness import AGENT_PYTHON, REPO, TOKEN

from fleetgate.core.model import Arch, Device, Resources
from fleetgate.core.seqwindow import MAX_BASE_AHEAD, SEQ_BLOCK
from fleetgate.transports.http import HttpTransport
from fleetgate.transports.tokens import TokenSource


def _controller_device(agent) -> Device:
    return Device(
        id=agent.device_id,
        hardware="test-board",
        arch=Arch.X86_64,
        group="lab",
        address=agent.base,
        resources=Resources(1024, 1024),
        token_env="FG_AGENT_TOKEN",
    )


def _state_on_disk(agent) -> dict:
    return json.loads((agent.data_dir / "state.json").read_text())


def test_seq_2_63_is_refused_and_the_controller_keeps_its_device(make_agent, kit):
    a = make_agent()
    base = 7  # the controller's current deployment block
    assert a.post("stage", deployment_id="d7", seq=base * SEQ_BLOCK + 1, **kit.v1.stage)[0] == 200

    # The attack: one authenticated command with a seq no deployment can reach again.
    poison = 2**63
    for body in (
        {"seq": poison},  # seq_base = its own block: still beyond 2**53
        {"seq": poison, "seq_base": base},  # outside the stated window
        {"seq": 2**53 - 1},  # below 2**53 but a jump of ~9e10 blocks
        {"seq": (base + MAX_BASE_AHEAD + 1) * SEQ_BLOCK + 1},  # one block too far
        {"seq": base * SEQ_BLOCK + 2, "seq_base": base + 1},  # seq not in its block
        {"seq": base * SEQ_BLOCK + 2, "seq_base": -1},
        {"seq": base * SEQ_BLOCK + 2, "seq_base": "7"},
    ):
        status, reply = a.post("rollback", deployment_id="evil", **body)
        assert status in (400, 409), (body, status, reply)
        assert reply["error"] in ("seq-out-of-range", "bad-request") and not reply["retryable"]
        assert a.facts()["last_seq"] == base * SEQ_BLOCK + 1, body  # nothing consumed
    status, reply = a.request(
        "POST", "/v1/activate", {"deployment_id": "d", "seq": 5, "release": kit.v1.id}
    )
    assert (status, reply["error"]) == (400, "bad-request") and "seq_base" in reply["message"]
    assert _state_on_disk(a)["last_seq"] == base * SEQ_BLOCK + 1

    # The real controller's next deployment (next block) drives the device as before.
    async def controller_next() -> tuple[str, int]:
        dev = _controller_device(a)
        tokens = TokenSource(environ={"FG_AGENT_TOKEN": TOKEN})
        async with HttpTransport(tokens) as t:
            seq = (base + 1) * SEQ_BLOCK + 1
            result = await t.activate(dev, deployment_id="d8", seq=seq, release=kit.v1.id)
            return result.status, (await t.facts(dev)).last_seq

    status, last = asyncio.run(controller_next())
    assert status == "active" and last == (base + 1) * SEQ_BLOCK + 1
    # A jump of exactly the bound is still a deployment the controller may have made meanwhile.
    far = (base + 1 + MAX_BASE_AHEAD) * SEQ_BLOCK + 1
    assert a.post("activate", deployment_id="d-far", seq=far, release=kit.v1.id)[0] == 200


@pytest.mark.parametrize("damage", ["zero-byte", "torn", "missing"])
def test_a_damaged_state_file_is_recovered_from_the_previous_copy(make_agent, kit, damage):
    a = make_agent()
    assert a.post("stage", deployment_id="d1", seq=10, **kit.v1.stage)[0] == 200
    assert a.post("activate", deployment_id="d1", seq=11, release=kit.v1.id)[0] == 200
    a.wait_for(lambda: _state_on_disk(a)["commands"][-1]["status"] == "done")
    prev = json.loads((a.data_dir / "state.json.prev").read_text())
    assert prev["last_seq"] == 11  # the copy is one save behind: same seq, command in progress
    a.kill()  # a power cut, as far as the agent can tell
    state = a.data_dir / "state.json"
    raw = state.read_bytes()
    if damage == "zero-byte":
        state.write_bytes(b"")
    elif damage == "torn":
        state.write_bytes(raw[: len(raw) // 2])
    else:
        state.unlink()
    a.start()
    facts = a.facts()
    assert facts["last_seq"] == 11 and facts["current"] == kit.v1.id
    # Old commands do not replay: seq 3 was never recorded, so it is stale, not new.
    status, reply = a.post("rollback", deployment_id="old", seq=3)
    assert (status, reply["error"]) == (409, "stale-seq")
    # The recorded ones answer from the record; the main file is whole again.
    assert a.post("stage", deployment_id="d1", seq=10, **kit.v1.stage)[1]["replayed"] is True
    assert _state_on_disk(a)["last_seq"] == 11
    assert "recovered from state.json.prev" in a.log_text()
    assert a.post("activate", deployment_id="d2", seq=12, release=kit.v1.id)[0] == 200


def test_both_copies_lost_is_safe_mode_until_an_operator_resets(make_agent, kit, tmp_path):
    a = make_agent()
    assert a.post("stage", deployment_id="d1", seq=20, **kit.v1.stage)[0] == 200
    assert a.post("activate", deployment_id="d1", seq=21, release=kit.v1.id)[0] == 200
    a.stop()
    (a.data_dir / "state.json").write_bytes(b"")
    (a.data_dir / "state.json.prev").write_bytes(b'{"last_seq": ')
    a.start()
    # The release keeps running and the device answers reads …
    a.wait_for(lambda: a.health()["app_up"], what="app up in safe mode")
    assert a.facts()["current"] == kit.v1.id
    # … but no command runs, old or new: the seq history is unknown.
    for seq in (1, 22, 5 * SEQ_BLOCK + 1):
        status, reply = a.post("rollback", deployment_id="x", seq=seq)
        assert (status, reply["error"]) == (409, "state-lost"), reply
    assert (a.data_dir / "state.json").read_bytes() == b""  # the evidence is left alone
    a.stop()
    env = {**os.environ, "FG_TEST_TOKEN": TOKEN, "PYTHONPATH": str(REPO / "src")}
    cmd = [AGENT_PYTHON, "-m", "fleetgate", "agent", "reset-state", "--config", str(a.config)]
    out = subprocess.run([*cmd, "--last-seq", "21"], env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert (a.data_dir / "state.json.lost").read_bytes() == b""
    a.start()
    assert a.facts()["last_seq"] == 21 and a.facts()["current"] == kit.v1.id
    assert a.post("rollback", deployment_id="x", seq=3)[1]["error"] == "stale-seq"
    assert a.post("activate", deployment_id="d2", seq=22, release=kit.v1.id)[0] == 200


def test_state_deleted_while_releases_are_on_disk_is_not_a_fresh_device(make_agent, kit):
    a = make_agent()
    assert a.post("stage", deployment_id="d1", seq=30, **kit.v1.stage)[0] == 200
    a.stop()
    (a.data_dir / "state.json").unlink()
    (a.data_dir / "state.json.prev").unlink()
    a.start()
    status, reply = a.post("stage", deployment_id="d1", seq=1, **kit.v1.stage)
    assert (status, reply["error"]) == (409, "state-lost")


@contextlib.contextmanager
def _tmpfs(path: Path, size_kb: int):
    path.mkdir()
    out = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size_kb}k", "tmpfs", str(path)],
        capture_output=True,
        text=True,
    )
    if out.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({out.stderr.strip() or out.returncode})")
    try:
        yield path
    finally:
        for _ in range(50):
            if subprocess.run(["umount", str(path)], capture_output=True).returncode == 0:
                break
            time.sleep(0.1)
        else:
            subprocess.run(["umount", "-l", str(path)], capture_output=True)


def _fill(path: Path) -> None:
    """Write until the disk is full (unbuffered: every byte that fits is on it)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        with contextlib.suppress(OSError):
            while True:
                os.write(fd, b"\0" * 4096)
    finally:
        os.close(fd)


def test_a_command_that_cannot_be_recorded_is_507_and_leaves_no_record(make_agent, kit, tmp_path):
    with _tmpfs(tmp_path / "disk", 4096) as disk:
        a = make_agent(data_dir=disk / "data")
        try:
            assert a.post("stage", deployment_id="d1", seq=40, **kit.v1.stage)[0] == 200
            assert a.post("activate", deployment_id="d1", seq=41, release=kit.v1.id)[0] == 200
            filler = disk / "filler"
            _fill(filler)
            for attempt in range(2):  # it stays refused, never "in-progress"
                status, reply = a.post("rollback", deployment_id="d1", seq=42, to=kit.v1.id)
                assert (status, reply["error"]) == (507, "insufficient-disk"), (attempt, reply)
                assert set(reply) == {"error", "message", "retryable"}
            facts = a.facts()
            assert facts["last_seq"] == 41 and facts["interrupted"] is None
            assert 42 not in {c["seq"] for c in _state_on_disk(a)["commands"]}
            # An agent restarted on the full disk still comes up, runs the release, refuses.
            a.stop()
            a.start()
            a.wait_for(lambda: a.health()["app_up"], what="app up on a full disk")
            status, reply = a.post("rollback", deployment_id="d1", seq=42, to=kit.v1.id)
            assert (status, reply["error"]) == (507, "insufficient-disk"), reply
            filler.unlink()
            status, reply = a.post("rollback", deployment_id="d1", seq=42, to=kit.v1.id)
            assert (status, reply["status"]) == (200, "rolled-back"), reply
            assert a.facts()["last_seq"] == 42
        finally:
            a.cleanup()


def test_a_body_that_is_not_json_or_too_deep_is_a_json_400(make_agent):
    import urllib.error
    import urllib.request

    a = make_agent()
    headers = {
        "Authorization": f"Bearer {TOKEN}",
        "X-Fleetgate-Device": a.device_id,
        "Content-Type": "application/json",
    }
    for raw in (b"[" * 400_000 + b"]" * 400_000, b"[" * 400_000, b'{"seq": 1', b"\xff\xfe"):
        req = urllib.request.Request(a.base + "/v1/stage", data=raw, headers=headers)
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(req, timeout=30)
        assert err.value.code == 400
        assert err.value.headers["Content-Type"].startswith("application/json")
        assert json.loads(err.value.read())["error"] == "bad-request"
    big = b"[" + b"1," * 2_200_000 + b"1]"  # over the 4 MiB body limit
    req = urllib.request.Request(a.base + "/v1/stage", data=big, headers=headers)
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(req, timeout=30)
    assert err.value.code == 413 and json.loads(err.value.read())["error"] == "too-large"
    assert a.get("/v1/ping")[0] == 200 and a.facts()["last_seq"] == 0


def test_an_unexpected_exception_is_a_json_500_not_aiohttps_page(kit, tmp_path, monkeypatch):
    """Whatever breaks inside a handler, the caller gets the protocol's error body."""
    from aiohttp.test_utils import TestClient, TestServer

    from fleetgate.agent.config import parse_config
    from fleetgate.agent.server import make_app
    from fleetgate.agent.service import AgentService

    monkeypatch.setenv("FG_T", TOKEN)
    agent = {"data_dir": "d", "public_key": str(kit.pub_path), "token_env": "FG_T"}
    config = parse_config(
        {"device": {"id": "dev-x", "hardware": "h"}, "agent": agent}, tmp_path / "agent.toml"
    )
    service = AgentService(config)

    async def broken_facts() -> dict:
        raise RuntimeError("disk controller on fire")

    async def broken_execute(name: str, body: object) -> object:
        raise KeyError("boom")

    monkeypatch.setattr(service, "facts", broken_facts)
    monkeypatch.setattr(service, "execute", broken_execute)
    headers = {"Authorization": f"Bearer {TOKEN}", "X-Fleetgate-Device": "dev-x"}

    async def run() -> list[tuple[int, str, dict]]:
        async with TestClient(TestServer(make_app(service))) as client:
            out = []
            for method, path in (("GET", "/v1/facts"), ("POST", "/v1/stage")):
                resp = await client.request(method, path, headers=headers, json={"seq": 1})
                out.append((resp.status, resp.content_type, await resp.json()))
            return out

    for status, ctype, body in asyncio.run(run()):
        assert (status, ctype, body["error"]) == (500, "application/json", "internal")
        assert set(body) == {"error", "message", "retryable"}
