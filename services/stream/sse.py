"""The response that streams a subscriber's frames until the client leaves, its buffer
overflows or the node stops: Last-Event-ID replay first, then live frames, with no gap and
no duplicate at the seam."""

import asyncio
import logging
from collections.abc import Callable

from sqlalchemy.ext.asyncio import AsyncEngine
from starlette.responses import Response
from starlette.types import Message, Receive, Scope, Send

from services.core.db import DatabaseUnavailable
from services.stream.frames import KEEPALIVE, encode_event, encode_retry
from services.stream.history import last_seq, notifications_of
from services.stream.hub import Subscriber

logger = logging.getLogger(__name__)

REPLAY_PAGE = 500
HEADERS = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-cache"),
    (b"x-accel-buffering", b"no"),  # nginx: pass each frame on at once
]


def chunk(data: bytes, more: bool = True) -> Message:
    return {"type": "http.response.body", "body": data, "more_body": more}


async def wait_for_disconnect(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


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
        retry_milliseconds: int,
    ) -> None:
        super().__init__()
        self.engine = engine
        self.subscriber = subscriber
        self.release = release  # called on every path out
        self.after = after
        self.heartbeat_seconds = heartbeat_seconds
        self.retry_milliseconds = retry_milliseconds

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        subscriber = self.subscriber
        watcher = asyncio.ensure_future(wait_for_disconnect(receive))
        watcher.add_done_callback(lambda _: subscriber.close("disconnected"))
        started = False
        try:
            # Read before the 200 goes out: whatever commits after the client sees it is live.
            newest = await last_seq(self.engine, subscriber.student_id)
            await self.start_response(send)
            started = True
            await self.stream(send, newest)
        except DatabaseUnavailable as error:
            # The client comes back after `retry` and replays from its Last-Event-ID.
            logger.warning("ended a stream of %s: %s", subscriber.student_id, error)
            if not started:
                await self.start_response(send)
        finally:
            watcher.cancel()
            self.release(subscriber)
        await send(chunk(b"", more=False))

    async def start_response(self, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": HEADERS})
        await send(chunk(encode_retry(self.retry_milliseconds)))

    async def stream(self, send: Send, newest: int) -> None:
        """Replay from Last-Event-ID, then live frames from the subscriber's buffer."""
        subscriber = self.subscriber
        if self.after is None:
            sent = newest  # a fresh stream: only what is published from now on
        else:
            # An id beyond anything this student had is not "nothing missed": replay it all.
            sent = await self.replay(send, self.after if self.after <= newest else 0)
        while True:
            frame = await subscriber.next(self.heartbeat_seconds)
            if subscriber.closed:
                return
            if frame is None:
                await send(chunk(KEEPALIVE))
                continue
            seq, data = frame
            if seq <= sent:
                continue  # replayed already, or a duplicate from the broker
            if seq > sent + 1:  # a gap: lost on the way, but Postgres has it
                sent = await self.replay(send, sent)
                if seq <= sent:
                    continue
            await send(chunk(data))
            sent = seq

    async def replay(self, send: Send, after: int) -> int:
        """Sends what Postgres holds after `after`; returns the last sequence number sent."""
        student_id = self.subscriber.student_id
        while not self.subscriber.closed:
            page = await notifications_of(self.engine, student_id, after=after, limit=REPLAY_PAGE)
            if page:
                await send(chunk(b"".join(encode_event(n) for n in page)))
                after = page[-1].seq
            if len(page) < REPLAY_PAGE:
                break
        return after
