"""The broker messages and the answer of a publish, which Postgres and orjson encode without
the models: they must read back as the models, and the answer as pydantic writes it."""

from datetime import datetime

from sqlalchemy.ext.asyncio import AsyncEngine

from services.core.events import NotificationBatch, PublishedNotification, PublishResult
from services.publisher.auth import Publisher
from services.publisher.messages import messages_of
from services.publisher.schemas import GradePublish
from services.publisher.store import Publication, answer_of, insert_notifications
from tests.support import unique

SHARDS = 64


async def test_a_publish_reads_back_as_the_models(db: AsyncEngine) -> None:
    students = [unique("student") for _ in range(40)]
    publish = GradePublish.model_validate(
        {
            "studentIds": students,
            "assignmentId": "hw-1",
            "assignmentTitle": "Devoir d'\u00e9t\u00e9 \u2713",
            "grade": 17.5,
            "teacherComment": 'line one\nline "two"',
        }
    )
    publisher = Publisher(tenant_id="default", key_id="key-1", scope="scope")
    async with db.begin() as connection:
        publication = Publication.of(publish, publisher)
        [rows] = await insert_notifications(connection, [publication], SHARDS)

    batches = [NotificationBatch.model_validate_json(m.body) for m in messages_of(rows)]
    assert len(batches) == len(rows) > 1  # one message per shard
    notifications = {n.student_id: n for batch in batches for n in batch.notifications()}
    assert sorted(notifications) == sorted(students)
    for batch in batches:
        assert batch.tenant_id == "default"
        assert batch.unread == [1] * len(batch.student_ids)
    first = notifications[students[0]]
    assert (first.id, first.grade, first.assignment_id) == ("1", 17.5, "hw-1")
    assert first.assignment_title == "Devoir d'\u00e9t\u00e9 \u2713"
    assert (first.teacher_comment, first.course_id) == ('line one\nline "two"', None)

    answer = answer_of(students, rows)
    expected = PublishResult(
        count=len(students),
        notifications=[
            PublishedNotification(
                id="1", student_id=student, published_at=notifications[student].published_at
            )
            for student in students
        ],
    )
    assert answer == expected.model_dump_json().encode()
    assert isinstance(first.published_at, datetime) and first.published_at.tzinfo is not None
