"""A NotificationBatch broker message (services.core.events) as the node reads it on the
live path: with orjson rather than the pydantic model, whose validating and re-encoding of
each notification cost a node a fifth of a delivery. The model stays the message's
contract (the publisher's side is tested against it); this reads its fields, checks the
ones the node acts on, and checks all of them before anything is delivered, so that a
malformed message is dead-lettered whole."""

from datetime import datetime
from typing import Any, NamedTuple

import orjson

from services.core.events import NotificationPublic
from services.core.tenancy import Student

# The wire names of a notification's fields: a message must carry exactly these.
FIELDS = frozenset(field.alias or name for name, field in NotificationPublic.model_fields.items())


class MalformedBatch(ValueError):
    """The message does not read as a NotificationBatch."""


class LiveGrade(NamedTuple):
    student: Student
    seq: int
    fields: dict[str, Any]  # the notification's wire fields, publishedAt a datetime
    unread: int | None  # the student's unread count once it is in, when the message says


def read_batch(body: bytes) -> list[LiveGrade]:
    try:
        batch = orjson.loads(body)
        tenant_id, unread = batch["tenantId"], batch.get("unread", {})
        if not isinstance(tenant_id, str) or not isinstance(unread, dict):
            raise TypeError("tenantId or unread")
        return [read_grade(tenant_id, fields, unread) for fields in batch["notifications"]]
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError) as error:
        raise MalformedBatch(f"not a NotificationBatch: {error!r}") from error


def read_grade(tenant_id: str, fields: dict[str, Any], unread: dict[str, Any]) -> LiveGrade:
    if fields.keys() != FIELDS:
        raise KeyError(sorted(fields.keys() ^ FIELDS))
    student_id, seq, count = fields["studentId"], int(fields["id"]), unread.get(fields["studentId"])
    if not isinstance(student_id, str) or str(seq) != fields["id"]:
        raise TypeError("studentId or id")
    if count is not None and type(count) is not int:
        raise TypeError("unread")
    fields["publishedAt"] = published_at = datetime.fromisoformat(fields["publishedAt"])
    if published_at.tzinfo is None:
        raise ValueError("publishedAt without its offset")
    return LiveGrade(Student(tenant_id, student_id), seq, fields, count)
