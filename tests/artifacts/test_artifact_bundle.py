"""Building bundles: payload per kind, determinism, source-tree refusals, verification."""

from __future__ import annotations

import io
import os
import shutil
import tarfile
from pathlib import Path

import pytest
from artifact_helpers import Keys, toml_for

from fleetgate.artifacts.bundle import build_bundle, read_bundle
from fleetgate.artifacts.container import payload_digest
from fleetgate.artifacts.extract import safe_extract
from fleetgate.artifacts.signing import verify_bundle
from fleetgate.core.manifest import canonical_manifest
from fleetgate.core.model import ArtifactKind
from fleetgate.errors import InputError, IntegrityError, ValidationError

APP = {"app.py": "print('hi')\n", "lib/util.py": "X = 1\n", "bin/run": ("#!/bin/sh\n", 0o700)}


def payload_members(bundle: Path) -> dict[str, tarfile.TarInfo]:
    contents = read_bundle(bundle)
    with bundle.open("rb") as fh:
        fh.seek(contents.payload_offset)
        raw = fh.read(contents.payload_size)
    with tarfile.open(fileobj=io.BytesIO(raw), mode="r:gz") as tf:
        return {m.name: m for m in tf.getmembers()}


def test_bundle_kind_packs_the_whole_tree_normalised(make_src, keys: Keys, tmp_path: Path) -> None:
    src = make_src({**APP, "__pycache__/app.cpython-311.pyc": "x", "lib/old.pyc": "x"})
    (src / ".git").mkdir()
    (src / ".git" / "HEAD").write_text("ref")
    built = build_bundle(src, keys.private, tmp_path / "out")

    assert built.path == tmp_path / "out" / "vision-2.4.1.fgb"
    members = payload_members(built.path)
    assert sorted(members) == ["app.py", "bin", "bin/run", "fleetgate.toml", "lib", "lib/util.py"]
    assert members["bin/run"].mode == 0o755
    assert members["app.py"].mode == 0o644
    assert members["lib"].mode == 0o755 and members["lib"].isdir()
    for m in members.values():
        assert (m.mtime, m.uid, m.gid, m.uname, m.gname) == (0, 0, 0, "", "")
    assert built.manifest.kind is ArtifactKind.BUNDLE
    assert built.manifest.run.command == ("python3", "app.py")


def test_bundle_file_layout_and_manifest_binding(make_src, keys: Keys, tmp_path: Path) -> None:
    built = build_bundle(make_src(APP), keys.private, tmp_path / "out")
    with tarfile.open(built.path, "r:") as tf:
        assert tf.getnames() == ["manifest.json", "manifest.sig", "payload.tar.gz"]
        for m in tf.getmembers():
            assert (m.mtime, m.uid, m.gid, m.uname, m.mode) == (0, 0, 0, "", 0o644)
    contents = read_bundle(built.path)
    assert contents.manifest_json == canonical_manifest(built.manifest)
    assert contents.payload_size == built.manifest.size
    assert payload_digest(contents) == built.manifest.sha256
    # the gzip header carries neither a file name nor a timestamp
    with built.path.open("rb") as fh:
        fh.seek(contents.payload_offset)
        header = fh.read(10)
    assert header[:3] == b"\x1f\x8b\x08"
    assert header[3] & 0x08 == 0  # no FNAME
    assert header[4:8] == b"\0\0\0\0"  # mtime 0
    assert verify_bundle(built.path, keys.public) == built.manifest


def test_binary_kind_ships_one_executable(make_src, keys: Keys, tmp_path: Path) -> None:
    src = make_src({"tool": ("\x7fELF...", 0o644)}, kind="binary")
    built = build_bundle(src, keys.private, tmp_path / "out")
    members = payload_members(built.path)
    assert list(members) == ["tool"]
    assert members["tool"].mode == 0o755


@pytest.mark.parametrize(
    "files",
    [{}, {"a": "1", "b": "2"}, {"sub/tool": "x"}],
    ids=["none", "two-files", "in-subdir"],
)
def test_binary_kind_refuses_anything_but_one_file(
    make_src, keys: Keys, tmp_path: Path, files: dict[str, str]
) -> None:
    src = make_src(files, kind="binary")
    with pytest.raises(InputError, match="kind binary needs exactly one regular file"):
        build_bundle(src, keys.private, tmp_path / "out")


