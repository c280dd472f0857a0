"""The controller verifies releases against a ``root.json`` when ``--pubkey`` /
``FLEETGATE_PUBKEY`` names one: ``start`` checks the bundle against the root's release keys and
publishes the root chain beside the blobs (devices walk it at their stage); PREPARE re-verifies
the published manifest against the root too."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from engine_harness import harness

from fleetgate.artifacts.keys import generate_keypair, load_private_key
from fleetgate.artifacts.root import make_root, sign_root
from fleetgate.errors import IntegrityError

EXPIRES = (datetime.now(timezone.utc) + timedelta(days=30)).strftime("%Y-%m-%dT%H:%M:%SZ")


async def test_a_deployment_verified_against_a_root_publishes_its_chain(tmp_path: Path) -> None:
    async with harness(tmp_path, devices=6) as h:
        key = load_private_key(tmp_path / "keys" / "fleetgate-signing.key")
        pub = key.public_key()
        roots = tmp_path / "roots"
        roots.mkdir()
        (roots / "1.root.json").write_bytes(
            sign_root(make_root(1, EXPIRES, [pub], 1, [pub], 1), [key])
        )
        (roots / "root.json").write_bytes((roots / "1.root.json").read_bytes())
        h.controller.config.public_key = roots / "root.json"
        dep = await h.start()
        assert (h.controller.config.blob_dir / "roots" / "1.root.json").read_bytes() == (
            roots / "1.root.json"
        ).read_bytes()
        state = await h.controller.drive(dep)
        assert state.phase.value in ("AWAITING_APPROVAL", "COMPLETE"), state.phase
        events = [e.action for e in await h.events(dep)]
        assert "prepare.passed" in events


async def test_a_bundle_the_root_does_not_authorise_is_refused_at_start(tmp_path: Path) -> None:
    async with harness(tmp_path, devices=6) as h:
        key = load_private_key(tmp_path / "keys" / "fleetgate-signing.key")
        other = load_private_key(generate_keypair(tmp_path / "other")[0]).public_key()
        roots = tmp_path / "roots"
        roots.mkdir()
        signed = make_root(1, EXPIRES, [key.public_key()], 1, [other], 1)
        (roots / "1.root.json").write_bytes(sign_root(signed, [key]))
        h.controller.config.public_key = roots / "1.root.json"
        with pytest.raises(IntegrityError, match="signed by 0 of the 1 release keys"):
            await h.start()
        assert await h.store.list_deployments() == []


async def test_an_expired_release_is_refused_before_anything_is_published(tmp_path: Path) -> None:
    from fleetgate.artifacts.bundle import build_bundle
    from fleetgate.errors import GuardrailError

    async with harness(tmp_path, devices=6) as h:
        key = load_private_key(tmp_path / "keys" / "fleetgate-signing.key")
        src = tmp_path / "app-2.0.0"  # the harness's source tree
        old = build_bundle(src, key, tmp_path / "old", valid_until="2021-01-01T00:00:00Z")
        with pytest.raises(GuardrailError, match="expired at 2021-01-01T00:00:00Z"):
            await h.controller.start(old.path, h.policy, policy_doc=h.policy_doc)
        assert await h.store.list_deployments() == []
        assert not (h.controller.config.blob_dir / old.manifest.sha256).exists()
