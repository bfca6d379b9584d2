"""Every HTTP request gets an id: the caller's X-Request-ID when it is a sane one, else a
new one. Log lines written while the request is served carry it (services/logs.py), and
the response names it in X-Request-ID.

Pure ASGI rather than BaseHTTPMiddleware, which would buffer streaming (SSE) responses."""

import itertools
import os
import re

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from services.logs import request_id

HEADER = b"x-request-id"
ACCEPTED = re.compile(r"[A-Za-z0-9._-]{1,64}")
# A random prefix per process and a counter: unique across a deployment's processes as a
# uuid4 would be (64 random bits), without the system call uuid4 makes for every request
# (a few percent of a stream node's CPU as its students reconnect).
PREFIX = os.urandom(8).hex()
COUNTER = itertools.count(1)


def incoming_id(scope: Scope) -> str | None:
    for name, value in scope["headers"]:
        if name == HEADER:
            candidate = value.decode("latin-1")
            return candidate if ACCEPTED.fullmatch(candidate) else None
    return None


class RequestIdMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        rid = incoming_id(scope) or f"{PREFIX}{next(COUNTER):x}"
        header = (HEADER, rid.encode("latin-1"))

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", ()), header]}
            await send(message)

        token = request_id.set(rid)
        # Not reset when the app raises: the server's report of the error, written after
        # this returns in the same asyncio task (one per request), then names the request.
        await self.app(scope, receive, send_with_id)
        request_id.reset(token)
