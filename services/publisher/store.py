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
from services.logs import request_id
from services.publisher.auth import Publisher
from services.publisher.idempotency import IdempotentRequest
from services.publisher.messages import BATCH_JSON, Outgoing, messages_of
from services.publisher.schemas import GradePublish


def next_id(table: str) -> str:
    """SQL for the next id of `table`: its sequence looked up once a statement, not a row."""
    return f"nextval((SELECT CAST(pg_get_serial_sequence('{table}', 'id') AS regclass)))"


# Stores several publishes at once (services.publisher.group_commit): it locks each
# student's sequence row (in sorted order, so concurrent statements cannot deadlock), counts
# the new notification unread, inserts it, and records an outbox row per publish and shard
# naming its notifications: one statement, so the locks are held for no more than one round
# trip and the commit. A student appears once: ON CONFLICT cannot update a row twice. It
# answers a row per outbox row: its publish, its message, and its students' sequence
# numbers for the publish's answer.
#
# Every notification's columns are known before it is inserted (its id drawn from the
# sequence, its time from the clock once its student is locked), so the messages are built
# from them with one join: Postgres cannot estimate joins of these CTEs, and a join chain
# through the inserted rows once chose nested loops that took 90 s for 10,000 students.
PUBLISH = text(f"""
    WITH grades AS (
        SELECT * FROM unnest(
            CAST(:assignment_ids AS text[]), CAST(:grades AS text[]),
            CAST(:teacher_comments AS text[]), CAST(:course_ids AS text[]),
            CAST(:assignment_titles AS text[]), CAST(:published_by AS text[])
        ) WITH ORDINALITY AS g(
            assignment_id, grade, teacher_comment, course_id, assignment_title, published_by,
            publish
        )
    ), recipients AS (
        SELECT * FROM unnest(
            string_to_array(:tenant_ids, E'\n'), string_to_array(:student_ids, E'\n'),
            string_to_array(:routing_keys, E'\n'),
            CAST(string_to_array(:publishes, E'\n') AS bigint[])
        ) AS r(tenant_id, student_id, routing_key, publish)
    ), sequenced AS (
        INSERT INTO student_sequences AS s (tenant_id, student_id, last_seq, unread)
        SELECT tenant_id, student_id, 1, 1 FROM recipients
        ON CONFLICT (tenant_id, student_id)
            DO UPDATE SET last_seq = s.last_seq + 1, unread = s.unread + 1
        RETURNING tenant_id, student_id, last_seq, unread
    ), numbered AS (
        SELECT {next_id("notifications")} AS id,
               s.tenant_id, s.student_id, s.last_seq AS seq, s.unread, clock_timestamp()
               AS published_at, r.publish, r.routing_key, g.assignment_id,
               CAST(g.grade AS jsonb) AS grade, g.teacher_comment, g.course_id,
               g.assignment_title, g.published_by
        FROM sequenced AS s
        JOIN recipients AS r USING (tenant_id, student_id)
        JOIN grades AS g USING (publish)
    ), inserted AS (
        INSERT INTO notifications (
            id, tenant_id, student_id, seq, assignment_id, grade, teacher_comment, course_id,
            assignment_title, published_at, published_by
        )
        SELECT id, tenant_id, student_id, seq, assignment_id, grade, teacher_comment,
               course_id, assignment_title, published_at, published_by
        FROM numbered
    ), messages AS (
        SELECT {next_id("outbox")} AS outbox_id, routing_key,
               publish, {BATCH_JSON} AS body, array_agg(n.id) AS notification_ids,
               array_agg(n.student_id) AS student_ids, array_agg(n.seq) AS seqs,
               array_agg(n.published_at) AS published_at
        FROM numbered AS n
        GROUP BY publish, routing_key
    ), outboxed AS (
        INSERT INTO outbox (id, routing_key, notification_ids)
        SELECT outbox_id, routing_key, notification_ids FROM messages
    )
    SELECT outbox_id, routing_key, publish, body, student_ids, seqs, published_at
    FROM messages
""")


