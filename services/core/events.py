"""What a notification looks like outside Postgres: in an SSE frame, the missed endpoint and
the broker message. One model, so every process agrees on it."""

from datetime import datetime
from typing import TYPE_CHECKING

from pydantic import BaseModel, ConfigDict
from pydantic.alias_generators import to_camel

if TYPE_CHECKING:  # clients of the API use these models without the database layer
    from sqlalchemy import Row


class CamelModel(BaseModel):
    """snake_case in Python, camelCase on the wire."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        validate_by_name=True,
        validate_by_alias=True,
        serialize_by_alias=True,
    )


class NotificationPublic(CamelModel):
    id: str  # the student's sequence number: opaque to clients, increasing in their stream
    student_id: str
    assignment_id: str
    grade: str | int | float
    teacher_comment: str | None
    course_id: str | None
    assignment_title: str | None
    published_at: datetime

    @property
    def seq(self) -> int:
        return int(self.id)

    @classmethod
    def from_row(cls, row: "Row[tuple[object, ...]]") -> "NotificationPublic":
        return cls(
            id=str(row.seq),
            student_id=row.student_id,
            assignment_id=row.assignment_id,
            grade=row.grade,
            teacher_comment=row.teacher_comment,
            course_id=row.course_id,
            assignment_title=row.assignment_title,
            published_at=row.published_at,
        )


class PublishedNotification(CamelModel):
    id: str
    student_id: str
    published_at: datetime


class PublishResult(CamelModel):
    """The publish API's answer."""

    count: int
    notifications: list[PublishedNotification]


class NotificationBatch(CamelModel):
    """The broker message: one publish request's notifications of one shard, all of one
    tenant (a publisher key belongs to one)."""

    tenant_id: str
    notifications: list[NotificationPublic]
    unread: dict[str, int] = {}  # student id: unread count, once this notification is in


class UnreadChanged(CamelModel):
    """The broker message sent when a student reads: every open stream of theirs, on any
    node, shows the new count."""

    tenant_id: str
    student_id: str
    unread: int


# The AMQP `type` of each message, so that a consumer knows which model to read.
NOTIFICATIONS, UNREAD = "notifications", "unread"
