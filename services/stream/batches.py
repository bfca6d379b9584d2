"""A grade's broker message (services.core.events.NotificationBatch) as the node reads it on
the live path: with orjson rather than the pydantic model, which cost a node a fifth of a
delivery when a message carried each notification whole. The model stays the message's
contract (the publisher's side is tested against it); this reads its fields, checks the
ones the node acts on, and checks all of them before anything is delivered, so that a
malformed message is dead-lettered whole."""

from datetime import datetime
from typing import Any, NamedTuple

import orjson

from services.core.events import GRADES, NOTIFICATIONS_0_1, GradeFields, NotificationPublic
from services.stream.frames import encode_shared

# The wire names of the fields every recipient shares, in the order frames carry them.
SHARED = [field.alias or name for name, field in GradeFields.model_fields.items()]
# Those of a whole notification, in version 0.1's message.
FIELDS = frozenset(field.alias or name for name, field in NotificationPublic.model_fields.items())


class MalformedBatch(ValueError):
    """The message does not read as a grade's message."""


class LiveBatch(NamedTuple):
    tenant_id: str
    shared: bytes  # the grade's fields as every recipient's frame carries them
    student_ids: list[str]  # and, in the same order, each student's:
    seqs: list[int]
    published_at: list[datetime]
    unread: list[int | None]  # their unread count once it is in, when the message says


def read_batch(message_type: str | None, body: bytes) -> LiveBatch:
    """A message of either type a publisher sends (services.core.events)."""
    try:
        batch = orjson.loads(body)
        if message_type == GRADES:
            return live_batch(
                batch["tenantId"], batch["grade"], batch["studentIds"], batch["seqs"],
                batch["publishedAt"], batch["unread"],
            )  # fmt: skip
        if message_type == NOTIFICATIONS_0_1:
            return read_batch_0_1(batch)
        raise ValueError(f"unknown message type {message_type!r}")
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError) as error:
        raise MalformedBatch(f"not a grade's message: {error!r}") from error


def read_batch_0_1(batch: dict[str, Any]) -> LiveBatch:
    """Version 0.1's message: a whole notification per student, all of one grade."""
    notifications, unread = batch["notifications"], batch.get("unread", {})
    if not isinstance(notifications, list) or not notifications or not isinstance(unread, dict):
        raise TypeError("notifications or unread")
    for fields in notifications:
        if fields.keys() != FIELDS:
            raise KeyError(sorted(fields.keys() ^ FIELDS))
        if any(fields[key] != notifications[0][key] for key in SHARED):
            raise ValueError("notifications of different grades")
    ids = [fields["id"] for fields in notifications]
    if not all(isinstance(id_, str) and str(int(id_)) == id_ for id_ in ids):
        raise TypeError("id")
    student_ids = [fields["studentId"] for fields in notifications]
    return live_batch(
        batch["tenantId"], notifications[0], student_ids, [int(id_) for id_ in ids],
        [fields["publishedAt"] for fields in notifications],
        [unread.get(student_id) for student_id in student_ids],
    )  # fmt: skip


def live_batch(
    tenant_id: Any, grade: Any, student_ids: Any, seqs: Any, published_at: Any, unread: Any
) -> LiveBatch:
    if not isinstance(tenant_id, str) or not isinstance(grade, dict):
        raise TypeError("tenantId or grade")
    lists = (student_ids, seqs, published_at, unread)
    if not all(isinstance(values, list) for values in lists):
        raise TypeError("studentIds, seqs, publishedAt or unread")
    if len({len(values) for values in lists}) != 1:
        raise ValueError("studentIds, seqs, publishedAt and unread differ in length")
    if not all(isinstance(student_id, str) for student_id in student_ids):
        raise TypeError("studentIds")
    if not all(type(seq) is int and seq > 0 for seq in seqs):
        raise TypeError("seqs")
    if not all(count is None or type(count) is int for count in unread):
        raise TypeError("unread")
    times = [datetime.fromisoformat(at) for at in published_at]
    if any(at.tzinfo is None for at in times):
        raise ValueError("publishedAt without its offset")
    shared = encode_shared({key: grade[key] for key in SHARED})
    return LiveBatch(tenant_id, shared, student_ids, seqs, times, unread)
