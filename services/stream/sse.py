"""Server-Sent Events over ASGI: the response that carries a student's stream session, and
the one that tells a client to come back later."""

import random

from starlette.responses import Response
from starlette.types import Message, Receive, Scope, Send

from services.stream.frames import encode_retry
from services.stream.session import StreamSession

HEADERS = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-cache"),
    (b"x-accel-buffering", b"no"),  # nginx: pass each frame on at once
]
# Why a stream was ended by the node rather than the client: its clients are told to come
# back after a jittered delay.
ENDED_BY_NODE = ("shutdown", "database unavailable")


def chunk(data: bytes, more: bool = True) -> Message:
    return {"type": "http.response.body", "body": data, "more_body": more}


async def wait_for_disconnect(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


class Reconnect:
    """The `retry:` hints a node gives: the usual one, and a jittered one for streams it
    ends itself, so that thousands of clients do not come back in the same instant."""

    def __init__(self, milliseconds: int, jitter_milliseconds: int) -> None:
        self.milliseconds = milliseconds
        self.jitter_milliseconds = jitter_milliseconds

    def usual(self) -> bytes:
        return encode_retry(self.milliseconds)

    def jittered(self) -> bytes:
        return encode_retry(self.milliseconds + random.randint(0, self.jitter_milliseconds))


class RetryLater(Response):
    """For a node that is full or briefly unable to serve: a browser's EventSource never
    reconnects after a non-200 answer, so answer 200, say when to retry, and close."""

    media_type = "text/event-stream"

    def __init__(self, reconnect: Reconnect) -> None:
        super().__init__()
        self.reconnect = reconnect

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": HEADERS})
        await send(chunk(self.reconnect.jittered(), more=False))


class EventStream(Response):
    media_type = "text/event-stream"

    def __init__(self, session: StreamSession, reconnect: Reconnect) -> None:
        super().__init__()
        self.session = session
        self.reconnect = reconnect

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        started = False

        async def start() -> None:
            nonlocal started
            await send({"type": "http.response.start", "status": 200, "headers": HEADERS})
            await send(chunk(self.reconnect.usual()))
            started = True

        async def write(data: bytes) -> None:
            await send(chunk(data))

        ended = await self.session.run(start, write, wait_for_disconnect(receive))
        if ended == "overflow":
            return  # unfinished, so the server drops the connection; the client replays
        if not started:
            await start()
        if ended in ENDED_BY_NODE:
            await send(chunk(self.reconnect.jittered()))
        await send(chunk(b"", more=False))
