"""safe_extract against real hostile archives: each is rejected and leaves nothing behind."""

from __future__ import annotations

import gzip
import io
import os
import stat
import tarfile
from collections.abc import Iterable
from pathlib import Path

import pytest

from fleetgate.artifacts import extract
from fleetgate.artifacts.extract import safe_extract
from fleetgate.errors import IntegrityError

MiB = 1024 * 1024


class Zeros(io.RawIOBase):
    """A file-like object of ``n`` zero bytes that never holds more than one chunk."""

    def __init__(self, n: int) -> None:
        self.left = n

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        size = self.left if size < 0 else min(size, self.left)
        self.left -= size
        return bytes(size)


def member(name: str, kind: bytes = tarfile.REGTYPE, data: bytes = b"", **attrs: object):
    info = tarfile.TarInfo(name)
    info.type = kind
    info.size = len(data) if kind == tarfile.REGTYPE else 0
    info.mode = 0o755 if kind == tarfile.DIRTYPE else 0o644
    for key, value in attrs.items():
        setattr(info, key, value)
    return info, (data if kind == tarfile.REGTYPE else None)


def make_tgz(path: Path, members: Iterable[tuple[tarfile.TarInfo, object]]) -> Path:
    with tarfile.open(path, "w:gz", format=tarfile.PAX_FORMAT, compresslevel=1) as tf:
        for info, content in members:
            fileobj = io.BytesIO(content) if isinstance(content, bytes) else content
            tf.addfile(info, fileobj)  # type: ignore[arg-type]
    return path


@pytest.fixture
def work(tmp_path: Path) -> Path:
    (tmp_path / "stage").mkdir()
    return tmp_path


def assert_rejected(archive: Path, work: Path, reason: str, **caps: int) -> None:
    dest = work / "stage" / "release"
    with pytest.raises(IntegrityError) as info:
        safe_extract(archive, dest, **caps)
    assert reason in str(info.value), str(info.value)
    assert str(archive) in str(info.value)
    assert not dest.exists()
    assert list((work / "stage").iterdir()) == []  # nothing left behind, not even a temp dir


GOOD = [member("app", tarfile.DIRTYPE), member("app/run.py", data=b"print(1)\n")]

