"""One student's stream, whatever carries it (SSE or WebSocket): Last-Event-ID replay first,
then live frames, with no gap and no duplicate at the seam; the unread count; gaps filled
from Postgres; and the end, on every path, for whatever reason."""

import asyncio
import logging
from collections.abc import Awaitable, Callable

from sqlalchemy.ext.asyncio import AsyncEngine

from services.core.db import DatabaseUnavailable
from services.core.metrics import EVENTS_DELIVERED, REPLAYS, RESETS
from services.stream.frames import encode_event, encode_reset, encode_stats
from services.stream.history import Positions, notifications_of, purged_before
from services.stream.hub import Frame, Subscriber

logger = logging.getLogger(__name__)

REPLAY_PAGE = 500
Write = Callable[[bytes], Awaitable[None]]  # SSE-encoded frames, one or several


class StreamSession:
    def __init__(
        self,
        *,
        engine: AsyncEngine,
        positions: Positions,
        subscriber: Subscriber,
        release: Callable[[Subscriber], None],
        after: int | None,
    ) -> None:
        self.engine = engine
        self.positions = positions
        self.subscriber = subscriber
        self.release = release  # called on every path out
        self.after = after

    async def run(
        self, start: Callable[[], Awaitable[None]], write: Write, disconnected: Awaitable[None]
    ) -> str:
        """Streams until the end; returns why it ended ("overflow": the transport must drop
        the connection, its writes may be stuck). `start` opens the transport once the
        position is known: whatever commits after it is live."""
        subscriber = self.subscriber
        subscriber.writer = asyncio.current_task()
        watcher = asyncio.ensure_future(disconnected)
        watcher.add_done_callback(lambda _: subscriber.close("disconnected"))
        try:
            newest, unread = await self.positions.read(subscriber.student)
            await start()
            await self.stream(write, newest, unread)
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
        return subscriber.closed or "ended"

    async def stream(self, write: Write, newest: int, unread: int) -> None:
        subscriber = self.subscriber
        if self.after is None:
            sent = newest  # a fresh stream: only what is published from now on
        elif self.after > newest:  # an id this student never had: not "nothing missed"
            sent = await self.replay(write, 0, newest, reset="unknown-id")
        else:
            sent = await self.replay(write, self.after, newest)
        await write(encode_stats(unread))
        while True:
            frames = await subscriber.take()
            if subscriber.closed:
                return
            if subscriber.resync:  # the broker connection was lost: Postgres has the rest
                subscriber.resync = False
                sent = await self.replay(write, sent)
            sent = await self.deliver(write, frames, sent)

    async def deliver(self, write: Write, frames: list[Frame], sent: int) -> int:
        """Writes the frames in one go (a grade and its unread count, say), in sequence,
        without a duplicate or a gap; returns the last sequence number sent."""
        out: list[bytes] = []
        grades = 0
        for seq, data in frames:
            if seq is not None and seq <= sent:
                continue  # replayed already, or a duplicate from the broker
            if seq is not None and seq > sent + 1:  # a gap: lost on the way, but Postgres has it
                await self.write_out(write, out, grades)
                out, grades = [], 0
                sent = await self.replay(write, sent, seq)  # this frame's grade included
                continue
            out.append(data)  # the next grade, or stats or a keepalive (no sequence)
            if seq is not None:
                sent, grades = seq, grades + 1
        await self.write_out(write, out, grades)
        return sent

    @staticmethod
    async def write_out(write: Write, out: list[bytes], grades: int) -> None:
        if out:
            await write(b"".join(out))
            EVENTS_DELIVERED.inc(grades)

    async def replay(
        self, write: Write, after: int, until: int | None = None, reset: str | None = None
    ) -> int:
        """Sends what Postgres holds after `after` (up to `until` at least, when given);
        returns the last sequence number sent. Sequences are gapless, so a jump means the
        retention worker purged what lies between: the client is told with one reset event
        (or with `reset`, a reason known beforehand)."""
        REPLAYS.inc()
        student = self.subscriber.student
        if reset is not None:
            await self.send_reset(write, reset)
        while not self.subscriber.closed:
            page = await notifications_of(self.engine, student, after=after, limit=REPLAY_PAGE)
            if page and page[0].seq != after + 1 and reset is None:
                reset = "expired"
                await self.send_reset(write, reset)
            if page:
                await write(b"".join(encode_event(n) for n in page))
                EVENTS_DELIVERED.inc(len(page))
                after = page[-1].seq
            if len(page) < REPLAY_PAGE:
                break
        if until is not None and after < until:  # everything up to `until` was purged
            if reset is None:
                await self.send_reset(write, "expired")
            after = until
        return after

    async def send_reset(self, write: Write, reason: str) -> None:
        RESETS.labels(reason).inc()
        await write(encode_reset(reason, await purged_before(self.engine)))
