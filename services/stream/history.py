"""What Postgres holds of a student's notifications: replays and the missed endpoint."""

from datetime import datetime

from sqlalchemy import ColumnElement, func, select, update
from sqlalchemy.ext.asyncio import AsyncEngine

from services.core.db import transaction
from services.core.events import NotificationPublic
from services.core.models import Notification, RetentionFloor, StudentSequence
from services.core.tenancy import Student

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


def of_student(student: Student) -> tuple[ColumnElement[bool], ColumnElement[bool]]:
    return (
        StudentSequence.tenant_id == student.tenant_id,
        StudentSequence.student_id == student.student_id,
    )


async def position(engine: AsyncEngine, student: Student) -> tuple[int, int]:
    """The student's newest sequence number (0 before their first notification) and how
    many of their notifications are unread."""
    query = select(StudentSequence.last_seq, StudentSequence.unread).where(*of_student(student))
    async with transaction(engine) as connection:
        row = (await connection.execute(query)).first()
    return (row.last_seq, row.unread) if row else (0, 0)


async def mark_read(engine: AsyncEngine, student: Student, seq: int | None) -> int | None:
    """Marks one notification read (or all, with no `seq`); the unread count after, or None
    when the student has no such notification. The sequence row is locked first, as a
    publish locks it, so that no count is lost between the two."""
    notifications = update(Notification).where(
        Notification.tenant_id == student.tenant_id,
        Notification.student_id == student.student_id,
        Notification.read_at.is_(None),
    )
    if seq is not None:
        notifications = notifications.where(Notification.seq == seq)
    async with transaction(engine) as connection:
        lock = select(StudentSequence.unread).where(*of_student(student)).with_for_update()
        if await connection.scalar(lock) is None:
            return None  # nothing was ever published to this student
        marked = (await connection.execute(notifications.values(read_at=func.now()))).rowcount
        if seq is not None and not marked:
            exists = select(Notification.id).where(
                Notification.tenant_id == student.tenant_id,
                Notification.student_id == student.student_id,
                Notification.seq == seq,
            )
            if await connection.scalar(exists) is None:
                return None
        count = update(StudentSequence).where(*of_student(student))
        count = count.values(unread=StudentSequence.unread - marked)
        return await connection.scalar(count.returning(StudentSequence.unread))


async def purged_before(engine: AsyncEngine) -> datetime | None:
    """The retention floor: everything published before it has been purged."""
    async with transaction(engine) as connection:
        return await connection.scalar(select(RetentionFloor.purged_before))
