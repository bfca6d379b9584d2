"""A stream's bounded buffer, and the hub's fan-out to a student's streams."""

import asyncio
from datetime import UTC, datetime
from typing import cast

import pytest

from services.core.broker import shard_of
from services.core.events import NotificationPublic
from services.core.tenancy import Student
from services.stream.bindings import ShardBindings
from services.stream.frames import KEEPALIVE
from services.stream.hub import Hub, NodeFull, Subscriber, TooManyConnections

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


async def test_frames_come_out_in_order() -> None:
    subscriber = Subscriber(student("student-1"), limit=10)
    subscriber.push((1, b"one"))
    subscriber.push((2, b"two"))
    assert await subscriber.take() == [(1, b"one"), (2, b"two")]
    assert not subscriber.frames


async def test_keepalives_go_only_to_streams_that_were_quiet_for_a_tick() -> None:
    hub, _ = make_hub()
    quiet = await hub.subscribe(student("student-1"))
    busy = await hub.subscribe(student("student-2"))
    hub.tick()  # both were just opened: not quiet yet
    assert not quiet.frames and not busy.frames
    busy.push((1, b"grade"))
    hub.tick()
    assert list(quiet.frames) == [(None, KEEPALIVE)]
    assert list(busy.frames) == [(1, b"grade")]


async def test_keepalives_are_sent_while_idle() -> None:
    hub, _ = make_hub()
    subscriber = await hub.subscribe(student("student-1"))
    ticks = asyncio.create_task(hub.keep_alive(0.1))
    try:
        assert await asyncio.wait_for(subscriber.take(), 5) == [(None, KEEPALIVE)]
    finally:
        ticks.cancel()


async def test_next_waits_for_a_push() -> None:
    subscriber = Subscriber(student("student-1"), limit=10)
    waiting = asyncio.create_task(subscriber.take())
    await asyncio.sleep(0)
    subscriber.push((1, b"one"))
    assert await asyncio.wait_for(waiting, 1) == [(1, b"one")]


async def test_overflow_closes_the_stream() -> None:
    subscriber = Subscriber(student("student-1"), limit=2)
    for seq in range(3):
        subscriber.push((seq, b"frame"))
    assert subscriber.closed == "overflow"
    assert await asyncio.wait_for(subscriber.take(), 0.5) == []
    subscriber.push((4, b"late"))
    assert not subscriber.frames


async def test_close_wakes_a_waiting_take() -> None:
    subscriber = Subscriber(student("student-1"), limit=10)
    waiting = asyncio.create_task(subscriber.take())
    await asyncio.sleep(0)
    subscriber.close("shutdown")
    assert await asyncio.wait_for(waiting, 1) == []
    assert subscriber.closed == "shutdown"


async def test_dispatch_shares_one_frame_among_a_students_streams() -> None:
    hub, bindings = make_hub()
    first = await hub.subscribe(student("student-1"))
    second = await hub.subscribe(student("student-1"))
    other = await hub.subscribe(student("student-2"))

    hub.dispatch("default", grade_for("student-1", seq=5))

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


async def test_dispatch_to_a_student_with_no_stream_is_dropped() -> None:
    hub, _ = make_hub()
    other = await hub.subscribe(student("student-2"))
    hub.dispatch("default", grade_for("student-1"))
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


async def test_resync_wakes_a_waiting_stream_without_a_frame() -> None:
    hub, _ = make_hub()
    subscriber = await hub.subscribe(student("student-1"))
    waiting = asyncio.create_task(subscriber.take())
    await asyncio.sleep(0)
    hub.resync_all()
    assert await asyncio.wait_for(waiting, 1) == []
    assert subscriber.resync and not subscriber.closed
