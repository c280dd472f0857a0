"""HttpTransport against a real agent process supervising the real demo app.

Reuses the agent tests' harness (tests/agent/agent_harness.py: signed demo bundles, a blob
server, ``AgentProc`` that kills what it started); skipped if that harness is not importable.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from fleetgate.artifacts.keys import generate_keypair, load_private_key
from fleetgate.core.model import Arch, Device, Resources
from fleetgate.transports.base import DeviceRefusal
from fleetgate.transports.http import HttpTransport
from fleetgate.transports.tokens import TokenSource

AGENT_TESTS = str(Path(__file__).resolve().parents[1] / "agent")
if AGENT_TESTS not in sys.path:
    sys.path.append(AGENT_TESTS)
harness = pytest.importorskip("agent_harness", reason="tests/agent/agent_harness.py missing")


@pytest.fixture
def agent_kit(tmp_path: Path) -> Iterator[dict[str, Any]]:
    key_path, pub_path = generate_keypair(tmp_path / "keys")
    key = load_private_key(key_path)
    with harness.BlobServer(tmp_path / "blobs") as server:
        releases = {}
        for version in ("1.0.0", "2.0.0"):
            bundle = harness.build(tmp_path, key, "demo", version)
            releases[version] = (bundle.manifest.release_id, server.publish(bundle))
        agent = harness.AgentProc(tmp_path / "agent", pub_path, device_id="edge-1")
        try:
            agent.start()
            yield {"agent": agent, "releases": releases}
        finally:
            agent.cleanup()


def stage_kw(stage: dict[str, str], deployment_id: str, seq: int) -> dict[str, Any]:
    return {
        "deployment_id": deployment_id,
        "seq": seq,
        "manifest_json": stage["manifest"],
        "signature": stage["signature"],
        "url": stage["url"],
    }


async def test_http_transport_drives_a_real_agent(agent_kit):
    agent = agent_kit["agent"]
    (v1, v1_stage), (v2, v2_stage) = agent_kit["releases"]["1.0.0"], agent_kit["releases"]["2.0.0"]
    dev = Device(
        id="edge-1",
        hardware="test-board",
        arch=Arch.X86_64,
        group="lab",
        address=agent.base,
        resources=Resources(1024, 1024),
        token_env="FG_AGENT_TOKEN",
    )
    tokens = TokenSource(environ={"FG_AGENT_TOKEN": harness.TOKEN})
    async with HttpTransport(tokens) as t:
        assert (await t.ping(dev)).id == "edge-1"
        facts = await t.facts(dev)
        assert facts.current is None and facts.last_seq == 0 and facts.state == "idle"

        assert (await t.stage(dev, **stage_kw(v1_stage, "dep-1", 1))).status == "staged"
        replay = await t.stage(dev, **stage_kw(v1_stage, "dep-1", 1))
        assert replay.replayed and replay.release == v1
        first = await t.activate(dev, deployment_id="dep-1", seq=2, release=v1)
        # Issue 12: the real agent answers with the started release's health (the smoke test's
        # sample); a replay of the same command carries none (it is history).
        assert first.ok and first.health is not None and first.health.release == v1
        assert first.health.app_up and first.health.device_id == "edge-1"
        again = await t.activate(dev, deployment_id="dep-1", seq=2, release=v1)
        assert again.replayed and again.health is None
        sample = await t.health(dev)
        assert sample.device_id == "edge-1" and sample.release == v1 and sample.app_up

        with pytest.raises(DeviceRefusal) as conflict:
            await t.activate(dev, deployment_id="dep-1", seq=1, release=v1)
        assert conflict.value.code == "seq-conflict" and not conflict.value.retryable
        with pytest.raises(DeviceRefusal) as no_copy:
            await t.rollback(dev, deployment_id="dep-1", seq=3)
        assert no_copy.value.code == "no-rollback-copy" and no_copy.value.status == 409

        assert (await t.stage(dev, **stage_kw(v2_stage, "dep-2", 4))).status == "staged"
        active = await t.activate(dev, deployment_id="dep-2", seq=5, release=v2)
        assert active.ok and active.previous == v1
        back = await t.rollback(dev, deployment_id="dep-2", seq=6)
        assert back.ok and back.release == v1 and back.from_release == v2
        logs = await t.logs(dev, lines=20)
        assert any("rollback seq=6" in line for line in logs.agent)

    wrong = TokenSource(environ={"FG_AGENT_TOKEN": "not-the-token"})
    async with HttpTransport(wrong) as t:
        with pytest.raises(DeviceRefusal) as denied:
            await t.facts(dev)
    assert denied.value.status == 401 and denied.value.code == "unauthorized"


async def test_http_transport_commits_and_reads_the_trial_of_a_real_agent(agent_kit):
    """Issue 10 over the wire: commit (replayed too), the facts' trial and committed floor,
    ``not-current`` as a non-retryable refusal, the rollback copy below the floor."""
    agent = agent_kit["agent"]
    (v1, v1_stage), (v2, v2_stage) = agent_kit["releases"]["1.0.0"], agent_kit["releases"]["2.0.0"]
    dev = Device(
        id="edge-1",
        hardware="test-board",
        arch=Arch.X86_64,
        group="lab",
        address=agent.base,
        resources=Resources(1024, 1024),
        token_env="FG_AGENT_TOKEN",
    )
    tokens = TokenSource(environ={"FG_AGENT_TOKEN": harness.TOKEN})
    async with HttpTransport(tokens) as t:
        await t.stage(dev, **stage_kw(v1_stage, "dep-1", 1))
        await t.activate(dev, deployment_id="dep-1", seq=2, release=v1)
        await t.stage(dev, **stage_kw(v2_stage, "dep-2", 3))
        assert (await t.activate(dev, deployment_id="dep-2", seq=4, release=v2)).ok
        facts = await t.facts(dev)
        assert facts.trial is not None and facts.trial["release"] == v2
        assert facts.trial["state"] == "on-trial" and facts.committed == {}
        done = await t.commit(dev, deployment_id="dep-2", seq=5, release=v2)
        assert (done.status, done.release, dict(done.floor)) == ("committed", v2, {"demo": "2.0.0"})
        again = await t.commit(dev, deployment_id="dep-2", seq=5, release=v2)
        assert again.replayed and again.status == "committed"
        facts = await t.facts(dev)
        assert facts.trial is None and facts.reverted is None
        assert facts.committed == {"demo": "2.0.0"}
        with pytest.raises(DeviceRefusal) as stale:
            await t.commit(dev, deployment_id="dep-2", seq=6, release=v1)
        assert stale.value.code == "not-current" and not stale.value.retryable
        # v1 (1.0.0, below the floor) is the rollback copy: never blocked; the floor stays.
        back = await t.rollback(dev, deployment_id="dep-2", seq=7)
        assert back.ok and back.release == v1 and back.self_reverted is None
        facts = await t.facts(dev)
        assert facts.current == v1 and facts.committed == {"demo": "2.0.0"}
