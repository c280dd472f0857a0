"""Starting a deployment: PREPARE's offline half.

The bundle's signature is verified against the controller's trust (a key or a root), the plan
made (a blocked plan publishes nothing), the payload published content-addressed to the blob
directory, and ``deployment.created`` records everything a later controller needs (plan,
stages, policy, the signed release, a device snapshot), after the admission check under the
log's lock. No device is touched."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from fleetgate.core.events import Event
from fleetgate.core.machine import fold
from fleetgate.core.model import Device, Manifest
from fleetgate.core.plan import Plan, plan_deployment
from fleetgate.core.policy import Policy
from fleetgate.engine.admission import admit
from fleetgate.engine.controller_base import ControllerBase
from fleetgate.errors import (
    GuardrailError,
    InputError,
)

SEQ_COUNTER = "__deployments__"


def _downgrade_authorization(
    path: Path | None, pub: Any, manifest: Manifest
) -> dict[str, str] | None:
    """The operator's downgrade authorisation file, checked against the release key and the
    release (a file for another release or version is their mistake, refused here); the
    devices check it again (signature, device, expiry on their clock)."""
    if path is None:
        return None
    import json

    from fleetgate.artifacts.downgrade_auth import load_authorization

    auth = load_authorization(path, pub)
    doc = json.loads(auth["document"])
    if (doc.get("name"), doc.get("version")) != (manifest.name, manifest.version):
        raise InputError(
            f"{path}: authorises {doc.get('name')} {doc.get('version')}, "
            f"not {manifest.name} {manifest.version}"
        )
    return auth


class StartMixin(ControllerBase):
    async def start(
        self,
        bundle: Path,
        policy: Policy,
        *,
        policy_doc: dict[str, Any],
        select: Callable[[Device], bool] | None = None,
        actor: str = "operator",
        downgrade_authorization: Path | None = None,
    ) -> str:
        """Verify ``bundle``, plan (a blocked plan publishes nothing), publish its payload to the
        blob directory and create the deployment."""
        from fleetgate.artifacts.container import file_sha256
        from fleetgate.artifacts.distribution import publish_bundle, publish_roots
        from fleetgate.artifacts.root import Root, load_trust
        from fleetgate.artifacts.signing import verify_bundle

        # A PEM key or a root.json: with a root, its chain is published beside the blobs so
        # devices walk to it at their stage (agent/trust.py).
        pub = load_trust(self.config.require_public_key())
        if isinstance(pub, Root):
            await asyncio.to_thread(
                publish_roots, self.config.require_public_key(), self.config.blob_dir
            )
        manifest = await asyncio.to_thread(verify_bundle, bundle, pub)
        auth = _downgrade_authorization(downgrade_authorization, pub, manifest)
        plan = await self._plan(manifest, policy, select)
        sha, _size = await asyncio.to_thread(
            publish_bundle, bundle, self.config.blob_dir, public_key=pub
        )
        bundle_sha = await asyncio.to_thread(file_sha256, bundle)  # what `artifact build` printed
        return await self._create(sha, bundle_sha, plan, policy, policy_doc, actor, auth)

    async def start_published(
        self,
        sha256: str,
        policy: Policy,
        *,
        policy_doc: dict[str, Any],
        select: Callable[[Device], bool] | None = None,
        actor: str = "operator",
    ) -> str:
        """Create a deployment of a release already uploaded to the service (``POST
        /api/v1/releases``): its stored manifest is verified again before anything else."""
        from fleetgate.artifacts.distribution import load_published, publish_roots
        from fleetgate.artifacts.root import Root, load_trust
        from fleetgate.artifacts.signing import verify_manifest

        record = await self.store.get_release(sha256)
        if record is None:
            raise InputError(f"release: no uploaded release {sha256!r}")
        pub = load_trust(self.config.require_public_key())  # a PEM key or a root.json
        if isinstance(pub, Root):
            await asyncio.to_thread(
                publish_roots, self.config.require_public_key(), self.config.blob_dir
            )
        manifest_json, signature = await asyncio.to_thread(
            load_published, self.config.blob_dir, sha256
        )
        manifest = verify_manifest(manifest_json, signature, pub)
        plan = await self._plan(manifest, policy, select)
        return await self._create(sha256, record.bundle_sha256, plan, policy, policy_doc, actor)

    async def _plan(
        self, manifest: Manifest, policy: Policy, select: Callable[[Device], bool] | None
    ) -> Plan:
        from fleetgate.clock import utc_now
        from fleetgate.core.manifest import parse_utc

        # Devices check the expiry at stage against their own (real) clocks: refuse a release
        # every device would refuse, before anything is published.
        until = parse_utc(manifest.valid_until) if manifest.valid_until else None
        if until is not None and utc_now() >= until:
            raise GuardrailError(
                f"cannot deploy: {manifest.label} expired at {manifest.valid_until} (devices "
                "refuse to stage it): rebuild it with a later --valid-until"
            )
        fleet = await self.store.list_devices()
        if not fleet:
            raise InputError("the inventory is empty: run `fleetgate registry import FILE` first")
        if any(not d.facts_known for d in fleet):
            from fleetgate.engine.facts_refresh import refresh_unknown

            # First contact: facts the inventory lacks come from the devices; a device that
            # does not answer stays unknown and the plan excludes it, saying why.
            fleet = await refresh_unknown(
                self.store, self.transport, fleet, now=self.clock.now_iso(), actor="fleetgate"
            )
        plan = plan_deployment(fleet, manifest, policy, select)
        if plan.blockers:
            raise GuardrailError("cannot deploy: " + "; ".join(plan.blockers))
        return plan

    async def _create(
        self,
        sha: str,
        bundle_sha: str,
        plan: Plan,
        policy: Policy,
        policy_doc: dict[str, Any],
        actor: str,
        auth: dict[str, str] | None = None,
    ) -> str:
        """Record ``deployment.created`` (everything a later controller needs: plan, stages,
        policy, the signed release, a device snapshot) after the admission check."""
        from fleetgate.artifacts.distribution import load_published
        from fleetgate.core.plan_doc import plan_to_dict
        from fleetgate.registry import device_to_dict

        manifest = plan.manifest
        manifest_json, signature = await asyncio.to_thread(
            load_published, self.config.blob_dir, sha
        )
        assert manifest.size is not None
        dep_id = "d-" + datetime.now(UTC).strftime("%Y%m%d-%H%M%S") + "-" + secrets.token_hex(2)
        seq_base = await self.store.next_device_seq(SEQ_COUNTER)
        plan_doc = plan_to_dict(plan, policy, sha256=sha)
        stages = [[d.id for d in s] for s in plan.stages()]
        details = {
            "stages": stages,
            "artifact": manifest.label,
            "sha256": sha,
            "bundle_sha256": bundle_sha,
            "fleet_total": plan.fleet_total,
            "plan": plan_doc,
            "policy": policy_doc,
            "allow_short_soak": policy.allow_short_soak,
            "distinct_approver": policy.distinct_approver,
            "seq_base": seq_base,
            "release": {
                "release_id": manifest.release_id,
                "manifest_json": manifest_json.decode(),
                "signature": signature,
                "size": manifest.size,
                **({"downgrade_authorization": auth} if auth is not None else {}),
            },
            "targets": [device_to_dict(d) for s in plan.stages() for d in s],
        }
        now = self.clock.now_iso()
        created = Event(
            ts=now, deployment_id=dep_id, action="deployment.created", actor=actor, details=details
        )
        fold(dep_id, [created])  # validates before anything is written
        events = [created]
        if auth is not None:
            from fleetgate.artifacts.downgrade_auth import describe

            # The emergency path past the devices' downgrade floor, in the audit log by name.
            events.append(
                Event(
                    ts=now,
                    deployment_id=dep_id,
                    action="deployment.downgrade_authorized",
                    actor=actor,
                    details=describe(auth),
                )
            )
        if policy.allow_short_soak:
            events.append(
                Event(
                    ts=now,
                    deployment_id=dep_id,
                    action="policy.short_soak_allowed",
                    actor=actor,
                    details={
                        "canary_s": policy.soak.canary_s,
                        "between_waves_s": policy.soak.between_waves_s,
                    },
                )
            )
        async with self.store.transaction():
            # Checked and created under the log's lock: two starts cannot both pass.
            await self.store.lock_log()
            await admit(self.store, (d.id for s in plan.stages() for d in s))
            await self.store.create_deployment(
                dep_id, manifest.label, sha, {"targets": len(plan.targeted)}
            )
            await self.store.append_many(events)
        return dep_id
