"""What the agent refuses, and that a refusal leaves nothing behind: credentials, seq misuse,
tampered/truncated/forged artifacts, hostile archives, a disk too small for artifact plus
rollback copy (refused before any download), an incompatible architecture."""

from __future__ import annotations

import contextlib
import dataclasses
import gzip
import hashlib
import io
import os
import subprocess
import tarfile
import time
from pathlib import Path

import pytest
from agent_harness import TOKEN, build, free_port

from fleetgate.artifacts.keys import generate_keypair, load_private_key
from fleetgate.artifacts.signing import sign_manifest
from fleetgate.core.manifest import manifest_from_dict


def test_credentials_are_checked_before_anything(make_agent, kit):
    a = make_agent()
    assert a.get("/v1/ping")[0] == 200
    for path in ("/v1/ping", "/v1/facts", "/v1/health", "/v1/logs"):
        status, body = a.get(path, token=None)
        assert (status, body["error"], body["retryable"]) == (401, "unauthorized", False)
    assert a.get("/v1/facts", token="wrong")[0] == 401
    assert a.get("/v1/facts", token=TOKEN + "x")[0] == 401
    assert a.get("/v1/facts", device=None)[0] == 401
    # Without this device's token the answer is 401 whatever device is named: an
    # unauthenticated caller cannot tell which device ids exist (it got 403 for a wrong id).
    for device in ("dev-2", "dev-1", None, ""):
        status, body = a.get("/v1/facts", device=device, token="dev-2-token")
        assert (status, body["error"]) == (401, "unauthorized"), device
        assert a.get("/v1/facts", device=device, token=None)[0] == 401
    # The right token naming another device: the caller is authenticated, so it is told.
    status, body = a.get("/v1/facts", device="dev-2")
    assert (status, body["error"]) == (403, "wrong-device")
    status, body = a.request(
        "POST", "/v1/stage", {"deployment_id": "d", "seq": 1, **kit.v1.stage}, device="dev-2"
    )
    assert status == 403
    status, body = a.request(
        "POST", "/v1/stage", {"deployment_id": "d", "seq": 1, **kit.v1.stage}, token=None
    )
    assert status == 401
    assert a.get("/v1/nope")[0] == 404
    facts = a.facts()
    assert facts["last_seq"] == 0 and facts["releases"] == []  # nothing was consumed or done


def test_seq_replay_stale_and_conflict(make_agent, kit):
    a = make_agent()
    status, first = a.post("stage", deployment_id="d1", seq=5, **kit.v1.stage)
    assert status == 200 and first["status"] == "staged"
    # The same command again: answered from the record, nothing re-done.
    status, again = a.post("stage", deployment_id="d1", seq=5, **kit.v1.stage)
    assert status == 200 and again == {**first, "replayed": True}
    status, body = a.post("stage", deployment_id="d1", seq=4, **kit.v1.stage)
    assert (status, body["error"]) == (409, "stale-seq")
    status, body = a.post("activate", deployment_id="d1", seq=5, release=kit.v1.id)
    assert (status, body["error"]) == (409, "seq-conflict")
    status, body = a.post("stage", deployment_id="other", seq=5, **kit.v1.stage)
    assert (status, body["error"]) == (409, "seq-conflict")
    # Malformed commands are refused without consuming a seq.
    for bad in (
        {"seq": 6},
        {"deployment_id": "d1", "seq": 0},
        {"deployment_id": "d1", "seq": "7"},
        {"deployment_id": "d1", "seq": True},
    ):
        assert a.request("POST", "/v1/activate", {**bad, "release": kit.v1.id})[0] == 400
    assert a.post("activate", deployment_id="d1", seq=6, release="../etc")[0] == 400
    assert (
        a.post(
            "stage",
            deployment_id="d1",
            seq=6,
            manifest="x",
            signature="y",
            url="file:///etc/passwd",
        )[0]
        == 400
    )
    status, body = a.post("activate", deployment_id="d1", seq=6, release="nope-1-00000000")
    assert (status, body["error"]) == (404, "unknown-release")
    # A refusal is recorded and replayed like any other outcome.
    status, body = a.post("activate", deployment_id="d1", seq=6, release="nope-1-00000000")
    assert (status, body["error"], body["replayed"]) == (404, "unknown-release", True)
    status, body = a.post("activate", deployment_id="d1", seq=7, release=kit.v1.id)
    assert body["status"] == "active"
    # The record survives a restart.
    a.stop()
    a.start()
    status, body = a.post("activate", deployment_id="d1", seq=7, release=kit.v1.id)
    assert body == {"status": "active", "release": kit.v1.id, "previous": None, "replayed": True}
    assert a.post("stage", deployment_id="d1", seq=3, **kit.v1.stage)[1]["error"] == "stale-seq"


