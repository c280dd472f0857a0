"""Self-enrolment through the service over real HTTP: `fleetgate agent enroll`'s code on the
device side, the enrolment token instead of a user token, every refusal audited, pending
devices never planned until accepted, and facts read from a device before a plan needs them."""

from __future__ import annotations

import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "store"))
import pytest
from api_harness import Service, service
from enrol_kit import FACTS, body

from fleetgate.agent.config import load_config
from fleetgate.agent.enroll import EnrolOptions, enroll
from fleetgate.clock import to_iso, utc_now
from fleetgate.errors import InputError
from ports import free_port


def NOW_ISO() -> str:
    return to_iso(utc_now())


FAST_TOML = 'allow_short_soak = true\n[soak]\ncanary = "10m"\nbetween_waves = "5m"\n'


async def _token(svc: Service, role: str = "operator", **kw: Any) -> tuple[int, Any]:
    return await svc.call("POST", "/api/v1/enroll/tokens", role, json={"group": "plant-a", **kw})


async def _enrol_raw(svc: Service, token: str | None, doc: Any) -> tuple[int, Any]:
    headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
    return await svc.call("POST", "/api/v1/enroll", None, json=doc, headers=headers)


async def _refusals(svc: Service) -> list[dict[str, Any]]:
    return [dict(e.details) async for e in svc.h.store.iter_events() if e.action == "api.refused"]


async def test_a_device_enrols_itself_and_waits_for_acceptance(tmp_path: Path) -> None:
    async with service(tmp_path) as svc:
        status, doc = await _token(svc, expires="1h")
        assert status == 201 and doc["token"].startswith("fge_") and not doc["auto_accept"]
        token = doc["token"]

        # The device side, as `fleetgate agent enroll` runs it.
        cfg = tmp_path / "device" / "agent.toml"
        answer = await enroll(
            EnrolOptions(
                server=svc.url,
                token=token,
                config=cfg,
                device_id="new-rpi",
                address="http://127.0.0.1:7999",
                hardware="rpi4",
            )
        )
        assert (answer["id"], answer["group"], answer["state"]) == ("new-rpi", "plant-a", "pending")
        for secret in ("device.key", "credential"):
            assert (cfg.parent / secret).stat().st_mode & 0o777 == 0o600
        agent = load_config(cfg)  # a complete agent.toml: `agent run` starts from it
        assert (agent.device_id, agent.hardware, agent.port) == ("new-rpi", "rpi4", 7999)
        dev = await svc.h.store.get_device("new-rpi")
        assert dev is not None and dev.facts_known and dev.resources is not None
        assert Path(dev.token_file or "").read_text().strip() == agent.token  # one credential

        # The token is spent: the same request again is refused and audited, nothing written.
        status, err = await _enrol_raw(svc, token, body(token, "other"))
        assert status == 403 and err["error"]["field"] == "token", err
        assert "already used" in err["error"]["message"]
        status, err = await _enrol_raw(svc, "fge_unknown", body("fge_unknown", "other"))
        assert status == 401 and err["error"]["field"] == "token"
        status, err = await _enrol_raw(svc, None, body("x", "other"))
        assert status == 401
        # A user's token is not an enrolment token.
        status, err = await _enrol_raw(svc, svc.tokens["admin"], body(svc.tokens["admin"], "o"))
        assert status == 401
        _, fresh = await _token(svc)
        bad_facts = body(fresh["token"], "other", facts={**FACTS, "arch": "sparc"})
        status, err = await _enrol_raw(svc, fresh["token"], bad_facts)
        assert status == 400 and err["error"]["field"] == "facts.arch", err
        status, err = await _enrol_raw(svc, fresh["token"], body(fresh["token"], "new-rpi"))
        assert status == 409 and err["error"]["field"] == "id", err  # another key
        assert await svc.h.store.get_device("other") is None
        reasons = [r["reason"] for r in await _refusals(svc) if r["path"] == "/api/v1/enroll"]
        assert len(reasons) == 6 and any("already used" in r for r in reasons)

        # Pending: never planned, and the plan says why.
        rel = (await svc.upload(svc.h.bundle))[1]
        plan_req = {"release": rel["sha256"], "policy_toml": FAST_TOML}
        status, plan = await svc.call("POST", "/api/v1/plans", "viewer", json=plan_req)
        assert status == 200, plan
        reasons = {e["id"]: e["reason"] for e in plan["plan"]["excluded"]}
        assert reasons["new-rpi"].startswith("state pending: enrolled with enr-"), reasons
        status, listed = await svc.call("GET", "/api/v1/registry?state=pending", "viewer")
        assert [d["id"] for d in listed["devices"]] == ["new-rpi"]
        assert listed["devices"][0]["last_seen"] is not None

        status, err = await svc.call(
            "POST", "/api/v1/registry:accept", "viewer", json={"all_pending": True}
        )
        assert status == 403
        status, done = await svc.call("POST", "/api/v1/registry:accept", json={"all_pending": True})
        assert status == 200 and done["accepted"] == ["new-rpi"], done
        status, plan = await svc.call("POST", "/api/v1/plans", "viewer", json=plan_req)
        assert all(e["id"] != "new-rpi" for e in plan["plan"]["excluded"]), plan

        # A spent token on the device side: refused, and nothing is written there either.
        try:
            await enroll(
                EnrolOptions(
                    server=svc.url,
                    token=token,
                    config=tmp_path / "x.toml",
                    device_id="x",
                    hardware="rpi4",
                    address="http://127.0.0.1:1",
                )
            )
        except InputError as exc:
            assert "HTTP 403" in str(exc)
        else:
            raise AssertionError("a spent token enrolled a device")
        assert not (tmp_path / "x.toml").exists() and not (tmp_path / "credential").exists()


