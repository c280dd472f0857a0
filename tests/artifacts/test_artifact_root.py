"""Root metadata (artifacts/root.py), manifest signature thresholds, the signed file list, and
the ``fleetgate keys init-root|rotate|revoke`` / ``artifact build --key … --key`` commands."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from artifact_helpers import Keys

from fleetgate.artifacts.bundle import build_bundle, default_valid_until
from fleetgate.artifacts.keys import generate_keypair, load_private_key, load_public_key
from fleetgate.artifacts.root import (
    key_id,
    load_trust,
    make_root,
    parse_root,
    parse_signatures,
    sign_root,
    verify_next,
    verify_self,
)
from fleetgate.artifacts.signing import sign_manifest, verify_bundle, verify_manifest
from fleetgate.cli.main import run
from fleetgate.core.manifest import manifest_from_dict, manifest_to_dict
from fleetgate.errors import IntegrityError

IN_A_YEAR = (datetime.now(timezone.utc) + timedelta(days=365)).strftime("%Y-%m-%dT%H:%M:%SZ")


def _keys(tmp_path: Path, n: int) -> list[Any]:
    return [load_private_key(generate_keypair(tmp_path / f"k{i}")[0]) for i in range(n)]


def _root(version: int, root_keys: list[Any], release: list[Any], t: int = 1, rt: int = 1) -> Any:
    pubs = [k.public_key() for k in root_keys]
    return make_root(version, IN_A_YEAR, pubs, rt, [k.public_key() for k in release], t)


def test_a_root_chains_only_with_the_old_threshold_and_the_new_one(tmp_path: Path) -> None:
    k1, k2 = _keys(tmp_path, 2)
    v1 = parse_root(sign_root(_root(1, [k1], [k1]), [k1]))
    verify_self(v1)
    v2_signed = _root(2, [k2], [k2])
    verify_next(v1, parse_root(sign_root(v2_signed, [k1, k2])))
    with pytest.raises(IntegrityError, match="signed by 0 of the 1 root keys of trusted v1"):
        verify_next(v1, parse_root(sign_root(v2_signed, [k2])))  # the new key alone
    with pytest.raises(IntegrityError, match="signed by 0 of the 1 of its own root keys"):
        verify_next(v1, parse_root(sign_root(v2_signed, [k1])))  # the old key alone
    with pytest.raises(IntegrityError, match="does not follow trusted root v1"):
        verify_next(v1, parse_root(sign_root(_root(3, [k1], [k1]), [k1])))  # a gap
    with pytest.raises(IntegrityError, match="does not follow trusted root v1"):
        verify_next(v1, v1)  # a replay of the same version


def test_a_root_signature_over_other_bytes_does_not_count(tmp_path: Path) -> None:
    (k1,) = _keys(tmp_path, 1)
    doc = json.loads(sign_root(_root(1, [k1], [k1]), [k1]))
    doc["signed"]["roles"]["targets"]["threshold"] = 1
    doc["signed"]["expires"] = "2099-01-01T00:00:00Z"  # an edit after signing
    with pytest.raises(IntegrityError, match="signed by 0 of the 1"):
        verify_self(parse_root(json.dumps(doc).encode()))


@pytest.mark.parametrize(
    ("edit", "reason"),
    [
        (lambda d: d["signed"].update(version=0), "signed.version"),
        (lambda d: d["signed"].update(expires="tomorrow"), "signed.expires"),
        (lambda d: d["signed"]["roles"].pop("targets"), "roles.targets: missing"),
        (lambda d: d["signed"]["roles"]["targets"].update(threshold=3), "threshold: 3 of 1"),
        (lambda d: d["signed"]["roles"]["root"]["keyids"].append("ab" * 32), "unknown key id"),
        (lambda d: d["signatures"].append(d["signatures"][0]), "two signatures by key"),
    ],
)
def test_malformed_roots_are_refused_naming_the_field(tmp_path: Path, edit: Any, reason: str):
    (k1,) = _keys(tmp_path, 1)
    doc = json.loads(sign_root(_root(1, [k1], [k1]), [k1]))
    edit(doc)
    with pytest.raises(IntegrityError, match=reason):
        parse_root(json.dumps(doc).encode(), "root.json")


def test_a_key_whose_id_is_not_its_hash_is_refused(tmp_path: Path) -> None:
    k1, k2 = _keys(tmp_path, 2)
    doc = json.loads(sign_root(_root(1, [k1], [k1]), [k1]))
    kid = key_id(k1.public_key())
    other = make_root(1, IN_A_YEAR, [k2.public_key()], 1, [k2.public_key()], 1)
    doc["signed"]["keys"][kid] = next(iter(other["keys"].values()))  # k2 under k1's id
    with pytest.raises(IntegrityError, match="key id is not the sha256"):
        parse_root(json.dumps(doc).encode())


def test_manifest_threshold_two_of_three(tmp_path: Path, keys: Keys, make_src: Any) -> None:
    k1, k2, k3 = _keys(tmp_path, 3)
    root = parse_root(sign_root(_root(1, [k1], [k1, k2, k3], t=2), [k1]))
    src = make_src({"app.py": "print(1)\n"})
    one = build_bundle(src, [k2], tmp_path / "one")
    with pytest.raises(IntegrityError, match="signed by 1 of the 2 release keys root v1"):
        verify_bundle(one.path, root)
    two = build_bundle(src, [k1, k3], tmp_path / "two")
    assert verify_bundle(two.path, root).release_id == one.manifest.release_id
    # A stranger's signature next to one good one is not a second vote.
    manifest_json, sig = sign_manifest(two.manifest, [k2, keys.private])
    with pytest.raises(IntegrityError, match="signed by 1 of the 2"):
        verify_manifest(manifest_json, sig, root)
    # The one-key format of earlier bundles is tried against every release key.
    assert "\n" not in sign_manifest(two.manifest, k1)[1]
    assert len(parse_signatures(sign_manifest(two.manifest, [k1, k3])[1])) == 2


def test_the_signed_file_list_and_expiry_round_trip(tmp_path: Path, make_src: Any, keys) -> None:
    src = make_src({"app.py": ("print(1)\n", 0o755), "conf/a.toml": "x = 1\n"})
    (src / "link").symlink_to("conf/a.toml")
    built = build_bundle(src, keys.private, tmp_path / "out", valid_until="2030-01-01T00:00:00Z")
    m = verify_bundle(built.path, keys.public)
    assert m.valid_until == "2030-01-01T00:00:00Z"
    by_path = {f.path: f for f in m.files or ()}
    assert set(by_path) == {"app.py", "conf", "conf/a.toml", "fleetgate.toml", "link"}
    assert by_path["app.py"].executable and by_path["app.py"].size == 9
    assert by_path["conf"].kind == "dir" and by_path["link"].target == "conf/a.toml"
    assert manifest_from_dict(manifest_to_dict(m)) == m
    assert default_valid_until(365, datetime(2026, 3, 1, 17, 5, tzinfo=timezone.utc)) == (
        "2027-03-01T00:00:00Z"
    )


@pytest.mark.parametrize(
    ("files", "reason"),
    [
        ([{"path": "../x", "type": "dir"}], "files\\[0\\].path"),
        ([{"path": ".fleetgate/manifest.json", "type": "dir"}], "files\\[0\\].path"),
        ([{"path": "a/b", "type": "dir"}], "its directory 'a' is not listed"),
        ([{"path": "a", "type": "dir"}, {"path": "a", "type": "dir"}], "listed twice"),
        ([{"path": "a", "type": "file", "size": 1, "sha256": "x"}], "files\\[0\\].sha256"),
        ([{"path": "a", "type": "link", "target": "/etc/passwd"}], "files\\[0\\].target"),
        ([{"path": "a", "type": "fifo"}], "files\\[0\\].type"),
    ],
)
def test_a_malformed_file_list_is_refused(files: list[Any], reason: str) -> None:
    from fleetgate.errors import ValidationError

    doc = {"artifact": {"name": "a", "version": "1"}, "run": {"command": ["x"]}, "files": files}
    with pytest.raises(ValidationError, match=reason):
        manifest_from_dict(doc)


def test_python_tuf_reads_and_verifies_our_roots(tmp_path: Path) -> None:
    """The format claim of ADR 0007: python-tuf's Metadata[Root] parses our root and its
    verify_delegate accepts the chain step our verify_next accepts (and refuses the one-key
    forgery ours refuses)."""
    from tuf.api.exceptions import UnsignedMetadataError
    from tuf.api.metadata import Metadata, Root

    k1, k2 = _keys(tmp_path, 2)
    v1_raw = sign_root(_root(1, [k1], [k1]), [k1])
    v2_signed = _root(2, [k2], [k2])
    v2_raw = sign_root(v2_signed, [k1, k2])
    tuf_v1: Metadata[Root] = Metadata[Root].from_bytes(v1_raw)
    tuf_v2: Metadata[Root] = Metadata[Root].from_bytes(v2_raw)
    assert tuf_v2.signed.version == 2
    assert tuf_v2.signed.roles["targets"].keyids == [key_id(k2.public_key())]
    payload = tuf_v2.signed_bytes
    tuf_v1.signed.verify_delegate("root", payload, tuf_v2.signatures)
    tuf_v2.signed.verify_delegate("root", payload, tuf_v2.signatures)
    forged: Metadata[Root] = Metadata[Root].from_bytes(sign_root(v2_signed, [k2]))
    with pytest.raises(UnsignedMetadataError):
        tuf_v1.signed.verify_delegate("root", forged.signed_bytes, forged.signatures)
    verify_next(parse_root(v1_raw), parse_root(v2_raw))


# -- the commands --------------------------------------------------------------------------------
def _cli(*argv: str) -> int:
    return run([str(a) for a in argv])


def test_keys_init_rotate_revoke_and_build_with_two_keys(tmp_path: Path, make_src: Any, capsys):
    k = {n: generate_keypair(tmp_path / n) for n in ("a", "b", "c")}
    roots = tmp_path / "roots"
    assert _cli("keys", "init-root", "--roots", roots, "--root-key", k["a"][0]) == 0
    assert _cli("keys", "init-root", "--roots", roots, "--root-key", k["a"][0]) == 2
    assert "1.root.json: already exists" in capsys.readouterr().err

    # Rotate: b and c join as release keys, 2 of them needed; signed by a (old) = a (new root).
    assert (
        _cli(
            "keys", "rotate", "--roots", roots, "--sign", k["a"][0],
            "--add-release-key", k["b"][1], "--add-release-key", k["c"][1],
            "--remove-release-key", k["a"][1], "--threshold", "2", "--json",
        )
        == 0
    )  # fmt: skip
    assert json.loads(capsys.readouterr().out.splitlines()[-1]) == {
        "path": str(roots / "2.root.json"),
        "version": 2,
    }
    root = load_trust(roots / "root.json")
    assert root.version == 2 and root.roles["targets"].threshold == 2  # type: ignore[union-attr]

    src = make_src({"app.py": "print(1)\n"})
    out = tmp_path / "out"
    root_json = roots / "root.json"
    assert _cli("artifact", "build", src, "--key", k["b"][0], "--root", root_json, "-o", out) == 2
    assert "root v2 needs 2 of its release keys; 1 of the --key" in capsys.readouterr().err
    assert not out.exists()  # refused before anything is written
    assert _cli("artifact", "build", src, "--key", k["b"][0], "-o", out, "--json") == 0
    path = json.loads(capsys.readouterr().out)["path"]
    assert _cli("artifact", "verify", path, "--root", roots / "root.json") == 2
    assert "signed by 1 of the 2 release keys" in capsys.readouterr().err
    assert _cli("artifact", "build", src, "--key", k["b"][0], "--key", k["c"][0], "-o", out) == 0
    assert _cli("artifact", "verify", path, "--root", roots / "root.json") == 0
    assert "valid until: " in capsys.readouterr().out
    assert _cli("artifact", "verify", path, "--pubkey", roots / "root.json") == 0
    capsys.readouterr()
    expired = tmp_path / "expired"
    assert (
        _cli("artifact", "build", src, "--key", k["b"][0], "--key", k["c"][0], "-o", expired,
             "--valid-until", "2021-01-01T00:00:00Z")
        == 0
    )  # fmt: skip
    capsys.readouterr()
    assert (
        _cli("artifact", "verify", expired / "vision-2.4.1.fgb", "--root", roots / "root.json") == 0
    )
    assert "valid until: 2021-01-01T00:00:00Z (EXPIRED" in capsys.readouterr().out

    # Revoke c: a root needs a's signature (the root key); without it nothing is written.
    assert _cli("keys", "revoke", "--roots", roots, "--sign", k["c"][0], k["c"][1]) == 2
    assert "signed by 0 of the 1 root keys of trusted v2" in capsys.readouterr().err
    assert not (roots / "3.root.json").exists()
    kid = key_id(load_public_key(k["c"][1]))
    assert _cli("keys", "revoke", "--roots", roots, "--sign", k["a"][0], kid[:16]) == 0
    v3 = load_trust(roots / "3.root.json")
    assert kid not in v3.keys and v3.roles["targets"].threshold == 1  # type: ignore[union-attr]
    assert _cli("artifact", "verify", path, "--root", roots / "root.json") == 0  # b still signs
    assert _cli("artifact", "build", src, "--key", k["c"][0], "-o", out) == 0
    assert _cli("artifact", "verify", path, "--root", roots / "root.json") == 2
