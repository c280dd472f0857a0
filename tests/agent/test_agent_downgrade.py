"""No silent downgrade (issue 10), on real agent processes: the script kept for the defect is
a signed 0.9.0 staged after 2.0.0 was committed. Refused, unless it is the rollback copy the
device holds or the stage carries a signed, unexpired authorisation naming this device and
exactly that version."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone

import pytest

from fleetgate.artifacts.downgrade_auth import make_authorization
from fleetgate.artifacts.keys import generate_keypair, load_private_key


@pytest.fixture(scope="module")
def old(kit):
    return kit.release("demo", "0.9.0")


def _auth(key, *, name="demo", version="0.9.0", devices=("dev-1",), hours=1.0):
    until = datetime.now(timezone.utc) + timedelta(hours=hours)
    return make_authorization(
        key,
        name=name,
        version=version,
        devices=devices if devices == "*" else list(devices),
        valid_until=until,
    )


def _deploy(a, rel, seq: int) -> int:
    assert a.post("stage", deployment_id="d", seq=seq, **rel.stage)[0] == 200
    assert a.post("activate", deployment_id="d", seq=seq + 1, release=rel.id)[1]["status"] == (
        "active"
    )
    assert a.post("commit", deployment_id="d", seq=seq + 2, release=rel.id)[0] == 200
    return seq + 3


def test_signed_older_release_is_refused_after_a_higher_commit(make_agent, kit, old):
    a = make_agent()
    seq = _deploy(a, kit.v1, 1)
    seq = _deploy(a, kit.v2, seq)
    assert a.facts()["committed"] == {"demo": "2.0.0"}

    status, body = a.post("stage", deployment_id="evil", seq=seq, **old.stage)
    assert (status, body["error"], body["retryable"]) == (409, "downgrade-refused", False)
    assert "0.9.0 is below 2.0.0" in body["message"]
    assert old.id not in a.release_entries()
    assert not [e for e in a.release_entries() if e.startswith(".")]  # nothing downloaded

    # The rollback copy the device holds is never blocked: rollback, and its stage/activate.
    status, body = a.post("rollback", deployment_id="d", seq=seq + 1)
    assert (status, body["release"]) == (200, kit.v1.id)
    assert a.app_version() == "1.0.0"
    assert a.post("activate", deployment_id="d", seq=seq + 2, release=kit.v2.id)[0] == 200
    assert a.facts()["previous"] == kit.v1.id
    assert a.post("stage", deployment_id="d", seq=seq + 3, **kit.v1.stage)[1] == {
        "status": "already-staged",
        "release": kit.v1.id,
    }
    status, body = a.post("activate", deployment_id="d", seq=seq + 4, release=kit.v1.id)
    assert (status, body["status"]) == (200, "active")  # previous: the rollback path


def test_older_release_still_on_disk_cannot_be_activated(make_agent, kit, old):
    a = make_agent()
    seq = _deploy(a, old, 1)
    seq = _deploy(a, kit.v1, seq)
    seq = _deploy(a, kit.v2, seq)
    facts = a.facts()
    assert old.id in facts["releases"] and facts["previous"] == kit.v1.id
    # On disk, but neither current nor previous: not an "already-staged" shortcut past the floor.
    status, body = a.post("stage", deployment_id="evil", seq=seq, **old.stage)
    assert (status, body["error"]) == (409, "downgrade-refused")
    status, body = a.post("activate", deployment_id="evil", seq=seq + 1, release=old.id)
    assert (status, body["error"]) == (409, "downgrade-refused")
    assert a.facts()["current"] == kit.v2.id and a.app_version() == "2.0.0"


def test_downgrade_authorisation_must_be_signed_unexpired_and_exact(make_agent, kit, old, tmp_path):
    a = make_agent()
    seq = _deploy(a, kit.v1, 1)
    seq = _deploy(a, kit.v2, seq)
    other_key = load_private_key(generate_keypair(tmp_path / "other")[0])

    good = _auth(kit.key)
    doc = json.loads(good["document"])
    tampered = {**good, "document": good["document"].replace("0.9.0", "0.9.1")}
    widened = {**good, "document": json.dumps({**doc, "devices": "*"})}
    bad = {
        "tampered document (signature kept)": tampered,
        "widened to every device (signature kept)": widened,
        "signed by another key": _auth(other_key),
        "expired": _auth(kit.key, hours=-1),
        "names another device": _auth(kit.key, devices=("dev-2",)),
        "names another version": _auth(kit.key, version="0.9.1"),
        "names a prefix of the version": _auth(kit.key, version="0.9"),
        "names another release": _auth(kit.key, name="other"),
        "garbage signature": {**good, "signature": "AAAA"},
    }
    for what, auth in bad.items():
        status, body = a.post(
            "stage", deployment_id="d", seq=seq, **old.stage, downgrade_authorization=auth
        )
        assert (status, body["error"]) == (409, "downgrade-refused"), what
        assert "downgrade authorisation" in body["message"], (what, body)
        seq += 1
    assert old.id not in a.release_entries()
    status, body = a.post(
        "stage", deployment_id="d", seq=seq, **old.stage, downgrade_authorization={"x": 1}
    )
    assert status == 400 and "downgrade_authorization" in body["message"]

    status, body = a.post(
        "stage", deployment_id="d", seq=seq + 1, **old.stage, downgrade_authorization=good
    )
    assert (status, body["status"]) == (200, "staged")
    status, body = a.post("activate", deployment_id="d", seq=seq + 2, release=old.id)
    assert (status, body["status"]) == (200, "active")
    assert a.app_version() == "0.9.0"
    # Committing the authorised downgrade does not lower the floor: 1.0.0 is still refused.
    assert a.post("commit", deployment_id="d", seq=seq + 3, release=old.id)[0] == 200
    assert a.facts()["committed"] == {"demo": "2.0.0"}
    status, body = a.post("activate", deployment_id="d", seq=seq + 4, release=kit.v1.id)
    assert (status, body["error"]) == (409, "downgrade-refused")


def test_wildcard_authorisation_and_cli(make_agent, kit, old, tmp_path):
    import subprocess
    import sys

    out = tmp_path / "auth.json"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "fleetgate",
            "artifact",
            "authorize-downgrade",
            "--key",
            str(kit.key_path),
            "--name",
            "demo",
            "--version",
            "0.9.0",
            "--devices",
            "*",
            "--expires",
            "2h",
            "-o",
            str(out),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    auth = json.loads(out.read_text())
    doc = json.loads(auth["document"])
    assert doc["devices"] == "*" and doc["version"] == "0.9.0"
    a = make_agent()
    seq = _deploy(a, kit.v2, 1)
    status, body = a.post(
        "stage", deployment_id="d", seq=seq, **old.stage, downgrade_authorization=auth
    )
    assert (status, body["status"]) == (200, "staged"), body
