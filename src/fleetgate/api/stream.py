"""``GET /api/v1/deployments/{id}/stream``: every stored event of a deployment as Server-Sent
Events, in ``seq`` order, each with ``id: <seq>`` so a client that reconnects with
``Last-Event-ID`` resumes after the last event it saw: none missed, none twice.

One poller per service process watches the log's head (one indexed read per interval) and wakes
every watcher when it moves; only then does each watcher read its deployment's new events. So
50 watchers cost 50 reads per *change*, not 50 polls per interval, and the events come from the
store, the one truth, whichever controller of a cluster wrote them.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request
from sse_starlette.sse import EventSourceResponse

from fleetgate.api.context import ApiContext, api, caller
from fleetgate.api.errors import ApiError
from fleetgate.api.routes_deployments import known
from fleetgate.api.tokens import Permission
from fleetgate.core.events import event_to_dict
from fleetgate.errors import FleetgateError
from fleetgate.store.catalog import ApiUser

router = APIRouter(prefix="/api/v1")
PAGE = 500


class HeadWatch:
    """Wakes waiters whenever the log's head ``seq`` moves."""

    def __init__(self, store: Any, poll_s: float = 0.25) -> None:
        self.store, self.poll_s = store, poll_s
        self.head = 0
        self._moved = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._waiters = 0

    async def _run(self) -> None:
        while self._waiters > 0:
            with contextlib.suppress(FleetgateError):
                head, _ = await self.store.chain_head()
                if head != self.head:
                    self.head = head
                    self._moved.set()
                    self._moved = asyncio.Event()
            await asyncio.sleep(self.poll_s)
        self._task = None

    @contextlib.asynccontextmanager
    async def watching(self) -> AsyncIterator[None]:
        self._waiters += 1
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="fleetgate-head-watch")
        try:
            yield
        finally:
            self._waiters -= 1

    async def wait(self, timeout: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._moved.wait(), timeout)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task


def _cursor(request: Request, after: int) -> int:
    raw = request.headers.get("last-event-id")
    if raw is None:
        return after
    if not raw.strip().isdigit():
        raise ApiError(400, "invalid", "Last-Event-ID: expected an event seq", "Last-Event-ID")
    return int(raw.strip())


@router.get("/deployments/{dep_id}/stream", response_model=None)
async def stream(
    dep_id: str,
    request: Request,
    ctx: Annotated[ApiContext, Depends(api)],
    _who: Annotated[ApiUser, Depends(caller(Permission.READ))],
    after: Annotated[int, Query(ge=0)] = 0,
) -> EventSourceResponse:
    await known(ctx, dep_id)
    cursor = _cursor(request, after)
    watch: HeadWatch = request.app.state.head_watch

    async def events() -> AsyncIterator[dict[str, str]]:
        nonlocal cursor
        async with watch.watching():
            while True:
                found = await ctx.store.events(dep_id, after_seq=cursor)
                for ev in found[:PAGE]:
                    yield {
                        "id": str(ev.seq),
                        "event": ev.action,
                        "data": json.dumps(event_to_dict(ev), separators=(",", ":")),
                    }
                    cursor = ev.seq
                if len(found) > PAGE:
                    continue  # catching up: no wait between pages
                await watch.wait(15.0)

    return EventSourceResponse(events(), ping=15)
