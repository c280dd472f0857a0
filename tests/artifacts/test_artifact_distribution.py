"""The distribution point: publishing bundles, serving blobs with Range, bearer tokens, and the
whole path from a built bundle to a verified, extracted release on the agent side."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import aiohttp
import pytest
from artifact_helpers import Keys

from fleetgate.artifacts.bundle import build_bundle, read_bundle
from fleetgate.artifacts.distribution import (
    DistributionServer,
    load_published,
    parse_range,
    publish_bundle,
)
from fleetgate.artifacts.extract import safe_extract
from fleetgate.artifacts.fetch import download_blob
from fleetgate.artifacts.signing import verify_manifest
from fleetgate.errors import IntegrityError

BLOB = os.urandom(100_000)
SHA = hashlib.sha256(BLOB).hexdigest()


@pytest.fixture
def blob_dir(tmp_path: Path) -> Path:
    d = tmp_path / "blobs"
    d.mkdir()
    (d / SHA).write_bytes(BLOB)
    (d / f"{SHA}.sig").write_text("side file, not a blob")
    return d


@pytest.fixture
def bundle(make_src, keys: Keys, tmp_path: Path) -> Path:
    src = make_src({"app.py": "print('hi')\n", "data.bin": os.urandom(3000).hex()})
    return build_bundle(src, keys.private, tmp_path / "out").path


def test_publish_stores_payload_manifest_and_signature(
    bundle: Path, keys: Keys, tmp_path: Path
) -> None:
    store = tmp_path / "store"
    sha, size = publish_bundle(bundle, store, public_key=keys.public)
    blob = (store / sha).read_bytes()
    assert len(blob) == size and hashlib.sha256(blob).hexdigest() == sha
    manifest_json, signature = load_published(store, sha)
    assert manifest_json == read_bundle(bundle).manifest_json
    assert verify_manifest(manifest_json, signature, keys.public).sha256 == sha
    assert publish_bundle(bundle, store) == (sha, size)  # idempotent
    assert sorted(p.name for p in store.iterdir()) == sorted(
        [sha, f"{sha}.manifest.json", f"{sha}.sig"]
    )  # no temp files left


def test_publish_refuses_wrong_key_and_tampered_payload(
    bundle: Path, other_keys: Keys, tmp_path: Path
) -> None:
    store = tmp_path / "store"
    with pytest.raises(IntegrityError, match="bad signature"):
        publish_bundle(bundle, store, public_key=other_keys.public)
    contents = read_bundle(bundle)
    data = bytearray(bundle.read_bytes())
    data[contents.payload_offset + 5] ^= 0x01
    bundle.write_bytes(bytes(data))
    with pytest.raises(IntegrityError, match="digest mismatch"):
        publish_bundle(bundle, store)
    assert not store.exists() or list(store.iterdir()) == []


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("bytes=0-9", (0, 9)),
        ("bytes=10-", (10, 99)),
        ("bytes=-5", (95, 99)),
        ("bytes=90-1000", (90, 99)),
        ("bytes=9-3", None),
        ("bytes=0-1,5-6", None),
        ("items=0-1", None),
        ("bytes=a-b", None),
    ],
)
def test_parse_range(header: str, expected: tuple[int, int] | None) -> None:
    assert parse_range(header, 100) == expected


@pytest.mark.parametrize("header", ["bytes=100-", "bytes=150-200", "bytes=-0"])
def test_parse_range_unsatisfiable(header: str) -> None:
    with pytest.raises(ValueError):
        parse_range(header, 100)


async def test_serves_whole_blob_ranges_head_and_416(blob_dir: Path) -> None:
    n = len(BLOB)
    async with DistributionServer(blob_dir) as srv, aiohttp.ClientSession() as http:
        assert srv.url.startswith("http://127.0.0.1:")
        async with http.get(srv.blob_url(SHA)) as r:
            assert r.status == 200
            assert await r.read() == BLOB
            assert r.headers["Accept-Ranges"] == "bytes"
            assert r.headers["ETag"] == f'"{SHA}"'
        async with http.get(srv.blob_url(SHA), headers={"Range": "bytes=10-19"}) as r:
            assert r.status == 206
            assert r.headers["Content-Range"] == f"bytes 10-19/{n}"
            assert await r.read() == BLOB[10:20]
        async with http.get(srv.blob_url(SHA), headers={"Range": "bytes=99000-"}) as r:
            assert r.status == 206 and await r.read() == BLOB[99000:]
        async with http.get(srv.blob_url(SHA), headers={"Range": "bytes=-7"}) as r:
            assert r.status == 206 and await r.read() == BLOB[-7:]
        async with http.get(srv.blob_url(SHA), headers={"Range": f"bytes={n}-"}) as r:
            assert r.status == 416
            assert r.headers["Content-Range"] == f"bytes */{n}"
        async with http.get(srv.blob_url(SHA), headers={"Range": "bytes=0-1,4-5"}) as r:
            assert r.status == 200 and await r.read() == BLOB  # multi-range: whole blob
        async with http.head(srv.blob_url(SHA)) as r:
            assert r.status == 200
            assert int(r.headers["Content-Length"]) == n
            assert await r.read() == b""
        async with http.head(srv.blob_url(SHA), headers={"Range": "bytes=5-"}) as r:
            assert r.status == 206 and int(r.headers["Content-Length"]) == n - 5


@pytest.mark.parametrize(
    "path",
    [f"/v1/blobs/{'0' * 64}", f"/v1/blobs/{SHA}.sig", "/v1/blobs/..%2F..%2Fetc%2Fpasswd", "/x"],
    # Fixed ids: SHA is of random bytes, and pytest-xdist needs every worker to collect the
    # same test ids.
    ids=["unknown-digest", "sig-of-blob", "traversal", "unknown-route"],
)
async def test_unknown_and_malformed_digests_are_404(blob_dir: Path, path: str) -> None:
    async with (
        DistributionServer(blob_dir) as srv,
        aiohttp.ClientSession() as http,
        http.get(srv.url + path) as r,
    ):
        assert r.status == 404


async def test_bearer_token_is_required_when_configured(blob_dir: Path) -> None:
    async with DistributionServer(blob_dir, token="s3cret") as srv, aiohttp.ClientSession() as h:
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "s3cret"}):
            async with h.get(srv.blob_url(SHA), headers=headers) as r:
                assert r.status == 401
                assert r.headers["WWW-Authenticate"].startswith("Bearer")
        async with h.get(srv.blob_url(SHA), headers={"Authorization": "Bearer s3cret"}) as r:
            assert r.status == 200 and await r.read() == BLOB


async def test_bundle_to_staged_release_end_to_end(
    bundle: Path, keys: Keys, tmp_path: Path
) -> None:
    """Controller publishes; agent verifies the manifest first, downloads capped at the signed
    size, checks the digest, extracts safely."""
    store = tmp_path / "store"
    sha, _ = publish_bundle(bundle, store, public_key=keys.public)
    manifest_json, signature = load_published(store, sha)
    manifest = verify_manifest(manifest_json, signature, keys.public)
    assert manifest.size is not None and manifest.sha256 == sha
    async with (
        DistributionServer(store, token="t0k") as srv,
        aiohttp.ClientSession() as http,
    ):
        path = await download_blob(
            http,
            srv.blob_url(sha),
            tmp_path / "agent" / "downloads" / sha,
            size=manifest.size,
            sha256=manifest.sha256,
            headers={"Authorization": "Bearer t0k"},
        )
    release = safe_extract(path, tmp_path / "agent" / "releases" / manifest.release_id)
    assert (release / "app.py").read_text() == "print('hi')\n"
    assert (release / "fleetgate.toml").exists()
