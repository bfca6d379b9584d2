"""The node's reading of a broker message: the frames it writes live are the ones a replay
writes from the model, and a malformed message is refused whole."""

from datetime import UTC, datetime

import orjson
import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from services.core.events import NotificationBatch, NotificationPublic
from services.core.tenancy import Student
from services.publisher.auth import Publisher
from services.publisher.messages import messages_of
from services.publisher.schemas import GradePublish
from services.publisher.store import insert_notifications
from services.stream.batches import MalformedBatch, read_batch
from services.stream.frames import encode_event, encode_grade
from tests.support import unique


def notification(**fields: object) -> dict[str, object]:
    return {
        "id": "7",
        "studentId": "student-1",
        "assignmentId": "hw-1",
        "grade": 17.5,
        "teacherComment": 'line one\nline "two"\r',
        "courseId": None,
        "assignmentTitle": "Devoir d'\u00e9t\u00e9 \u2713",
        "publishedAt": "2025-03-01T12:30:00.250000+00:00",
        **fields,
    }


def body(*notifications: dict[str, object], **batch: object) -> bytes:
    message = {"tenantId": "school-1", "notifications": list(notifications), **batch}
    return orjson.dumps(message)


@pytest.mark.parametrize(
    "fields",
    [
        {},
        {"grade": "A-", "publishedAt": "2025-03-01T12:30:00+00:00"},  # no fraction
        {"grade": 95, "teacherComment": None, "publishedAt": "2025-03-01T13:30:00+01:00"},
    ],
)
def test_a_live_frame_is_the_models_frame(fields: dict[str, object]) -> None:
    raw = body(notification(**fields), unread={"student-1": 3})
    (grade,) = read_batch(raw)
    model = NotificationBatch.model_validate_json(raw).notifications[0]
    assert encode_grade(grade.seq, grade.fields) == encode_event(model)
    assert (grade.student, grade.seq, grade.unread) == (Student("school-1", "student-1"), 7, 3)


async def test_postgres_messages_read_as_their_models(db: AsyncEngine) -> None:
    students = [unique("student") for _ in range(20)]
    publish = GradePublish.model_validate(
        {"studentIds": students, "assignmentId": "hw-1", "grade": 12.25, "courseId": "math"}
    )
    publisher = Publisher(tenant_id="default", key_id="key-1", scope="scope")
    async with db.begin() as connection:
        rows = await insert_notifications(connection, publish, students, publisher, 64)
    for message in messages_of(rows):
        models = NotificationBatch.model_validate_json(message.body).notifications
        grades = read_batch(message.body)
        assert [encode_grade(g.seq, g.fields) for g in grades] == [encode_event(n) for n in models]
        assert {g.unread for g in grades} == {1}


def test_a_message_without_unread_counts_reads() -> None:
    (grade,) = read_batch(body(notification()))
    assert grade.unread is None
    assert grade.fields["publishedAt"] == datetime(2025, 3, 1, 12, 30, 0, 250000, tzinfo=UTC)


@pytest.mark.parametrize(
    "raw",
    [
        b"not json",
        b"[]",
        orjson.dumps({"notifications": [notification()]}),  # no tenant
        orjson.dumps({"tenantId": 7, "notifications": [notification()]}),
        body(notification(), notification(id="8", extra=1)),
        body({k: v for k, v in notification().items() if k != "grade"}),
        body(notification(id="7\n")),
        body(notification(id="07")),
        body(notification(id=7)),
        body(notification(studentId=["student-1"])),
        body(notification(publishedAt="yesterday")),
        body(notification(publishedAt="2025-03-01T12:30:00")),  # no offset
        body(notification(), unread={"student-1": "3"}),
        body(notification(), unread=[]),
    ],
)
def test_a_malformed_message_is_refused_whole(raw: bytes) -> None:
    with pytest.raises(MalformedBatch):
        read_batch(raw)


def test_the_wire_fields_are_the_models() -> None:
    model = NotificationPublic.model_validate(notification())
    assert set(model.model_dump(by_alias=True)) == set(notification())
