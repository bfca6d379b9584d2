"""Server-Sent Events frames, encoded once and shared by every stream they go to."""

from datetime import datetime

import orjson

from services.core.events import NotificationPublic

KEEPALIVE = b": keepalive\n\n"


def encode_event(notification: NotificationPublic) -> bytes:
    """The JSON is one line, so no content of a grade can split or forge a frame."""
    data = notification.model_dump_json()
    return f"id: {notification.id}\nevent: grade\ndata: {data}\n\n".encode()


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
