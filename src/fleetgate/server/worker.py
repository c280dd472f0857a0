"""The worker: claims deployments that can move on and drives each until it next waits.

Runnable: not ended, not waiting for a human (AWAITING_APPROVAL, HALTED), not parked past now
(``wake_at``, store clock), and not leased to another live controller. ``Store.claim_runnable``
takes them ``FOR UPDATE SKIP LOCKED`` on PostgreSQL, so several ``serve`` processes on one
database share the work without waiting on each other, and the fenced lease makes sure no
deployment is ever driven by two. A deployment a dead controller left mid-way is claimed again
once its lease expired on the store's clock, or at once when the holder was a process of this
host that is gone. A decision recorded through the API pokes the worker.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from fleetgate.core.state import Phase
from fleetgate.errors import FleetgateError, LeaseLost

log = logging.getLogger("fleetgate.worker")

NOT_RUNNABLE = tuple(
    sorted(
        {Phase.AWAITING_APPROVAL.value, Phase.HALTED.value} | {p.value for p in Phase if p.terminal}
    )
)


class Worker:
    def __init__(
        self, store: Any, controller: Any, *, parallel: int, poll_s: float, metrics: Any = None
    ) -> None:
        self.store, self.controller = store, controller
        self.parallel, self.poll_s, self.metrics = parallel, poll_s, metrics
        self.active: dict[str, asyncio.Task[None]] = {}
        self._poked = asyncio.Event()
        self._backoff: dict[str, float] = {}  # deployment -> loop time before which to skip
        self.drives = 0

    def poke(self) -> None:
        self._poked.set()

    async def claim(self) -> list[str]:
        """Deployments this worker may drive now (their lease is ours, or its holder died)."""
        from fleetgate.engine.service import holder_is_dead

        room = self.parallel - len(self.active)
        if room <= 0:
            return []
        loop = asyncio.get_running_loop()
        skip = [d for d, until in self._backoff.items() if until > loop.time()]
        clock = self.controller.store_clock or self.store.now
        claimed, held = await self.store.claim_runnable(
            self.controller.holder,
            self.controller.config.lease_ttl_s,
            NOT_RUNNABLE,
            room,
            now=await clock(),
            exclude=[*self.active, *skip],
        )
        dead = [lease.deployment_id for lease in held if holder_is_dead(lease.holder)]
        if self.metrics is not None:
            self.metrics.takeovers.inc(len(dead))
        return [*claimed, *dead][:room]

    async def run(self) -> None:
        """Until cancelled: claim what is runnable, up to ``parallel`` drives at once."""
        try:
            while True:
                try:
                    for dep in await self.claim():
                        self.active[dep] = asyncio.create_task(
                            self._drive(dep), name=f"fleetgate-drive-{dep}"
                        )
                except FleetgateError as exc:
                    log.warning("worker: cannot claim deployments: %s", exc)
                self._poked.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._poked.wait(), self.poll_s)
        finally:
            await self.stop()

    async def _drive(self, dep: str) -> None:
        import structlog

        # Every log record of this drive (engine, transports) carries the deployment.
        structlog.contextvars.bind_contextvars(deployment_id=dep)
        try:
            self.drives += 1
            state = await self.controller.drive(dep)
            log.info("deployment %s: %s", dep, state.phase.value)
        except LeaseLost as exc:
            log.warning("deployment %s: %s", dep, exc)
        except FleetgateError as exc:
            # Driven by another live controller (retryable): look again soon. Any other error
            # (a store outage, a missing key): log it and back off, never spin on it.
            wait = max(self.poll_s * 5, 5.0) if exc.retryable else 30.0
            self._backoff[dep] = asyncio.get_running_loop().time() + wait
            if not exc.retryable:
                log.error("deployment %s: %s (retrying in %g s)", dep, exc, wait)
        finally:
            self.active.pop(dep, None)
            self.poke()

    async def stop(self) -> None:
        """Cancel every drive (at its next await: each device command's intent is in the log
        before it is sent, so the cut is safe) and wait for each to release its lease."""
        tasks = list(self.active.values())
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
