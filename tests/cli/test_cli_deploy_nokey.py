"""A whole deployment through the CLI as separate processes, on a virtual fleet: the release is
built with ``artifact build``, started with the public key, and approved from a shell that has
no key at all (approving needs none: PREPARE is behind it). The report's Checksum is the digest
``artifact build`` printed, named as the bundle's.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "e2e"))
from crash_harness import POLICY_TOML, Procs, Workspace, build_release, start_sim


@pytest.fixture
def procs() -> Iterator[Procs]:
    p = Procs()
    try:
        yield p
    finally:
        p.kill_all()


@pytest.mark.slow
def test_approve_and_drive_on_without_the_public_key(tmp_path: Path, procs: Procs) -> None:
    _, pub = build_release(tmp_path)  # keys and the app source at version 2.0.0
    ws = Workspace(tmp_path / "ws", procs)
    start_sim(ws, "--devices", "12", "--seed", "5")
    assert ws.cli("registry", "import", "fleet.yaml").returncode == 0
    res = ws.cli(
        "artifact",
        "build",
        str(tmp_path / "app-2.0.0"),
        "--key",
        str(tmp_path / "keys" / "fleetgate-signing.key"),
        "-o",
        str(tmp_path / "out"),
    )
    assert res.returncode == 0, res.stderr
    printed = dict(line.split(": ", 1) for line in res.stdout.splitlines())
    bundle, bundle_sha = printed["path"], printed["sha256"]
    policy = ws.root / "rollout.toml"
    policy.write_text(POLICY_TOML)

    res = ws.cli("deploy", "start", bundle, "--policy", str(policy), "--pubkey", str(pub), "--json")
    assert res.returncode == 4, res.stderr
    dep = json.loads(res.stdout)["deployment_id"]
    assert not (ws.root / "home" / "keys").exists() and "FLEETGATE_PUBKEY" not in ws.env

    res = ws.cli("deploy", "approve", dep, "--as", "alice", "--json", timeout=120)
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout)["phase"] == "COMPLETE"

    res = ws.cli("deploy", "report", dep)
    assert res.returncode == 0, res.stderr
    checksum = next(x for x in res.stdout.splitlines() if x.startswith("**Checksum**"))
    assert checksum.startswith(
        f"**Checksum**: sha256 {bundle_sha} (bundle, as printed by artifact build); payload sha256 "
    )
    report = json.loads(ws.cli("deploy", "report", dep, "--json").stdout)
    assert report["bundle_sha256"] == bundle_sha and report["sha256"] != bundle_sha

    res = ws.cli("deploy", "plan", bundle, "--policy", str(policy))
    assert f"**Checksum**: sha256 {bundle_sha} (bundle" in res.stdout
