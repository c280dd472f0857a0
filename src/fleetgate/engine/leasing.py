"""The deployment's lease: one driver at a time, fenced (invariant 9).

Its expiry is on the store's clock; every append of the drive carries the holding's epoch and
is refused once another controller took over; a renewal that fails (taken over, or the store
unreachable for a whole TTL) cancels the drive, which ends with ``LeaseLost``. A holder that is
a dead process of this host is taken over at once (an optimisation; across hosts the expiry
decides)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
from collections.abc import AsyncIterator, Callable

from fleetgate.engine.controller_base import ControllerBase
from fleetgate.errors import (
    FleetgateError,
    LeaseLost,
    StoreError,
)
from fleetgate.store.leases import Fence, Lease, lease_lost


def _first_lease_lost(exc: BaseException) -> LeaseLost | None:
    if isinstance(exc, LeaseLost):
        return exc
    if isinstance(exc, BaseExceptionGroup):  # noqa: F821 (the controller needs Python 3.11)
        for inner in exc.exceptions:
            found = _first_lease_lost(inner)
            if found is not None:
                return found
    return None


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


class LeaseMixin(ControllerBase):
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
