"""The node's reading of a broker message: the frames it writes live are the ones a replay
writes from the model, and a malformed message is refused whole."""

from datetime import UTC, datetime

import orjson
import pytest
from sqlalchemy import make_url, text
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from services.core.db import create_engine
from services.core.events import GRADES, NOTIFICATIONS_0_1, NotificationBatch, NotificationPublic
from services.core.settings import Settings
from services.core.tenancy import Student
from services.publisher.auth import Publisher
from services.publisher.messages import messages_of
from services.publisher.schemas import GradePublish
from services.publisher.store import Publication, insert_notifications
from services.stream.batches import LiveBatch, MalformedBatch, read_batch
from services.stream.frames import encode_event, encode_grade
from services.stream.history import notifications_of
from tests.conftest import SERVER_URL
from tests.support import unique

GRADE = {
    "assignmentId": "hw-1",
    "grade": 17.5,
    "teacherComment": 'line one\nline "two"\r',
    "courseId": None,
    "assignmentTitle": "Devoir d'\u00e9t\u00e9 \u2713",
}
AT = "2025-03-01T12:30:00.250000+00:00"


def body(**fields: object) -> bytes:
    message = {
        "tenantId": "school-1",
        "grade": GRADE,
        "studentIds": ["student-1", "student-2"],
        "seqs": [7, 1],
        "publishedAt": [AT, "2025-03-01T13:30:00+01:00"],
        "unread": [3, 1],
        **fields,
    }
    return orjson.dumps(message)


def frames(batch: LiveBatch) -> list[bytes]:
    return [
        encode_grade(seq, student_id, batch.shared, at)
        for student_id, seq, at in zip(
            batch.student_ids, batch.seqs, batch.published_at, strict=True
        )
    ]


def test_live_frames_are_the_models_frames() -> None:
    raw = body()
    batch = read_batch(GRADES, raw)
    model = NotificationBatch.model_validate_json(raw)
    assert frames(batch) == [encode_event(n) for n in model.notifications()]
    assert batch.tenant_id == "school-1" and batch.unread == [3, 1]
    assert batch.published_at[1] == datetime(2025, 3, 1, 12, 30, tzinfo=UTC)


@pytest.mark.parametrize("grade", [{"grade": "A-"}, {"grade": 95, "teacherComment": None}])
def test_any_grade_reads_as_its_model(grade: dict[str, object]) -> None:
    raw = body(grade={**GRADE, **grade})
    model = NotificationBatch.model_validate_json(raw)
    assert frames(read_batch(GRADES, raw)) == [encode_event(n) for n in model.notifications()]


async def test_postgres_messages_read_as_their_models(db: AsyncEngine) -> None:
    students = [unique("student") for _ in range(20)]
    publish = GradePublish.model_validate(
        {"studentIds": students, "assignmentId": "hw-1", "grade": 12.25, "courseId": "math"}
    )
    publisher = Publisher(tenant_id="default", key_id="key-1", scope="scope")
    async with db.begin() as connection:
        [rows] = await insert_notifications(connection, [Publication.of(publish, publisher)], 64)
    for message in messages_of(rows):
        model = NotificationBatch.model_validate_json(message.body)
        batch = read_batch(GRADES, message.body)
        assert frames(batch) == [encode_event(n) for n in model.notifications()]
        assert set(batch.unread) == {1}


async def set_time_zone(database: str, zone: str) -> None:
    admin = create_async_engine(f"{SERVER_URL}/postgres", isolation_level="AUTOCOMMIT")
    async with admin.connect() as connection:
        await connection.execute(text(f'ALTER DATABASE "{database}" SET timezone TO {zone}'))
    await admin.dispose()


