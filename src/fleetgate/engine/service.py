"""The controller: one class made of four parts, each a module with one idea.

- ``engine/starting.py`` (``StartMixin``): PREPARE's offline half and ``deployment.created``.
- ``engine/deciding.py`` (``DecideMixin``): human decisions, one short lease-free transaction.
- ``engine/leasing.py`` (``LeaseMixin``): the fenced lease, one driver at a time.
- here: **driving**. ``drive`` takes the lease, serves the blob (or names the service's standing
  distribution point), rebuilds the context from the log and runs the drive loop until the
  deployment needs a human, has ended, or (service mode) parks in a soak (``wake_at``). A
  decision recorded meanwhile by someone else (``LogMoved``) makes it re-read the log and go on.
  The worker that claims deployments to drive is ``fleetgate.server.worker``.

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
from typing import Any

import aiohttp

from fleetgate.core.machine import Stop, WaitForHuman, next_effects
from fleetgate.core.state import DeploymentState
from fleetgate.engine.context import (
    Clock,
    EngineContext,
    Parked,
    Release,
    StoreClock,
)
from fleetgate.engine.controller_base import (
    LEASE_TTL_ENV,
    ControllerBase,
    ControllerConfig,
    default_lease_ttl,
    summary,
)
from fleetgate.engine.deciding import HALTABLE, DecideMixin, Decision
from fleetgate.engine.gctune import frozen_heap, tune_gc
from fleetgate.engine.leasing import LeaseMixin, holder_is_dead
from fleetgate.engine.logview import LogView, ViewCache
from fleetgate.engine.ports import StorePort
from fleetgate.engine.quarantine import sync_quarantine
from fleetgate.engine.recorder import EventSink, Recorder
from fleetgate.engine.runner import drive
from fleetgate.engine.starting import SEQ_COUNTER, StartMixin
from fleetgate.errors import (
    FleetgateError,
    InputError,
    LogMoved,
)
from fleetgate.store.leases import Fence
from fleetgate.transports.client import DeviceClient

__all__ = [
    "HALTABLE",
    "LEASE_TTL_ENV",
    "SEQ_COUNTER",
    "Controller",
    "ControllerBase",
    "ControllerConfig",
    "Decision",
    "default_lease_ttl",
    "holder_is_dead",
]

# How often one drive re-reads a log that moved under it before giving up (retryable).
MAX_LOG_MOVES = 20


@dataclass
class Controller(StartMixin, DecideMixin, LeaseMixin):
    store: StorePort
    transport: DeviceClient
    config: ControllerConfig
    clock: Clock = field(default_factory=Clock)
    holder: str = field(
        default_factory=lambda: f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"
    )
    on_progress: Callable[[str, int, int], None] | None = None
    # The authority for soak times; None: the store's clock (``Store.now``).
    store_clock: StoreClock | None = None
    # The logs this controller folded, kept between calls (``engine.logview``).
    views: ViewCache = field(default_factory=ViewCache, repr=False, compare=False)
    # Where the recorders append; None: ``store``. (bench/engine_bench.py puts the prototype
    # writers of ADR 0018 here.)
    event_sink: EventSink | None = field(default=None, repr=False, compare=False)

    # -- start ----------------------------------------------------------------------------
    # -- reading ---------------------------------------------------------------------------
    async def state(self, deployment_id: str) -> DeploymentState:
        view = await self._view(deployment_id)
        self.views.keep(view)
        return view.state

    # -- deciding --------------------------------------------------------------------------
    # -- driving ---------------------------------------------------------------------------
    async def drive(self, deployment_id: str) -> DeploymentState:
        """Run the deployment until it needs a human, has ended, or (``park_after_s``) parks
        in a soak until its next sample is due; return the state. A decision recorded by
        someone else meanwhile (``LogMoved``) makes it re-read the log and go on from there."""
        tune_gc()  # a process that drives deployments: engine/gctune.py
        with frozen_heap():  # the heap the drive starts with is not rescanned: engine/gctune.py
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
            view = await self._view(dep_id)
            async with self._recorder(view, fence) as rec:
                try:
                    if not isinstance(next_effects(rec.state)[0], WaitForHuman | Stop):
                        try:
                            await self._drive(rec, view, fence)
                        except Parked as parked:
                            await self.store.set_wake(dep_id, parked.until, fence=fence)
                    await sync_quarantine(self.store, rec)
                finally:
                    await self._cache_status(rec, fence)
            # Every record of the drive is committed: the view is the log's fold; keep it.
            view.state, view.last_seq = rec.state, rec.last_seq
            self.views.keep(view)
            return view.state

    async def _drive(self, rec: Recorder, view: LogView, fence: Fence) -> None:
        from fleetgate.artifacts.distribution import DistributionServer

        assert view.created is not None  # _view refuses a log without its creation
        created = view.created
        sha = str(created["sha256"])
        if self.config.public_url is not None:
            url = f"{self.config.public_url.rstrip('/')}/blobs/{sha}"
            await rec.record(
                "distribution.started", url=url, holder=fence.holder, epoch=fence.epoch
            )
            await drive(self._context(rec, view, url), self._prepare)
            return
        async with DistributionServer(
            self.config.blob_dir, self.config.dist_host, self.config.dist_port
        ) as dist:
            url = dist.blob_url(sha)
            # Who drives from here on: the log names each driver's holding.
            await rec.record(
                "distribution.started", url=url, holder=fence.holder, epoch=fence.epoch
            )
            await drive(self._context(rec, view, url), self._prepare)

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

    async def _cache_status(self, rec: Recorder, fence: Fence) -> None:
        """Keep the deployments table's summary in step with the log (it is a cache: the
        log is the truth; admission re-folds anything not ended). Fenced: a driver that lost
        its lease may hold a state the log never got, and must not publish it. Only a settled
        state, and only if the log has not moved since (``expect_last``): a decision recorded
        meanwhile wrote the row itself, and a driver's older state — say COMPLETE, over a
        rollback just requested — would make admission trust an ended deployment that is
        rolling back (engine/test_review_issue7.py)."""
        if not rec.settled:
            return
        state = rec.state
        with contextlib.suppress(FleetgateError):
            await self.store.update_deployment(
                state.deployment_id,
                state.phase.value,
                summary(state),
                fence=fence,
                expect_last=rec.last_seq,
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

    def _context(self, rec: Recorder, view: LogView, url: str) -> EngineContext:
        from fleetgate.config.policy_file import policy_from_dict
        from fleetgate.registry import device_from_dict

        dep_id = rec.deployment_id
        created = view.created
        assert created is not None
        rel = created["release"]
        devices = {d["id"]: device_from_dict(d) for d in created["targets"]}

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
            # The view's own dict, not a copy: a sample per device is the largest per-device
            # record a controller keeps (issue 12), and the engine adds a device's baseline only
            # as the sample its ``device.baseline`` event holds (engine.stage), so the view
            # still follows the log. A drive that fails drops the view (``_drive_once``).
            baselines=view.baselines,
            # Copies: the engine extends its own as it goes; the view follows the log only.
            sampled={k: list(v) for k, v in view.sampled.items()},
            control_pre=dict(view.control_pre),
            control_pools={k: list(v) for k, v in view.control_pools.items()},
            registry=self.store.get_devices,
            seq_base=int(created["seq_base"]),
            on_progress=self.on_progress,
            store_clock=self.store_clock or self.store.now,
            soak_slice_s=self.config.lease_ttl_s / 3,
            park_after_s=self.config.park_after_s,
            log_moved=log_moved,
            soaks_ended=dict(view.soaks_ended),
            canary_initial=dict(view.canary_initial),
        )

    @contextlib.asynccontextmanager
    async def _recorder(self, view: LogView, fence: Fence) -> AsyncIterator[Recorder]:
        rec = Recorder(
            self.event_sink or self.store,
            view.state,
            self.clock.now_iso,
            fence=fence,
            ledger=view.ledger,
            last_seq=view.last_seq,
            observer=view.observe_recorded,
        )
        async with rec:
            yield rec
