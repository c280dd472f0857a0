"""The controller: start a deployment, drive it, record human decisions.

- ``start``: PREPARE's offline half — the bundle's signature is verified against the
  controller's public key, the payload published to the distribution directory, the plan made
  (blocked plans are refused) — then ``deployment.created`` records everything a later
  controller needs (plan, stages, policy, release, device snapshot). No device is touched.
- ``drive``: takes the deployment's lease (one driver at a time, across processes and hosts),
  serves the blob over HTTP for this run, rebuilds the context from the log and runs the drive
  loop until the deployment needs a human or has ended. The lease is renewed in the background
  and released on exit, so a waiting deployment holds no lease.
- The lease is a fence (invariant 9): its expiry is on the store's clock, every append of the
  drive carries the holding's epoch and is refused once another controller took over, and a
  renewal that fails (taken over, or the store unreachable for a whole TTL) cancels the drive.
  Either way the drive ends with ``LeaseLost`` and this controller writes nothing more.
- ``approve``/``reject``/``resume``/``request_rollback``/``recover``: human decisions, recorded
  with the human's name, validated by the state machine against the log's current state.

Invariant 1 (nothing touches a device before PREPARE passed and the artifact verified) holds
because the first device effect, ``RunStage(0)``, only follows ``prepare.passed``, and
``prepare`` re-verifies the published manifest's signature in the driving process.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import socket
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp

from fleetgate.core.events import Event
from fleetgate.core.machine import Stop, WaitForHuman, apply, fold, next_effects
from fleetgate.core.model import Device, Manifest
from fleetgate.core.plan import Plan, plan_deployment
from fleetgate.core.policy import Policy
from fleetgate.core.state import DeploymentState, Phase
from fleetgate.engine.admission import admit, open_deployments
from fleetgate.engine.context import (
    Clock,
    EngineContext,
    Parked,
    Release,
    StoreClock,
    sample_from_dict,
)
from fleetgate.engine.quarantine import sync_quarantine
from fleetgate.engine.recorder import Recorder
from fleetgate.engine.runner import drive
from fleetgate.errors import (
    FleetgateError,
    GuardrailError,
    InputError,
    LeaseLost,
    LogMoved,
    StoreError,
)
from fleetgate.store.leases import Fence, Lease, lease_lost
from fleetgate.transports.client import DeviceClient

SEQ_COUNTER = "__deployments__"
# How often one drive re-reads a log that moved under it before giving up (retryable).
MAX_LOG_MOVES = 20


@dataclass(frozen=True, slots=True)
class Decision:
    """A human decision to record: approve, reject, resume, roll back, recover."""

    action: str
    actor: str
    device_id: str | None = None
    details: dict[str, Any] = field(default_factory=dict)


LEASE_TTL_ENV = "FLEETGATE_LEASE_TTL"


def default_lease_ttl() -> float:
    """60 s, or ``FLEETGATE_LEASE_TTL`` (seconds): how long a silent driver keeps a deployment."""
    raw = os.environ.get(LEASE_TTL_ENV, "").strip()
    if not raw:
        return 60.0
    try:
        ttl = float(raw)
    except ValueError:
        ttl = -1.0
    if not ttl > 0:
        raise InputError(f"{LEASE_TTL_ENV}={raw!r}: expected a positive number of seconds")
    return ttl


@dataclass
class ControllerConfig:
    blob_dir: Path
    # Only verifying a release needs it: ``start`` and a drive that still runs PREPARE. Human
    # decisions on a deployment past PREPARE (approve, reject, resume, rollback) do not.
    public_key: Path | None
    dist_host: str = "127.0.0.1"
    dist_port: int = 0
    concurrency: int = 200
    lease_ttl_s: float = field(default_factory=default_lease_ttl)
    # A standing distribution point (``fleetgate serve``'s ``public_url``) that serves the blob
    # directory at ``{public_url}/blobs/{sha256}``; None: each drive serves the blob itself on
    # ``dist_host:dist_port`` for as long as it runs.
    public_url: str | None = None
    # Service mode: a soak wait this long or longer parks the deployment (``wake_at``) and
    # releases its lease; None: the driving process sleeps through it (the CLI).
    park_after_s: float | None = None

    def require_public_key(self) -> Path:
        if self.public_key is None:
            raise InputError(
                "no public key to verify the release's signature: give --pubkey or set "
                "FLEETGATE_PUBKEY"
            )
        return self.public_key


@dataclass
class Controller:
    store: Any  # fleetgate.store.Store (kept untyped here to avoid an import cycle in typing)
    transport: DeviceClient
    config: ControllerConfig
    clock: Clock = field(default_factory=Clock)
    holder: str = field(
        default_factory=lambda: f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"
    )
    on_progress: Callable[[str, int, int], None] | None = None
    # The authority for soak times; None: the store's clock (``Store.now``).
    store_clock: StoreClock | None = None

    # -- start ----------------------------------------------------------------------------
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

    # -- reading ---------------------------------------------------------------------------
    async def state(self, deployment_id: str) -> DeploymentState:
        return fold(deployment_id, await self._events(deployment_id))

    # -- deciding --------------------------------------------------------------------------
    async def record_decision(self, dep_id: str, decision: Decision) -> DeploymentState:
        """Record a human decision in one short transaction and return: no lease, no drive.

        It is validated by the state machine against the log as it is now, under the log's
        lock, so no driver's append can slip in between. A driver that is running notices at
        its next append (``LogMoved``) and drives on from the new state; a parked deployment
        is made runnable at once. ``deployment.resumed`` on a deployment that is not HALTED
        records nothing: its controller died, and resuming it is driving on from the log.
        """
        if decision.action == "device.recovered" and not decision.details.get("checks"):
            # Only Controller.recover records it, after re-checking the device.
            raise InputError(
                "a recovery is recorded by `fleetgate deploy recover`, which re-checks the "
                "device first"
            )
        async with self.store.transaction():
            await self.store.lock_log()
            state = fold(dep_id, await self._events(dep_id))
            if decision.action == "deployment.resumed" and state.phase is not Phase.HALTED:
                return state
            if decision.actor.strip() in ("", "fleetgate", "system"):
                raise InputError("a human decision needs --as NAME")
            if decision.action == "rollback.requested":
                await self._check_rollback(state, decision)
            details = dict(decision.details)
            if decision.action == "deployment.halted":
                _check_halt(state)
                comment = str(details.get("comment") or "").strip()
                details["reason"] = f"halted by {decision.actor}" + (
                    f": {comment}" if comment else ""
                )
            ev = Event(
                ts=self.clock.now_iso(),
                deployment_id=dep_id,
                action=decision.action,
                actor=decision.actor,
                device_id=decision.device_id,
                details=details,
            )
            new = apply(state, ev)  # IllegalTransition: nothing written
            await self.store.append(ev)
            await self.store.update_deployment(dep_id, new.phase.value, _summary(new))
            await self.store.set_wake(dep_id, None)
        return new

    async def record_human(
        self,
        dep_id: str,
        action: str,
        actor: str,
        device_id: str | None = None,
        **details: Any,
    ) -> DeploymentState:
        """Record a human decision without driving on."""
        return await self.record_decision(dep_id, Decision(action, actor, device_id, details))

    async def decide(
        self, dep_id: str, decision: Decision | None, *, drive: bool = True
    ) -> DeploymentState:
        """Record ``decision`` (if any), then (``drive``) drive on until a human is needed or
        the deployment ended."""
        state = None
        if decision is not None:
            state = await self.record_decision(dep_id, decision)
        if drive or state is None:
            state = await self.drive(dep_id)
        return state

    # -- driving ---------------------------------------------------------------------------
    async def drive(self, deployment_id: str) -> DeploymentState:
        """Run the deployment until it needs a human, has ended, or (``park_after_s``) parks
        in a soak until its next sample is due; return the state. A decision recorded by
        someone else meanwhile (``LogMoved``) makes it re-read the log and go on from there."""
        for _ in range(MAX_LOG_MOVES):
            try:
                return await self._drive_once(deployment_id)
            except LogMoved:
                continue
        raise FleetgateError(
            f"deployment {deployment_id}: its log kept moving under the driver; try again",
            deployment_id=deployment_id,
            retryable=True,
        )

    async def _drive_once(self, dep_id: str) -> DeploymentState:
        async with self._lease(dep_id) as fence:
            events = await self._events(dep_id)
            async with self._recorder(dep_id, events, fence) as rec:
                try:
                    if not isinstance(next_effects(rec.state)[0], WaitForHuman | Stop):
                        try:
                            await self._drive(rec, events, fence)
                        except Parked as parked:
                            await self.store.set_wake(dep_id, parked.until, fence=fence)
                    await sync_quarantine(self.store, rec)
                    return rec.state
                finally:
                    await self._cache_status(rec.state, fence)

    async def _drive(self, rec: Recorder, events: list[Any], fence: Fence) -> None:
        from fleetgate.artifacts.distribution import DistributionServer

        created = events[0].details
        sha = str(created["sha256"])
        if self.config.public_url is not None:
            url = f"{self.config.public_url.rstrip('/')}/blobs/{sha}"
            await rec.record(
                "distribution.started", url=url, holder=fence.holder, epoch=fence.epoch
            )
            await drive(self._context(rec.deployment_id, rec, created, events, url), self._prepare)
            return
        async with DistributionServer(
            self.config.blob_dir, self.config.dist_host, self.config.dist_port
        ) as dist:
            url = dist.blob_url(sha)
            # Who drives from here on: the log names each driver's holding.
            await rec.record(
                "distribution.started", url=url, holder=fence.holder, epoch=fence.epoch
            )
            await drive(self._context(rec.deployment_id, rec, created, events, url), self._prepare)

    async def _check_rollback(self, state: DeploymentState, decision: Decision) -> None:
        """A rollback names devices of this deployment (exit 2 otherwise), and a rollback of a
        deployment that has ended must not move devices that another deployment, not ended,
        now targets (the two-deployments-on-one-device hole, the other way round)."""
        named = [str(i) for i in decision.details.get("devices") or ()]
        unknown = sorted(i for i in named if i not in state.devices)
        if unknown:
            raise InputError(
                f"--device: {', '.join(unknown)} is not a device of deployment "
                f"{state.deployment_id}"
            )
        if not state.phase.terminal:
            return
        ids = named or list(state.order)
        found = await open_deployments(self.store)
        overlap = {
            d: shared for d, shared in found.overlapping(ids).items() if d != state.deployment_id
        }
        if overlap:
            dep, shared = next(iter(overlap.items()))
            raise GuardrailError(
                f"deployment {dep} has not ended and targets {len(shared)} of these devices "
                f"({', '.join(shared[:5])}{' …' if len(shared) > 5 else ''}): rolling back "
                f"{state.deployment_id} now would move devices it owns; end {dep} first",
                deployment_id=state.deployment_id,
            )

    async def recover(
        self, dep_id: str, device_id: str, actor: str, comment: str = ""
    ) -> DeploymentState:
        """Re-check a device whose rollback failed (reachable, on a known-good release,
        healthy) and only then record ``device.recovered`` (``engine.recover``)."""
        from fleetgate.engine.recover import recheck_device

        checks = await recheck_device(self.store, self.transport, dep_id, device_id)
        return await self.decide(
            dep_id,
            Decision("device.recovered", actor, device_id, {"checks": checks, "comment": comment}),
            drive=False,
        )

    async def wait_for_news(self, dep_id: str, poll_s: float = 2.0) -> None:
        """Return once an event of this deployment is written by another process (an
        approval from another terminal, say). Polls the log's tail, not the whole log."""
        head, _ = await self.store.chain_head()
        while not await self.store.events(dep_id, after_seq=head):  # noqa: ASYNC110
            await asyncio.sleep(poll_s)

    async def _events(self, dep_id: str) -> list[Any]:
        events: list[Any] = await self.store.events(dep_id)
        if not events:
            raise InputError(f"no deployment {dep_id!r}")
        return events

    async def _cache_status(self, state: DeploymentState, fence: Fence) -> None:
        """Keep the deployments table's summary in step with the log (it is a cache: the
        log is the truth; ``start`` re-folds anything not terminal). Fenced: a driver that lost
        its lease may hold a state the log never got, and must not publish it."""
        with contextlib.suppress(FleetgateError):
            await self.store.update_deployment(
                state.deployment_id, state.phase.value, _summary(state), fence=fence
            )

    async def _prepare(self, ctx: EngineContext) -> None:
        """PREPARE's online half, in the driving process: re-verify the published manifest's
        signature and check the distribution point serves the exact payload."""
        from fleetgate.artifacts.root import load_trust
        from fleetgate.artifacts.signing import verify_manifest

        key_path = self.config.require_public_key()  # the operator's to give, not a failed check
        checks: list[dict[str, Any]] = []
        try:
            m = verify_manifest(
                ctx.release.manifest_json.encode(),
                ctx.release.signature,
                load_trust(key_path),
            )
            checks.append({"check": "signature", "ok": True, "detail": m.label})
            async with aiohttp.ClientSession() as s, s.head(ctx.release.url) as r:
                length = int(r.headers.get("Content-Length", "-1"))
                ok = r.status == 200 and length == ctx.release.size
            checks.append(
                {
                    "check": "distribution",
                    "ok": ok,
                    "detail": f"{ctx.release.url} HTTP {r.status}, {length} bytes",
                }
            )
        except (FleetgateError, aiohttp.ClientError) as exc:
            checks.append({"check": "artifact", "ok": False, "detail": str(exc)})
        if all(c["ok"] for c in checks):
            await ctx.recorder.record("prepare.passed", checks=checks, distribution=ctx.release.url)
        else:
            await ctx.recorder.record(
                "prepare.failed",
                outcome="failed",
                checks=checks,
                reason="; ".join(c["detail"] for c in checks if not c["ok"]),
            )

    def _context(
        self, dep_id: str, rec: Recorder, created: Any, events: list[Any], url: str
    ) -> EngineContext:
        from fleetgate.config.policy_file import policy_from_dict
        from fleetgate.registry import device_from_dict

        rel = created["release"]
        devices = {d["id"]: device_from_dict(d) for d in created["targets"]}
        baselines = {
            e.device_id: sample_from_dict(e.device_id, e.details.get("sample"))
            for e in events
            if e.action == "device.baseline" and e.device_id
        }
        sampled: dict[str, list[Any]] = {}
        control_pre: dict[str, Any] = {}
        control_pools: dict[str, list[str]] = {}
        soaks_ended: dict[str, bool] = {}
        canary_initial: dict[str, Any] = {}
        for e in events:
            a = e.action
            if a == "soak.sampled":
                key = f"{e.details.get('stage', 0)}:{e.details.get('round', 'soak')}"
                sampled.setdefault(key, []).append(e.details)
            elif a == "canary.controls":
                control_pre.update(e.details.get("pre", {}))
                control_pools.update(e.details.get("pools", {}))
            elif a in ("soak.completed", "soak.stopped"):
                key = f"{e.details.get('stage', 0)}:{e.details.get('round', 'soak')}"
                soaks_ended[key] = a == "soak.completed"
            elif (
                a == "device.health"
                and e.device_id
                and e.details.get("stage") == 0
                and e.details.get("round") == "initial"
            ):
                sample = sample_from_dict(e.device_id, e.details.get("sample"))
                if sample is None:
                    canary_initial.pop(e.device_id, None)
                else:
                    canary_initial[e.device_id] = sample

        async def log_moved() -> bool:
            return bool(await self.store.latest_seq(dep_id) > rec.last_seq)

        return EngineContext(
            deployment_id=dep_id,
            transport=self.transport,
            recorder=rec,
            policy=policy_from_dict(dict(created["policy"]), f"deployment {dep_id} policy"),
            release=Release(
                rel["release_id"],
                rel["manifest_json"],
                rel["signature"],
                int(rel["size"]),
                str(created["sha256"]),
                url,
                rel.get("downgrade_authorization"),
            ),
            devices=devices,
            clock=self.clock,
            concurrency=self.config.concurrency,
            baselines=baselines,
            sampled=sampled,
            control_pre=control_pre,
            control_pools=control_pools,
            registry=self.store.get_devices,
            seq_base=int(created["seq_base"]),
            on_progress=self.on_progress,
            store_clock=self.store_clock or self.store.now,
            soak_slice_s=self.config.lease_ttl_s / 3,
            park_after_s=self.config.park_after_s,
            log_moved=log_moved,
            soaks_ended=soaks_ended,
            canary_initial=canary_initial,
        )

    @contextlib.asynccontextmanager
    async def _recorder(
        self, dep_id: str, events: list[Any], fence: Fence
    ) -> AsyncIterator[Recorder]:
        rec = Recorder(
            self.store, fold(dep_id, events), self.clock.now_iso, history=events, fence=fence
        )
        async with rec:
            yield rec

    @contextlib.asynccontextmanager
    async def _lease(self, dep_id: str) -> AsyncIterator[Fence]:
        """Hold the deployment's lease for the block; yields the holding's fence.

        A background task renews it every TTL/3. When a renewal finds the lease taken over, or
        the store has not renewed it for a whole TTL, the task running the block is cancelled
        and the block ends with ``LeaseLost``: a controller never drives on without its lease.
        """
        ttl = self.config.lease_ttl_s
        lease = await self._acquire(dep_id, ttl)
        if lease is None:
            current = await self.store.get_lease(dep_id)
            who = (
                f" by {current.holder} (epoch {current.epoch}) until {current.expires_at} "
                "(store clock)"
                if current
                else ""
            )
            raise FleetgateError(
                f"deployment {dep_id} is being driven{who}", deployment_id=dep_id, retryable=True
            )
        fence = lease.fence
        driver = asyncio.current_task()
        assert driver is not None
        lost: list[LeaseLost] = []
        inside = [True]  # cancel the driver only while it runs the block

        def stop(exc: LeaseLost) -> None:
            lost.append(exc)
            if inside[0]:
                driver.cancel(str(exc))

        task = asyncio.create_task(
            self._keep_lease(fence, ttl, stop), name=f"fleetgate-lease-{dep_id}"
        )
        try:
            yield fence
        except (Exception, asyncio.CancelledError) as exc:
            inside[0] = False
            if not lost:
                # Several device tasks refused at once arrive as a TaskGroup's group.
                found = _first_lease_lost(exc)
                if found is None or found is exc:
                    raise
                raise found from None
            # We cancelled the drive: undo that, unless someone else cancelled it too.
            if driver.uncancel() > 0 and isinstance(exc, asyncio.CancelledError):
                raise
            raise lost[0] from None
        else:
            inside[0] = False
            if lost:  # cancelled, but the cancellation was absorbed on the way out
                if driver.cancelling():
                    driver.uncancel()
                raise lost[0]
        finally:
            inside[0] = False
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, FleetgateError):
                await task
            with contextlib.suppress(FleetgateError):
                await self.store.release_lease(dep_id, self.holder, fence.epoch)

    async def _keep_lease(
        self, fence: Fence, ttl: float, stop: Callable[[LeaseLost], None]
    ) -> None:
        """Renew every TTL/3 until cancelled; on a lost lease call ``stop`` once and return."""
        loop = asyncio.get_running_loop()
        renewed = loop.time()  # a local duration (monotonic), not a wall-clock time
        dep = fence.deployment_id
        while True:
            await asyncio.sleep(ttl / 3)
            try:
                if await self.store.renew_lease(dep, fence.holder, fence.epoch, ttl):
                    renewed = loop.time()
                    continue
                current: Lease | None = await self.store.get_lease(dep)
                stop(lease_lost(fence, current))
                return
            except StoreError as exc:
                if loop.time() - renewed < ttl:
                    continue  # a store hiccup: the lease is still ours, try again
                stop(
                    LeaseLost(
                        f"deployment {dep}: lease not renewed for {ttl:g} s ({exc}): "
                        "stopped driving; this controller writes nothing more",
                        deployment_id=dep,
                    )
                )
                return

    async def _acquire(self, dep_id: str, ttl: float) -> Lease | None:
        lease: Lease | None = await self.store.acquire_lease(dep_id, self.holder, ttl)
        if lease is not None:
            return lease
        current: Lease | None = await self.store.get_lease(dep_id)
        if current is None or not holder_is_dead(current.holder):
            return None
        # A controller on this host that was killed can neither renew nor release its lease:
        # take over now instead of waiting out its TTL. Its log is complete up to its last
        # committed event, and the fold continues from there. Ending its holding and acquiring
        # anew raises the epoch, so even a wrongly declared dead holder could write nothing.
        await self.store.release_lease(dep_id, current.holder, current.epoch)
        taken: Lease | None = await self.store.acquire_lease(dep_id, self.holder, ttl)
        return taken