async def test_live_frames_read_as_replays_whatever_the_databases_time_zone(
    database_url: str,
) -> None:
    """Postgres writes times into JSON in the session's time zone, and asyncpg reads them
    as UTC: in a database whose default zone is not UTC, the two must still agree."""
    database = make_url(database_url).database
    assert database is not None
    await set_time_zone(database, "'Asia/Kolkata'")
    engine = create_engine(Settings(DATABASE_URL=database_url), "test")
    try:
        students = [unique("student") for _ in range(5)]
        publish = GradePublish.model_validate(
            {"studentIds": students, "assignmentId": "hw-1", "grade": 12}
        )
        publisher = Publisher(tenant_id="default", key_id="key-1", scope="scope")
        async with engine.begin() as connection:
            publication = Publication.of(publish, publisher)
            [rows] = await insert_notifications(connection, [publication], 64)
        live = {frame for m in messages_of(rows) for frame in frames(read_batch(GRADES, m.body))}
        replayed = set()
        for student_id in students:
            student = Student("default", student_id)
            replayed |= {encode_event(n) for n in await notifications_of(engine, student, limit=9)}
        assert live == replayed and len(live) == len(students)
    finally:
        await engine.dispose()
        await set_time_zone(database, "DEFAULT")


def notification_0_1(student_id: str, seq: int, **fields: object) -> dict[str, object]:
    return {"id": str(seq), "studentId": student_id, **GRADE, "publishedAt": AT, **fields}


def body_0_1(*notifications: dict[str, object], **batch: object) -> bytes:
    return orjson.dumps({"tenantId": "school-1", "notifications": list(notifications), **batch})


def test_a_version_0_1_message_gives_the_same_frames() -> None:
    """A node upgraded before the publishers still delivers what they send."""
    raw = body_0_1(notification_0_1("student-1", 7), notification_0_1("student-2", 1))
    batch = read_batch(NOTIFICATIONS_0_1, raw)
    sent = orjson.loads(raw)["notifications"]
    notifications = [NotificationPublic.model_validate(n) for n in sent]
    assert frames(batch) == [encode_event(n) for n in notifications]
    assert batch.unread == [None, None]  # 0.1 could leave the counts out
    with_counts = body_0_1(notification_0_1("student-1", 7), unread={"student-1": 4})
    assert read_batch(NOTIFICATIONS_0_1, with_counts).unread == [4]


@pytest.mark.parametrize(
    "raw",
    [
        b"not json",
        b"[]",
        body(tenantId=7),
        body(tenantId=None),
        orjson.dumps({k: v for k, v in orjson.loads(body()).items() if k != "seqs"}),
        body(grade={k: v for k, v in GRADE.items() if k != "grade"}),
        body(grade="A"),
        body(seqs=[7]),  # one short
        body(seqs=["7", "1"]),
        body(seqs=[7, 0]),
        body(seqs=[7, True]),
        body(studentIds=["student-1", ["student-2"]]),
        body(publishedAt=[AT, "yesterday"]),
        body(publishedAt=[AT, "2025-03-01T12:30:00"]),  # no offset
        body(unread=[3, "1"]),
        body(unread={"student-1": 3}),
    ],
)
def test_a_malformed_message_is_refused_whole(raw: bytes) -> None:
    with pytest.raises(MalformedBatch):
        read_batch(GRADES, raw)


@pytest.mark.parametrize(
    "raw",
    [
        body_0_1(),
        body_0_1(notification_0_1("student-1", 7), notification_0_1("student-2", 8, extra=1)),
        body_0_1(notification_0_1("student-1", 7), notification_0_1("student-2", 8, grade=3)),
        body_0_1(notification_0_1("student-1", 7, id="07")),
        body_0_1(notification_0_1("student-1", 7, id=7)),
        body_0_1(notification_0_1("student-1", 7), unread={"student-1": "3"}),
        body_0_1(notification_0_1("student-1", 7), unread=[]),
    ],
)
def test_a_malformed_version_0_1_message_is_refused_whole(raw: bytes) -> None:
    with pytest.raises(MalformedBatch):
        read_batch(NOTIFICATIONS_0_1, raw)


def test_a_message_of_an_unknown_type_is_refused() -> None:
    with pytest.raises(MalformedBatch, match="unknown message type"):
        read_batch(None, body())


def test_the_frames_carry_the_models_fields_in_their_order() -> None:
    (notification,) = NotificationBatch.model_validate_json(body(
        studentIds=["student-1"], seqs=[7], publishedAt=[AT], unread=[3]
    )).notifications()  # fmt: skip
    data = encode_event(notification).split(b"data: ", 1)[1]
    assert list(orjson.loads(data)) == list(notification.model_dump(by_alias=True))
    assert orjson.loads(data) == orjson.loads(notification.model_dump_json())
