"""Fan-out inside one stream node: the broker consumer hands each notification to the hub,
which encodes its frame once and pushes the same bytes to each of its student's streams.
Streams pushed to are flushed together once the current callback is done, so that each is
written to once for all the frames one broker message brought it."""

import asyncio
import time

from services.core.broker import shard_of
from services.core.metrics import PUBLISH_TO_DELIVER
from services.core.tenancy import Student
from services.stream.batches import LiveBatch
from services.stream.bindings import ShardBindings
from services.stream.frames import KEEPALIVE, encode_grade, encode_stats
from services.stream.subscriber import Frame, Subscriber

# Streams given their keepalive in one go, and the share of a heartbeat a tick's slices are
# spread over. A tick that wrote all of a node's quiet streams in one callback held up every
# grade behind it: with 10,000 streams, the p99 from publish to receipt at 200 publishes a
# second was 92 ms; 27 to 54 ms in slices one after another; 13 to 18 ms spread, and 13 ms
# with no keepalives at all.
KEEPALIVE_SLICE = 256
KEEPALIVE_SPREAD = 0.1


class TooManyConnections(Exception):
    """The student has MAX_CONNECTIONS_PER_STUDENT streams on this node already."""


class NodeFull(Exception):
    """The node holds MAX_CONNECTIONS_PER_NODE streams already."""


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
        self.ready: list[Subscriber] = []  # pushed to since the last flush

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

    def deliver(self, batch: LiveBatch) -> None:
        """Pushes a broker message's grade, with each student's new unread count, to the
        streams this node holds for its students: the others are students of a shard this
        node serves. The latency is observed once a message, with its first student's
        publishedAt: once a grade, the histogram cost a node a tenth of a delivery."""
        delivered = False
        for student_id, seq, published_at, unread in zip(
            batch.student_ids, batch.seqs, batch.published_at, batch.unread, strict=True
        ):
            student = Student(batch.tenant_id, student_id)
            if student in self.students:
                delivered = True
                frame = encode_grade(seq, student_id, batch.shared, published_at)
                self.push(student, (seq, frame))
                if unread is not None:
                    self.push(student, (None, encode_stats(unread)))
        if delivered:
            PUBLISH_TO_DELIVER.observe(time.time() - batch.published_at[0].timestamp())

    def unread_changed(self, student: Student, unread: int) -> None:
        self.push(student, (None, encode_stats(unread)))

    def push(self, student: Student, frame: Frame) -> None:
        for subscriber in tuple(self.students.get(student, ())):
            if subscriber.push(frame):
                self.flush_soon(subscriber)

    def flush_soon(self, subscriber: Subscriber) -> None:
        if not self.ready:
            asyncio.get_running_loop().call_soon(self.flush)
        self.ready.append(subscriber)

    def flush(self) -> None:
        ready, self.ready = self.ready, []
        for subscriber in ready:
            subscriber.flush()

    async def keep_alive(self, heartbeat_seconds: float) -> None:
        """One timer for all streams rather than one per stream: a stream that was sent
        nothing since one tick gets a keepalive at the next. A tick's slices are spread
        over KEEPALIVE_SPREAD of a heartbeat, and ticks start (1 - KEEPALIVE_SPREAD) / 2 of
        one apart, so no stream is silent for longer than `heartbeat_seconds`. Runs until
        cancelled."""
        spread = heartbeat_seconds * KEEPALIVE_SPREAD
        interval = (heartbeat_seconds - spread) / 2
        loop = asyncio.get_running_loop()
        next_tick = loop.time() + interval
        while True:
            await asyncio.sleep(next_tick - loop.time())
            next_tick += interval
            await self.tick(spread)

    async def tick(self, spread_seconds: float = 0) -> None:
        """KEEPALIVE_SLICE streams at a time, the slices spread over `spread_seconds`: the
        grades that arrive meanwhile go by, and clients get no burst to read."""
        subscribers = self.subscribers()
        slices = range(0, len(subscribers), KEEPALIVE_SLICE)
        pause = spread_seconds / len(slices) if slices else 0
        for start in slices:
            for subscriber in subscribers[start : start + KEEPALIVE_SLICE]:
                if subscriber.quiet and subscriber.push((None, KEEPALIVE)):
                    self.flush_soon(subscriber)
                subscriber.quiet = True
            await asyncio.sleep(pause)  # the slice is flushed, and the sockets read

    def subscribers(self) -> list[Subscriber]:
        return [subscriber for streams in self.students.values() for subscriber in streams]

    def close_all(self, reason: str) -> None:
        for subscriber in self.subscribers():
            subscriber.close(reason)

    def resync_all(self) -> None:
        """After the broker connection was lost: every stream checks Postgres for what it
        missed meanwhile."""
        for subscriber in self.subscribers():
            if subscriber.request_resync():
                self.flush_soon(subscriber)

    def counts(self) -> dict[str, int]:
        return {student.label(): len(streams) for student, streams in self.students.items()}
