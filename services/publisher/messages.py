"""The broker messages an outbox row stands for, built from the notifications it names:
by a publish right after its commit, or by the relay loop later."""

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from services.core.events import NotificationBatch, NotificationPublic

# The columns each row must have: an outbox row's id and routing key, then one of its
# notifications (tenant_id, student_id, seq, assignment_id, grade, teacher_comment,
# course_id, assignment_title, published_at) and its student's unread count.
Row = Any


@dataclass(frozen=True)
class Outgoing:
    """An outbox row's message: one shard's notifications of one publish."""

    id: int
    routing_key: str
    body: bytes


def messages_of(rows: Iterable[Row]) -> list[Outgoing]:
    by_outbox_row: defaultdict[tuple[int, str], list[Row]] = defaultdict(list)
    for row in rows:
        by_outbox_row[row.outbox_id, row.routing_key].append(row)
    return [
        Outgoing(
            outbox_id,
            routing_key,
            NotificationBatch(
                tenant_id=batch[0].tenant_id,  # a publish is of one tenant
                notifications=[NotificationPublic.from_row(row) for row in batch],
                unread={row.student_id: row.unread for row in batch},
            )
            .model_dump_json()
            .encode(),
        )
        for (outbox_id, routing_key), batch in by_outbox_row.items()
    ]
