"""Keys that rotate, on real agent processes (issue 10, script "rotated key then rollback").

Each test has its own keys, roots directory and distribution point (the session's shared blob
server must not publish roots: every other agent would walk to them). Roots are made with the
real ``fleetgate keys`` commands; the agent fetches them from ``/v1/roots/`` at each stage.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from agent_harness import AgentProc, BlobServer, Release, make_app_dir

from fleetgate.artifacts.bundle import build_bundle
from fleetgate.artifacts.distribution import publish_roots
from fleetgate.artifacts.keys import generate_keypair, load_private_key
from fleetgate.cli.main import run


@dataclass
class Site:
    root: Path
    server: BlobServer
    keys: dict[str, tuple[Path, Path]]  # name -> (private, public)
    roots: Path

    def key(self, name: str) -> Any:
        return load_private_key(self.keys[name][0])

    def release(self, version: str, *signers: str, valid_until: str | None = None) -> Release:
        src = make_app_dir(self.root / "-".join(signers), "demo", version)
        keys = [self.key(s) for s in signers]
        bundle = build_bundle(src, keys, self.root / "bundles", valid_until=valid_until)
        return Release(bundle, self.server.publish(bundle))

    def keys_cmd(self, *argv: str) -> None:
        assert run(["keys", *argv, "--roots", str(self.roots)]) == 0

    def publish_roots(self) -> None:
        publish_roots(self.roots, self.server.blob_dir)


@pytest.fixture
def site(tmp_path: Path) -> Iterator[Site]:
    keys = {n: generate_keypair(tmp_path / "keys" / n) for n in ("k1", "k2", "k3")}
    with BlobServer(tmp_path / "blobs") as server:
        yield Site(tmp_path, server, keys, tmp_path / "roots")


@pytest.fixture
def agents() -> Iterator[list[AgentProc]]:
    started: list[AgentProc] = []
    yield started
    for a in started:
        a.cleanup()


def _agent(site: Site, agents: list[AgentProc], trust: Path) -> AgentProc:
    a = AgentProc(site.root / f"agent-{len(agents)}", trust)
    agents.append(a)
    return a.start()


def _stage(a: AgentProc, seq: int, rel: Release) -> tuple[int, Any]:
    return a.post("stage", deployment_id="d", seq=seq, **rel.stage)


def _activate(a: AgentProc, seq: int, rel: Release) -> tuple[int, Any]:
    return a.post("activate", deployment_id="d", seq=seq, release=rel.id)


def test_rotated_key_then_rollback(site: Site, agents: list[AgentProc]) -> None:
    """A device configured with the old bare public key: k1 signs 1.0.0 (running) and 1.5.0
    (staged, never run). Then the operator moves to roots and rotates k1 out for k2. The device
    stages 2.0.0 (k2) after walking v0 → v1 → v2, refuses k1's releases, and still rolls back to
    1.0.0, which it accepted under the old key."""
    k1_pub, k2_pub = site.keys["k1"][1], site.keys["k2"][1]
    a = _agent(site, agents, k1_pub)
    v1, v15 = site.release("1.0.0", "k1"), site.release("1.5.0", "k1")
    assert _stage(a, 1, v1)[1]["status"] == "staged"
    assert _activate(a, 2, v1)[1]["status"] == "active"
    assert _stage(a, 3, v15)[1]["status"] == "staged"

    v2 = site.release("2.0.0", "k2")
    status, body = _stage(a, 4, v2)  # k2 is not trusted yet: no root names it
    assert (status, body["error"]) == (422, "integrity-error"), body

    site.keys_cmd("init-root", "--root-key", str(site.keys["k1"][0]))
    site.keys_cmd(
        "rotate",
        "--sign",
        str(site.keys["k1"][0]),
        "--sign",
        str(site.keys["k2"][0]),
        "--add-release-key",
        str(k2_pub),
        "--remove-release-key",
        str(k1_pub),
        "--add-root-key",
        str(k2_pub),
        "--remove-root-key",
        str(k1_pub),
    )
    site.publish_roots()

    assert _stage(a, 5, v2)[1]["status"] == "staged"
    assert sorted(p.name for p in (a.data_dir / "trust" / "roots").iterdir()) == [
        "1.root.json",
        "2.root.json",
    ]
    assert _activate(a, 6, v2)[1]["status"] == "active"
    assert a.app_version() == "2.0.0"

    # k1 is revoked: a new k1 release is refused at stage, and the k1 release staged before
    # the rotation is not switched to by activate either …
    status, body = _stage(a, 7, site.release("3.0.0", "k1"))
    assert (status, body["error"]) == (422, "integrity-error"), body
    assert "root v2" in body["message"]
    status, body = _activate(a, 8, v15)
    assert (status, body["error"]) == (422, "integrity-error"), body
    assert a.facts()["current"] == v2.id

    # … but the rollback copy, accepted under the old key, still rolls back (with a warning).
    status, body = a.post("rollback", deployment_id="d", seq=9)
    assert status == 200 and body["status"] == "rolled-back" and body["release"] == v1.id, body
    assert "no longer lists" in body["warning"]
    assert a.app_version() == "1.0.0"

    # The trusted root survives a restart (persisted, re-verified from the config's key).
    a.stop()
    a.start()
    assert _stage(a, 10, site.release("4.0.0", "k2"))[1]["status"] == "staged"


def test_roots_that_do_not_chain_are_refused(site: Site, agents: list[AgentProc]) -> None:
    """A root signed only by the new key (not the old threshold), and an old root served as
    the next version (a rollback of the root), are refused at stage; nothing is persisted and
    the device keeps trusting what it trusted."""
    k1, k2 = (str(site.keys[n][0]) for n in ("k1", "k2"))
    site.keys_cmd("init-root", "--root-key", k1)
    a = _agent(site, agents, site.roots / "1.root.json")
    v1 = site.release("1.0.0", "k1")

    # v2 signed by k2 alone (it makes k2 the only root and release key): written by hand, the
    # CLI refuses to write a root that does not chain.
    assert (
        run(
            [
                "keys",
                "rotate",
                "--roots",
                str(site.roots),
                "--sign",
                k2,
                "--add-root-key",
                str(site.keys["k2"][1]),
                "--remove-root-key",
                k1.replace(".key", ".pub"),
            ]
        )
        == 2
    )
    from fleetgate.artifacts.keys import load_public_key
    from fleetgate.artifacts.root import make_root, sign_root

    k2_pub = load_public_key(site.keys["k2"][1])
    expires = (datetime.now(timezone.utc) + timedelta(days=30)).strftime("%Y-%m-%dT%H:%M:%SZ")
    forged = sign_root(make_root(2, expires, [k2_pub], 1, [k2_pub], 1), [site.key("k2")])
    out = site.server.blob_dir / "roots"
    out.mkdir(parents=True)
    (out / "2.root.json").write_bytes(forged)
    status, body = _stage(a, 1, v1)
    assert (status, body["error"]) == (422, "integrity-error"), body
    assert "root v2: signed by 0 of the 1 root keys of trusted v1" in body["message"]
    assert not (a.data_dir / "trust" / "roots").exists()

    # The real v2 (k1 + k2), then v1's bytes served as "3.root.json": a lower version.
    (out / "2.root.json").unlink()
    site.keys_cmd(
        "rotate", "--sign", k1, "--sign", k2, "--add-release-key", str(site.keys["k2"][1])
    )
    site.publish_roots()
    (out / "3.root.json").write_bytes((site.roots / "1.root.json").read_bytes())
    status, body = _stage(a, 2, v1)
    assert (status, body["error"]) == (422, "integrity-error"), body
    assert "root v1 does not follow trusted root v2" in body["message"]
    (out / "3.root.json").unlink()
    assert _stage(a, 3, v1)[1]["status"] == "staged"  # v2 was kept: k1 still signs releases


def test_threshold_two_of_three(site: Site, agents: list[AgentProc]) -> None:
    site.keys_cmd(
        "init-root",
        "--root-key",
        str(site.keys["k1"][0]),
        *(arg for n in ("k1", "k2", "k3") for arg in ("--release-key", str(site.keys[n][1]))),
        "--threshold",
        "2",
    )
    a = _agent(site, agents, site.roots / "root.json")
    status, body = _stage(a, 1, site.release("1.0.0", "k3"))
    assert (status, body["error"]) == (422, "integrity-error"), body
    assert "signed by 1 of the 2 release keys" in body["message"]
    # Two signatures by the same key do not make two.
    rel = site.release("1.1.0", "k3")
    sig = rel.stage["signature"]
    doubled = {**rel.stage, "signature": f"{sig}\n{sig}"}
    status, body = a.post("stage", deployment_id="d", seq=2, **doubled)
    assert (status, body["error"]) == (422, "integrity-error"), body
    ok = site.release("1.2.0", "k1", "k3")
    assert _stage(a, 3, ok)[1]["status"] == "staged"
    assert _activate(a, 4, ok)[1]["status"] == "active"


@pytest.mark.slow
def test_an_expired_manifest_is_refused_at_stage_but_rolls_back(
    site: Site, agents: list[AgentProc]
) -> None:
    a = _agent(site, agents, site.keys["k1"][1])
    status, body = _stage(a, 1, site.release("0.9.0", "k1", valid_until="2020-01-01T00:00:00Z"))
    assert (status, body["error"]) == (422, "integrity-error"), body
    assert "expired at 2020-01-01T00:00:00Z" in body["message"]

    v2 = site.release("2.0.0", "k1")
    # v1 expires a few seconds from now: staged just before, rolled back to just after.
    soon = datetime.now(timezone.utc).replace(microsecond=0) + timedelta(seconds=5)
    v1 = site.release("1.0.0", "k1", valid_until=soon.strftime("%Y-%m-%dT%H:%M:%SZ"))
    assert _stage(a, 2, v1)[1]["status"] == "staged"
    assert _activate(a, 3, v1)[1]["status"] == "active"
    assert _stage(a, 4, v2)[1]["status"] == "staged"
    assert _activate(a, 5, v2)[1]["status"] == "active"
    time.sleep(max(0.0, (soon - datetime.now(timezone.utc)).total_seconds()) + 1.0)
    status, body = a.post("rollback", deployment_id="d", seq=6)
    assert (status, body["status"], body["release"]) == (200, "rolled-back", v1.id), body
    assert a.app_version() == "1.0.0"


def test_a_manifest_without_a_file_list_is_refused_at_stage(
    site: Site, agents: list[AgentProc]
) -> None:
    """A bundle built before verified slots (no ``files``, no ``valid_until``) is signed and
    readable, but a device cannot check its slot later: refused with a clear message."""
    import dataclasses

    from fleetgate.artifacts.signing import sign_manifest
    from fleetgate.core.manifest import canonical_manifest

    a = _agent(site, agents, site.keys["k1"][1])
    rel = site.release("1.0.0", "k1")
    old = dataclasses.replace(rel.bundle.manifest, files=None, valid_until=None)
    manifest_json, signature = sign_manifest(old, site.key("k1"))
    assert manifest_json == canonical_manifest(old)
    body = {**rel.stage, "manifest": manifest_json.decode(), "signature": signature}
    status, reply = a.post("stage", deployment_id="d", seq=1, **body)
    assert (status, reply["error"]) == (422, "integrity-error"), reply
    assert "no signed file list" in reply["message"] and "rebuild" in reply["message"]


def test_the_roots_are_looked_up_beside_the_blob_url() -> None:
    from fleetgate.agent.trust import roots_url

    sha = "ab" * 32
    assert roots_url({"url": f"http://h:1/v1/blobs/{sha}"}) == "http://h:1/v1/roots/"
    assert roots_url({"url": f"https://h/dist/blobs/{sha}"}) == "https://h/dist/roots/"
    assert roots_url({"url": "http://h/files/app.tgz"}) is None
    given = {"url": f"http://h/v1/blobs/{sha}", "root_url": "http://other/r"}
    assert roots_url(given) == "http://other/r/"


def test_a_root_url_that_is_not_http_is_a_bad_request(site: Site, agents: list[AgentProc]):
    a = _agent(site, agents, site.keys["k1"][1])
    rel = site.release("1.0.0", "k1")
    status, body = a.post("stage", deployment_id="d", seq=1, **rel.stage, root_url="file:///etc")
    assert (status, body["error"]) == (400, "bad-request") and "root_url" in body["message"]


def test_an_expired_root_stops_new_stages_not_a_rollback(site: Site, agents: list[AgentProc]):
    """A device frozen on an old root (or an operator who forgot to re-sign it): once the
    trusted root has expired nothing new is staged, but the device still rolls back."""
    from fleetgate.artifacts.root import make_root, sign_root

    a = _agent(site, agents, site.keys["k1"][1])
    v1, v2 = site.release("1.0.0", "k1"), site.release("2.0.0", "k1")
    for seq, rel in ((1, v1), (3, v2)):
        assert _stage(a, seq, rel)[1]["status"] == "staged"
        assert _activate(a, seq + 1, rel)[1]["status"] == "active"
    pub = site.key("k1").public_key()
    expired = make_root(1, "2021-01-01T00:00:00Z", [pub], 1, [pub], 1)
    site.roots.mkdir()
    (site.roots / "1.root.json").write_bytes(sign_root(expired, [site.key("k1")]))
    site.publish_roots()
    status, body = _stage(a, 5, site.release("3.0.0", "k1"))
    assert (status, body["error"]) == (422, "integrity-error"), body
    assert "trusted root v1 expired at 2021-01-01T00:00:00Z" in body["message"]
    status, body = a.post("rollback", deployment_id="d", seq=6)
    assert (status, body["status"], body["release"]) == (200, "rolled-back", v1.id), body


def test_the_agent_config_takes_a_root_or_a_key_not_both(site: Site, tmp_path: Path) -> None:
    from fleetgate.agent.config import load_config
    from fleetgate.errors import ValidationError

    site.keys_cmd("init-root", "--root-key", str(site.keys["k1"][0]))
    head = '[device]\nid = "d"\nhardware = "h"\n[agent]\ndata_dir = "x"\ntoken_env = "PATH"\n'
    cfg = tmp_path / "agent.toml"
    cfg.write_text(head + f'root = "{site.roots / "root.json"}"\n')
    assert load_config(cfg).root == site.roots / "root.json"
    cfg.write_text(
        head + f'root = "{site.roots / "root.json"}"\npublic_key = "{site.keys["k1"][1]}"\n'
    )
    with pytest.raises(ValidationError, match=r"agent\.root: set one of root or public_key"):
        load_config(cfg)
    cfg.write_text(head + f'root = "{site.keys["k1"][1]}"\n')  # a PEM file is not a root
    with pytest.raises(ValidationError, match=r"agent\.root: .* is not a JSON root document"):
        load_config(cfg)
    cfg.write_text(head)
    with pytest.raises(ValidationError, match=r"agent\.root: missing"):
        load_config(cfg)


def test_agent_check_proves_the_root_and_says_which_file(site: Site, tmp_path: Path, capsys):
    import json

    site.keys_cmd("init-root", "--root-key", str(site.keys["k1"][0]))
    capsys.readouterr()
    doc = json.loads((site.roots / "1.root.json").read_text())
    doc["signed"]["roles"]["targets"]["threshold"] = 1
    doc["signed"]["expires"] = "2099-01-01T00:00:00Z"  # edited after signing
    forged = tmp_path / "forged.json"
    forged.write_text(json.dumps(doc))
    cfg = tmp_path / "agent.toml"
    head = '[device]\nid = "d"\nhardware = "h"\n[agent]\ndata_dir = "x"\ntoken_env = "PATH"\n'
    cfg.write_text(head + f'root = "{site.roots / "root.json"}"\n')
    assert run(["agent", "check", "--config", str(cfg)]) == 0
    cfg.write_text(head + f'root = "{forged}"\n')
    assert run(["agent", "check", "--config", str(cfg)]) == 2
    err = capsys.readouterr().err
    assert f"agent.root: {forged}" in err and "signed by 0 of the 1 of its own root keys" in err


def test_stored_roots_are_a_cache_re_verified_from_the_configured_root(
    site: Site, tmp_path: Path
) -> None:
    """A root planted in ``trust/roots/`` (not signed by the trusted root keys) is ignored when
    the chain is loaded: the configured root stays the start of trust."""
    from fleetgate.agent.trust import TrustStore
    from fleetgate.artifacts.keys import load_public_key
    from fleetgate.artifacts.root import make_root, sign_root

    k1, k2 = site.keys["k1"], site.keys["k2"]
    site.keys_cmd("init-root", "--root-key", str(k1[0]))
    site.keys_cmd("rotate", "--sign", str(k1[0]), "--add-release-key", str(k2[1]))
    data = tmp_path / "data"
    store = TrustStore(data, None, k1[1])
    for v in (1, 2):
        store.accept((site.roots / f"{v}.root.json").read_bytes(), f"{v}.root.json")
    assert [r.version for r in TrustStore(data, None, k1[1]).chain()] == [0, 1, 2]

    pub2 = load_public_key(k2[1])
    expires = (datetime.now(timezone.utc) + timedelta(days=30)).strftime("%Y-%m-%dT%H:%M:%SZ")
    planted = sign_root(make_root(3, expires, [pub2], 1, [pub2], 1), [site.key("k2")])
    (data / "trust" / "roots" / "3.root.json").write_bytes(planted)
    assert [r.version for r in TrustStore(data, None, k1[1]).chain()] == [0, 1, 2]
    (data / "trust" / "roots" / "2.root.json").write_bytes(b"{}")  # corrupt: the chain ends at 1
    assert TrustStore(data, None, k1[1]).current().version == 1


def test_a_downgrade_authorisation_needs_the_keys_the_current_root_trusts(
    site: Site, agents: list[AgentProc]
) -> None:
    """The signed downgrade authorisation (issue 10, part 3) is checked against the root like a
    manifest: after k1 is rotated out, an authorisation signed by k1 is refused and one signed
    by k2 is accepted."""
    from fleetgate.artifacts.downgrade_auth import make_authorization

    a = _agent(site, agents, site.keys["k1"][1])
    v1, v2 = site.release("1.0.0", "k1"), site.release("2.0.0", "k1")
    seq = 1
    for rel in (v1, v2):
        assert _stage(a, seq, rel)[1]["status"] == "staged"
        assert _activate(a, seq + 1, rel)[1]["status"] == "active"
        assert a.post("commit", deployment_id="d", seq=seq + 2, release=rel.id)[0] == 200
        seq += 3
    site.keys_cmd("init-root", "--root-key", str(site.keys["k1"][0]))
    site.keys_cmd(
        "rotate", "--sign", str(site.keys["k1"][0]),
        "--add-release-key", str(site.keys["k2"][1]),
        "--remove-release-key", str(site.keys["k1"][1]),
    )  # fmt: skip
    site.publish_roots()
    until = datetime.now(timezone.utc) + timedelta(hours=1)
    old_k2 = site.release("0.9.0", "k2")  # k1's releases no longer stage: signed by k2

    def auth(signer: str) -> dict[str, str]:
        return make_authorization(
            site.key(signer), name="demo", version="0.9.0", devices=["dev-1"], valid_until=until
        )

    body = {**old_k2.stage, "downgrade_authorization": auth("k1")}
    status, reply = a.post("stage", deployment_id="d", seq=seq, **body)
    assert (status, reply["error"]) == (409, "downgrade-refused"), reply
    assert "signed by 0 of the 1 release keys root v2" in reply["message"]
    body = {**old_k2.stage, "downgrade_authorization": auth("k2")}
    assert a.post("stage", deployment_id="d", seq=seq + 1, **body)[1]["status"] == "staged"