def _assert_clean(a) -> None:
    assert a.release_entries() == [], a.release_entries()
    assert a.facts()["releases"] == []


def test_forged_tampered_and_truncated_artifacts_are_refused(make_agent, kit, tmp_path):
    a = make_agent()
    seq = iter(range(1, 100))

    # Signed by a key the device does not trust.
    other_key, _ = generate_keypair(tmp_path / "other")
    forged = build(tmp_path, load_private_key(other_key), "demo", "9.0.0")
    body = kit.server.publish(forged)
    status, reply = a.post("stage", deployment_id="d", seq=next(seq), **body)
    assert (status, reply["error"]) == (422, "integrity-error") and "signature" in reply["message"]
    _assert_clean(a)

    # One byte of the signed manifest changed.
    rel = kit.release("tamper", "1.0.0")
    text = rel.stage["manifest"].replace('"version":"1.0.0"', '"version":"1.0.1"')
    assert text != rel.stage["manifest"]
    status, reply = a.post(
        "stage", deployment_id="d", seq=next(seq), **{**rel.stage, "manifest": text}
    )
    assert (status, reply["error"]) == (422, "integrity-error")
    _assert_clean(a)

    # One byte of the payload flipped on the distribution point.
    blob = kit.server.blob_dir / rel.bundle.manifest.sha256
    good = blob.read_bytes()
    flipped = bytearray(good)
    flipped[len(flipped) // 2] ^= 0x01
    blob.write_bytes(bytes(flipped))
    status, reply = a.post("stage", deployment_id="d", seq=next(seq), **rel.stage)
    assert (status, reply["error"]) == (422, "integrity-error") and "sha256" in reply["message"]
    _assert_clean(a)

    # The payload cut short.
    blob.write_bytes(good[: len(good) // 2])
    status, reply = a.post("stage", deployment_id="d", seq=next(seq), **rel.stage)
    assert (status, reply["error"]) == (422, "integrity-error") and "size" in reply["message"]
    _assert_clean(a)

    # Restored, the very same stage body goes through.
    blob.write_bytes(good)
    status, reply = a.post("stage", deployment_id="d", seq=next(seq), **rel.stage)
    assert (status, reply["status"]) == (200, "staged")
    assert a.release_entries() == [rel.id]


def _tar_gz(build_members) -> bytes:
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        build_members(tar)
    return gzip.compress(raw.getvalue(), mtime=0)


def _add(tar: tarfile.TarFile, name: str, data: bytes = b"x", **attrs) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data) if attrs.get("type", tarfile.REGTYPE) == tarfile.REGTYPE else 0
    for k, v in attrs.items():
        setattr(info, k, v)
    tar.addfile(info, io.BytesIO(data) if info.size else None)


HOSTILE = {
    "absolute-path": lambda t: _add(t, "/tmp/fleetgate-evil"),
    "dot-dot": lambda t: _add(t, "../fleetgate-evil"),
    "symlink-out": lambda t: _add(t, "link", type=tarfile.SYMTYPE, linkname="/etc"),
    "symlink-up": lambda t: _add(t, "link", type=tarfile.SYMTYPE, linkname="../../.."),
    "write-through-symlink": lambda t: (
        _add(t, "link", type=tarfile.SYMTYPE, linkname="."),
        _add(t, "link/../../evil"),
    ),
    "hardlink-out": lambda t: _add(t, "hard", type=tarfile.LNKTYPE, linkname="/etc/passwd"),
    "fifo": lambda t: _add(t, "pipe", type=tarfile.FIFOTYPE),
    "char-device": lambda t: _add(t, "dev", type=tarfile.CHRTYPE, devmajor=1, devminor=3),
    "too-many-members": lambda t: [_add(t, f"f{i}") for i in range(60)],
    "bomb": lambda t: _add(t, "zeros", b"\0" * (2 * 1024 * 1024)),
}


def test_every_hostile_archive_kind_is_refused_with_nothing_left(make_agent, kit):
    a = make_agent(agent_extra="max_members = 50\nmax_unpacked_mb = 1")
    for seq, (kind, members) in enumerate(HOSTILE.items(), start=1):
        payload = _tar_gz(members)
        sha = hashlib.sha256(payload).hexdigest()
        (kit.server.blob_dir / sha).write_bytes(payload)
        manifest = manifest_from_dict(
            {
                "artifact": {"name": f"hostile-{kind}", "version": "1", "kind": "bundle"},
                "run": {"command": ["python3", "app.py"]},
            }
        )
        bound = dataclasses.replace(manifest, size=len(payload), sha256=sha)
        text, sig = sign_manifest(bound, kit.key)  # signed by the trusted key: only the
        status, reply = a.post(  # archive itself is the attack
            "stage",
            deployment_id="hostile",
            seq=seq,
            manifest=text.decode(),
            signature=sig,
            url=f"{kit.server.url}/v1/blobs/{sha}",
        )
        assert (status, reply.get("error")) == (422, "integrity-error"), (kind, reply)
        _assert_clean(a)
    assert not Path("/tmp/fleetgate-evil").exists()
    assert not (a.data_dir / "fleetgate-evil").exists() and not (a.data_dir / "evil").exists()


def test_incompatible_arch_is_refused_before_download(make_agent, kit):
    a = make_agent()
    other = "armv7" if a.facts()["arch"] != "armv7" else "arm64"
    rel = kit.release("elsewhere", "1.0.0", requires=f'arch = ["{other}"]')
    status, reply = a.post("stage", deployment_id="d", seq=1, **rel.stage)
    assert (status, reply["error"]) == (409, "incompatible")
    _assert_clean(a)


@contextlib.contextmanager
def _small_disk(path: Path, size_mb: int):
    path.mkdir()
    mounted = (
        subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size_mb}m", "tmpfs", str(path)],
            capture_output=True,
        ).returncode
        == 0
    )
    try:
        yield mounted
    finally:
        if mounted:
            for _ in range(50):
                if subprocess.run(["umount", str(path)], capture_output=True).returncode == 0:
                    break
                time.sleep(0.1)
            else:  # still busy (an agent's cwd): detach it now, the kernel frees it later
                subprocess.run(["umount", "-l", str(path)], capture_output=True)