async def test_a_device_reached_over_mqtt_dials_out_and_listens_nowhere(tmp_path: Path) -> None:
    """The broker's port in an mqtt:// address is not one for the agent to listen on: the
    config gets no HTTP listener, and the broker the address names."""
    async with service(tmp_path) as svc:
        status, doc = await _token(svc, expires="1h")
        assert status == 201
        cfg = tmp_path / "device" / "agent.toml"
        answer = await enroll(
            EnrolOptions(
                server=svc.url,
                token=doc["token"],
                config=cfg,
                device_id="mq-1",
                address="mqtt://127.0.0.1:1883/mq-1",
                hardware="rpi4",
            )
        )
        assert answer["state"] == "pending"
        agent = load_config(cfg)
        assert not agent.http_listen
        assert agent.mqtt is not None and agent.mqtt.broker == "mqtt://127.0.0.1:1883"
        dev = await svc.h.store.get_device("mq-1")
        assert dev is not None and dev.address == "mqtt://127.0.0.1:1883/mq-1"


async def test_token_roles_and_list_and_revoke(tmp_path: Path) -> None:
    async with service(tmp_path) as svc:
        status, err = await _token(svc, auto_accept=True)  # operator: admits unreviewed? no
        assert status == 403 and "needs admin" in err["error"]["message"]
        status, err = await _token(svc, "viewer")
        assert status == 403
        status, auto = await _token(svc, "admin", auto_accept=True, expires="30m")
        assert status == 201 and auto["auto_accept"]
        status, err = await _token(svc, expires="forever")
        assert status == 400 and err["error"]["field"] == "expires"
        status, listed = await svc.call("GET", "/api/v1/enroll/tokens", "viewer")
        assert [t["status"] for t in listed["tokens"]] == ["usable"]
        assert "token" not in listed["tokens"][0] and "token_hash" not in listed["tokens"][0]
        status, _ = await svc.call("DELETE", f"/api/v1/enroll/tokens/{auto['id']}")
        assert status == 200
        status, err = await _enrol_raw(svc, auto["token"], body(auto["token"], "x"))
        assert status == 403 and "revoked" in err["error"]["message"]
        status, ok = await _token(svc, "admin", auto_accept=True)
        status, done = await _enrol_raw(svc, ok["token"], body(ok["token"], "auto-1"))
        assert status == 201 and done["state"] == "active", done


async def test_facts_are_read_from_the_device_before_a_plan_needs_them(tmp_path: Path) -> None:
    async with service(tmp_path) as svc:
        store = svc.h.store
        first = (await store.list_devices())[0]
        blank = replace(first, hardware=None, arch=None, resources=None)
        await store.upsert_devices([blank])
        rel = (await svc.upload(svc.h.bundle))[1]
        req = {"release": rel["sha256"], "policy_toml": FAST_TOML}
        status, plan = await svc.call("POST", "/api/v1/plans", "viewer", json=req)
        (excl,) = [e for e in plan["plan"]["excluded"] if e["id"] == first.id]
        assert excl["reason"].startswith("facts unknown")
        # Starting a deployment asks the device first (first contact), then plans.
        status, created = await svc.call("POST", "/api/v1/deployments", json=req)
        assert status == 201, created
        dev = await store.get_device(first.id)
        assert dev is not None and dev.facts_known and dev.hardware == first.hardware
        assert (await store.last_seen())[first.id] is not None
        actions = [e.action async for e in store.iter_events()]
        assert "registry.refreshed" in actions

        # registry:refresh over the API: the simulated devices answer their facts.
        status, done = await svc.call(
            "POST", "/api/v1/registry:refresh", json={"select": f"group={first.group}"}
        )
        assert status == 200 and first.id in done["updated"] and not done["failed"], done


