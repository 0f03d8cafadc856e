"""The FastAPI application: every service's routes on one app, errors as OperationOutcome."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import Depends, FastAPI
from fastapi.responses import JSONResponse

from renkei.hub import Hub
from services import health, logs
from services.auth.policy import authorize
from services.auth.views import router as auth_router
from services.clients.views import router as clients_router
from services.errors import install_error_handlers
from services.hsts import install_hsts
from services.intake.views import router as intake_router
from services.notifications.views import router as notifications_router
from services.registry.views import router as registry_router
from services.review.views import router as review_router


def create_app(hub: Hub, *, manage_hub: bool = False) -> FastAPI:
    """Build the app over a hub. ``manage_hub``: start and stop the hub with the app."""

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        if manage_hub:
            await hub.start()
        try:
            yield
        finally:
            if manage_hub:
                await hub.stop()

    app = FastAPI(
        title="Renkei Hub 連携ハブ",
        version="0.1.0",
        lifespan=lifespan,
        default_response_class=JSONResponse,
        # Every route passes the access policy's rule before its own code runs.
        dependencies=[Depends(authorize)],
    )
    app.state.hub = hub
    logs.install()  # the access log never prints query strings (search values)
    install_error_handlers(app)
    install_hsts(app, hub.settings)
    app.include_router(health.router)
    app.include_router(auth_router)
    app.include_router(clients_router)
    app.include_router(intake_router)
    app.include_router(notifications_router)
    app.include_router(registry_router)
    app.include_router(review_router)
    return app
