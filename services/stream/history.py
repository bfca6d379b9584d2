"""What Postgres holds of a student's notifications: replays and the missed endpoint."""

import asyncio
from datetime import datetime

from sqlalchemy import ColumnElement, func, select, text, update
from sqlalchemy.ext.asyncio import AsyncEngine

from services.core.db import transaction
from services.core.events import NotificationPublic
from services.core.models import Notification, RetentionFloor, StudentSequence
from services.core.tenancy import Student

# The students as two arrays, two parameters whatever their number: an IN list of pairs
# costs SQLAlchemy more to render than Postgres to answer, and is capped in size.
READ_POSITIONS = text("""
    SELECT s.tenant_id, s.student_id, s.last_seq, s.unread
    FROM unnest(CAST(:tenant_ids AS text[]), CAST(:student_ids AS text[]))
        AS wanted(tenant_id, student_id)
    JOIN student_sequences AS s USING (tenant_id, student_id)
""")

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
    async with transaction(engine, one_statement=True) as connection:
        rows = await connection.execute(query)
    return [NotificationPublic.from_row(row) for row in rows]


def of_student(student: Student) -> tuple[ColumnElement[bool], ColumnElement[bool]]:
    return (
        StudentSequence.tenant_id == student.tenant_id,
        StudentSequence.student_id == student.student_id,
    )


class Positions:
    """Each student's newest sequence number (0 before their first notification) and unread
    count, read with one query for all the streams that open together: those of the same turn
    of the event loop, and, while a read is in flight, all that open meanwhile, read next. A
    burst of connections costs a few round trips, not one each (nor the pool), and the busier
    the node, the more students a query reads."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine
        self.waiting: dict[Student, asyncio.Future[tuple[int, int]]] = {}
        self.reading: set[asyncio.Task[None]] = set()

    async def read(self, student: Student) -> tuple[int, int]:
        future = self.waiting.get(student)
        if future is None:
            loop = asyncio.get_running_loop()
            if not self.waiting and not self.reading:  # read them all when this turn ends
                loop.call_soon(self.read_waiting)
            future = self.waiting[student] = loop.create_future()
        # Shielded: one client leaving must not cancel a read that others wait for.
        return await asyncio.shield(future)

    def read_waiting(self) -> None:
        if not self.waiting:
            return
        batch, self.waiting = self.waiting, {}
        task = asyncio.get_running_loop().create_task(self.load(batch))
        self.reading.add(task)
        task.add_done_callback(self.read_done)

    def read_done(self, task: "asyncio.Task[None]") -> None:
        self.reading.discard(task)
        if not task.cancelled():  # cancelled: the loop is shutting down, start nothing new
            self.read_waiting()  # those that came while it read

    async def load(self, batch: dict[Student, asyncio.Future[tuple[int, int]]]) -> None:
        params = {
            "tenant_ids": [student.tenant_id for student in batch],
            "student_ids": [student.student_id for student in batch],
        }
        try:
            found = {}
            async with transaction(self.engine, one_statement=True) as connection:
                for row in await connection.execute(READ_POSITIONS, params):
                    found[Student(row.tenant_id, row.student_id)] = (row.last_seq, row.unread)
        except Exception as error:
            for future in batch.values():
                if not future.done():
                    future.set_exception(error)
            return
        for student, future in batch.items():
            if not future.done():
                future.set_result(found.get(student, (0, 0)))


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
    async with transaction(engine, one_statement=True) as connection:
        return await connection.scalar(select(RetentionFloor.purged_before))
