"""One open stream, whatever carries it (SSE or WebSocket): the hub pushes frames in, and
they go out to the stream's sink in sequence, with no gap and no duplicate, without a task
of its own. Only a replay from Postgres (on opening, after a gap, after a resync) runs in a
task, and frames pushed meanwhile wait for it."""

import asyncio
import logging
from typing import Protocol

from sqlalchemy.ext.asyncio import AsyncEngine

from services.core.db import DatabaseUnavailable
from services.core.metrics import EVENTS_DELIVERED
from services.core.tenancy import Student
from services.stream.catchup import replay
from services.stream.frames import encode_stats

logger = logging.getLogger(__name__)

# The student's sequence number and the encoded SSE frame; no number for frames that are
# not grades (stats, keepalives), which are always sent.
Frame = tuple[int | None, bytes]


class Sink(Protocol):
    """Where a stream's frames go. A paused sink takes no more until it calls
    Subscriber.resume(); `end` says the last word, for the reason the stream closed."""

    paused: bool

    def write(self, data: bytes) -> None: ...

    def end(self, reason: str) -> None: ...


class Subscriber:
    """A bounded buffer the hub fills and `flush` drains into the sink. A reader that falls
    further behind than the buffer is closed, and replays on reconnect."""

    __slots__ = (
        "student", "limit", "frames", "sink", "engine", "sent", "closed", "resync",
        "replaying", "drained", "quiet",
    )  # fmt: skip

    def __init__(self, student: Student, limit: int) -> None:
        self.student = student
        self.limit = limit
        self.frames: list[Frame] = []  # waiting for the sink, a replay or the start
        self.sink: Sink | None = None  # until started
        self.engine: AsyncEngine | None = None
        self.sent = 0  # the last sequence number written
        self.closed: str | None = None  # why, once closed
        self.resync = False  # live frames may have been lost: check Postgres
        self.replaying: asyncio.Task[None] | None = None
        self.drained: asyncio.Future[None] | None = None  # a replay waiting for the sink
        self.quiet = False  # nothing pushed since the hub's last keepalive tick

    def push(self, frame: Frame) -> bool:
        """Buffers a frame; True when the buffer was empty, so the stream needs a flush."""
        if self.closed:
            return False
        if len(self.frames) >= self.limit:
            logger.warning(
                "dropped a stream of %s: %d events behind", self.student.label(), self.limit
            )
            self.close("overflow")
            return False
        self.frames.append(frame)
        self.quiet = False
        return len(self.frames) == 1

    def start(
        self, sink: Sink, engine: AsyncEngine, after: int | None, newest: int, unread: int
    ) -> None:
        """Opens the stream at the student's position, read once subscribed: whatever
        commits after that comes live. Replays from `after` (a Last-Event-ID) first."""
        if self.closed:
            sink.end(self.closed)
            return
        self.sink, self.engine = sink, engine
        if after is None:  # a fresh stream: only what is published from now on
            self.sent = newest
            self.write([encode_stats(unread)], 0)
            self.flush()
        elif after > newest:  # an id this student never had: not "nothing missed"
            self.catch_up(0, newest, "unknown-id", encode_stats(unread))
        else:
            self.catch_up(after, newest, None, encode_stats(unread))

    def flush(self) -> None:
        """Writes what is buffered in one go (a grade and its unread count, say)."""
        if self.sink is None or self.sink.paused or self.replaying is not None or self.closed:
            return  # resume(), the replay's end or the start flushes again
        if self.resync:  # the broker connection was lost: Postgres has the rest
            self.resync = False
            self.catch_up(self.sent)
            return
        frames, self.frames = self.frames, []
        out: list[bytes] = []
        grades = 0
        for index, (seq, data) in enumerate(frames):
            if seq is not None and seq <= self.sent:
                continue  # replayed already, or a duplicate from the broker
            if seq is not None and seq > self.sent + 1:  # lost on the way; Postgres has it
                self.frames = frames[index:]  # after the replay, which includes this one
                self.write(out, grades)
                self.catch_up(self.sent, until=seq)
                return
            out.append(data)
            if seq is not None:
                self.sent, grades = seq, grades + 1
        self.write(out, grades)

    def write(self, out: list[bytes], grades: int) -> None:
        data = b"".join(out)
        if data and self.sink is not None and not self.closed:
            self.sink.write(data)
            EVENTS_DELIVERED.inc(grades)

    def resume(self) -> None:
        """The sink takes frames again."""
        if self.drained is not None and not self.drained.done():
            self.drained.set_result(None)
        self.flush()

    def request_resync(self) -> bool:
        self.resync = True
        return not self.frames  # else a flush is due already

    def close(self, reason: str) -> None:
        if self.closed:
            return
        self.closed = reason
        self.frames.clear()
        if self.replaying is not None:
            self.replaying.cancel()
        sink, self.sink = self.sink, None  # a connection refers back to its subscriber
        if sink is not None:
            sink.end(reason)

    def catch_up(
        self, after: int, until: int | None = None, reset: str | None = None, then: bytes = b""
    ) -> None:
        """Replays from Postgres in a task; `then` is written after."""
        self.replaying = asyncio.get_running_loop().create_task(
            self.recover(after, until, reset, then)
        )

    async def recover(self, after: int, until: int | None, reset: str | None, then: bytes) -> None:
        assert self.engine is not None
        try:
            self.sent = await replay(self.engine, self.student, self.paced, after, until, reset)
        except DatabaseUnavailable as error:
            # The client comes back after `retry` and replays from its Last-Event-ID.
            logger.warning("ended a stream of %s: %s", self.student.label(), error)
            self.close("database unavailable")
        except Exception:
            logger.exception("a replay for %s failed", self.student.label())
            self.close("failed")
        finally:
            self.replaying = None
        self.write([then], 0)
        self.flush()

    async def paced(self, data: bytes) -> None:
        """A replay's write: one page at a time, as fast as the client reads."""
        sink = self.sink
        assert sink is not None
        sink.write(data)
        while sink.paused and not self.closed:
            self.drained = asyncio.get_running_loop().create_future()
            await self.drained
