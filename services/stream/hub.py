"""Fan-out inside one stream node: the broker consumer hands each notification to the hub,
which encodes its frame once and pushes the same bytes to each of its student's streams."""

import asyncio
import logging
import time

from services.core.broker import shard_of
from services.core.events import NotificationPublic
from services.core.metrics import PUBLISH_TO_DELIVER
from services.core.tenancy import Student
from services.stream.bindings import ShardBindings
from services.stream.frames import KEEPALIVE, encode_event, encode_stats

logger = logging.getLogger(__name__)

# The student's sequence number and the encoded SSE frame; no number for frames that are
# not grades (stats), which are always sent.
Frame = tuple[int | None, bytes]


class TooManyConnections(Exception):
    """The student has MAX_CONNECTIONS_PER_STUDENT streams on this node already."""


class NodeFull(Exception):
    """The node holds MAX_CONNECTIONS_PER_NODE streams already."""


class Subscriber:
    """One open stream: a bounded buffer the hub fills and the connection drains. A reader
    that falls further behind than the buffer is closed, and replays on reconnect."""

    __slots__ = ("student", "limit", "frames", "waiter", "closed", "resync", "writer", "quiet")

    def __init__(self, student: Student, limit: int) -> None:
        self.student = student
        self.limit = limit
        self.frames: list[Frame] = []  # a list: smaller than a deque, taken whole
        self.waiter: asyncio.Future[None] | None = None
        self.closed: str | None = None  # why, once closed
        self.resync = False  # live frames may have been lost: check Postgres
        self.writer: asyncio.Task[object] | None = None  # the task writing to the client
        self.quiet = False  # nothing pushed since the hub's last keepalive tick

    def push(self, frame: Frame) -> None:
        if self.closed:
            return
        if len(self.frames) >= self.limit:
            logger.warning(
                "dropped a stream of %s: %d events behind", self.student.label(), self.limit
            )
            self.close("overflow")
            if self.writer is not None:
                self.writer.cancel()  # it may be stuck writing to a client that stopped reading
            return
        self.frames.append(frame)
        self.quiet = False
        self.wake()

    def close(self, reason: str) -> None:
        if not self.closed:
            self.closed = reason
            self.frames.clear()
            self.wake()

    def request_resync(self) -> None:
        self.resync = True
        self.wake()

    def wake(self) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(None)

    async def take(self) -> list[Frame]:
        """Every frame buffered, oldest first, so that the reader is written to once for
        all of them; waits for one, a resync request or the close (after which there may
        be none)."""
        if not self.frames and not self.closed and not self.resync:
            self.waiter = asyncio.get_running_loop().create_future()
            try:
                await self.waiter
            finally:
                self.waiter = None
        frames, self.frames = self.frames, []
        return frames


class Hub:
    def __init__(
        self,
        bindings: ShardBindings,
        *,
        shards: int,
        max_per_student: int,
        max_per_node: int,
        buffer_events: int,
    ) -> None:
        self.bindings = bindings
        self.shards = shards
        self.max_per_student = max_per_student
        self.max_per_node = max_per_node
        self.buffer_events = buffer_events
        self.students: dict[Student, set[Subscriber]] = {}
        self.total = 0

    async def subscribe(self, student: Student) -> Subscriber:
        """Registers at once (so the limits hold under concurrency), then waits for the
        student's shard to be bound. Pair with unsubscribe()."""
        if self.total >= self.max_per_node:
            raise NodeFull()
        streams = self.students.setdefault(student, set())
        if len(streams) >= self.max_per_student:
            raise TooManyConnections(student.label())
        subscriber = Subscriber(student, self.buffer_events)
        streams.add(subscriber)
        self.total += 1
        try:
            await self.bindings.acquire(shard_of(student, self.shards))
        except BaseException:
            self.forget(subscriber)
            raise
        return subscriber

    def unsubscribe(self, subscriber: Subscriber) -> None:
        subscriber.close("unsubscribed")
        self.forget(subscriber)
        self.bindings.release(shard_of(subscriber.student, self.shards))

    def forget(self, subscriber: Subscriber) -> None:
        streams = self.students.get(subscriber.student)
        if streams is not None and subscriber in streams:
            streams.discard(subscriber)
            self.total -= 1
            if not streams:
                del self.students[subscriber.student]

    def dispatch(
        self, tenant_id: str, notification: NotificationPublic, unread: int | None = None
    ) -> None:
        student = Student(tenant_id, notification.student_id)
        if student not in self.students:
            return  # another student of a shard this node serves
        PUBLISH_TO_DELIVER.observe(time.time() - notification.published_at.timestamp())
        self.push(student, (notification.seq, encode_event(notification)))
        if unread is not None:
            self.push(student, (None, encode_stats(unread)))

    def unread_changed(self, student: Student, unread: int) -> None:
        self.push(student, (None, encode_stats(unread)))

    def push(self, student: Student, frame: Frame) -> None:
        for subscriber in tuple(self.students.get(student, ())):
            subscriber.push(frame)

    async def keep_alive(self, heartbeat_seconds: float) -> None:
        """One timer for all streams rather than one per stream: a keepalive to each stream
        that was sent nothing for a tick, twice a heartbeat, so no stream is silent for
        longer than `heartbeat_seconds`. Runs until cancelled."""
        while True:
            await asyncio.sleep(heartbeat_seconds / 2)
            self.tick()

    def tick(self) -> None:
        for subscriber in self.subscribers():
            if subscriber.quiet:
                subscriber.push((None, KEEPALIVE))
            subscriber.quiet = True

    def subscribers(self) -> list[Subscriber]:
        return [subscriber for streams in self.students.values() for subscriber in streams]

    def close_all(self, reason: str) -> None:
        for subscriber in self.subscribers():
            subscriber.close(reason)

    def resync_all(self) -> None:
        """After the broker connection was lost: every stream checks Postgres for what it
        missed meanwhile."""
        for subscriber in self.subscribers():
            subscriber.request_resync()

    def counts(self) -> dict[str, int]:
        return {student.label(): len(streams) for student, streams in self.students.items()}