def test_config_kind_ships_files_without_the_manifest(make_src, keys: Keys, tmp_path: Path) -> None:
    src = make_src({"vision.yaml": "fps: 30\n", "conf.d/extra.yaml": "a: 1\n"}, kind="config")
    built = build_bundle(src, keys.private, tmp_path / "out")
    assert sorted(payload_members(built.path)) == ["conf.d", "conf.d/extra.yaml", "vision.yaml"]
    assert built.manifest.run.reload_command == ("systemctl", "reload", "vision")
    with pytest.raises(InputError, match="kind config needs at least one file"):
        build_bundle(make_src({}, kind="config", name="empty"), keys.private, tmp_path / "o2")


def _tree(root: Path, umask: int, mtime: int, reverse: bool) -> Path:
    old = os.umask(umask)
    try:
        items = sorted(APP.items(), reverse=reverse)
        root.mkdir()
        (root / "fleetgate.toml").write_text(toml_for("bundle"))
        for rel, spec in items:
            text, exec_bit = (spec[0], True) if isinstance(spec, tuple) else (spec, False)
            path = root / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
            if exec_bit:
                path.chmod(0o777 & ~umask)
        for path in [root, *root.rglob("*")]:
            os.utime(path, (mtime, mtime))
    finally:
        os.umask(old)
    return root


def test_builds_are_byte_identical_across_mtimes_umask_and_order(
    keys: Keys, tmp_path: Path
) -> None:
    a = _tree(tmp_path / "a", umask=0o022, mtime=1_000_000, reverse=False)
    b = _tree(tmp_path / "b", umask=0o077, mtime=1_700_000_000, reverse=True)
    first = build_bundle(a, keys.private, tmp_path / "out1")
    again = build_bundle(a, keys.private, tmp_path / "out1")
    other = build_bundle(b, keys.private, tmp_path / "out2")
    assert first.path.read_bytes() == again.path.read_bytes() == other.path.read_bytes()
    assert first.sha256 == other.sha256
    assert first.manifest == other.manifest
    assert [p.name for p in (tmp_path / "out1").iterdir()] == ["vision-2.4.1.fgb"]  # no temp files


def test_size_and_sha256_in_the_toml_are_replaced(make_src, keys: Keys, tmp_path: Path) -> None:
    toml = toml_for("bundle").replace(
        'kind = "bundle"', 'kind = "bundle"\nsize = 1\nsha256 = "' + "0" * 64 + '"'
    )
    built = build_bundle(make_src(APP, toml=toml), keys.private, tmp_path / "out")
    assert built.manifest.size != 1 and built.manifest.sha256 != "0" * 64
    verify_bundle(built.path, keys.public)


def test_symlinks_inside_the_tree_survive_the_round_trip(
    make_src, keys: Keys, tmp_path: Path
) -> None:
    src = make_src({"lib/v2/tool": ("#!/bin/sh\n", 0o755), "app.py": "x"})
    os.symlink("v2", src / "lib" / "current")
    os.symlink("lib/current/tool", src / "tool")
    built = build_bundle(src, keys.private, tmp_path / "out")
    members = payload_members(built.path)
    assert members["tool"].issym() and members["tool"].linkname == "lib/current/tool"
    contents = read_bundle(built.path)
    payload = tmp_path / "payload.tar.gz"
    with built.path.open("rb") as fh:
        fh.seek(contents.payload_offset)
        payload.write_bytes(fh.read(contents.payload_size))
    out = safe_extract(payload, tmp_path / "staged")
    assert (out / "tool").read_text() == "#!/bin/sh\n"


@pytest.mark.parametrize(
    ("link", "target"),
    [("escape", "../outside.txt"), ("deep/escape", "../../outside.txt"), ("abs", "/etc/hostname")],
)
def test_symlinks_leaving_the_tree_are_refused(
    make_src, keys: Keys, tmp_path: Path, link: str, target: str
) -> None:
    (tmp_path / "outside.txt").write_text("secret")
    src = make_src({"app.py": "x", "deep/keep": "x"})
    os.symlink(target, src / link)
    with pytest.raises(InputError, match="symlink"):
        build_bundle(src, keys.private, tmp_path / "out")
    assert not list((tmp_path / "out").glob("*")) if (tmp_path / "out").exists() else True


def test_symlinked_directory_outside_is_refused(make_src, keys: Keys, tmp_path: Path) -> None:
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    src = make_src({"app.py": "x"})
    os.symlink(os.path.relpath(outside, src), src / "data")
    with pytest.raises(InputError, match="points outside"):
        build_bundle(src, keys.private, tmp_path / "out")


