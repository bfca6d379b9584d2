"""The response that streams a subscriber's frames until the client leaves, its buffer
overflows or the node stops: Last-Event-ID replay first, then live frames, with no gap and
no duplicate at the seam."""

import asyncio
import logging
import random
from collections.abc import Callable

from sqlalchemy.ext.asyncio import AsyncEngine
from starlette.responses import Response
from starlette.types import Message, Receive, Scope, Send

from services.core.db import DatabaseUnavailable
from services.core.metrics import EVENTS_DELIVERED, REPLAYS, RESETS
from services.stream.frames import (
    KEEPALIVE,
    encode_event,
    encode_reset,
    encode_retry,
    encode_stats,
)
from services.stream.history import notifications_of, position, purged_before
from services.stream.hub import Subscriber

logger = logging.getLogger(__name__)

REPLAY_PAGE = 500
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

    def __init__(
        self,
        *,
        engine: AsyncEngine,
        subscriber: Subscriber,
        release: Callable[[Subscriber], None],
        after: int | None,
        heartbeat_seconds: float,
        reconnect: Reconnect,
    ) -> None:
        super().__init__()
        self.engine = engine
        self.subscriber = subscriber
        self.release = release  # called on every path out
        self.after = after
        self.heartbeat_seconds = heartbeat_seconds
        self.reconnect = reconnect

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        subscriber = self.subscriber
        subscriber.writer = asyncio.current_task()
        watcher = asyncio.ensure_future(wait_for_disconnect(receive))
        watcher.add_done_callback(lambda _: subscriber.close("disconnected"))
        started = False
        try:
            # Read before the 200 goes out: whatever commits after the client sees it is live.
            newest, unread = await position(self.engine, subscriber.student)
            await send({"type": "http.response.start", "status": 200, "headers": HEADERS})
            await send(chunk(self.reconnect.usual()))
            started = True
            await self.stream(send, newest, unread)
        except DatabaseUnavailable as error:
            # The client comes back after `retry` and replays from its Last-Event-ID.
            logger.warning("ended a stream of %s: %s", subscriber.student.label(), error)
            subscriber.close("database unavailable")
        except asyncio.CancelledError:
            if subscriber.closed != "overflow":
                raise
            asyncio.current_task().uncancel()  # type: ignore[union-attr]
        finally:
            watcher.cancel()
            subscriber.writer = None
            self.release(subscriber)
        if subscriber.closed == "overflow":
            return  # unfinished, so the server drops the connection; the client replays
        if not started:
            await send({"type": "http.response.start", "status": 200, "headers": HEADERS})
        if subscriber.closed in ENDED_BY_NODE:
            await send(chunk(self.reconnect.jittered()))
        await send(chunk(b"", more=False))

    async def stream(self, send: Send, newest: int, unread: int) -> None:
        """Replay from Last-Event-ID, the unread count, then live frames from the
        subscriber's buffer."""
        subscriber = self.subscriber
        if self.after is None:
            sent = newest  # a fresh stream: only what is published from now on
        elif self.after > newest:  # an id this student never had: not "nothing missed"
            sent = await self.replay(send, 0, newest, reset="unknown-id")
        else:
            sent = await self.replay(send, self.after, newest)
        await send(chunk(encode_stats(unread)))
        while True:
            frame = await subscriber.next(self.heartbeat_seconds)
            if subscriber.closed:
                return
            if subscriber.resync:  # the broker connection was lost: Postgres has the rest
                subscriber.resync = False
                sent = await self.replay(send, sent)
            if frame is None:
                await send(chunk(KEEPALIVE))
                continue
            seq, data = frame
            if seq is None:  # not a grade: nothing to order or deduplicate
                await send(chunk(data))
                continue
            if seq <= sent:
                continue  # replayed already, or a duplicate from the broker
            if seq > sent + 1:  # a gap: lost on the way, but Postgres has it
                sent = await self.replay(send, sent, seq)
                continue
            await send(chunk(data))
            EVENTS_DELIVERED.inc()
            sent = seq

    async def replay(
        self, send: Send, after: int, until: int | None = None, reset: str | None = None
    ) -> int:
        """Sends what Postgres holds after `after` (up to `until` at least, when given);
        returns the last sequence number sent. Sequences are gapless, so a jump means the
        retention worker purged what lies between: the client is told with one reset event
        (or with `reset`, a reason known beforehand)."""
        REPLAYS.inc()
        student = self.subscriber.student
        if reset is not None:
            await self.send_reset(send, reset)
        while not self.subscriber.closed:
            page = await notifications_of(self.engine, student, after=after, limit=REPLAY_PAGE)
            if page and page[0].seq != after + 1 and reset is None:
                reset = "expired"
                await self.send_reset(send, reset)
            if page:
                await send(chunk(b"".join(encode_event(n) for n in page)))
                EVENTS_DELIVERED.inc(len(page))
                after = page[-1].seq
            if len(page) < REPLAY_PAGE:
                break
        if until is not None and after < until:  # everything up to `until` was purged
            if reset is None:
                await self.send_reset(send, "expired")
            after = until
        return after

    async def send_reset(self, send: Send, reason: str) -> None:
        RESETS.labels(reason).inc()
        await send(chunk(encode_reset(reason, await purged_before(self.engine))))
