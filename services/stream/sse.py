"""Server-Sent Events: the response that opens a student's stream and then hands its
connection over to the stream itself, and the one that tells a client to come back later."""

import asyncio
import logging
import random
from collections.abc import Callable

from sqlalchemy.ext.asyncio import AsyncEngine
from starlette.responses import Response
from starlette.types import Message, Receive, Scope, Send

from services.core.db import DatabaseUnavailable
from services.stream.frames import encode_retry
from services.stream.history import Positions
from services.stream.subscriber import Subscriber
from services.web.handover import hand_over

logger = logging.getLogger(__name__)

HEADERS = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-cache"),
    (b"x-accel-buffering", b"no"),  # nginx: pass each frame on at once
]
# Why a stream was ended by the node rather than the client: its clients are told to come
# back after a jittered delay.
ENDED_BY_NODE = ("shutdown", "database unavailable")
LAST_CHUNK = b"0\r\n\r\n"


def chunk(data: bytes, more: bool = True) -> Message:
    return {"type": "http.response.body", "body": data, "more_body": more}


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
    """Reads the student's position, starts the response, and hands the connection over to
    an SseConnection: from then on, the stream costs no task and no ASGI call."""

    media_type = "text/event-stream"

    def __init__(
        self,
        subscriber: Subscriber,
        *,
        engine: AsyncEngine,
        positions: Positions,
        release: Callable[[Subscriber], None],
        after: int | None,
        reconnect: Reconnect,
    ) -> None:
        super().__init__()
        self.subscriber = subscriber
        self.engine = engine
        self.positions = positions
        self.release = release  # on every path out
        self.after = after
        self.reconnect = reconnect

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        subscriber = self.subscriber
        handed_over = False
        try:
            try:
                newest, unread = await self.positions.read(subscriber.student)
            except DatabaseUnavailable as error:
                # The client comes back after `retry` and replays from its Last-Event-ID.
                logger.warning("ended a stream of %s: %s", subscriber.student.label(), error)
                await RetryLater(self.reconnect)(scope, receive, send)
                return
            await send({"type": "http.response.start", "status": 200, "headers": HEADERS})
            await send(chunk(self.reconnect.usual()))
            connection = SseConnection(subscriber, self.release, self.reconnect)
            transport = hand_over(scope, connection)
            if transport is None:
                return  # the client left while the stream opened
            handed_over = True
            connection.transport = transport
            subscriber.start(connection, self.engine, self.after, newest, unread)
        finally:
            if not handed_over:
                self.release(subscriber)


class SseConnection(asyncio.Protocol):
    """A stream's connection once uvicorn has handed it over: frames go straight to the
    transport as HTTP chunks, and the connection's end is the stream's."""

    __slots__ = ("subscriber", "release", "reconnect", "transport", "paused")

    def __init__(
        self, subscriber: Subscriber, release: Callable[[Subscriber], None], reconnect: Reconnect
    ) -> None:
        self.subscriber = subscriber
        self.release = release
        self.reconnect = reconnect
        self.transport: asyncio.Transport | None = None
        self.paused = False

    def write(self, data: bytes) -> None:
        assert self.transport is not None and data  # an empty chunk would end the response
        if not self.transport.is_closing():  # gone: its connection_lost() is on its way
            self.transport.write(b"%x\r\n%b\r\n" % (len(data), data))

    def end(self, reason: str) -> None:
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        if reason == "overflow":  # its writes may be stuck: drop it, the client replays
            transport.abort()
            return
        if reason in ENDED_BY_NODE:
            self.write(self.reconnect.jittered())
        transport.write(LAST_CHUNK)
        transport.close()

    def pause_writing(self) -> None:
        self.paused = True

    def resume_writing(self) -> None:
        self.paused = False
        self.subscriber.resume()

    def data_received(self, data: bytes) -> None:
        """A stream's client has nothing more to say; what it sends is ignored."""

    def connection_lost(self, exc: Exception | None) -> None:
        self.subscriber.close("disconnected")
        self.release(self.subscriber)
