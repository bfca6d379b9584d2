"""The publish API: gradebooks post grades; each is committed, then sent to RabbitMQ."""

import asyncio
import logging
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TypedDict

from fastapi import FastAPI, Request
from sqlalchemy.ext.asyncio import AsyncEngine

from services.core import broker
from services.core.broker import BrokerLink
from services.core.db import DatabaseUnavailable, create_engine, open_pool
from services.core.settings import Settings, get_settings
from services.publisher.auth import PublisherKeys
from services.publisher.group_commit import GroupCommit
from services.publisher.outbox import OutboxRelay
from services.publisher.routes import router
from services.web.app import service_app
from services.web.health import database_ready
from services.web.ratelimit import RateLimiter

logger = logging.getLogger(__name__)


class PublisherState(TypedDict):
    settings: Settings
    engine: AsyncEngine
    broker: BrokerLink
    relay: OutboxRelay
    group_commit: GroupCommit
    keys: PublisherKeys
    publish_limiter: RateLimiter


async def readiness(request: Request) -> dict[str, bool]:
    return {
        "database": await database_ready(request.state.engine),
        "broker": request.state.broker.up,
    }


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[PublisherState]:
        engine = create_engine(settings, "gradecast-publisher")
        await open_pool(engine, settings.DATABASE_POOL_SIZE)
        connection = await broker.connect(settings, f"gradecast-publisher-{os.getpid()}")
        channel = await connection.channel(publisher_confirms=True)
        await broker.declare_topology(channel)
        link = BrokerLink(connection)
        relay = OutboxRelay(engine, link, channel, settings.BROKER_TIMEOUT_SECONDS)
        relay_loop = asyncio.create_task(relay.run(), name="outbox-relay")
        group_commit = GroupCommit(
            engine,
            relay,
            shards=settings.BROKER_SHARDS,
            retention_seconds=settings.RETENTION_HOURS * 3600,
        )
        try:
            yield {
                "settings": settings,
                "engine": engine,
                "broker": link,
                "relay": relay,
                "group_commit": group_commit,
                "keys": PublisherKeys(
                    engine, settings.GRADECAST_PUBLISHER_KEYS, settings.PUBLISHER_KEY_CACHE_SECONDS
                ),
                "publish_limiter": RateLimiter(
                    settings.PUBLISH_RATE_PER_SECOND, settings.PUBLISH_BURST
                ),
            }
        finally:
            await group_commit.close()
            relay_loop.cancel()
            await asyncio.gather(relay_loop, return_exceptions=True)
            try:  # else another publisher's relay sends them again, and nodes drop them
                await relay.delete_confirmed()
            except DatabaseUnavailable as error:
                logger.warning("outbox: could not delete confirmed rows: %s", error)
            await link.close(settings.BROKER_TIMEOUT_SECONDS)
            await engine.dispose()

    return service_app("gradecast publisher", lifespan, router, readiness)
