"""``GET /api/v1/deployments/{id}/stream``: every stored event of a deployment as Server-Sent
Events, in ``seq`` order, each with ``id: <seq>`` so a client that reconnects with
``Last-Event-ID`` resumes after the last event it saw: none missed, none twice.

Fan-out without per-watcher work: one ``Feed`` per deployment that has watchers reads the new
events once (a page at a time, when the log's head moved — one poller per process watches the
head) and encodes each once; every watcher of that deployment takes them from the feed's
buffer. A watcher that starts behind the buffer (a replay from 0, a reconnect after a long
gap) or falls behind it reads pages from the store until it catches up. The events come from
the store, the one truth, whichever controller of a cluster wrote them.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections import OrderedDict
from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request
from sse_starlette.sse import EventSourceResponse

from fleetgate.api.context import ApiContext, api, caller
from fleetgate.api.errors import ApiError
from fleetgate.api.routes_deployments import known
from fleetgate.api.tokens import Permission
from fleetgate.core.events import StoredEvent, event_to_dict
from fleetgate.errors import FleetgateError
from fleetgate.store.catalog import ApiUser

router = APIRouter(prefix="/api/v1")
PAGE = 500
BUFFER = 20_000  # encoded events a feed keeps for its watchers
Item = tuple[int, bytes]  # seq, the event's whole SSE frame


def encode(ev: StoredEvent) -> Item:
    """The event's SSE frame, encoded once however many watchers send it (the JSON has no
    newline, so one ``data:`` line carries it)."""
    data = json.dumps(event_to_dict(ev), separators=(",", ":"))
    return ev.seq, f"id: {ev.seq}\nevent: {ev.action}\ndata: {data}\n\n".encode()


class HeadWatch:
    """Wakes waiters whenever the log's head ``seq`` moves (one indexed read per interval)."""

    def __init__(self, store: Any, poll_s: float = 0.2) -> None:
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


class Feed:
    """The new events of one deployment, read once for all its watchers."""

    def __init__(self, store: Any, dep: str, head: HeadWatch, start: int) -> None:
        self.store, self.dep, self.head = store, dep, head
        self.items: list[Item] = []
        self.start = start  # the feed holds every event with seq > start that it has read
        self.last = start
        self.watchers = 0
        self._grew = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def first_after(self, cursor: int) -> int | None:
        """Index in ``items`` of the first event after ``cursor``; None if the feed cannot
        say (the cursor is older than what it holds)."""
        if cursor < self.start:
            return None
        lo, hi = 0, len(self.items)
        while lo < hi:
            mid = (lo + hi) // 2
            if self.items[mid][0] <= cursor:
                lo = mid + 1
            else:
                hi = mid
        return lo

    async def _run(self) -> None:
        async with self.head.watching():
            while self.watchers > 0:
                with contextlib.suppress(FleetgateError):
                    page = await self.store.events_page(self.dep, self.last, PAGE)
                    if page:
                        self.items.extend(encode(e) for e in page)
                        self.last = page[-1].seq
                        if len(self.items) > BUFFER:
                            drop = len(self.items) - BUFFER
                            self.start = self.items[drop - 1][0]
                            del self.items[:drop]
                        grew, self._grew = self._grew, asyncio.Event()
                        grew.set()
                        if len(page) == PAGE:
                            continue
                await self.head.wait(5.0)
        self._task = None

    def ensure_running(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name=f"fleetgate-feed-{self.dep}")

    async def wait(self, timeout: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._grew.wait(), timeout)


class Feeds:
    PAGES_KEPT = 256  # encoded full history pages shared by replaying watchers

    def __init__(self, store: Any, head: HeadWatch) -> None:
        self.store, self.head = store, head
        self.feeds: dict[str, Feed] = {}
        self._pages: OrderedDict[tuple[str, int], list[Item]] = OrderedDict()
        self._loading: dict[tuple[str, int], asyncio.Future[list[Item]]] = {}

    async def page(self, dep: str, after: int) -> list[Item]:
        """A page of history after ``after``, encoded. Full pages never change (the log is
        append-only), so watchers replaying the same history share them; watchers asking for
        the same page at once share one read."""
        key = (dep, after)
        hit = self._pages.get(key)
        if hit is not None:
            self._pages.move_to_end(key)
            return hit
        loading = self._loading.get(key)
        if loading is not None:
            return await asyncio.shield(loading)
        fut: asyncio.Future[list[Item]] = asyncio.get_running_loop().create_future()
        self._loading[key] = fut
        try:
            page = [encode(e) for e in await self.store.events_page(dep, after, PAGE)]
        except BaseException as exc:
            fut.set_exception(exc)
            fut.exception()  # retrieved: a lone loader's failure is raised below, not logged
            raise
        finally:
            del self._loading[key]
        fut.set_result(page)
        if len(page) == PAGE:
            self._pages[key] = page
            while len(self._pages) > self.PAGES_KEPT:
                self._pages.popitem(last=False)
        return page

    @contextlib.asynccontextmanager
    async def feed(self, dep: str) -> AsyncIterator[Feed]:
        f = self.feeds.get(dep)
        if f is None:
            f = self.feeds[dep] = Feed(self.store, dep, self.head, await self.store.latest_seq(dep))
        f.watchers += 1
        f.ensure_running()
        try:
            yield f
        finally:
            f.watchers -= 1
            if f.watchers == 0 and self.feeds.get(dep) is f:
                del self.feeds[dep]


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
    feeds: Feeds = request.app.state.feeds

    async def events() -> AsyncIterator[bytes]:
        # Frames go out a batch per write (bytes pass through sse-starlette untouched).
        nonlocal cursor
        async with feeds.feed(dep_id) as feed:
            while True:
                i = feed.first_after(cursor)
                if i is None:  # behind the feed: catch up from the store, a page at a time
                    page = await feeds.page(dep_id, cursor)
                    if page:
                        yield b"".join(frame for _seq, frame in page)
                        cursor = page[-1][0]
                    if len(page) == PAGE or cursor < feed.start:
                        continue
                    i = feed.first_after(cursor)
                    if i is None:
                        continue
                batch = feed.items[i : i + PAGE]
                if batch:
                    yield b"".join(frame for _seq, frame in batch)
                    cursor = batch[-1][0]
                else:
                    await feed.wait(15.0)

    return EventSourceResponse(events(), ping=15)
