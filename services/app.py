"""The FastAPI application: every service's routes on one app, errors as OperationOutcome."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import Depends, FastAPI

from renkei.hub import Hub
from services import health, logs, offload
from services.audit.views import router as audit_router
from services.auth.policy import authorize
from services.auth.views import router as auth_router
from services.clients.views import router as clients_router
from services.errors import install_error_handlers
from services.guard import RequestGuard, SecurityHeaders
from services.hsts import install_hsts
from services.intake.queue import IntakeQueue
from services.intake.views import router as intake_router
from services.metrics.views import IntakeTimer
from services.metrics.views import router as metrics_router
from services.notifications.stream_views import router as stream_router
from services.notifications.views import router as notifications_router
from services.receipts.views import router as receipts_router
from services.registry.views import router as registry_router
from services.responses import JSONResponse
from services.review.views import router as review_router
from services.throttle import Throttle, rate_limit


def create_app(
    hub: Hub, *, manage_hub: bool = False, workers: bool = True, prepared: bool = False
) -> FastAPI:
    """Build the app over a hub. ``manage_hub``: start and stop the hub with the app (with its
    relay and router unless ``workers`` is false; ``prepared``: see ``Hub.start``)."""

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        if manage_hub:
            await hub.start(workers=workers, prepared=prepared)
        try:
            yield
        finally:
            await _app.state.intake.close()  # what it holds is committed before the hub stops
            if manage_hub:
                await hub.stop()

    settings = hub.settings
    app = FastAPI(
        title="Renkei Hub 連携ハブ",
        version="0.1.0",
        lifespan=lifespan,
        default_response_class=JSONResponse,
        # Every route passes the access policy's rule before its own code runs.
        dependencies=[Depends(authorize)],
        # Swagger UI and ReDoc load their scripts from a CDN: a third party's code in a page
        # that holds a bearer token. /openapi.json stays for tools and generators.
        docs_url=None,
        redoc_url=None,
    )
    app.state.hub = hub
    app.state.intake = IntakeQueue(hub.sessions)
    app.state.throttle = Throttle(
        settings.rate_limit_per_second,
        settings.rate_limit_burst,
        settings.process_message_concurrency,
    )
    offload.configure(settings.validation_threads)
    logs.install()  # the access log never prints query strings (search values)
    install_error_handlers(app)
    # Added last = outermost: the headers go on the guard's own refusals too.
    app.add_middleware(RequestGuard, settings=settings)
    app.add_middleware(SecurityHeaders)
    install_hsts(app, hub.settings)
    # Outermost of all: the intake's time and outcome include every refusal on the way in.
    app.add_middleware(IntakeTimer)
    app.include_router(health.router)
    app.include_router(auth_router)
    app.include_router(clients_router)
    # Every authenticated route is rate limited per client (health and metadata are not).
    limited = [Depends(rate_limit)]
    app.include_router(intake_router, dependencies=limited)
    app.include_router(notifications_router, dependencies=limited)
    app.include_router(stream_router, dependencies=limited)
    app.include_router(receipts_router, dependencies=limited)
    app.include_router(registry_router, dependencies=limited)
    app.include_router(review_router, dependencies=limited)
    app.include_router(audit_router, dependencies=limited)
    app.include_router(metrics_router, dependencies=limited)
    return app