@dataclass(frozen=True)
class Publication:
    """A publish request's grade, its students and the gradebook that sent it."""

    publish: GradePublish
    publisher: Publisher
    recipients: list[str]  # each student once, in the order given: up to 10,000
    request_id: str | None  # its messages carry it, for the stream nodes' log lines

    @classmethod
    def of(cls, publish: GradePublish, publisher: Publisher) -> "Publication":
        return cls(publish, publisher, publish.recipients(), request_id.get())


@dataclass(frozen=True)
class Stored:
    outgoing: list[Outgoing]
    recipients: list[str]  # those whose notifications were stored: none when replayed
    rows: Sequence[Row[Any]]
    encoded: bytes | None = None  # the answer, if it had to be encoded in the transaction
    replayed: bool = False

    @property
    def count(self) -> int:
        """Notifications stored."""
        return len(self.recipients)

    def answer(self) -> bytes:
        """The PublishResult (services.core.events), encoded: after the commit and the
        messages when it can be, since the grades do not wait for it (for 10,000 students,
        tens of milliseconds)."""
        return self.encoded or answer_of(self.recipients, self.rows)


async def store_idempotent(
    engine: AsyncEngine,
    publication: Publication,
    idempotency: IdempotentRequest,
    *,
    shards: int,
    retention_seconds: float,
) -> Stored:
    """A publish with an Idempotency-Key: its claim, notifications and answer commit
    together, or, for a key used before, the first answer."""
    async with transaction(engine) as connection:
        earlier = await idempotency.claim(connection, retention_seconds)
        if earlier is not None:
            return Stored([], [], [], orjson.dumps(earlier), replayed=True)
        [rows] = await insert_notifications(connection, [publication], shards)
        encoded = answer_of(publication.recipients, rows)
        await idempotency.remember(connection, encoded)
    return stored_of(publication, rows, encoded)


async def store_together(
    engine: AsyncEngine, publications: Sequence[Publication], *, shards: int
) -> list[Stored]:
    """Publishes without an Idempotency-Key, in one statement: all are stored, or none."""
    async with transaction(engine, one_statement=True) as connection:
        rows = await insert_notifications(connection, publications, shards)
    return [stored_of(*each) for each in zip(publications, rows, strict=True)]


def stored_of(
    publication: Publication, rows: Sequence[Row[Any]], encoded: bytes | None = None
) -> Stored:
    outgoing = messages_of(rows, publication.request_id)
    return Stored(outgoing, publication.recipients, rows, encoded)


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
    connection: AsyncConnection, publications: Sequence[Publication], shards: int
) -> list[list[Row[Any]]]:
    """The PUBLISH statement's rows, those of each publication in turn. A student must not
    have grades in two of them."""
    recipients = sorted(
        (publication.publisher.tenant_id, student_id, number)
        for number, publication in enumerate(publications, 1)  # as WITH ORDINALITY counts
        for student_id in publication.recipients
    )
    tenant_ids, student_ids, numbers = zip(*recipients, strict=True)
    grades = [publication.publish for publication in publications]
    params = {
        # A column of recipients goes as one text, a line each, that Postgres splits: asyncpg
        # checks each element of a list against the collections ABCs, 4 ms for 10,000
        # strings, against 0.7 ms for the text. Tenant and student ids hold no line breaks
        # (schemas.Identifier, keys_cli.TENANT).
        "tenant_ids": "\n".join(tenant_ids),
        "student_ids": "\n".join(student_ids),
        "routing_keys": "\n".join(  # one broker message per shard and publish, not per student
            routing_key(shard_of(Student(tenant_id, student_id), shards))
            for tenant_id, student_id, _ in recipients
        ),
        "publishes": "\n".join(map(str, numbers)),
        "assignment_ids": [grade.assignment_id for grade in grades],
        "grades": [orjson.dumps(grade.grade).decode() for grade in grades],
        "teacher_comments": [grade.teacher_comment for grade in grades],
        "course_ids": [grade.course_id for grade in grades],
        "assignment_titles": [grade.assignment_title for grade in grades],
        "published_by": [publication.publisher.key_id for publication in publications],
    }
    rows: list[list[Row[Any]]] = [[] for _ in publications]
    for row in await connection.execute(PUBLISH, params):
        rows[row.publish - 1].append(row)
    return rows
