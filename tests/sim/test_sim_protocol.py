"""Virtual devices speak the agent protocol: idempotent seqs, stage/activate/rollback rules,
synthetic health — checked over HTTP and in memory (``channel``)."""

from __future__ import annotations

import asyncio
import dataclasses
import json

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sim_helpers import BASE, TOKEN, make_manifest, open_channel, stage_args

from fleetgate.artifacts.signing import sign_manifest
from fleetgate.sim.fleet import SimFleet
from fleetgate.sim.fleetspec import FleetSpec
from fleetgate.sim.server import VirtualFleet
from fleetgate.transports.base import DeviceRefusal, TransportUnavailable
from fleetgate.transports.http import HttpTransport
from fleetgate.transports.tokens import TokenSource


async def test_seq_replay_stale_and_conflict(channel):
    fleet, t = channel
    d = fleet.devices[0]
    m = make_manifest("2.0.0")
    first = await t.stage(d, **stage_args(m, "dep-1", 1))
    again = await t.stage(d, **stage_args(m, "dep-1", 1))
    assert (first.status, first.replayed) == ("staged", False)
    assert (again.status, again.release, again.replayed) == ("staged", m.release_id, True)
    for call in (
        t.activate(d, deployment_id="dep-1", seq=1, release=m.release_id),  # other command
        t.stage(d, **stage_args(m, "dep-2", 1)),  # other deployment
    ):
        with pytest.raises(DeviceRefusal) as info:
            await call
        assert info.value.code == "seq-conflict" and info.value.status == 409
    assert (await t.activate(d, deployment_id="dep-1", seq=3, release=m.release_id)).ok
    with pytest.raises(DeviceRefusal) as stale:
        await t.rollback(d, deployment_id="dep-1", seq=2)  # never used, older than last_seq
    assert stale.value.code == "stale-seq" and not stale.value.retryable
    state = fleet.device_state(d.id)
    assert state.current == m.release_id and state.previous == BASE and state.last_seq == 3
    assert state.executed == {("stage", m.release_id): 1, ("activate", m.release_id): 1}
    assert state.received[("stage", m.release_id)] == 3
    assert [(e.seq, e.outcome, e.replayed) for e in state.history] == [
        (1, "staged", False),
        (1, "staged", True),
        (1, "seq-conflict", False),
        (1, "seq-conflict", False),
        (3, "active", False),
        (2, "stale-seq", False),
    ]


async def test_busy_and_in_progress_do_not_consume_the_seq(channel):
    fleet, t = channel
    d = fleet.devices[1]
    fleet.inject(f"slow-link:kbps=4000,device={d.id}")  # 100 kB: 0.2 s
    m = make_manifest("2.0.0")
    staging = asyncio.create_task(t.stage(d, **stage_args(m, "dep-1", 1)))
    while (await t.facts(d)).state != "staging":
        await asyncio.sleep(0.01)
    with pytest.raises(TransportUnavailable) as busy:
        await t.activate(d, deployment_id="dep-1", seq=2, release=m.release_id)
    with pytest.raises(TransportUnavailable) as in_progress:
        await t.stage(d, **stage_args(m, "dep-1", 1))
    assert (busy.value.code, in_progress.value.code) == ("busy", "in-progress")
    assert (await staging).status == "staged"
    assert (await t.activate(d, deployment_id="dep-1", seq=2, release=m.release_id)).ok
    assert fleet.device_state(d.id).executed[("activate", m.release_id)] == 1


