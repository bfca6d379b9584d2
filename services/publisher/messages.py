"""The broker messages an outbox row stands for, built from the notifications it names:
by a publish right after its commit, or by the relay loop later."""

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

# The body of one outbox row's message, a NotificationBatch (services.core.events), built
# by Postgres from the row's notifications `n` and their students' sequences `s`, grouped
# by outbox row: for 10,000 students a few milliseconds, against tens for building and
# encoding as many models. Groups without notifications (purged since) have no body.
BATCH_JSON = """
    CASE WHEN count(n.id) > 0 THEN CAST(json_build_object(
        'tenantId', min(n.tenant_id),
        'notifications', json_agg(json_build_object(
            'id', CAST(n.seq AS text), 'studentId', n.student_id,
            'assignmentId', n.assignment_id, 'grade', n.grade,
            'teacherComment', n.teacher_comment, 'courseId', n.course_id,
            'assignmentTitle', n.assignment_title, 'publishedAt', n.published_at
        )) FILTER (WHERE n.id IS NOT NULL),
        'unread', json_object_agg(n.student_id, s.unread) FILTER (WHERE n.id IS NOT NULL)
    ) AS text) END
"""

Row = Any  # with the columns outbox_id, routing_key and body (BATCH_JSON)


@dataclass(frozen=True)
class Outgoing:
    """An outbox row's message: one shard's notifications of one publish."""

    id: int
    routing_key: str
    body: bytes


def messages_of(rows: Iterable[Row]) -> list[Outgoing]:
    """The messages of the rows that have a body."""
    return [
        Outgoing(row.outbox_id, row.routing_key, row.body.encode())
        for row in rows
        if row.body is not None
    ]
