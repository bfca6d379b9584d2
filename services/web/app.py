"""How each HTTP service is assembled: its routes, health, and the one error shape."""

from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from importlib.metadata import version
from typing import Any

from fastapi import APIRouter, FastAPI

from services.web.direct import DirectRoutes
from services.web.errors import install_error_handlers
from services.web.health import ReadinessChecks, health_router
from services.web.metrics import HttpMetrics, metrics_router
from services.web.request_id import RequestIdMiddleware

Lifespan = Callable[[FastAPI], AbstractAsyncContextManager[Any]]


def service_app(
    title: str, lifespan: Lifespan, router: APIRouter, readiness: ReadinessChecks
) -> FastAPI:
    app = FastAPI(title=title, version=version("gradecast"), lifespan=lifespan)
    install_error_handlers(app)
    # Added first, so the innermost: each later one wraps the ones before.
    app.add_middleware(DirectRoutes, routes=router.routes)
    app.add_middleware(RequestIdMiddleware)
    app.add_middleware(HttpMetrics)
    app.include_router(router)
    app.include_router(health_router(readiness))
    app.include_router(metrics_router)
    return app
