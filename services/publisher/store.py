"""Storing a publish: sequences, notifications and outbox rows commit together."""

from collections import defaultdict
from dataclasses import dataclass

import orjson
from sqlalchemy import insert, text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from services.core.broker import routing_key, shard_of
from services.core.db import transaction
from services.core.events import (
    NotificationBatch,
    NotificationPublic,
    PublishedNotification,
    PublishResult,
)
from services.core.models import OutboxMessage
from services.core.tenancy import Student
from services.publisher.auth import Publisher
from services.publisher.idempotency import IdempotentRequest
from services.publisher.schemas import GradePublish

# Locks each student's sequence row (in sorted order, so concurrent batches cannot
# deadlock), counts the new notification unread, and inserts it, in one round trip.
INSERT_NOTIFICATIONS = text("""
    WITH sequenced AS (
        INSERT INTO student_sequences AS s (tenant_id, student_id, last_seq, unread)
        SELECT CAST(:tenant_id AS text), student_id, 1, 1
        FROM unnest(CAST(:student_ids AS text[])) AS student_id
        ON CONFLICT (tenant_id, student_id)
            DO UPDATE SET last_seq = s.last_seq + 1, unread = s.unread + 1
        RETURNING student_id, last_seq, unread
    ), inserted AS (
    INSERT INTO notifications (
        tenant_id, student_id, seq, assignment_id, grade, teacher_comment, course_id,
        assignment_title, published_by
    )
    SELECT CAST(:tenant_id AS text), student_id, last_seq, CAST(:assignment_id AS text),
           CAST(:grade AS jsonb), CAST(:teacher_comment AS text), CAST(:course_id AS text),
           CAST(:assignment_title AS text), CAST(:published_by AS text)
    FROM sequenced
    RETURNING student_id, seq, assignment_id, grade, teacher_comment, course_id,
              assignment_title, published_at
    )
    SELECT inserted.*, sequenced.unread FROM inserted JOIN sequenced USING (student_id)
""")


@dataclass(frozen=True)
class Inserted:
    notifications: list[NotificationPublic]
    unread: dict[str, int]  # each recipient's unread count, this notification included


@dataclass(frozen=True)
class Outgoing:
    """An outbox row: one broker message, sent after the commit."""

    id: int
    routing_key: str
    body: bytes


@dataclass(frozen=True)
class Stored:
    result: PublishResult
    outgoing: list[Outgoing]
    replayed: bool = False


async def store_grades(
    engine: AsyncEngine,
    publish: GradePublish,
    publisher: Publisher,
    *,
    shards: int,
    retention_seconds: float,
    idempotency: IdempotentRequest | None = None,
) -> Stored:
    async with transaction(engine) as connection:
        if idempotency is not None:
            earlier = await idempotency.claim(connection, retention_seconds)
            if earlier is not None:
                return Stored(PublishResult.model_validate(earlier), [], replayed=True)
        recipients = publish.recipients()  # deduplicated: up to 10,000 ids
        inserted = await insert_notifications(connection, publish, recipients, publisher)
        outgoing = await insert_outbox(connection, publisher.tenant_id, inserted, shards)
        by_student = {n.student_id: n for n in inserted.notifications}
        result = PublishResult(
            count=len(inserted.notifications),
            notifications=[
                PublishedNotification(id=n.id, student_id=n.student_id, published_at=n.published_at)
                for n in map(by_student.__getitem__, recipients)
            ],
        )
        if idempotency is not None:
            await idempotency.remember(connection, result.model_dump(mode="json"))
    return Stored(result, outgoing)


async def insert_notifications(
    connection: AsyncConnection,
    publish: GradePublish,
    recipients: list[str],
    publisher: Publisher,
) -> Inserted:
    params = {
        "tenant_id": publisher.tenant_id,
        "published_by": publisher.key_id,
        "student_ids": sorted(recipients),
        "assignment_id": publish.assignment_id,
        "grade": orjson.dumps(publish.grade).decode(),
        "teacher_comment": publish.teacher_comment,
        "course_id": publish.course_id,
        "assignment_title": publish.assignment_title,
    }
    rows = (await connection.execute(INSERT_NOTIFICATIONS, params)).all()
    return Inserted(
        [NotificationPublic.from_row(row) for row in rows],
        {row.student_id: row.unread for row in rows},
    )


async def insert_outbox(
    connection: AsyncConnection,
    tenant_id: str,
    inserted: Inserted,
    shards: int,
) -> list[Outgoing]:
    """One broker message per shard, not per student."""
    by_shard: defaultdict[int, list[NotificationPublic]] = defaultdict(list)
    for notification in inserted.notifications:
        student = Student(tenant_id, notification.student_id)
        by_shard[shard_of(student, shards)].append(notification)
    messages = [
        (
            routing_key(shard),
            NotificationBatch(
                tenant_id=tenant_id,
                notifications=batch,
                unread={n.student_id: inserted.unread[n.student_id] for n in batch},
            )
            .model_dump_json()
            .encode(),
        )
        for shard, batch in by_shard.items()
    ]
    if not messages:
        return []
    rows = [{"routing_key": key, "body": body} for key, body in messages]
    statement = insert(OutboxMessage).returning(OutboxMessage.id, sort_by_parameter_order=True)
    ids = await connection.scalars(statement, rows)
    return [Outgoing(id, key, body) for id, (key, body) in zip(ids, messages, strict=True)]
