"""A stream's buffer and sequencing, and the hub's fan-out to a student's streams."""

import asyncio
from datetime import UTC, datetime
from typing import cast

import orjson
import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from services.core.broker import shard_of
from services.core.events import GRADES, NotificationPublic
from services.core.tenancy import Student
from services.stream.batches import LiveBatch, read_batch
from services.stream.bindings import ShardBindings
from services.stream.frames import KEEPALIVE, SHARED_FIELDS
from services.stream.hub import KEEPALIVE_SLICE, Hub, NodeFull, TooManyConnections
from services.stream.subscriber import Subscriber
from tests.support import eventually

SHARDS = 64


def student(student_id: str) -> Student:
    return Student("default", student_id)


class FakeBindings:
    """Records which shards the hub asks for, without a broker."""

    def __init__(self) -> None:
        self.acquired: list[int] = []
        self.released: list[int] = []

        self.fail = False

    async def acquire(self, shard: int) -> None:
        self.acquired.append(shard)
        if self.fail:
            raise ConnectionError("broker down")

    def release(self, shard: int) -> None:
        self.released.append(shard)


def make_hub(max_per_student: int = 3, max_per_node: int = 100) -> tuple[Hub, FakeBindings]:
    bindings = FakeBindings()
    hub = Hub(
        cast(ShardBindings, bindings),
        shards=SHARDS,
        max_per_student=max_per_student,
        max_per_node=max_per_node,
        buffer_events=16,
    )
    return hub, bindings


def grade_for(student_id: str, seq: int = 1) -> NotificationPublic:
    return NotificationPublic(
        id=str(seq),
        student_id=student_id,
        assignment_id="hw-1",
        grade=17,
        teacher_comment=None,
        course_id=None,
        assignment_title=None,
        published_at=datetime(2025, 3, 1, tzinfo=UTC),
    )


def message(*grades: NotificationPublic, unread: int | None = None) -> LiveBatch:
    """The broker message of `grades` (of one publish), as the node's consumer reads it."""
    batch = {
        "tenantId": "default",
        "grade": grades[0].model_dump(by_alias=True, include=SHARED_FIELDS),
        "studentIds": [grade.student_id for grade in grades],
        "seqs": [grade.seq for grade in grades],
        "publishedAt": [grade.published_at for grade in grades],
        "unread": [unread] * len(grades),
    }
    return read_batch(GRADES, orjson.dumps(batch))


class RecordingSink:
    """Keeps what a stream writes, and can stop taking it as a full socket does."""

    def __init__(self) -> None:
        self.written: list[bytes] = []
        self.paused = False
        self.ended: str | None = None

    def write(self, data: bytes) -> None:
        self.written.append(data)

    def end(self, reason: str) -> None:
        self.ended = reason


def started(subscriber: Subscriber, newest: int = 0) -> RecordingSink:
    """Starts a fresh stream at `newest` and forgets its opening unread count."""
    sink = RecordingSink()
    subscriber.start(sink, cast(AsyncEngine, None), None, newest, unread=0)
    assert sink.written == [b'event: stats\ndata: {"unread":0}\n\n']
    sink.written.clear()
    return sink


async def test_frames_pushed_together_are_written_in_one_go_and_in_order() -> None:
    subscriber = Subscriber(student("student-1"), limit=10)
    sink = started(subscriber)
    assert subscriber.push((1, b"one:"))
    assert not subscriber.push((None, b"stats:"))  # a flush is due already
    assert not subscriber.push((2, b"two:"))
    subscriber.flush()
    assert sink.written == [b"one:stats:two:"]
    assert subscriber.sent == 2 and not subscriber.frames


async def test_frames_wait_for_the_start_and_skip_what_it_covers() -> None:
    subscriber = Subscriber(student("student-1"), limit=10)
    subscriber.push((4, b"four:"))  # committed before the position was read
    subscriber.push((5, b"five:"))
    subscriber.flush()  # not started: nothing to write to yet
    sink = RecordingSink()
    subscriber.start(sink, cast(AsyncEngine, None), None, newest=4, unread=1)
    assert sink.written == [b'event: stats\ndata: {"unread":1}\n\n', b"five:"]


async def test_duplicates_are_dropped() -> None:
    subscriber = Subscriber(student("student-1"), limit=10)
    sink = started(subscriber, newest=3)
    subscriber.push((3, b"again:"))
    subscriber.push((4, b"four:"))
    subscriber.push((4, b"four again:"))
    subscriber.flush()
    assert sink.written == [b"four:"]


async def test_a_paused_sink_gets_the_frames_when_it_resumes() -> None:
    subscriber = Subscriber(student("student-1"), limit=10)
    sink = started(subscriber)
    sink.paused = True
    subscriber.push((1, b"one:"))
    subscriber.flush()
    assert not sink.written
    subscriber.push((2, b"two:"))
    sink.paused = False
    subscriber.resume()
    assert sink.written == [b"one:two:"]


async def test_keepalives_go_only_to_streams_that_were_quiet_for_a_tick() -> None:
    hub, _ = make_hub()
    quiet = await hub.subscribe(student("student-1"))
    busy = await hub.subscribe(student("student-2"))
    await hub.tick()  # both were just opened: not quiet yet
    assert not quiet.frames and not busy.frames
    busy.push((1, b"grade"))
    await hub.tick()
    assert list(quiet.frames) == [(None, KEEPALIVE)]
    assert list(busy.frames) == [(1, b"grade")]


