"""``fleetgate serve`` with a ``root.json`` as its trust: an upload is verified against the root's
release keys, and the root chain is served beside the blobs (``/roots/N.root.json``), where a
device's stage looks for it (agent/trust.py)."""

from __future__ import annotations

import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from api_harness import service

from fleetgate.artifacts.keys import generate_keypair, load_private_key
from fleetgate.artifacts.root import make_root, sign_root


async def test_the_service_verifies_with_a_root_and_serves_its_chain(tmp_path: Path) -> None:
    keys = tmp_path / "keys"  # the harness signs its bundle with this key (made here first)
    key_path, _pub = generate_keypair(keys)
    key = load_private_key(key_path)
    other = load_private_key(generate_keypair(tmp_path / "other")[0])
    expires = (datetime.now(timezone.utc) + timedelta(days=30)).strftime("%Y-%m-%dT%H:%M:%SZ")
    roots = tmp_path / "roots"
    roots.mkdir()
    pub = key.public_key()
    (roots / "1.root.json").write_bytes(sign_root(make_root(1, expires, [pub], 1, [pub], 1), [key]))
    # Root 2 makes `other` the only release key: the harness's bundle no longer verifies.
    v2 = make_root(2, expires, [pub], 1, [other.public_key()], 1)
    async with service(tmp_path, trust=roots / "1.root.json") as svc:
        status, rel = await svc.upload(svc.h.bundle)
        assert status == 201, rel
        status, doc = await svc.call("GET", "/roots/1.root.json", role=None)
        assert status == 200 and doc["signed"]["version"] == 1
        status, _ = await svc.call("GET", "/roots/2.root.json", role=None)
        assert status == 404
        status, _ = await svc.call("GET", "/roots/..%2Fkeys", role=None)
        assert status == 404

    (roots / "2.root.json").write_bytes(sign_root(v2, [key]))
    async with service(tmp_path / "again", trust=roots / "2.root.json") as svc:
        status, refused = await svc.upload(svc.h.bundle)
        assert status == 422 and "signed by 0 of the 1 release keys" in str(refused), refused