async def test_stage_outcomes_and_refusals(channel):
    fleet, t = channel
    orin = next(d for d in fleet.devices if d.hardware == "jetson-orin-nano")
    v2, v3 = make_manifest("2.0.0"), make_manifest("3.0.0")
    await t.stage(orin, **stage_args(v2, "dep", 1))
    await t.activate(orin, deployment_id="dep", seq=2, release=v2.release_id)
    assert (await t.stage(orin, **stage_args(v2, "dep", 3))).status == "already-installed"
    await t.stage(orin, **stage_args(v3, "dep", 4))
    assert (await t.stage(orin, **stage_args(v3, "dep", 5))).status == "already-staged"
    assert fleet.device_state(orin.id).executed[("stage", v3.release_id)] == 2

    x86_only = make_manifest("4.0.0", arch=("x86_64",))
    with pytest.raises(DeviceRefusal) as incompatible:
        await t.stage(orin, **stage_args(x86_only, "dep", 6))
    assert (incompatible.value.code, incompatible.value.status) == ("incompatible", 409)

    args = stage_args(v2, "dep", 7) | {"manifest_json": '{"artifact": {"name": "x"}}'}
    with pytest.raises(DeviceRefusal) as garbage:
        await t.stage(orin, **args)
    assert (garbage.value.code, garbage.value.status) == ("integrity-error", 422)

    huge = make_manifest("5.0.0", disk_mb=60_000)  # an Orin has ~51 GB free
    with pytest.raises(DeviceRefusal) as full:
        await t.stage(orin, **stage_args(huge, "dep", 8))
    assert full.value.code == "insufficient-disk"


async def test_activate_and_rollback_rules(channel):
    fleet, t = channel
    d = fleet.devices[2]
    with pytest.raises(DeviceRefusal) as unknown:
        await t.activate(d, deployment_id="dep", seq=1, release="app-9.9.9-deadbeef")
    assert (unknown.value.code, unknown.value.status) == ("unknown-release", 404)
    with pytest.raises(DeviceRefusal) as no_copy:
        await t.rollback(d, deployment_id="dep", seq=2)
    assert no_copy.value.code == "no-rollback-copy"

    v2, v3 = make_manifest("2.0.0"), make_manifest("3.0.0")
    await t.stage(d, **stage_args(v2, "dep", 3))
    await t.activate(d, deployment_id="dep", seq=4, release=v2.release_id)
    await t.stage(d, **stage_args(v3, "dep", 5))
    again = await t.activate(d, deployment_id="dep", seq=6, release=v3.release_id)
    assert again.previous == v2.release_id
    facts = await t.facts(d)
    assert facts.releases == tuple(sorted([BASE, v2.release_id, v3.release_id]))
    assert facts.rollback_available and facts.current == v3.release_id

    with pytest.raises(DeviceRefusal) as missing:
        await t.rollback(d, deployment_id="dep", seq=7, to="app-9.9.9-deadbeef")
    assert missing.value.code == "unknown-release"
    back = await t.rollback(d, deployment_id="dep", seq=8, to=BASE)
    assert (back.release, back.from_release, back.app_healthy) == (BASE, v3.release_id, True)
    facts = await t.facts(d)
    assert facts.current == BASE and facts.previous is None and not facts.rollback_available

    # Staging prunes down to current + previous; current and previous are never pruned.
    await t.activate(d, deployment_id="dep", seq=9, release=v2.release_id)
    v4 = make_manifest("4.0.0")
    await t.stage(d, **stage_args(v4, "dep", 10))
    assert (await t.facts(d)).releases == tuple(sorted([BASE, v2.release_id, v4.release_id]))


async def test_malformed_commands_are_bad_requests_and_consume_no_seq():
    fleet = SimFleet(FleetSpec(devices=3, token=TOKEN))
    dev = fleet.device(fleet.devices[0].id)
    for name, body in (
        ("stage", {"deployment_id": "d", "seq": 1, "seq_base": 0}),
        ("stage", {"deployment_id": "d", "seq": 1, "seq_base": 0, "manifest": "{}",
                   "signature": "s", "url": "ftp://x"}),
        ("activate", {"deployment_id": "d", "seq": 1, "seq_base": 0, "release": "../etc"}),
        ("activate", {"deployment_id": "d", "seq": True, "release": BASE}),
        ("rollback", {"deployment_id": "", "seq": 1}),
        ("rollback", ["not", "an", "object"]),
    ):  # fmt: skip
        reply = await dev.command(name, body)
        assert reply.code == 400 and reply.body["error"] == "bad-request", (name, body)
    assert dev.last_seq == 0 and (await dev.command("reboot", {})).code == 404


