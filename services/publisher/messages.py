"""The broker messages an outbox row stands for, built from the notifications it names:
by a publish right after its commit, or by the relay loop later."""

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

# The body of one outbox row's message, a NotificationBatch (services.core.events), built
# by Postgres from the row's notifications `n` (with their students' unread counts), grouped
# by outbox row: for 10,000 students a few milliseconds, against tens for building and
# encoding as many models. A row's notifications are all of one publish, so any of them
# gives the grade (min() picks one). Groups without notifications (purged since) have no
# body.
BATCH_JSON = """
    CASE WHEN count(n.id) > 0 THEN CAST(json_build_object(
        'tenantId', min(n.tenant_id),
        'grade', json_build_object(
            'assignmentId', min(n.assignment_id),
            'grade', CAST(min(CAST(n.grade AS text)) AS json),
            'teacherComment', min(n.teacher_comment),
            'courseId', min(n.course_id),
            'assignmentTitle', min(n.assignment_title)
        ),
        'studentIds', json_agg(n.student_id) FILTER (WHERE n.id IS NOT NULL),
        'seqs', json_agg(n.seq) FILTER (WHERE n.id IS NOT NULL),
        'publishedAt', json_agg(n.published_at) FILTER (WHERE n.id IS NOT NULL),
        'unread', json_agg(n.unread) FILTER (WHERE n.id IS NOT NULL)
    ) AS text) END
"""

Row = Any  # with the columns outbox_id, routing_key and body (BATCH_JSON)


@dataclass(frozen=True)
class Outgoing:
    """An outbox row's message: one shard's notifications of one publish."""

    id: int
    routing_key: str
    body: bytes
    request_id: str | None  # the publish request it came from, if it is sent by that request


def messages_of(rows: Iterable[Row], request_id: str | None = None) -> list[Outgoing]:
    """The messages of the rows that have a body."""
    return [
        Outgoing(row.outbox_id, row.routing_key, row.body.encode(), request_id)
        for row in rows
        if row.body is not None
    ]
