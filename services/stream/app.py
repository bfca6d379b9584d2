"""A stream node: consumes its own RabbitMQ queue and pushes grades to students over SSE."""

import asyncio
import resource
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TypedDict

from fastapi import FastAPI, Request
from fastapi.middleware.cors import CORSMiddleware
from sqlalchemy.ext.asyncio import AsyncEngine

from services.core import broker
from services.core.broker import BrokerLink
from services.core.db import create_engine, open_pool
from services.core.metrics import STREAM_CONNECTIONS
from services.core.settings import Settings, get_settings
from services.core.tokens import TokenVerifier
from services.stream.bindings import ShardBindings
from services.stream.consumer import NodeQueue, declare_node_queue, message_handler
from services.stream.history import Positions
from services.stream.hub import Hub
from services.stream.page import page_router
from services.stream.routes import router
from services.stream.sse import Reconnect
from services.stream.websocket import router as websocket_router
from services.web.app import service_app
from services.web.health import database_ready
from services.web.ratelimit import RateLimiter

SPARE_FILES = 100  # for Postgres, RabbitMQ, logs, and the listening socket


def open_files() -> int:
    """Raises the soft open-file limit to the hard one: each stream is a socket."""
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


class StreamState(TypedDict):
    settings: Settings
    engine: AsyncEngine
    broker: BrokerLink
    node_queue: NodeQueue
    hub: Hub
    reconnect: Reconnect
    tokens: TokenVerifier
    positions: Positions
    connect_limiter: RateLimiter


async def readiness(request: Request) -> dict[str, bool]:
    node_queue: NodeQueue = request.state.node_queue
    link: BrokerLink = request.state.broker
    return {
        "database": await database_ready(request.state.engine),
        "broker": link.up,
        # Robust reconnects can leave a consumer silently gone: not ready until it is back.
        "consumer": link.up and not node_queue.channel.is_closed,
    }


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()
    tokens = TokenVerifier(settings)  # stops here without a key to check tokens with

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[StreamState]:
        name = f"gradecast-stream-{settings.NODE_ID}"
        engine = create_engine(settings, name)
        await open_pool(engine, settings.DATABASE_POOL_SIZE)
        connection = await broker.connect(settings, name)
        node_queue = await declare_node_queue(connection, settings.NODE_ID)
        bindings = ShardBindings(node_queue.queue, node_queue.exchange)
        open_file_limit = open_files()  # raised whether or not a cap is configured
        hub = Hub(
            bindings,
            shards=settings.BROKER_SHARDS,
            max_per_student=settings.MAX_CONNECTIONS_PER_STUDENT,
            max_per_node=settings.MAX_CONNECTIONS_PER_NODE or open_file_limit - SPARE_FILES,
            buffer_events=settings.CONNECTION_BUFFER_EVENTS,
        )
        await node_queue.queue.consume(message_handler(hub))
        keepalives = asyncio.create_task(hub.keep_alive(settings.HEARTBEAT_SECONDS))
        STREAM_CONNECTIONS.set_function(lambda: hub.total)
        link = BrokerLink(connection)
        link.on_restored.append(hub.resync_all)
        app.state.drain = lambda: hub.close_all("shutdown")  # called when shutdown begins
        reconnect = Reconnect(
            settings.RECONNECT_MILLISECONDS, settings.RECONNECT_JITTER_MILLISECONDS
        )
        try:
            yield {
                "settings": settings,
                "engine": engine,
                "broker": link,
                "node_queue": node_queue,
                "hub": hub,
                "reconnect": reconnect,
                "tokens": tokens,
                "positions": Positions(engine),
                "connect_limiter": RateLimiter(
                    settings.CONNECT_RATE_PER_SECOND, settings.CONNECT_BURST
                ),
            }
        finally:
            keepalives.cancel()
            hub.close_all("shutdown")
            await bindings.close()
            # Closing the connection ends its consumer; the exclusive queue goes with it.
            await link.close(settings.BROKER_TIMEOUT_SECONDS)
            await engine.dispose()

    app = service_app("gradecast stream node", lifespan, router, readiness)
    app.include_router(page_router)
    app.include_router(websocket_router)
    if settings.CORS_ALLOWED_ORIGINS:  # the school's own site, which embeds the stream
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.CORS_ALLOWED_ORIGINS,
            allow_methods=["GET", "POST", "DELETE"],
            allow_headers=["Authorization", "Last-Event-ID", "Content-Type"],
            allow_credentials=True,
        )
    return app