def test_disk_too_small_for_artifact_and_rollback_copy_is_refused_before_download(
    make_agent, kit, tmp_path
):
    big1 = kit.release("big", "1.0.0", extra=os.urandom(3 * 1024 * 1024))
    big2 = kit.release("big", "2.0.0", extra=os.urandom(3 * 1024 * 1024))
    with _small_disk(tmp_path / "disk", 9) as mounted:
        extra = ""
        if not mounted:  # no tmpfs here: emulate a 9 MiB disk with the reserve knob
            st = os.statvfs(tmp_path)
            extra = f"reserve_mb = {st.f_bavail * st.f_frsize // 2**20 - 9}"
        a = make_agent(data_dir=tmp_path / "disk" / "data", agent_extra=extra)
        # 3 MiB artifact + 3 MiB unpacked fit on the empty 9 MiB disk …
        assert a.post("stage", deployment_id="d1", seq=1, **big1.stage)[1]["status"] == "staged"
        assert a.post("activate", deployment_id="d1", seq=2, release=big1.id)[1]["status"] == (
            "active"
        )
        # … but the next one only fits if the running release were deleted: refused. The URL
        # points at a closed port, so a 507 (not a 502) proves nothing was downloaded first.
        dead_url = f"http://127.0.0.1:{free_port()}/v1/blobs/{big2.bundle.manifest.sha256}"
        status, reply = a.post(
            "stage", deployment_id="d2", seq=3, **{**big2.stage, "url": dead_url}
        )
        assert (status, reply["error"]) == (507, "insufficient-disk"), reply
        assert a.release_entries() == [big1.id]
        facts = a.facts()
        assert facts["current"] == big1.id and facts["app_running"] is True
        assert a.app_version() == "1.0.0"
        a.cleanup()


