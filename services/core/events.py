"""What a notification looks like outside Postgres: in an SSE frame, the missed endpoint and
the broker message. One model, so every process agrees on it."""

from datetime import datetime
from typing import TYPE_CHECKING

from pydantic import BaseModel, ConfigDict, model_validator
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


class GradeFields(CamelModel):
    """What every recipient of one publish is sent alike."""

    assignment_id: str
    grade: str | int | float
    teacher_comment: str | None
    course_id: str | None
    assignment_title: str | None


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
    """The broker message: one publish request's grade to the students of one shard, all of
    one tenant (a publisher key belongs to one). The grade once, and per student, in lists
    of one length and order, their sequence number, time and unread count once it is in:
    for 10,000 students, a quarter of the size of a notification each."""

    tenant_id: str
    grade: GradeFields
    student_ids: list[str]
    seqs: list[int]
    published_at: list[datetime]
    unread: list[int]

    @model_validator(mode="after")
    def one_entry_per_student(self) -> "NotificationBatch":
        lengths = {len(self.seqs), len(self.published_at), len(self.unread)}
        if lengths != {len(self.student_ids)}:
            raise ValueError("studentIds, seqs, publishedAt and unread differ in length")
        return self

    def notifications(self) -> list[NotificationPublic]:
        """The notifications the message stands for."""
        grade = self.grade.model_dump()
        return [
            NotificationPublic(id=str(seq), student_id=student_id, published_at=at, **grade)
            for student_id, seq, at in zip(
                self.student_ids, self.seqs, self.published_at, strict=True
            )
        ]


class UnreadChanged(CamelModel):
    """The broker message sent when a student reads: every open stream of theirs, on any
    node, shows the new count."""

    tenant_id: str
    student_id: str
    unread: int


# The AMQP `type` of each message, so that a consumer knows which model to read.
GRADES, UNREAD = "grades", "unread"
# Version 0.1's grade message, a whole notification per student: still read by stream nodes,
# so that they can be upgraded before the publishers that send it.
NOTIFICATIONS_0_1 = "notifications"