def _pki(tmp: Path) -> tuple[Path, Path, Path]:
    """A CA and a server certificate for 127.0.0.1: (ca.pem, cert.pem, key.pem)."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    def name(cn: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])

    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca = (
        x509.CertificateBuilder()
        .subject_name(name("ca"))
        .issuer_name(name("ca"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    cert = (
        x509.CertificateBuilder()
        .subject_name(name("fleetgate"))
        .issuer_name(name("ca"))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    paths = tmp / "ca.pem", tmp / "server.pem", tmp / "server.key"
    paths[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return paths


async def test_enrolment_over_tls_trusts_only_the_given_ca(tmp_path: Path) -> None:
    from fleetgate.errors import FleetgateError

    ca, cert, key = _pki(tmp_path)
    async with service(tmp_path, tls=(cert, key)) as svc:
        _, doc = await svc.call(
            "POST", "/api/v1/enroll/tokens", "operator", json={"group": "plant-a"}, ssl=False
        )
        opts = EnrolOptions(
            server=svc.url,
            token=doc["token"],
            config=tmp_path / "d" / "a.toml",
            device_id="tls-1",
            hardware="rpi4",
            address="https://127.0.0.1:7443",
        )
        try:  # the system store does not know this CA: refused before anything is sent
            await enroll(opts)
        except FleetgateError as exc:
            assert "certificate verify failed" in str(exc).lower() or "ssl" in str(exc).lower()
        else:
            raise AssertionError("an unverified server got the credential")
        assert await svc.h.store.get_device("tls-1") is None
        answer = await enroll(replace(opts, ca_file=ca))
        assert answer["state"] == "pending"
        assert load_config(opts.config).ca_bundle == ca  # fetches trust the same CA

    # Plain http:// is only for loopback: the credential travels in the request.
    try:
        await enroll(replace(opts, server="http://fleet.example.com"))
    except InputError as exc:
        assert "only to a loopback address" in str(exc)
    else:
        raise AssertionError("enrolled over plain http to a remote host")


async def test_the_cli_against_the_service(tmp_path: Path, capsys, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    import asyncio
    import json

    from fleetgate.cli.main import run

    async def cli(*argv: str) -> tuple[int, str, str]:
        code = await asyncio.to_thread(run, list(argv))
        out, err = capsys.readouterr()
        return code, out, err

    async with service(tmp_path) as svc:
        monkeypatch.setenv("FLEETGATE_TOKEN", svc.tokens["operator"])
        code, out, err = await cli("enroll", "create", "--group", "plant-a", "--server", svc.url)
        assert code == 0 and out.strip().startswith("fge_"), err
        token = out.strip()
        code, out, err = await cli(
            "enroll", "create", "--group", "plant-a", "--auto-accept", "--server", svc.url
        )
        assert code == 2 and "needs admin" in err
        status, _ = await _enrol_raw(svc, token, body(token, "cli-1"))
        assert status == 201
        code, out, err = await cli(
            "registry", "list", "--state", "pending", "--json", "--server", svc.url
        )
        assert [d["id"] for d in json.loads(out)["devices"]] == ["cli-1"], err
        code, out, err = await cli("registry", "accept", "cli-1", "--server", svc.url)
        assert code == 0 and "accepted 1 device(s): cli-1" in out, err
        code, out, err = await cli("enroll", "list", "--server", svc.url)
        assert "used by cli-1" in out


@pytest.mark.slow
async def test_enrolled_agent_answers_the_controller_with_its_own_credential(
    tmp_path: Path,
) -> None:
    """The whole loop with real processes: `fleetgate agent enroll` (CLI) writes the config,
    `fleetgate agent run` starts from it, and the controller reaches it with the credential
    the device chose, refreshing its facts; a wrong credential is refused by the agent."""
    import asyncio
    import os
    import signal
    import subprocess

    from fleetgate.engine.facts_refresh import refresh_facts
    from fleetgate.transports.http import HttpTransport
    from fleetgate.transports.tokens import TokenSource

    port = free_port()
    cfg = tmp_path / "device" / "agent.toml"
    async with service(tmp_path) as svc:
        _, doc = await _token(svc)
        enrol_cmd = [
            sys.executable,
            "-m",
            "fleetgate",
            "agent",
            "enroll",
            "--server",
            svc.url,
            "--token",
            doc["token"],
            "--id",
            "real-1",
            "--hardware",
            "rpi4",
            "--address",
            f"http://127.0.0.1:{port}",
            "--config",
            str(cfg),
        ]
        proc = await asyncio.create_subprocess_exec(
            *enrol_cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        out, err = await proc.communicate()
        assert proc.returncode == 0, err.decode()
        assert out.decode() == "enrolled real-1 in group plant-a: pending\n"
        agent = subprocess.Popen(
            [sys.executable, "-m", "fleetgate", "agent", "run", "--config", str(cfg)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            dev = await svc.h.store.get_device("real-1")
            assert dev is not None
            async with HttpTransport(TokenSource()) as client:
                for _ in range(200):  # until the agent listens
                    done = await refresh_facts(svc.h.store, client, [dev], now=NOW_ISO(), actor="t")
                    if done.updated:
                        break
                    await asyncio.sleep(0.05)
                assert [d.id for d in done.updated] == ["real-1"], done.failed
            async with HttpTransport(TokenSource(overrides={"real-1": "fgd_wrong"})) as client:
                done = await refresh_facts(svc.h.store, client, [dev], now=NOW_ISO(), actor="t")
                assert "real-1" in done.failed
        finally:
            os.kill(agent.pid, signal.SIGTERM)
            agent.wait(15)


async def test_an_enrolled_device_re_sends_its_facts_signed_with_its_key(tmp_path: Path) -> None:
    import base64
    import json

    from fleetgate.agent.enroll import _signed_facts, send_facts

    async with service(tmp_path) as svc:
        _, doc = await _token(svc)
        cfg = tmp_path / "device" / "agent.toml"
        opts = EnrolOptions(
            server=svc.url,
            token=doc["token"],
            config=cfg,
            device_id="pi-9",
            address="http://127.0.0.1:7999",
            hardware="rpi4",
        )
        await enroll(opts)
        before = (await svc.h.store.last_seen())["pi-9"]
        answer = await send_facts(svc.url, cfg)
        assert answer == {"id": "pi-9", "facts_known": True}
        assert (await svc.h.store.last_seen())["pi-9"] > before

        raw, headers = _signed_facts(cfg)
        tampered = json.loads(raw)
        tampered["facts"]["ram_mb"] = 1.0  # changed after signing
        status, err = await svc.call(
            "POST", "/api/v1/enroll/facts", None, data=json.dumps(tampered), headers=headers
        )
        assert status == 401 and err["error"]["field"] == "signature", err
        stale = json.loads(raw)
        stale["ts"] = "2020-01-01T00:00:00+00:00"
        # Signed by the device's key, but old: a replay of a captured request.
        from cryptography.hazmat.primitives import serialization

        from fleetgate.core.enrolment import facts_message

        key = serialization.load_pem_private_key((cfg.parent / "device.key").read_bytes(), None)
        body_raw = json.dumps(stale).encode()
        import hashlib

        sig = key.sign(  # type: ignore[call-arg,union-attr]
            facts_message(
                device_id="pi-9", ts=stale["ts"], body_sha256=hashlib.sha256(body_raw).hexdigest()
            )
        )
        status, err = await svc.call(
            "POST",
            "/api/v1/enroll/facts",
            None,
            data=body_raw,
            headers={"X-Fleetgate-Signature": base64.b64encode(sig).decode()},
        )
        assert status == 401 and err["error"]["field"] == "ts", err
        status, err = await svc.call(
            "POST",
            "/api/v1/enroll/facts",
            None,
            data=raw.replace(b'"pi-9"', b'"nobody"'),
            headers=headers,
        )
        assert status == 401 and err["error"]["field"] == "id", err
        refused = [r for r in await _refusals(svc) if r["path"] == "/api/v1/enroll/facts"]
        assert len(refused) == 3
        dev = await svc.h.store.get_device("pi-9")
        assert dev is not None and dev.resources is not None and dev.resources.ram_mb > 1
