"""/health says the process is alive; /ready says it can do its work right now."""

import asyncio
from collections.abc import Awaitable, Callable

from fastapi import APIRouter, Request
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from services.web.errors import ServiceUnavailable

ReadinessChecks = Callable[[Request], Awaitable[dict[str, bool]]]

CHECK_TIMEOUT_SECONDS = 2


async def database_ready(engine: AsyncEngine) -> bool:
    try:
        async with asyncio.timeout(CHECK_TIMEOUT_SECONDS), engine.connect() as connection:
            await connection.execute(text("SELECT 1"))
    except Exception:
        return False
    return True


def health_router(checks: ReadinessChecks) -> APIRouter:
    router = APIRouter(tags=["health"])

    @router.get("/health")
    async def get_health() -> dict[str, str]:
        """The process is alive."""
        return {"status": "ok"}

    @router.get("/ready")
    async def get_ready(request: Request) -> dict[str, object]:
        """Every dependency this service needs answers; 503 names the ones that do not."""
        results = await checks(request)
        failing = sorted(name for name, ok in results.items() if not ok)
        if failing:
            raise ServiceUnavailable(f"not ready: {', '.join(failing)} unreachable")
        return {"status": "ready", "checks": results}

    return router
