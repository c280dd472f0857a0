"""Run the service: uvicorn serving the API in this event loop, beside the worker.

SIGTERM/SIGINT (uvicorn's handlers): stop accepting requests, cancel the drives at their next
await (every device command's intent is logged before it is sent, so the cut is safe and the
next controller resumes from the log), release the leases, exit 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal

from fleetgate.errors import InputError
from fleetgate.server.config import ServeConfig

log = logging.getLogger("fleetgate.serve")


def _stopping(signum: int, frame: object) -> None:
    log.info("fleetgate serve: stopping (signal %d)", signum)


async def serve(cfg: ServeConfig) -> int:
    import uvicorn

    from fleetgate.api.app import create_app
    from fleetgate.api.context import ApiContext
    from fleetgate.api.metrics import Metrics
    from fleetgate.engine.service import Controller, ControllerConfig
    from fleetgate.server.worker import Worker
    from fleetgate.store import Store
    from fleetgate.transports.http import HttpTransport, controller_tls_from_env
    from fleetgate.transports.tokens import TokenSource

    metrics = Metrics()
    config = ControllerConfig(
        cfg.blob_dir,
        cfg.pubkey,
        concurrency=cfg.concurrency,
        public_url=cfg.public_url,
        park_after_s=cfg.park_after_s,
    )
    async with (
        Store.open(cfg.db) as store,
        HttpTransport(
            TokenSource(),
            concurrency=cfg.concurrency,
            tls=controller_tls_from_env(),
            on_call=lambda _command, seconds: metrics.agent_latency.observe(seconds),
        ) as http,
    ):
        from fleetgate.engine.facts_refresh import FactsRecorder

        recorder = FactsRecorder(store).attach(http)
        controller = Controller(store, http, config)
        worker = Worker(
            store,
            controller,
            parallel=cfg.parallel_deployments,
            poll_s=cfg.poll_s,
            metrics=metrics,
        )
        ctx = ApiContext(
            store=store,
            controller=controller,
            blob_dir=cfg.blob_dir,
            public_key=cfg.pubkey,
            max_upload_bytes=cfg.max_upload_mb * 1024 * 1024,
            metrics=metrics,
            poke=worker.poke,
            credentials_dir=cfg.credentials_dir,
        )
        app = create_app(ctx)
        server = uvicorn.Server(
            uvicorn.Config(app, host=cfg.host, port=cfg.port, log_level="warning", access_log=False)
        )
        worker_task = asyncio.create_task(worker.run(), name="fleetgate-worker")
        log.info("fleetgate serve on %s:%d (public %s)", cfg.host, cfg.port, cfg.public_url)
        # uvicorn handles SIGTERM/SIGINT while it serves, then re-raises the signal against the
        # handlers it found: make those no-ops, so a stop ends here, cleanly, with exit 0.
        previous = {s: signal.signal(s, _stopping) for s in (signal.SIGTERM, signal.SIGINT)}
        try:
            await server.serve()
        except SystemExit:  # uvicorn's answer to a port it cannot bind
            raise InputError(
                f"cannot listen on {cfg.host}:{cfg.port} (in use, or not an address here)"
            ) from None
        finally:
            worker_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await worker_task
            for s, handler in previous.items():
                signal.signal(s, handler)
            await recorder.aclose()
    return 0 if server.started else 5
