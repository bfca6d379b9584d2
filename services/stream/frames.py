"""Server-Sent Events frames, encoded once and shared by every stream they go to."""

from datetime import datetime
from typing import Any

import orjson

from services.core.events import NotificationPublic

KEEPALIVE = b": keepalive\n\n"


def encode_event(notification: NotificationPublic) -> bytes:
    return encode_grade(notification.seq, notification.model_dump(by_alias=True))


def encode_grade(seq: int, fields: dict[str, Any]) -> bytes:
    """A grade's frame from its wire fields (NotificationPublic's, by alias), written as
    pydantic writes the model (times in UTC end in Z), but several times faster. The JSON is
    one line, so no content of a grade can split or forge a frame."""
    data = orjson.dumps(fields, option=orjson.OPT_UTC_Z)
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
