"""What Postgres holds of a student's notifications: replays and the missed endpoint."""

from datetime import datetime

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from services.core.db import transaction
from services.core.events import NotificationPublic, Student
from services.core.models import Notification, RetentionFloor, StudentSequence

COLUMNS = (
    Notification.seq,
    Notification.student_id,
    Notification.assignment_id,
    Notification.grade,
    Notification.teacher_comment,
    Notification.course_id,
    Notification.assignment_title,
    Notification.published_at,
)


async def notifications_of(
    engine: AsyncEngine,
    student: Student,
    *,
    after: int | None = None,
    since: datetime | None = None,
    limit: int,
) -> list[NotificationPublic]:
    """Oldest first: those after a sequence number, or published at or after a time."""
    query = select(*COLUMNS).where(
        Notification.tenant_id == student.tenant_id, Notification.student_id == student.student_id
    )
    if after is not None:
        query = query.where(Notification.seq > after)
    if since is not None:
        query = query.where(Notification.published_at >= since)
    query = query.order_by(Notification.seq).limit(limit)
    async with transaction(engine) as connection:
        rows = await connection.execute(query)
    return [NotificationPublic.from_row(row) for row in rows]


async def last_seq(engine: AsyncEngine, student: Student) -> int:
    """The student's newest sequence number; 0 before their first notification."""
    query = select(StudentSequence.last_seq).where(
        StudentSequence.tenant_id == student.tenant_id,
        StudentSequence.student_id == student.student_id,
    )
    async with transaction(engine) as connection:
        return (await connection.scalar(query)) or 0


async def purged_before(engine: AsyncEngine) -> datetime | None:
    """The retention floor: everything published before it has been purged."""
    async with transaction(engine) as connection:
        return await connection.scalar(select(RetentionFloor.purged_before))
