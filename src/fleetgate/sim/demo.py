"""``fleetgate demo``: a whole deployment on a simulated fleet, with nothing installed.

What it sets up, all on 127.0.0.1 and under ``.fleetgate/demo/`` (made fresh each run):

- a signing key pair, and two signed releases of the example app: v1.0.0 (known-good) and
  v2.0.0 (the one deployed; the scenario decides whether it is good);
- a virtual fleet (``sim``) of N − k devices speaking the agent protocol, and k **real agent
  processes**, each supervising the real demo app; the agents are bootstrapped with v1.0.0
  through the same protocol, so they have a known-good release to roll back to;
- the inventory of both, imported into the store (the SQLite default unless ``--db``); over
  MQTT only the virtual devices are imported and the real agents enrol themselves
  (``fleetgate agent enroll`` against the service's API served for the purpose, one
  single-use token each, then accepted: sim/demo_enrol.py, docs/enrolment.md "In the demo");
- a controller that deploys v2.0.0 with a demo policy (short soaks: the policy says
  ``allow_short_soak = true``, and the audit log records it).

``channel`` (``--channel``) says how the controller reaches the devices: ``http`` (default) dials
in to the sim's HTTP server and to each agent's listener; ``mqtt`` puts every device on the
broker (``--broker``, default the local Mosquitto on 127.0.0.1:1883): each virtual device holds
its own connection (sim/mqtt_fleet.py), each real agent runs with ``[mqtt] broker`` and no HTTP
listener, and the controller's ``MqttChannel`` (registered in ``HttpTransport``) reaches them
at ``mqtt://HOST:PORT/<device-id>``. Everything else — releases, policy, faults, scenarios — is
the same, so every scenario must end the same way over both (tests/e2e/test_demo_mqtt.py).

It stops for approval and asks on the terminal; ``--yes`` records the approval as given on the
command line. It ends by printing the session report. Scenarios:

- ``happy``: everything healthy → COMPLETE;
- ``bad-canary``: v2.0.0 crashes at start → canaries rolled back, deployment ABORTED, no other
  device touched;
- ``wave-degradation``: after approval, 40 % of wave 1 starts returning errors → that wave is
  rolled back and the deployment HALTED;
- ``unreachable``: after approval, 30 % of wave 1 drops off the network → HALTED before wave 1
  deploys anything;
- ``rollback-failure``: bad canary, and one canary cannot roll back → everything stops, the
  device is flagged for manual intervention.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import re
import secrets
import shutil
import socket
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fleetgate.core.model import Arch, Device, DeviceState, Monitoring, Resources

# Serves the controller's API on a loopback URL for as long as the block runs (store,
# controller, work dir, public key): the MQTT demo's agents enrol through it. The CLI passes
# ``api.embedded.api_in_process``; the simulator itself does not import the API layer.
ServeApi = Callable[[Any, Any, Path, Path], contextlib.AbstractAsyncContextManager[str]]

SCENARIOS = ("happy", "bad-canary", "wave-degradation", "unreachable", "rollback-failure")
CHANNELS = ("http", "mqtt")
DEFAULT_BROKER = "mqtt://127.0.0.1:1883"
# The demo's agents keep their broker session this long after they stop (the agent's default
# is a week): a demo must not leave sessions behind on a shared broker.
DEMO_SESSION_EXPIRY_S = 60
EXAMPLE_APP = Path(__file__).resolve().parents[3] / "examples" / "app"
DEMO_POLICY: dict[str, Any] = {
    "allow_short_soak": True,
    # The demo's real agents share this machine with the simulator and report the *host's* CPU,
    # which is not their app's: judge the demo on app health, error rate and latency.
    "health": {"cpu_percent_max": 100},
    "soak": {"canary": "4s", "between_waves": "2s"},
    "retries": {"attempts": 3, "backoff": "0.5s"},
}


@dataclass
class DemoResult:
    deployment_id: str
    phase: str
    exit_code: int
    report: str


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _app_source(work: Path, version: str, mode: str) -> Path:
    """A copy of the example app at ``version`` whose demo.toml says ``mode``."""
    src = work / f"src-{version}"
    shutil.copytree(EXAMPLE_APP, src, ignore=shutil.ignore_patterns("agent.toml", "__pycache__"))
    toml = src / "fleetgate.toml"
    text = re.sub(r'(?m)^version = ".*"$', f'version = "{version}"', toml.read_text(), count=1)
    toml.write_text(text)
    (src / "demo.toml").write_text(f'mode = "{mode}"\n')
    return src


@contextlib.asynccontextmanager
async def real_agents(
    work: Path,
    count: int,
    public_key: Path,
    token_file: Path,
    broker: str | None = None,
    enrol: Callable[[str, Path, str], Awaitable[None]] | None = None,
) -> AsyncIterator[list[Device]]:
    """Start ``count`` agent processes; yield their inventory entries; kill them at the end.

    With ``broker`` each agent dials out to it (``[mqtt]``, no HTTP listener) and its address
    is ``<broker>/<device-id>``; otherwise it listens on a free loopback port. With ``enrol``
    each agent gets a directory of its own (``fleetgate agent enroll`` keeps ``device.key``
    and ``credential`` beside the config) and ``enrol(id, config, group)`` runs before the
    agent starts; the entries yielded are then only what the demo meant, the store has the
    enrolled records."""
    procs: list[asyncio.subprocess.Process] = []
    devices: list[Device] = []
    groups = ("plant-a", "plant-b", "plant-c")
    try:
        for i in range(count):
            dev_id = f"agent-{i + 1:02d}"
            port, app_port = _free_port(), _free_port()
            cfg, data_dir = work / f"{dev_id}.toml", work / dev_id
            if enrol is not None:
                cfg = work / dev_id / "agent.toml"
                data_dir = cfg.parent / "data"
                cfg.parent.mkdir()
            listen = "" if broker else f'listen = "127.0.0.1:{port}"\n'
            mqtt = (
                f'[mqtt]\nbroker = "{broker}"\nsession_expiry_s = {DEMO_SESSION_EXPIRY_S}\n'
                if broker
                else ""
            )
            cfg.write_text(
                f'[device]\nid = "{dev_id}"\nhardware = "gateway"\narch = "x86_64"\n'
                f'software = {{ os = "linux" }}\n[agent]\n{listen}'
                f'data_dir = "{data_dir}"\ntoken_file = "{token_file}"\n'
                f'public_key = "{public_key}"\nhealth_timeout_s = 15\nprobe_interval_s = 1\n'
                f'[app]\nmode = "process"\nport = {app_port}\n{mqtt}'
            )
            if enrol is not None:
                await enrol(dev_id, cfg, groups[i % 3])
            log = (work / f"{dev_id}.log").open("wb")
            procs.append(
                await asyncio.create_subprocess_exec(
                    sys.executable,
                    "-m",
                    "fleetgate",
                    "agent",
                    "run",
                    "--config",
                    str(cfg),
                    stdout=log,
                    stderr=log,
                    start_new_session=True,
                )
            )
            devices.append(
                Device(
                    id=dev_id,
                    hardware="gateway",
                    arch=Arch.X86_64,
                    group=groups[i % 3],
                    address=f"{broker}/{dev_id}" if broker else f"http://127.0.0.1:{port}",
                    resources=Resources(16384, 64000, False),
                    token_file=str(token_file),
                    software={"os": "linux"},
                    monitoring=Monitoring.HIGH,
                    state=DeviceState.ACTIVE,
                )
            )
        yield devices
    finally:
        for p in procs:
            if p.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    p.terminate()
        for p in procs:
            try:
                await asyncio.wait_for(p.wait(), 10)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    p.kill()
                await p.wait()


async def _wait_ready(transport: Any, devices: list[Device], timeout: float = 20.0) -> None:
    from fleetgate.errors import FleetgateError

    deadline = asyncio.get_running_loop().time() + timeout
    for d in devices:
        while True:
            try:
                await transport.ping(d)
                break
            except FleetgateError:
                if asyncio.get_running_loop().time() > deadline:
                    raise
                await asyncio.sleep(0.1)


async def _bootstrap(
    transport: Any, devices: list[Device], blob_dir: Path, bundle: Path, public_key: Any
) -> None:
    """Install the known-good v1.0.0 on the real agents (what provisioning would do)."""
    from fleetgate.artifacts.distribution import (
        DistributionServer,
        load_published,
        publish_bundle,
    )
    from fleetgate.core.manifest import manifest_from_dict

    sha, _ = publish_bundle(bundle, blob_dir, public_key=public_key)
    manifest_json, sig = load_published(blob_dir, sha)
    import json

    release = manifest_from_dict(json.loads(manifest_json)).release_id
    async with DistributionServer(blob_dir) as dist:
        for d in devices:
            await transport.stage(
                d,
                deployment_id="bootstrap",
                seq=1,
                manifest_json=manifest_json.decode(),
                signature=sig,
                url=dist.blob_url(sha),
            )
            res = await transport.activate(d, deployment_id="bootstrap", seq=2, release=release)
            if not res.ok:
                raise RuntimeError(f"{d.id}: bootstrap of v1.0.0 failed: {res.error}")


async def run_demo(
    db: str,
    scenario: str,
    devices: int,
    *,
    yes: bool,
    agents: int = 3,
    channel: str = "http",
    broker: str = DEFAULT_BROKER,
    home: Path = Path(".fleetgate"),
    ask: Callable[[str], bool] | None = None,
    say: Callable[[str], None] = print,
    on_approval: Callable[[Any, Any], None] | None = None,
    serve_api: ServeApi | None = None,
) -> DemoResult:
    """One demo deployment. ``on_approval(fleet, state)`` (tests) runs where the scenarios inject
    their wave faults, after the approval and before the fleet rollout."""
    from fleetgate.artifacts.bundle import build_bundle
    from fleetgate.artifacts.keys import generate_keypair, load_private_key, load_public_key
    from fleetgate.clock import utc_now_iso
    from fleetgate.config.policy_file import policy_from_dict
    from fleetgate.core.events import Event
    from fleetgate.core.state import Phase, exit_code
    from fleetgate.engine.service import Controller, ControllerConfig, Decision
    from fleetgate.registry import devices_to_yaml
    from fleetgate.sim.demo_enrol import DemoEnrolment
    from fleetgate.sim.faults import parse_fault
    from fleetgate.sim.fleetspec import FleetSpec
    from fleetgate.sim.server import VirtualFleet
    from fleetgate.store import Store
    from fleetgate.transports.http import HttpTransport
    from fleetgate.transports.tokens import TokenSource

    work = (home / "demo").resolve()
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    key_path, pub_path = generate_keypair(work / "keys")
    key, pub = load_private_key(key_path), load_public_key(pub_path)
    bad = scenario in ("bad-canary", "rollback-failure")
    v1 = build_bundle(_app_source(work, "1.0.0", "ok"), key, work / "dist")
    v2 = build_bundle(
        _app_source(work, "2.0.0", "crash-at-start" if bad else "ok"), key, work / "dist"
    )
    say(f"release {v2.manifest.label}: {v2.path.name} sha256 {v2.sha256[:16]}… (signed)")

    token = secrets.token_urlsafe(24)
    token_file = work / "device-token"
    token_file.write_text(token)
    token_file.chmod(0o600)
    faults = tuple(parse_fault(f) for f in (["crash-loop:version=2.0.0"] if bad else []))
    n_agents = min(agents, max(0, devices - 1))
    spec = FleetSpec(
        devices=max(1, devices - n_agents),
        faults=faults,
        seed=11,
        token=token,
        initial_release=f"demo-1.0.0-{'0' * 8}",
    )
    policy = policy_from_dict(DEMO_POLICY, "demo policy")

    if channel not in CHANNELS:
        from fleetgate.errors import InputError

        raise InputError(f"--channel {channel!r}: expected one of {', '.join(CHANNELS)}")
    over_mqtt = channel == "mqtt"
    if over_mqtt and serve_api is None:
        raise ValueError("run_demo: --channel mqtt needs serve_api (api.embedded.api_in_process)")
    if over_mqtt:
        from fleetgate.sim.mqtt_fleet import MqttFleet

        sim_fleet: Any = MqttFleet.start(spec, broker)
        say(f"channel: MQTT through {broker} (every device dials out to the broker)")
    else:
        sim_fleet = VirtualFleet.start(spec)
    async with contextlib.AsyncExitStack() as stack:
        vf = await stack.enter_async_context(sim_fleet)
        store = await stack.enter_async_context(Store.open(db))
        transport = await stack.enter_async_context(HttpTransport(TokenSource()))
        sim_devs = [
            dataclasses.replace(d, token_file=str(token_file), token_env=None) for d in vf.devices
        ]
        ctl = Controller(store, transport, ControllerConfig(work / "blobs", pub_path))

        async def import_(devs: list[Device]) -> None:
            (work / "fleet.yaml").write_text(devices_to_yaml(devs))
            async with store.transaction():
                await store.replace_devices(devs)
                await store.append(
                    Event(
                        ts=utc_now_iso(),
                        deployment_id=None,
                        action="registry.imported",
                        actor="demo",
                        details={"file": str(work / "fleet.yaml"), "devices": len(devs)},
                    )
                )

        if over_mqtt:
            # The virtual devices are imported (an inventory file, as a provisioning system
            # would hand over); the real agents then enrol themselves into that inventory.
            await import_(sim_devs)
            say(f"inventory: {len(sim_devs)} virtual devices imported from fleet.yaml")
            assert serve_api is not None
            async with serve_api(store, ctl, work, pub_path) as url:
                say(
                    f"enrolment: the service's API on {url}; each real agent enrols itself "
                    "with a single-use token and waits (pending) to be accepted"
                )
                enrolment = DemoEnrolment(store, url, vf.url, work.parent / "demo-keys", say)
                await stack.enter_async_context(
                    real_agents(work, n_agents, pub_path, token_file, vf.url, enrolment)
                )
                agent_devs = await enrolment.accept()
            how = "self-enrolled"
        else:
            agent_devs = await stack.enter_async_context(
                real_agents(work, n_agents, pub_path, token_file)
            )
            how = "imported"
        await _wait_ready(transport, agent_devs)
        await _bootstrap(transport, agent_devs, work / "blobs", v1.path, pub)
        if not over_mqtt:
            await import_(sim_devs + agent_devs)
        say(
            f"fleet: {len(sim_devs)} virtual devices + {len(agent_devs)} real agents "
            f"({', '.join(d.id for d in agent_devs)}, {how}) running the demo app v1.0.0"
        )

        await _end_earlier_demos(ctl, store, say)
        dep = await ctl.start(v2.path, policy, policy_doc=DEMO_POLICY, actor="demo")
        state = await ctl.state(dep)
        say(
            f"deployment {dep}: {len(state.canaries)} canaries, "
            f"{state.waves_total} waves over {len(state.devices)} devices"
        )
        if scenario == "rollback-failure":
            sim_canaries = [c for c in state.canaries if c in vf.model.by_id]
            if sim_canaries:
                vf.inject(f"rollback-fail:device={sim_canaries[0]}")
        state = await ctl.drive(dep)
        if state.phase is Phase.AWAITING_APPROVAL:
            say(f"canary verdict PASS after the soak; {len(state.canaries)} canaries healthy")
            who = "demo --yes (approved on the command line)"
            approved = yes or (ask is not None and ask("Approve the fleet rollout? [y/N] "))
            if not approved:
                human = os.environ.get("USER", "operator")
                state = await ctl.decide(dep, Decision("approval.rejected", human))
            else:
                if not yes:
                    who = os.environ.get("USER", "operator")
                wave1 = [d for d in state.stages[1] if d in vf.model.by_id]
                if scenario == "wave-degradation":
                    for d in wave1[: max(1, (len(wave1) * 4) // 10)]:
                        vf.inject(f"errors:rate=0.3,version=2.0.0,device={d}")
                if scenario == "unreachable":
                    for d in wave1[: max(1, (len(wave1) * 3) // 10 + 1)]:
                        vf.inject(f"unreachable:device={d}")
                if on_approval is not None:
                    on_approval(vf, state)
                state = await ctl.decide(
                    dep,
                    Decision("approval.granted", who, None, {"comment": "approved in the demo"}),
                )
        events = await store.events(dep)
    from fleetgate.report.session import build_report, render_report_md

    report = render_report_md(build_report(dep, events))
    return DemoResult(dep, state.phase.value, exit_code(state), report)


async def _end_earlier_demos(ctl: Any, store: Any, say: Callable[[str], None]) -> None:
    """A demo deployment left open by an earlier run (halted, not approved) ran on a fleet that
    is gone with that run; it would block this one (one deployment per device at a time, and
    an unresolved rollback failure blocks every new deployment). Only deployments the demo
    started are ended, as ABORTED with the reason; anything else in the store is left alone."""
    from fleetgate.engine.admission import open_deployments
    from fleetgate.engine.service import Decision

    for state in (await open_deployments(store)).states:
        async with contextlib.aclosing(store.iter_events(state.deployment_id)) as events:
            first = await anext(events)
        if first.action != "deployment.created" or first.actor != "demo":
            continue
        await ctl.decide(
            state.deployment_id,
            Decision(
                "deployment.aborted",
                "demo",
                None,
                {"reason": "an earlier demo run's fleet: gone with that run"},
            ),
            drive=False,
        )
        say(f"ended {state.deployment_id} (an earlier demo run, {state.phase.value}): ABORTED")
