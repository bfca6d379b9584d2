"""Server-Sent Events frames, encoded once and shared by every stream they go to."""

from services.core.events import NotificationPublic

KEEPALIVE = b": keepalive\n\n"


def encode_event(notification: NotificationPublic) -> bytes:
    """The JSON is one line, so no content of a grade can split or forge a frame."""
    data = notification.model_dump_json()
    return f"id: {notification.id}\nevent: grade\ndata: {data}\n\n".encode()


def encode_retry(milliseconds: int) -> bytes:
    return f"retry: {milliseconds}\n\n".encode()