def test_fifo_in_the_tree_is_refused(make_src, keys: Keys, tmp_path: Path) -> None:
    src = make_src({"app.py": "x"})
    os.mkfifo(src / "pipe")
    with pytest.raises(InputError, match="pipe: not a regular file"):
        build_bundle(src, keys.private, tmp_path / "out")


def test_malformed_toml_names_the_file(make_src, keys: Keys, tmp_path: Path) -> None:
    src = make_src(APP, toml="[artifact\nname = 'x'")
    with pytest.raises(InputError) as info:
        build_bundle(src, keys.private, tmp_path / "out")
    assert str(info.value).startswith(f"{src / 'fleetgate.toml'}: invalid TOML")


def test_bad_field_names_the_file_and_field(make_src, keys: Keys, tmp_path: Path) -> None:
    toml = toml_for("bundle").replace("ram_mb = 512", 'ram_mb = "lots"')
    src = make_src(APP, toml=toml)
    with pytest.raises(ValidationError) as info:
        build_bundle(src, keys.private, tmp_path / "out")
    assert info.value.problems == [
        f"{src / 'fleetgate.toml'}: requires.ram_mb: expected a non-negative integer"
    ]


def test_missing_toml_and_missing_dir(tmp_path: Path, keys: Keys) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match=r"fleetgate\.toml: not found"):
        build_bundle(tmp_path / "empty", keys.private, tmp_path / "out")
    with pytest.raises(InputError, match="not a directory"):
        build_bundle(tmp_path / "nope", keys.private, tmp_path / "out")


# -- verification of a built bundle ------------------------------------------------------------


@pytest.fixture
def built(make_src, keys: Keys, tmp_path: Path) -> Path:
    return build_bundle(make_src(APP), keys.private, tmp_path / "out").path


def test_tampered_payload_byte_is_a_digest_mismatch(built: Path, keys: Keys) -> None:
    contents = read_bundle(built)
    data = bytearray(built.read_bytes())
    data[contents.payload_offset + contents.payload_size // 2] ^= 0xFF
    built.write_bytes(bytes(data))
    with pytest.raises(IntegrityError, match="payload digest mismatch"):
        verify_bundle(built, keys.public)


def test_tampered_manifest_byte_is_a_bad_signature(built: Path, keys: Keys) -> None:
    data = built.read_bytes()
    built.write_bytes(data.replace(b'"ram_mb":512', b'"ram_mb":511', 1))
    with pytest.raises(IntegrityError, match="bad signature"):
        verify_bundle(built, keys.public)


def test_wrong_key_is_a_bad_signature(built: Path, other_keys: Keys) -> None:
    with pytest.raises(IntegrityError, match="bad signature"):
        verify_bundle(built, other_keys.public)


def test_truncated_bundles_are_rejected(built: Path, keys: Keys, tmp_path: Path) -> None:
    data = built.read_bytes()
    contents = read_bundle(built)
    end = contents.payload_offset + contents.payload_size
    cut_points = [0, 100, 600, contents.payload_offset + 10, end - 1]
    for cut in cut_points:
        short = tmp_path / f"cut-{cut}.fgb"
        short.write_bytes(data[:cut])
        with pytest.raises(IntegrityError) as info:
            verify_bundle(short, keys.public)
        assert "truncated" in str(info.value) or "not a bundle" in str(info.value), cut


def test_not_a_tar_and_foreign_tars_are_not_bundles(keys: Keys, tmp_path: Path) -> None:
    noise = tmp_path / "noise.fgb"
    noise.write_bytes(os.urandom(4096))
    with pytest.raises(IntegrityError, match="not a bundle"):
        verify_bundle(noise, keys.public)
    foreign = tmp_path / "foreign.fgb"
    with tarfile.open(foreign, "w:") as tf:
        info = tarfile.TarInfo("manifest.json")
        tf.addfile(info, io.BytesIO(b""))
        extra = tarfile.TarInfo("evil.sh")
        tf.addfile(extra, io.BytesIO(b""))
    with pytest.raises(IntegrityError, match=r"unexpected member 'evil\.sh'"):
        verify_bundle(foreign, keys.public)


def test_bundle_is_readable_where_the_agent_copies_it(
    built: Path, keys: Keys, tmp_path: Path
) -> None:
    copy = tmp_path / "elsewhere" / "copy.fgb"
    copy.parent.mkdir()
    shutil.copy(built, copy)
    assert verify_bundle(copy, keys.public).name == "vision"
