"""Server-Sent Events frames, encoded once and shared by every stream they go to."""

from datetime import datetime
from typing import Any

import orjson

from services.core.events import GradeFields, NotificationPublic

KEEPALIVE = b": keepalive\n\n"
# The names of the fields every recipient of a grade shares (GradeFields).
SHARED_FIELDS = set(GradeFields.model_fields)


def encode_event(notification: NotificationPublic) -> bytes:
    """A grade's frame from its model, as replays send it."""
    shared = notification.model_dump(by_alias=True, include=SHARED_FIELDS)
    return encode_grade(
        notification.seq, notification.student_id, encode_shared(shared), notification.published_at
    )


def encode_shared(fields: dict[str, Any]) -> bytes:
    """The part of a grade's frame that all its recipients share, from its GradeFields by
    alias and in their order: encoded once for them all."""
    return orjson.dumps(fields)[1:-1]


def encode_grade(seq: int, student_id: str, shared: bytes, published_at: datetime) -> bytes:
    """A grade's frame, written as pydantic writes NotificationPublic (times in UTC end in
    Z), but several times faster. The JSON is one line, so no content of a grade can split
    or forge a frame."""
    student = orjson.dumps(student_id)
    at = orjson.dumps(published_at, option=orjson.OPT_UTC_Z)
    data = b'{"id":"%d","studentId":%b,%b,"publishedAt":%b}' % (seq, student, shared, at)
    return b"id: %d\nevent: grade\ndata: %b\n\n" % (seq, data)


def encode_retry(milliseconds: int) -> bytes:
    return f"retry: {milliseconds}\n\n".encode()


def encode_stats(unread: int) -> bytes:
    """The student's unread count, sent on opening and whenever it changes."""
    return f'event: stats\ndata: {{"unread":{unread}}}\n\n'.encode()


def encode_reset(reason: str, purged_before: datetime | None) -> bytes:
    """Some of what the client asked for is no longer retained ("expired"), or its id was
    never this student's ("unknown-id"): it should reload rather than trust it has all.
    `purgedBefore` is the retention floor. No `id:`, so Last-Event-ID stays as it was."""
    data = orjson.dumps({"reason": reason, "purgedBefore": purged_before}).decode()
    return f"event: reset\ndata: {data}\n\n".encode()