HOSTILE = {
    "absolute path": ([*GOOD, member("/etc/evil", data=b"x")], "absolute path"),
    "dot-dot": ([*GOOD, member("../evil", data=b"x")], "'..' component"),
    "nested dot-dot": ([*GOOD, member("app/../../evil", data=b"x")], "'..' component"),
    "symlink escape": (
        [*GOOD, member("app/link", tarfile.SYMTYPE, linkname="../../etc")],
        "leaves the archive root",
    ),
    "absolute symlink": (
        [*GOOD, member("pw", tarfile.SYMTYPE, linkname="/etc/passwd")],
        "symlink to absolute path",
    ),
    "symlink chain escape": (
        [
            member("a", tarfile.SYMTYPE, linkname="."),
            member("b", tarfile.SYMTYPE, linkname="a/.."),  # lexically ".", really the parent
        ],
        "leaves the archive root",
    ),
    "write through symlink": (
        [*GOOD, member("d", tarfile.SYMTYPE, linkname="app"), member("d/x", data=b"x")],
        "path goes through symlink member 'd'",
    ),
    "symlink loop": (
        [member("x", tarfile.SYMTYPE, linkname="y"), member("y", tarfile.SYMTYPE, linkname="x")],
        "symlink loop",
    ),
    "hardlink escape": (
        [*GOOD, member("h", tarfile.LNKTYPE, linkname="../../etc/passwd")],
        "'..' component in hard link target",
    ),
    "hardlink absolute": (
        [*GOOD, member("h", tarfile.LNKTYPE, linkname="/etc/passwd")],
        "absolute hard link target",
    ),
    "hardlink to non-member": (
        [*GOOD, member("h", tarfile.LNKTYPE, linkname="app/missing.py")],
        "not an earlier regular file member",
    ),
    "hardlink to directory": (
        [*GOOD, member("h", tarfile.LNKTYPE, linkname="app")],
        "not an earlier regular file member",
    ),
    "char device": (
        [*GOOD, member("null", tarfile.CHRTYPE, devmajor=1, devminor=3)],
        "device file",
    ),
    "block device": (
        [*GOOD, member("sda", tarfile.BLKTYPE, devmajor=8, devminor=0)],
        "device file",
    ),
    "fifo": ([*GOOD, member("pipe", tarfile.FIFOTYPE)], "FIFO"),
    "duplicate": ([*GOOD, member("app/run.py", data=b"evil")], "duplicate member"),
    "file as parent": ([*GOOD, member("app/run.py/x", data=b"x")], "goes through file member"),
    "contiguous type": ([*GOOD, member("c", tarfile.CONTTYPE, data=b"")], "unsupported member"),
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
@pytest.mark.parametrize("data_filter", [True, False], ids=["filter", "fallback"])
def test_hostile_archive_is_rejected_before_anything_is_written(
    work: Path, case: str, data_filter: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    members, reason = HOSTILE[case]
    archive = make_tgz(work / "evil.tar.gz", members)
    monkeypatch.setattr(extract, "HAS_DATA_FILTER", data_filter and extract.HAS_DATA_FILTER)
    calls: list[str] = []
    real_mkdir = Path.mkdir

    def spy_mkdir(self: Path, *args: object, **kwargs: object) -> None:
        calls.append(str(self))
        real_mkdir(self, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(Path, "mkdir", spy_mkdir)
    assert_rejected(archive, work, reason)
    assert calls == []  # inspection failed before the staging dir was even created


def test_too_many_members(work: Path) -> None:
    archive = make_tgz(work / "many.tar.gz", [member(f"f{i:03}", data=b"x") for i in range(51)])
    assert_rejected(archive, work, "more than 50 members", max_members=50)
    safe_extract(archive, work / "ok", max_members=51)


def test_decompression_bomb_single_file(work: Path) -> None:
    # 200 MiB of zeros, compressed to a few hundred KB; built streaming, never held in memory.
    bomb = tarfile.TarInfo("zeros.bin")
    bomb.size = 200 * MiB
    archive = make_tgz(work / "bomb.tar.gz", [(bomb, Zeros(bomb.size))])
    assert archive.stat().st_size < 2 * MiB
    assert_rejected(archive, work, "decompression bomb", max_bytes=50 * MiB)


def test_decompression_bomb_spread_over_members(work: Path) -> None:
    parts = []
    for i in range(30):
        info = tarfile.TarInfo(f"part{i:02}")
        info.size = 2 * MiB
        parts.append((info, Zeros(info.size)))
    archive = make_tgz(work / "bomb.tar.gz", parts)
    assert_rejected(archive, work, "decompression bomb", max_bytes=50 * MiB)


def test_stream_running_past_the_headers_is_stopped(work: Path) -> None:
    # A PAX header is not a member's data: tarfile would read it into memory whole. The stream
    # cap stops it at a small allowance past what the headers declared.
    info = tarfile.TarInfo("innocent")
    info.pax_headers = {"comment": "x" * (4 * MiB)}
    archive = make_tgz(work / "pax.tar.gz", [(info, io.BytesIO(b""))])
    assert_rejected(archive, work, "runs past what the headers declare")


@pytest.mark.parametrize("kind", ["not gzip", "truncated gzip", "gzip of garbage"])
def test_corrupt_archives(work: Path, kind: str) -> None:
    archive = work / "bad.tar.gz"
    good = make_tgz(
        work / "good.tar.gz", [member(f"f{i}", data=os.urandom(4096)) for i in range(8)]
    )
    if kind == "not gzip":
        archive.write_bytes(b"PK\x03\x04 definitely a zip")
    elif kind == "truncated gzip":
        archive.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    else:
        archive.write_bytes(gzip.compress(os.urandom(2000)))
    assert_rejected(archive, work, "corrupt or truncated archive")


def test_existing_destination_is_refused_and_untouched(work: Path) -> None:
    archive = make_tgz(work / "ok.tar.gz", GOOD)
    dest = work / "stage" / "release"
    dest.mkdir()
    (dest / "keep").write_text("mine")
    with pytest.raises(FileExistsError):
        safe_extract(archive, dest)
    assert [p.name for p in dest.iterdir()] == ["keep"]


@pytest.mark.parametrize("data_filter", [True, False], ids=["filter", "fallback"])
def test_good_archive_extracts_with_normalised_modes(
    work: Path, data_filter: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(extract, "HAS_DATA_FILTER", data_filter and extract.HAS_DATA_FILTER)
    archive = make_tgz(
        work / "ok.tar.gz",
        [
            member("./", tarfile.DIRTYPE),
            member("./app", tarfile.DIRTYPE, mode=0o777),
            member("./app/run.sh", data=b"#!/bin/sh\n", mode=0o4777),  # setuid, world-writable
            member("./app/data.txt", data=b"data", mode=0o666),
            member("./app/current", tarfile.SYMTYPE, linkname="run.sh"),
            member("./app/hard.txt", tarfile.LNKTYPE, linkname="./app/data.txt"),
            member("implicit/deep/file.txt", data=b"deep"),  # parents have no members
        ],
    )
    old_umask = os.umask(0)  # a careless service manager must not give us world-writable dirs
    try:
        dest = safe_extract(archive, work / "stage" / "release")
    finally:
        os.umask(old_umask)
    run = dest / "app" / "run.sh"
    assert run.read_bytes() == b"#!/bin/sh\n"
    assert stat.S_IMODE(run.stat().st_mode) == 0o755  # setuid and world-write gone
    assert stat.S_IMODE((dest / "app" / "data.txt").stat().st_mode) == 0o644
    assert stat.S_IMODE((dest / "app").stat().st_mode) == 0o755
    assert stat.S_IMODE(dest.stat().st_mode) == 0o755
    assert stat.S_IMODE((dest / "implicit" / "deep").stat().st_mode) == 0o755
    assert (dest / "implicit" / "deep" / "file.txt").read_bytes() == b"deep"
    assert os.readlink(dest / "app" / "current") == "run.sh"
    assert (dest / "app" / "hard.txt").read_bytes() == b"data"


def test_failure_during_extraction_removes_the_staging_dir(
    work: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    archive = make_tgz(work / "ok.tar.gz", GOOD)

    def disk_full(self: tarfile.TarFile, path: str, *args: object, **kwargs: object) -> None:
        (Path(path) / "partial").write_text("half")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(tarfile.TarFile, "extractall", disk_full)
    monkeypatch.setattr(extract, "HAS_DATA_FILTER", True)
    with pytest.raises(OSError, match="No space left"):
        safe_extract(archive, work / "stage" / "release")
    assert list((work / "stage").iterdir()) == []


def test_declared_size_on_a_directory_buys_no_room_for_a_pax_bomb(work: Path) -> None:
    big_dir = tarfile.TarInfo("d")
    big_dir.type = tarfile.DIRTYPE
    big_dir.size = 100 * MiB  # tarfile stores no data for directories; the size is a lie
    bomb = tarfile.TarInfo("d/x")
    bomb.pax_headers = {"comment": "x" * (4 * MiB)}
    archive = work / "sneaky.tar.gz"
    with tarfile.open(archive, "w:gz", format=tarfile.PAX_FORMAT, compresslevel=1) as tf:
        # addfile writes the header as given; for a directory it copies no data
        tf.addfile(big_dir)
        tf.addfile(bomb, io.BytesIO(b""))
    assert_rejected(archive, work, "runs past what the headers declare")


@pytest.mark.timeout(60)  # without memoised resolution this would take ~3**30 steps
def test_symlink_fan_out_is_resolved_in_linear_time(work: Path) -> None:
    links = [member("l00", tarfile.SYMTYPE, linkname=".")]
    for i in range(1, 31):
        prev = f"l{i - 1:02}"
        links.append(member(f"l{i:02}", tarfile.SYMTYPE, linkname=f"{prev}/{prev}/{prev}"))
    archive = make_tgz(work / "fan.tar.gz", links)
    dest = safe_extract(archive, work / "stage" / "release")
    assert os.readlink(dest / "l30") == "l29/l29/l29"


def test_overlong_symlink_chain_is_rejected(work: Path) -> None:
    links = [member("l00", tarfile.SYMTYPE, linkname=".")]
    links += [member(f"l{i:02}", tarfile.SYMTYPE, linkname=f"l{i - 1:02}") for i in range(1, 50)]
    archive = make_tgz(work / "chain.tar.gz", reversed(links))  # deepest first
    assert_rejected(archive, work, "symlink chain too deep")