async def test_a_tick_spreads_its_slices_of_streams_over_time() -> None:
    hub, _ = make_hub(max_per_node=KEEPALIVE_SLICE + 1)
    subscribers = [await hub.subscribe(student(f"student-{n}")) for n in range(KEEPALIVE_SLICE + 1)]
    await hub.tick()  # all quiet from now on
    tick = asyncio.create_task(hub.tick(spread_seconds=1))  # two slices, 0.5 s apart
    await asyncio.sleep(0.1)  # its timer is due before the second slice's, however late
    sent = [subscriber for subscriber in subscribers if subscriber.frames]
    await tick
    assert sent == subscribers[:KEEPALIVE_SLICE]
    assert all(list(subscriber.frames) == [(None, KEEPALIVE)] for subscriber in subscribers)


async def test_keepalives_are_written_while_idle() -> None:
    hub, _ = make_hub()
    sink = started(await hub.subscribe(student("student-1")))
    ticks = asyncio.create_task(hub.keep_alive(0.1))
    try:
        await eventually(lambda: sink.written, seconds=5)
    finally:
        ticks.cancel()
    assert sink.written[0] == KEEPALIVE


async def test_overflow_closes_the_stream() -> None:
    subscriber = Subscriber(student("student-1"), limit=2)
    sink = started(subscriber)
    sink.paused = True  # a client that stopped reading
    for seq in range(1, 4):
        subscriber.push((seq, b"frame"))
    assert subscriber.closed == "overflow" and sink.ended == "overflow"
    assert not subscriber.frames
    assert not subscriber.push((4, b"late"))
    assert not subscriber.frames


async def test_close_ends_the_sink_once_with_the_reason() -> None:
    subscriber = Subscriber(student("student-1"), limit=10)
    sink = started(subscriber)
    subscriber.push((1, b"one"))
    subscriber.close("shutdown")
    subscriber.close("disconnected")
    subscriber.flush()
    assert sink.ended == "shutdown" and subscriber.closed == "shutdown"
    assert not sink.written


async def test_a_stream_closed_before_it_started_ends_at_the_start() -> None:
    subscriber = Subscriber(student("student-1"), limit=10)
    subscriber.close("shutdown")
    sink = RecordingSink()
    subscriber.start(sink, cast(AsyncEngine, None), None, newest=0, unread=0)
    assert sink.ended == "shutdown" and not sink.written


async def test_delivery_flushes_each_stream_once_after_the_message() -> None:
    hub, _ = make_hub()
    sink = started(await hub.subscribe(student("student-1")))
    hub.deliver(message(grade_for("student-1", seq=1), unread=1))
    hub.deliver(message(grade_for("student-1", seq=2), unread=2))
    assert not sink.written  # flushed once the current callback is done
    await asyncio.sleep(0)
    assert len(sink.written) == 1
    assert sink.written[0].count(b"event: grade") == 2
    assert sink.written[0].endswith(b'event: stats\ndata: {"unread":2}\n\n')


async def test_delivery_shares_one_frame_among_a_students_streams() -> None:
    hub, bindings = make_hub()
    first = await hub.subscribe(student("student-1"))
    second = await hub.subscribe(student("student-1"))
    other = await hub.subscribe(student("student-2"))

    hub.deliver(message(grade_for("student-1", seq=5)))

    (seq_a, frame_a), (seq_b, frame_b) = first.frames[0], second.frames[0]
    assert seq_a == seq_b == 5
    assert frame_a is frame_b
    assert frame_a.startswith(b"id: 5\nevent: grade\n")
    assert len(first.frames) == len(second.frames) == 1
    assert not other.frames
    expected = [shard_of(student("student-1"), SHARDS)] * 2 + [
        shard_of(student("student-2"), SHARDS)
    ]
    assert bindings.acquired == expected


async def test_delivery_to_a_student_with_no_stream_is_dropped() -> None:
    hub, _ = make_hub()
    other = await hub.subscribe(student("student-2"))
    hub.deliver(message(grade_for("student-1")))
    assert not other.frames
    assert hub.counts() == {"student-2": 1}


async def test_too_many_streams_for_one_student() -> None:
    hub, bindings = make_hub(max_per_student=2)
    await hub.subscribe(student("student-1"))
    await hub.subscribe(student("student-1"))
    with pytest.raises(TooManyConnections):
        await hub.subscribe(student("student-1"))
    assert hub.counts() == {"student-1": 2}
    assert len(bindings.acquired) == 2


async def test_a_failed_binding_leaves_no_stream_behind() -> None:
    hub, bindings = make_hub()
    bindings.fail = True
    with pytest.raises(ConnectionError):
        await hub.subscribe(student("student-1"))
    assert hub.counts() == {}


async def test_unsubscribe_forgets_a_student_after_their_last_stream() -> None:
    hub, bindings = make_hub()
    first = await hub.subscribe(student("student-1"))
    second = await hub.subscribe(student("student-1"))
    shard = shard_of(student("student-1"), SHARDS)

    hub.unsubscribe(first)
    assert hub.counts() == {"student-1": 1}
    assert first.closed == "unsubscribed"

    hub.unsubscribe(second)
    assert hub.counts() == {}
    assert bindings.released == [shard, shard]


async def test_a_full_node_refuses_new_streams_until_one_closes() -> None:
    hub, _ = make_hub(max_per_node=2)
    first = await hub.subscribe(student("student-1"))
    await hub.subscribe(student("student-2"))
    with pytest.raises(NodeFull):
        await hub.subscribe(student("student-3"))
    assert hub.total == 2
    hub.unsubscribe(first)
    await hub.subscribe(student("student-3"))
    assert hub.total == 2


async def test_resync_flushes_an_idle_stream() -> None:
    hub, _ = make_hub()
    subscriber = await hub.subscribe(student("student-1"))
    hub.resync_all()
    assert hub.ready == [subscriber]
    assert subscriber.resync and not subscriber.closed
