"""Another connection holding a SQLite store's write lock for a while, and a ticker that shows
whether the event loop kept running while the store waited for it."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path


@dataclass
class LockWait:
    started: float
    ticks: int = 0  # 10 ms ticks of the loop while the lock was held and after


@asynccontextmanager
async def write_lock_held(
    path: Path, statements: Sequence[str], *, for_s: float = 0.5
) -> AsyncIterator[LockWait]:
    """Run ``statements`` (one of them ``BEGIN IMMEDIATE``) on a connection of its own, commit
    them ``for_s`` seconds later; meanwhile count the loop's ticks."""
    other = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    for sql in statements:
        other.execute(sql)
    loop = asyncio.get_running_loop()
    wait = LockWait(started=loop.time())

    async def ticker() -> None:
        while True:
            await asyncio.sleep(0.01)
            wait.ticks += 1

    async def release_later() -> None:
        await asyncio.sleep(for_s)
        other.execute("COMMIT")

    tick, release = asyncio.create_task(ticker()), asyncio.create_task(release_later())
    try:
        yield wait
    finally:
        tick.cancel()
        await release
        other.close()