async def test_the_seq_window_and_the_auth_order_match_the_agent():
    fleet = SimFleet(FleetSpec(devices=1, token=TOKEN))
    dev = fleet.device(fleet.devices[0].id)
    # Unauthenticated: 401 whatever device is named; authenticated, another id: 403.
    assert dev.authenticate("Bearer nope", "someone-else").code == 401
    assert dev.authenticate(None, dev.device.id).code == 401
    assert dev.authenticate(f"Bearer {TOKEN}", "someone-else").code == 403
    assert dev.authenticate(f"Bearer {TOKEN}", dev.device.id) is None
    ok = {"deployment_id": "d", "release": BASE}
    assert (await dev.command("activate", {**ok, "seq": 300_001, "seq_base": 3})).code == 200
    for seq, base, code in (
        (2**63, 2**63 // 100_000, 409),  # beyond 2**53
        (300_002, 4, 400),  # not in its block
        (300_002, None, 400),  # no block at all
        ((3 + 1_000_001) * 100_000 + 1, 3 + 1_000_001, 409),  # too far ahead
    ):
        body = {**ok, "seq": seq} | ({} if base is None else {"seq_base": base})
        reply = await dev.command("activate", body)
        assert reply.code == code, (seq, base, reply.body)
        assert dev.last_seq == 300_001
    assert (await dev.command("activate", {**ok, "seq": 400_001, "seq_base": 4})).code == 200


async def test_signatures_are_checked_when_the_fleet_has_a_public_key():
    key = Ed25519PrivateKey.generate()
    m = make_manifest("2.0.0")
    manifest_json, signature = sign_manifest(m, key)
    spec = FleetSpec(devices=3, token=TOKEN, public_key=key.public_key())
    async with open_channel("memory", spec) as (fleet, t):
        d = fleet.devices[0]
        args = stage_args(m, "dep", 1) | {
            "manifest_json": manifest_json.decode(),
            "signature": signature,
        }
        assert (await t.stage(d, **args)).status == "staged"
        forged = args | {"seq": 2, "signature": signature[:-4] + "AAA="}
        with pytest.raises(DeviceRefusal) as bad:
            await t.stage(d, **forged)
    assert bad.value.code == "integrity-error" and "signature" in str(bad.value)


async def test_health_is_realistic_healthy_and_seeded():
    async def readings(seed: int) -> list[tuple[float | None, ...]]:
        async with open_channel("memory", FleetSpec(devices=30, seed=seed, token=TOKEN)) as (
            fleet,
            t,
        ):
            out = []
            for _ in range(5):
                for d in fleet.devices:
                    s = await t.health(d)
                    assert s.app_up and s.release == BASE and not s.crash_loop
                    assert s.restarts == 0 and s.mem_total_mb and s.disk_free_mb
                    # Baselines ± 4 σ of the documented noise (docs/simulator.md, "Noise").
                    assert 0 <= (s.error_rate or 0) <= 0.015
                    assert 20 * 0.88 <= (s.latency_ms or 0) <= 40 * 1.12
                    assert 8 <= (s.cpu_percent or 0) <= 52
                    assert 41 <= (s.temperature_c or 0) <= 64
                    assert s.metrics["app_up"] == 1 and "app_requests_total" in s.metrics
                    assert (s.gpu_percent is not None) == (d.hardware == "jetson-orin-nano")
                    out.append((s.error_rate, s.latency_ms, s.cpu_percent, s.temperature_c))
            return out

    first, second, other = await readings(1), await readings(1), await readings(2)
    assert first == second and first != other


async def test_per_device_addresses():
    spec = FleetSpec(devices=5, seed=1, token=TOKEN, per_device_address=True)
    async with VirtualFleet.start(spec) as fleet:
        hosts = [d.address.split("//")[1].split(":")[0] for d in fleet.devices]
        assert hosts == [f"127.1.0.{i}" for i in range(1, 6)]
        assert all(not d.address.endswith(d.id) for d in fleet.devices)
        tokens = TokenSource(overrides={d.id: TOKEN for d in fleet.devices})
        async with HttpTransport(tokens) as t:
            pings = await asyncio.gather(*(t.ping(d) for d in fleet.devices))
            assert [p.id for p in pings] == [d.id for d in fleet.devices]
            # Device A's address does not answer for device B.
            wrong = dataclasses.replace(fleet.devices[1], address=fleet.devices[0].address)
            with pytest.raises(DeviceRefusal) as info:
                await t.ping(wrong)
            assert info.value.code == "wrong-device"


async def test_ten_thousand_devices_answer_a_health_burst():
    spec = FleetSpec(devices=10_000, seed=3, token=TOKEN)
    async with VirtualFleet.start(spec) as fleet:
        tokens = TokenSource(overrides={d.id: TOKEN for d in fleet.devices})
        async with HttpTransport(tokens, concurrency=512) as t:
            samples = await asyncio.gather(*(t.health(d) for d in fleet.devices))
    assert len({s.device_id for s in samples}) == 10_000 and all(s.app_up for s in samples)


async def test_control_routes(tmp_path):
    import aiohttp

    async with VirtualFleet.start(FleetSpec(devices=6, seed=1, token=TOKEN)) as fleet:
        dev = fleet.devices[0].id
        headers = {"Authorization": f"Bearer {TOKEN}"}
        async with aiohttp.ClientSession(headers=headers) as s:
            async with s.post(f"{fleet.url}/_sim/faults", json={"fault": f"hot:device={dev}"}) as r:
                assert r.status == 200 and (await r.json()) == {"devices": [dev]}
            async with s.post(f"{fleet.url}/_sim/faults", json={"fault": "melt"}) as r:
                body = await r.json()
                assert r.status == 400 and "unknown fault kind" in body["message"]
            async with s.get(f"{fleet.url}/_sim/devices/{dev}") as r:
                snap = await r.json()
                assert snap["current"] == BASE and snap["faults"] == [f"hot:temp=95,device={dev}"]
            async with s.delete(f"{fleet.url}/_sim/faults") as r:
                assert r.status == 200
            assert fleet.device_state(dev).faults == ()
            async with s.get(
                f"{fleet.url}/_sim/devices/{dev}", headers={"Authorization": "x"}
            ) as r:
                assert r.status == 401
    assert json.dumps(snap)  # plain JSON


async def test_call_counter_counts_every_device_request_and_nothing_else():
    """``GET /_sim/calls``: what the engine benchmark divides by the fleet size. A refused (wrong
    token) or unknown call still counts — the controller made it; control routes, an unknown
    device and the counter's own reads do not; the counter is behind the fleet token."""
    import aiohttp

    async with VirtualFleet.start(FleetSpec(devices=3, seed=1, token=TOKEN)) as fleet:
        a, b = (d.id for d in fleet.devices[:2])
        good = {"Authorization": f"Bearer {TOKEN}", "X-Fleetgate-Device": a}
        async with aiohttp.ClientSession() as s:
            for path, headers in (
                (f"/d/{a}/v1/ping", good),
                (f"/d/{a}/v1/health", good),
                (f"/d/{a}/v1/health", good),
                (f"/d/{b}/v1/facts", {"Authorization": "Bearer wrong"}),  # refused: still a call
                ("/d/no-such-device/v1/ping", good),  # no device: not a device's call
                (f"/_sim/devices/{a}", good),  # control route: not counted
            ):
                async with s.get(f"{fleet.url}{path}", headers=headers) as r:
                    await r.read()
            async with s.get(f"{fleet.url}/_sim/calls", headers={"Authorization": "x"}) as r:
                assert r.status == 401
            async with s.get(f"{fleet.url}/_sim/calls", headers=good) as r:
                first = await r.json()
            async with s.get(f"{fleet.url}/_sim/calls", headers=good) as r:
                second = await r.json()
    assert first == {"total": 4, "by_call": {"ping": 1, "health": 2, "facts": 1}}
    assert second == first and fleet.calls.total() == 4
