"""Test-only pause points (docs/protocol.md §6).

``FLEETGATE_AGENT_PAUSE_AT=<command>:<point>[,...]`` makes ``pause_point`` write the point's
name to the file named by ``FLEETGATE_AGENT_PAUSE_MARKER`` and then sleep (practically) forever,
so a crash-safety test can SIGKILL the agent exactly there. Unset (production), ``pause_point``
is a no-op costing one set lookup.
"""

from __future__ import annotations

import asyncio
import logging
import os
from pathlib import Path

log = logging.getLogger("fleetgate.agent")

POINTS = frozenset(
    {
        "stage:after-verify",
        "stage:after-download",
        "stage:after-extract",
        "stage:after-rename",
        "activate:after-stop",
        "activate:after-link",
        "activate:after-state",
        "activate:after-start",
        "rollback:after-stop",
        "rollback:after-link",
        "rollback:after-state",
        "revert:after-link",
    }
)

_armed = frozenset(
    p.strip() for p in os.environ.get("FLEETGATE_AGENT_PAUSE_AT", "").split(",") if p.strip()
)


async def pause_point(name: str) -> None:
    assert name in POINTS, name
    if name not in _armed:
        return
    marker = os.environ.get("FLEETGATE_AGENT_PAUSE_MARKER")
    log.warning("test hook: paused at %s", name)
    if marker:
        await asyncio.to_thread(Path(marker).write_text, name)
    await asyncio.Event().wait()  # never set: sleep until killed, that is the point
