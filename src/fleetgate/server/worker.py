"""The worker: finds deployments that can move on and drives each until it next waits.

Runnable: not ended, not waiting for a human (AWAITING_APPROVAL, HALTED), and not driven by
another live controller. A deployment a dead controller left mid-way is runnable again once its
lease expired on the store's clock (or at once when the holder was a dead process on this host):
the fenced lease makes sure no deployment is ever driven by two, whatever several ``serve``
processes on one database try. A decision recorded through the API pokes the worker so it does
not wait for the next poll.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from fleetgate.core.state import Phase
from fleetgate.errors import FleetgateError, LeaseLost

log = logging.getLogger("fleetgate.worker")

WAITING = frozenset({Phase.AWAITING_APPROVAL.value, Phase.HALTED.value})
ENDED = frozenset(p.value for p in Phase if p.terminal)


class Worker:
    def __init__(
        self, store: Any, controller: Any, *, parallel: int, poll_s: float, metrics: Any = None
    ) -> None:
        self.store, self.controller = store, controller
        self.parallel, self.poll_s, self.metrics = parallel, poll_s, metrics
        self.active: dict[str, asyncio.Task[None]] = {}
        self._poked = asyncio.Event()
        self._busy_until: dict[str, float] = {}  # deployments another controller drives

    def poke(self) -> None:
        self._poked.set()

    async def runnable(self) -> list[str]:
        loop = asyncio.get_running_loop()
        out = []
        for d in await self.store.list_deployments():
            if d.status in ENDED or d.status in WAITING or d.id in self.active:
                continue
            if self._busy_until.get(d.id, 0.0) > loop.time():
                continue
            out.append(d.id)
        return out

    async def run(self) -> None:
        """Until cancelled: claim what is runnable, up to ``parallel`` drives at once."""
        try:
            while True:
                try:
                    for dep in await self.runnable():
                        if len(self.active) >= self.parallel:
                            break
                        self.active[dep] = asyncio.create_task(
                            self._drive(dep), name=f"fleetgate-drive-{dep}"
                        )
                except FleetgateError as exc:
                    log.warning("worker: cannot list deployments: %s", exc)
                self._poked.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._poked.wait(), self.poll_s)
        finally:
            await self.stop()

    async def _drive(self, dep: str) -> None:
        try:
            lease = await self.store.get_lease(dep)
            state = await self.controller.drive(dep)
            if (
                self.metrics is not None
                and lease is not None
                and lease.holder != self.controller.holder
            ):
                self.metrics.takeovers.inc()
            log.info("deployment %s: %s", dep, state.phase.value)
        except LeaseLost as exc:
            log.warning("deployment %s: %s", dep, exc)
        except FleetgateError as exc:
            # Driven by another live controller (retryable): look again soon. Any other error
            # (say, a store outage or a missing key): log it and back off, never spin on it.
            loop = asyncio.get_running_loop()
            wait = max(self.poll_s * 5, 5.0) if exc.retryable else 30.0
            self._busy_until[dep] = loop.time() + wait
            if not exc.retryable:
                log.error("deployment %s: %s (retrying in %g s)", dep, exc, wait)
        finally:
            self.active.pop(dep, None)
            self.poke()

    async def stop(self) -> None:
        """Cancel every drive (at its next await: the log's intents make the cut safe) and
        wait for each to release its lease."""
        tasks = list(self.active.values())
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
