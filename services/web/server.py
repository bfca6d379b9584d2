"""Running an HTTP service: uvicorn with uvloop and httptools (able to hand a stream's
connection to the app), and a shutdown that lets long-lived streams end first."""

import asyncio
import socket
from collections.abc import Callable
from types import FrameType

import uvicorn
from fastapi import FastAPI

from services.core.settings import Settings
from services.memory import settle_after_startup
from services.web.handover import HandoverProtocol

GRACEFUL_SHUTDOWN_SECONDS = 5
# Connections waiting to be accepted: as many as the kernel allows (net.core.somaxconn caps
# it), so that a burst of clients reconnecting at once waits its turn instead of being
# dropped (uvicorn's default is 2,048).
LISTEN_BACKLOG = 65_535


class Server(uvicorn.Server):
    """Settles the collector once started (services.memory), and tells the app when
    shutdown begins (app.state.drain), so that it ends its streams at once: uvicorn knows
    nothing of a stream once it has handed the connection over, and the app's lifespan
    ends only after uvicorn has waited for the requests it still holds."""

    def __init__(self, app: FastAPI, config: uvicorn.Config) -> None:
        super().__init__(config)
        self.app = app

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        settle_after_startup()

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        drain = getattr(self.app.state, "drain", None)
        if drain is not None and not self.should_exit:
            asyncio.get_running_loop().call_soon_threadsafe(drain)
        super().handle_exit(sig, frame)


def serve(factory: Callable[[], FastAPI], settings: Settings, port: int) -> None:
    app = factory()
    config = uvicorn.Config(
        app,
        host=settings.HOST,
        port=port,
        loop="uvloop",
        http=HandoverProtocol,
        timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_SECONDS,
        backlog=LISTEN_BACKLOG,
        proxy_headers=True,  # client addresses (for rate limits) as the proxy saw them
        forwarded_allow_ips=settings.FORWARDED_ALLOW_IPS,
        access_log=settings.ACCESS_LOG,
        log_config=None,
    )
    Server(app, config).run()
