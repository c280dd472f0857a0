"""The service's API served in-process on a loopback port for as long as a block runs.

The MQTT demo's real agents enrol themselves through it (docs/enrolment.md "In the demo"); the
CLI hands it to ``sim.demo.run_demo``, so the simulator never imports the API layer.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from fleetgate.errors import FleetgateError


@contextlib.asynccontextmanager
async def api_in_process(
    store: Any, controller: Any, work: Path, public_key: Path
) -> AsyncIterator[str]:
    """The service's API on ``http://127.0.0.1:PORT`` for as long as the block runs."""
    import uvicorn

    from fleetgate.api.app import create_app
    from fleetgate.api.context import ApiContext
    from fleetgate.api.metrics import Metrics

    ctx = ApiContext(
        store=store,
        controller=controller,
        blob_dir=work / "blobs",
        public_key=public_key,
        max_upload_bytes=0,  # the demo uploads no releases through the API
        metrics=Metrics(),
        credentials_dir=work / "credentials",
    )
    # The demo binds the port itself: no race for a free port, and no bind failure inside
    # uvicorn (which answers one with SystemExit).
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = int(sock.getsockname()[1])
    server = uvicorn.Server(
        uvicorn.Config(create_app(ctx), log_level="warning", access_log=False, lifespan="on")
    )
    # serve() would take over SIGINT/SIGTERM; the demo's own handling stays in charge.
    server.capture_signals = contextlib.nullcontext  # type: ignore[method-assign,assignment]
    task = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        while not server.started:
            if task.done():
                task.result()  # raises what stopped it
                raise FleetgateError("demo: the enrolment API did not start")
            await asyncio.sleep(0.02)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await task
        sock.close()
