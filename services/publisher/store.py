"""Storing a publish: sequences, notifications and outbox rows commit together."""

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import orjson
from sqlalchemy import Row, text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from services.core.broker import routing_key, shard_of
from services.core.db import transaction
from services.core.tenancy import Student
from services.publisher.auth import Publisher
from services.publisher.idempotency import IdempotentRequest
from services.publisher.messages import BATCH_JSON, Outgoing, messages_of
from services.publisher.schemas import GradePublish

# Locks each student's sequence row (in sorted order, so concurrent batches cannot
# deadlock), counts the new notification unread, inserts it, and records an outbox row per
# shard naming the shard's notifications: one statement, so the locks are held for no more
# than one round trip and the commit. It answers a row per outbox row: its message, and its
# students' sequence numbers for the publish's answer.
PUBLISH = text(f"""
    WITH recipients AS (
        SELECT * FROM unnest(CAST(:student_ids AS text[]), CAST(:routing_keys AS text[]))
            AS r(student_id, routing_key)
    ), sequenced AS (
        INSERT INTO student_sequences AS s (tenant_id, student_id, last_seq, unread)
        SELECT CAST(:tenant_id AS text), student_id, 1, 1 FROM recipients
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
        RETURNING id, tenant_id, student_id, seq, assignment_id, grade, teacher_comment,
                  course_id, assignment_title, published_at
    ), outboxed AS (
        INSERT INTO outbox (routing_key, notification_ids)
        SELECT routing_key, array_agg(inserted.id)
        FROM inserted JOIN recipients USING (student_id)
        GROUP BY routing_key
        RETURNING id AS outbox_id, routing_key
    )
    SELECT outboxed.outbox_id, outboxed.routing_key, {BATCH_JSON} AS body,
           array_agg(n.student_id) AS student_ids, array_agg(n.seq) AS seqs,
           array_agg(n.published_at) AS published_at
    FROM inserted AS n
    JOIN sequenced AS s USING (student_id)
    JOIN recipients USING (student_id)
    JOIN outboxed USING (routing_key)
    GROUP BY outboxed.outbox_id, outboxed.routing_key
""")


@dataclass(frozen=True)
class Stored:
    count: int  # notifications stored: none when replayed
    outgoing: list[Outgoing]
    recipients: list[str]
    rows: Sequence[Row[Any]]
    encoded: bytes | None = None  # the answer, if it had to be encoded in the transaction
    replayed: bool = False

    def answer(self) -> bytes:
        """The PublishResult (services.core.events), encoded: after the commit and the
        messages when it can be, since the grades do not wait for it (for 10,000 students,
        tens of milliseconds)."""
        return self.encoded or answer_of(self.recipients, self.rows)


async def store_grades(
    engine: AsyncEngine,
    publish: GradePublish,
    publisher: Publisher,
    *,
    shards: int,
    retention_seconds: float,
    idempotency: IdempotentRequest | None = None,
) -> Stored:
    recipients = publish.recipients()  # deduplicated: up to 10,000 ids
    # Without an idempotency key, the publish is one statement.
    async with transaction(engine, one_statement=idempotency is None) as connection:
        if idempotency is not None:
            earlier = await idempotency.claim(connection, retention_seconds)
            if earlier is not None:
                return Stored(0, [], [], [], orjson.dumps(earlier), replayed=True)
        rows = await insert_notifications(connection, publish, recipients, publisher, shards)
        encoded = None
        if idempotency is not None:
            encoded = answer_of(recipients, rows)
            await idempotency.remember(connection, encoded)
    return Stored(len(recipients), messages_of(rows), recipients, rows, encoded)


def answer_of(recipients: list[str], rows: Sequence[Row[Any]]) -> bytes:
    """The publish's PublishResult, in the request's order of students, encoded at once:
    models for 10,000 students would take longer than storing them."""
    stored: dict[str, dict[str, Any]] = {}
    for row in rows:
        for student_id, seq, published_at in zip(
            row.student_ids, row.seqs, row.published_at, strict=True
        ):
            stored[student_id] = {
                "id": str(seq),
                "studentId": student_id,
                "publishedAt": published_at,
            }
    notifications = [stored[student_id] for student_id in recipients]
    answer = {"count": len(recipients), "notifications": notifications}
    return orjson.dumps(answer, option=orjson.OPT_UTC_Z)  # as pydantic writes times


async def insert_notifications(
    connection: AsyncConnection,
    publish: GradePublish,
    recipients: list[str],
    publisher: Publisher,
    shards: int,
) -> Sequence[Row[Any]]:
    student_ids = sorted(recipients)
    routing_keys = [
        routing_key(shard_of(Student(publisher.tenant_id, student_id), shards))
        for student_id in student_ids
    ]
    params = {
        "tenant_id": publisher.tenant_id,
        "published_by": publisher.key_id,
        "student_ids": student_ids,
        "routing_keys": routing_keys,  # one broker message per shard, not per student
        "assignment_id": publish.assignment_id,
        "grade": orjson.dumps(publish.grade).decode(),
        "teacher_comment": publish.teacher_comment,
        "course_id": publish.course_id,
        "assignment_title": publish.assignment_title,
    }
    return (await connection.execute(PUBLISH, params)).all()
