"""``create_app``: the FastAPI application ``fleetgate serve`` runs (OpenAPI at
``/api/v1/openapi.json``)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from fleetgate import __version__
from fleetgate.api import errors
from fleetgate.api.context import ApiContext
from fleetgate.api.routes_deployments import StateCache
from fleetgate.api.routes_deployments import router as deployments
from fleetgate.api.routes_enrol import router as enrolment
from fleetgate.api.routes_fleet import router as fleet
from fleetgate.api.stream import Feeds, HeadWatch
from fleetgate.api.stream import router as stream


def create_app(ctx: ApiContext) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        await app.state.head_watch.close()

    app = FastAPI(
        title="fleetgate",
        version=__version__,
        openapi_url="/api/v1/openapi.json",
        docs_url="/api/v1/docs",
        redoc_url=None,
        lifespan=lifespan,
    )
    app.state.api = ctx
    app.state.head_watch = HeadWatch(ctx.store)
    app.state.feeds = Feeds(ctx.store, app.state.head_watch)
    app.state.states = StateCache(ctx.store)
    errors.install(app)
    app.include_router(fleet)
    app.include_router(deployments)
    app.include_router(stream)
    app.include_router(enrolment)
    return app