@pytest.mark.parametrize("mode", ["missing-field", "bad-listen"])
def test_bad_config_is_one_line_naming_file_and_field(tmp_path, kit, mode):
    cfg = tmp_path / "agent.toml"
    if mode == "missing-field":
        cfg.write_text(
            '[device]\nhardware = "x"\n[agent]\ndata_dir = "d"\ntoken_env = "FG_T"\n'
            f'public_key = "{kit.pub_path}"\n'
        )
        expected = "agent.toml: device.id: missing"
    else:
        cfg.write_text(
            '[device]\nid = "a"\nhardware = "x"\n[agent]\nlisten = "nope"\n'
            f'data_dir = "d"\ntoken_env = "FG_T"\npublic_key = "{kit.pub_path}"\n'
        )
        expected = "agent.toml: agent.listen: expected HOST:PORT"
    proc = subprocess.run(
        [os.sys.executable, "-m", "fleetgate", "agent", "run", "--config", str(cfg)],
        capture_output=True,
        text=True,
        env={**os.environ, "FG_T": "secret"},
        timeout=30,
    )
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and expected in lines[0] and "Traceback" not in proc.stderr
    assert "secret" not in proc.stderr


def test_download_cut_midway_is_resumed(make_agent, kit):
    from agent_harness import FlakyBlobServer

    rel = kit.release("resumable", "1.0.0", extra=os.urandom(256 * 1024))
    payload = (kit.server.blob_dir / rel.bundle.manifest.sha256).read_bytes()
    a = make_agent()
    with FlakyBlobServer(payload) as flaky:
        status, reply = a.post("stage", deployment_id="d", seq=1, **{**rel.stage, "url": flaky.url})
    assert (status, reply["status"]) == (200, "staged")
    assert flaky.ranges[0] is None and len(flaky.ranges) >= 2
    assert flaky.ranges[-1] is not None and flaky.ranges[-1] != "bytes=0-"
    assert a.release_entries() == [rel.id]
    assert (a.data_dir / "releases" / rel.id / "blob.bin").stat().st_size == 256 * 1024


def test_while_a_command_runs_others_are_refused_and_reads_still_answer(make_agent, kit, tmp_path):
    import threading

    marker = tmp_path / "paused"
    a = make_agent(start=False)
    a.start(
        env={
            "FLEETGATE_AGENT_PAUSE_AT": "stage:after-download",
            "FLEETGATE_AGENT_PAUSE_MARKER": str(marker),
        }
    )

    def send() -> None:
        with contextlib.suppress(OSError):  # the agent is killed while this waits
            a.post("stage", deployment_id="d", seq=1, **kit.v1.stage)

    threading.Thread(target=send, daemon=True).start()
    a.wait_for(marker.exists, what="stage paused mid-way")
    status, body = a.post("stage", deployment_id="d", seq=1, **kit.v1.stage)
    assert (status, body["error"], body["retryable"]) == (409, "in-progress", True)
    status, body = a.post("activate", deployment_id="d", seq=2, release=kit.v1.id)
    assert (status, body["error"], body["retryable"]) == (409, "busy", True)
    facts = a.facts()
    assert facts["state"] == "staging" and facts["last_seq"] == 1  # seq 2 was not consumed
    assert a.get("/v1/ping")[0] == 200 and a.get("/v1/health")[0] == 200
    a.kill()
