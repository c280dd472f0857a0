"""A whole deployment through the CLI (``registry import``, ``deploy start``, ``deploy
approve``) to three real agents that only dial out to our own Mosquitto: per-device broker
passwords and ACL, the controller's broker credential from ``FLEETGATE_MQTT_USERNAME`` and
``FLEETGATE_MQTT_PASSWORD_FILE``, inventory addresses ``mqtt://127.0.0.1:PORT/<id>``. The
artifact is still fetched over HTTP from the controller's distribution point."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from agent_harness import TOKEN, AgentProc

from fleetgate.core.model import Arch, Device, Resources
from fleetgate.transports.base import CallTimeouts
from fleetgate.transports.client import DeviceClient
from fleetgate.transports.mqtt import MqttChannel, MqttCredentials
from fleetgate.transports.router import Router
from fleetgate.transports.tokens import TokenSource
from mqtt_harness import OwnBroker, eventually

pytestmark = pytest.mark.slow

IDS = ["mqe-1", "mqe-2", "mqe-3"]
POLICY = """allow_short_soak = true
[soak]
canary = "1s"
between_waves = "1s"
[retries]
backoff = "0.2s"
[health]
cpu_percent_max = 100  # the agents report this shared machine's CPU, not their app's
"""


async def _bootstrap(own: OwnBroker, kit: Any, agents: list[AgentProc]) -> None:
    """Install v1.0.0 as the known-good release (what provisioning does), over MQTT too."""
    user = "fleetgate-controller"
    channel = MqttChannel(
        TokenSource(overrides=dict.fromkeys(IDS, TOKEN)),
        credentials=MqttCredentials(user, own.password(user)),
    )
    async with DeviceClient(Router({"mqtt": channel}), timeouts=CallTimeouts()) as client:
        for a in agents:
            dev = Device(
                a.device_id, "test-board", Arch.X86_64, "g", f"{own.url}/{a.device_id}",
                Resources(512, 4096),
            )  # fmt: skip
            await channel.watch(dev)  # its retained status says when its link is up
            await eventually(
                lambda d=a.device_id: (p := channel.presence(d)) is not None and p.online,
                what=f"{a.device_id} online",
            )
            s = kit.v1.stage
            await client.stage(
                dev, deployment_id="boot", seq=1, manifest_json=s["manifest"],
                signature=s["signature"], url=s["url"],
            )  # fmt: skip
            await client.activate(dev, deployment_id="boot", seq=2, release=kit.v1.id)


async def test_deploy_start_and_approve_over_mqtt(
    make_agent: Any, kit: Any, tmp_path: Path
) -> None:
    own = OwnBroker(tmp_path / "broker", IDS).start()
    try:
        agents = []
        for dev_id in IDS:
            extra = (
                f'[mqtt]\nbroker = "{own.url}"\n'
                f'password_file = "{own.creds / (dev_id + ".password")}"\n'
            )
            agents.append(make_agent(dev_id, device_id=dev_id, agent_extra=extra))
        await _bootstrap(own, kit, agents)

        ws = tmp_path / "ws"
        ws.mkdir()
        (ws / "token").write_text(TOKEN + "\n")
        (ws / "token").chmod(0o600)
        (ws / "policy.toml").write_text(POLICY)
        (ws / "fleet.yaml").write_text(
            "devices:\n"
            + "".join(
                f"  - id: {d}\n    hardware: test-board\n    arch: x86_64\n"
                f"    group: plant-{i}\n    address: {own.url}/{d}\n"
                f"    token_file: {ws / 'token'}\n"
                f"    resources: {{ram_mb: 4096, disk_mb: 20000}}\n"
                for i, d in enumerate(IDS)
            )
        )
        env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("FLEETGATE_")},
            "FLEETGATE_HOME": str(ws / "home"),
            "FLEETGATE_MQTT_USERNAME": "fleetgate-controller",
            "FLEETGATE_MQTT_PASSWORD_FILE": str(own.creds / "fleetgate-controller.password"),
        }
        db = f"sqlite+aiosqlite:///{ws / 'fg.db'}"

        def cli(*args: str) -> subprocess.CompletedProcess[str]:
            return subprocess.run(
                [sys.executable, "-m", "fleetgate", "--db", db, *args],
                cwd=ws, env=env, capture_output=True, text=True, timeout=120,
            )  # fmt: skip

        assert cli("registry", "import", "fleet.yaml").returncode == 0
        start = cli(
            "deploy", "start", str(kit.v2.bundle.path), "--policy", "policy.toml",
            "--pubkey", str(kit.pub_path), "--json",
        )  # fmt: skip
        assert start.returncode == 4, start.stdout  # canaries passed, waiting for a human
        dep = json.loads(start.stdout)["deployment_id"]
        done = cli("deploy", "approve", dep, "--as", "alice", "--json")
        assert done.returncode == 0, done.stderr
        state = json.loads(done.stdout)["state"]
        assert json.loads(done.stdout)["phase"] == "COMPLETE"
        assert (state["deployed_count"], state["deployed_healthy"]) == ("3", "3")
        for a in agents:
            assert a.app_version() == "2.0.0"
            assert "commit seq=" in a.log_text()
        assert "password" not in (start.stderr + done.stderr).lower()
    finally:
        own.stop()