def _first_lease_lost(exc: BaseException) -> LeaseLost | None:
    if isinstance(exc, LeaseLost):
        return exc
    if isinstance(exc, BaseExceptionGroup):  # noqa: F821 (the controller needs Python 3.11)
        for inner in exc.exceptions:
            found = _first_lease_lost(inner)
            if found is not None:
                return found
    return None


def _summary(state: DeploymentState) -> dict[str, Any]:
    return {
        "manual_intervention": list(state.manual_intervention),
        "halt_reason": state.halt_reason,
        "targets": len(state.devices),
    }


HALTABLE = (Phase.PREPARE, Phase.CANARY, Phase.VERIFY, Phase.ROLLOUT, Phase.CONFIRM)


def _check_halt(state: DeploymentState) -> None:
    """A human halt pauses a deployment that is moving; it never pauses a rollback (that is
    how the fleet gets back to safety) and there is nothing to pause in one that waits."""
    if state.phase is Phase.ROLLING_BACK:
        raise GuardrailError(
            f"deployment {state.deployment_id} is rolling back: a rollback is never paused",
            deployment_id=state.deployment_id,
        )
    if state.phase not in HALTABLE:
        raise GuardrailError(
            f"deployment {state.deployment_id} is {state.phase.value}: nothing is running to halt",
            deployment_id=state.deployment_id,
        )


def holder_is_dead(holder: str) -> bool:
    """True when ``holder`` (``host:pid:nonce``) names a process of this host that is gone."""
    host, _, rest = holder.partition(":")
    pid_s = rest.partition(":")[0]
    if host != socket.gethostname() or not pid_s.isdigit():
        return False
    try:
        os.kill(int(pid_s), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


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
