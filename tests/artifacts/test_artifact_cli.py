"""`fleetgate keys` and `fleetgate artifact` through the real dispatcher: output, exit codes, and
one-line errors without tracebacks."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from artifact_helpers import toml_for

from fleetgate.artifacts.bundle import read_bundle
from fleetgate.cli.main import run


@pytest.fixture
def setup(tmp_path: Path, make_src, capsys: pytest.CaptureFixture[str]) -> dict[str, Path]:
    assert run(["keys", "generate", "--out", str(tmp_path / "k")]) == 0
    out = capsys.readouterr().out
    assert "fleetgate-signing.key" in out and "fleetgate-signing.pub" in out
    src = make_src({"app.py": "print(1)\n"})
    return {
        "key": tmp_path / "k" / "fleetgate-signing.key",
        "pub": tmp_path / "k" / "fleetgate-signing.pub",
        "src": src,
        "out": tmp_path / "out",
    }


def build(p: dict[str, Path], *extra: str) -> int:
    return run(
        ["artifact", "build", str(p["src"]), "--key", str(p["key"]), "-o", str(p["out"]), *extra]
    )


def one_error_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1, lines
    assert "Traceback" not in err
    assert lines[0].startswith("fleetgate: error: ")
    return lines[0]


def test_keys_generate_twice_is_refused(setup, tmp_path: Path, capsys) -> None:
    assert run(["keys", "generate", "--out", str(tmp_path / "k")]) == 2
    line = one_error_line(capsys.readouterr().err)
    assert "fleetgate-signing.key: already exists" in line
    assert run(["keys", "generate", "--out", str(tmp_path / "k2"), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["public_key"].endswith("fleetgate-signing.pub")


def test_build_prints_path_and_sha256_and_verify_says_ok(setup, capsys) -> None:
    assert build(setup) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    bundle = setup["out"] / "vision-2.4.1.fgb"
    assert lines[0] == f"path: {bundle}"
    assert lines[1].startswith("sha256: ") and len(lines[1].split()[1]) == 64

    assert build(setup, "--json") == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["path"] == str(bundle)
    assert doc["sha256"] == lines[1].split()[1]  # reproducible
    assert doc["manifest"]["artifact"]["name"] == "vision"
    assert len(doc["manifest"]["artifact"]["sha256"]) == 64

    assert run(["artifact", "verify", str(bundle), "--pubkey", str(setup["pub"])]) == 0
    out = capsys.readouterr().out
    assert out.startswith("OK vision 2.4.1")
    assert doc["manifest"]["artifact"]["sha256"] in out
    assert run(["artifact", "verify", str(bundle), "--pubkey", str(setup["pub"]), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["ok"] is True


def _corrupt(bundle: Path, how: str) -> None:
    data = bytearray(bundle.read_bytes())
    contents = read_bundle(bundle)
    if how == "payload":
        data[contents.payload_offset + 20] ^= 0x01
    elif how == "manifest":
        data[data.index(b'"ram_mb":512') + 10] = ord("3")
    elif how == "truncated":
        data = data[: contents.payload_offset + 50]
    elif how == "garbage":
        data = bytearray(b"hello, I am not a tar file" * 40)
    bundle.write_bytes(bytes(data))


@pytest.mark.parametrize(
    ("how", "reason"),
    [
        ("payload", "payload digest mismatch"),
        ("manifest", "bad signature"),
        ("truncated", "truncated"),
        ("garbage", "not a bundle"),
    ],
)
def test_verify_failures_exit_2_with_one_line(setup, capsys, how: str, reason: str) -> None:
    assert build(setup) == 0
    bundle = setup["out"] / "vision-2.4.1.fgb"
    _corrupt(bundle, how)
    capsys.readouterr()
    assert run(["artifact", "verify", str(bundle), "--pubkey", str(setup["pub"])]) == 2
    captured = capsys.readouterr()
    line = one_error_line(captured.err)
    assert line.startswith(f"fleetgate: error: {bundle}: ")
    assert reason in line
    assert captured.out == ""


def test_verify_with_the_wrong_key(setup, tmp_path: Path, capsys) -> None:
    assert build(setup) == 0
    assert run(["keys", "generate", "--out", str(tmp_path / "other")]) == 0
    capsys.readouterr()
    bundle = setup["out"] / "vision-2.4.1.fgb"
    other = tmp_path / "other" / "fleetgate-signing.pub"
    assert run(["artifact", "verify", str(bundle), "--pubkey", str(other)]) == 2
    assert "bad signature" in one_error_line(capsys.readouterr().err)


def test_malformed_manifest_names_file_and_field(setup, capsys) -> None:
    toml = setup["src"] / "fleetgate.toml"
    toml.write_text(toml_for("bundle").replace('kind = "bundle"', 'kind = "container"'))
    capsys.readouterr()
    assert build(setup) == 2
    line = one_error_line(capsys.readouterr().err)
    assert line == (
        f"fleetgate: error: {toml}: artifact.kind: 'container' is not one of bundle, binary, config"
    )


def test_bad_key_file_and_missing_flag(setup, tmp_path: Path, capsys) -> None:
    setup["key"] = setup["pub"]
    capsys.readouterr()
    assert build(setup) == 2
    assert "not a PEM private key" in one_error_line(capsys.readouterr().err)
    with pytest.raises(SystemExit) as info:
        run(["artifact", "build", str(setup["src"]), "-o", str(tmp_path)])
    assert info.value.code == 2
