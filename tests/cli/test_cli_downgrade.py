"""``artifact authorize-downgrade`` and ``deploy start --downgrade-authorization`` as an operator
types them (issue 10): a file for another version, or one not signed by the release key, is the
operator's mistake (exit 2, one line naming the file); with ``--server`` the option is refused,
never dropped silently."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "engine"))
from engine_harness import build_release

from fleetgate.artifacts.keys import generate_keypair


def _cli(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "fleetgate", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.mark.slow
def test_deploy_start_checks_the_authorisation_file(tmp_path: Path) -> None:
    bundle, pub = build_release(tmp_path)  # app 2.0.0, signed with tmp/keys
    key = str(tmp_path / "keys" / "fleetgate-signing.key")
    other_key, _ = generate_keypair(tmp_path / "other")

    def authorize(out: str, version: str, signer: str) -> Path:
        res = _cli(
            tmp_path,
            "artifact",
            "authorize-downgrade",
            "--key",
            signer,
            "--name",
            "app",
            "--version",
            version,
            "--devices",
            "rpi-01",
            "rpi-02",
            "--expires",
            "30m",
            "-o",
            out,
        )
        assert res.returncode == 0, res.stderr
        return tmp_path / out

    good = authorize("good.json", "2.0.0", key)
    doc = json.loads(json.loads(good.read_text())["document"])
    assert doc["devices"] == ["rpi-01", "rpi-02"] and doc["version"] == "2.0.0"
    start = ["deploy", "start", str(bundle), "--pubkey", str(pub)]
    for path, why in (
        (authorize("wrong.json", "1.9.0", key), "authorises app 1.9.0, not app 2.0.0"),
        (authorize("forged.json", "2.0.0", str(other_key)), "does not verify"),
    ):
        res = _cli(tmp_path, *start, "--downgrade-authorization", str(path))
        assert res.returncode == 2, res.stderr
        assert why in res.stderr and str(path) in res.stderr
    res = _cli(
        tmp_path,
        "artifact",
        "authorize-downgrade",
        "--key",
        key,
        "--name",
        "app",
        "--version",
        "2.0.0",
        "--devices",
        "*",
        "--expires",
        "90d",
        "-o",
        "x.json",
    )
    assert res.returncode == 2 and "longer than 30 days" in res.stderr

    res = _cli(
        tmp_path,
        *start,
        "--server",
        "http://127.0.0.1:9",
        "--downgrade-authorization",
        str(good),
    )
    assert res.returncode == 2 and "not supported with --server" in res.stderr
