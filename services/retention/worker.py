"""Deletes notifications older than RETENTION_HOURS, in bounded batches with a commit each,
so publishing and streaming are never blocked behind one long delete."""

import asyncio
import logging
import signal
from collections import Counter
from datetime import UTC, datetime, timedelta

from prometheus_client import start_http_server
from sqlalchemy import bindparam, delete, func, select, tuple_, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from services.core.db import DatabaseUnavailable, create_engine, transaction
from services.core.metrics import RETENTION_FLOOR, RETENTION_PURGED
from services.core.models import IdempotencyKey, Notification, RetentionFloor, StudentSequence
from services.core.settings import Settings

logger = logging.getLogger(__name__)

PROGRESS_EVERY_BATCHES = 10


async def purge_expired(
    engine: AsyncEngine, *, older_than: datetime, batch_size: int, stop: asyncio.Event
) -> int:
    """How many notifications were deleted. Oldest first, so an interrupted pass leaves no
    hole in what is retained; `stop` is checked between batches. A complete pass records
    its cut-off as the retention floor."""
    expired = select(func.count()).where(Notification.published_at < older_than)
    async with transaction(engine) as connection:
        expected = (await connection.scalar(expired)) or 0  # for the progress lines
    total, batches = 0, 0
    while not stop.is_set():
        async with transaction(engine) as connection:
            deleted = await purge_batch(connection, older_than, batch_size)
        total, batches = total + deleted, batches + 1
        RETENTION_PURGED.inc(deleted)
        if batches % PROGRESS_EVERY_BATCHES == 0:
            share = min(100, 100 * total // max(expected, 1))
            logger.info(
                "retention: purged %d of %d expired notifications (%d%%)", total, expected, share
            )
        if deleted < batch_size:
            break
    if stop.is_set():
        return total
    async with transaction(engine) as connection:
        expired_keys = IdempotencyKey.created_at < older_than
        await connection.execute(delete(IdempotencyKey).where(expired_keys))
        floor = insert(RetentionFloor).values(id=1, purged_before=older_than)
        await connection.execute(
            floor.on_conflict_do_update(
                index_elements=[RetentionFloor.id],
                set_={"purged_before": func.greatest(RetentionFloor.purged_before, older_than)},
            )
        )
    RETENTION_FLOOR.set(older_than.timestamp())
    return total


async def purge_batch(connection: AsyncConnection, older_than: datetime, batch_size: int) -> int:
    """Deletes one batch; the unread counts of its students go down by what was unread.
    Their sequence rows are locked first, in order, as publishing and reading lock them."""
    expired = (
        select(Notification.id, Notification.tenant_id, Notification.student_id)
        .where(Notification.published_at < older_than)
        .order_by(Notification.published_at)
        .limit(batch_size)
    )
    rows = (await connection.execute(expired)).all()
    if not rows:
        return 0
    students = sorted({(row.tenant_id, row.student_id) for row in rows})
    student = tuple_(StudentSequence.tenant_id, StudentSequence.student_id)
    lock = select(StudentSequence.tenant_id).where(student.in_(students)).order_by(student)
    await connection.execute(lock.with_for_update())
    purge = delete(Notification).where(Notification.id.in_([row.id for row in rows]))
    purged = await connection.execute(
        purge.returning(Notification.tenant_id, Notification.student_id, Notification.read_at)
    )
    unread = Counter((r.tenant_id, r.student_id) for r in purged if r.read_at is None)
    if unread:
        lower = (
            update(StudentSequence)
            .where(
                StudentSequence.tenant_id == bindparam("tenant"),
                StudentSequence.student_id == bindparam("student"),
            )
            .values(unread=StudentSequence.unread - bindparam("purged_unread"))
        )
        counts = [{"tenant": t, "student": s, "purged_unread": n} for (t, s), n in unread.items()]
        await connection.execute(lower, counts)
    return len(rows)


async def run(settings: Settings, once: bool) -> int:
    """Purges every RETENTION_INTERVAL_SECONDS until SIGTERM or SIGINT; with `once`, one
    pass. Returns what the last pass purged."""
    engine = create_engine(settings, "gradecast-retention")
    if not once and settings.RETENTION_METRICS_PORT:
        # A thread of the standard library's HTTP server: no web stack in this worker.
        try:
            start_http_server(settings.RETENTION_METRICS_PORT, addr=settings.HOST)
        except OSError as error:
            port = settings.RETENTION_METRICS_PORT
            raise SystemExit(f"gradecast: RETENTION_METRICS_PORT {port}: {error}") from error
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    purged = 0
    try:
        while not stop.is_set():
            older_than = datetime.now(UTC) - timedelta(hours=settings.RETENTION_HOURS)
            try:
                purged = await purge_expired(
                    engine,
                    older_than=older_than,
                    batch_size=settings.RETENTION_BATCH_SIZE,
                    stop=stop,
                )
                logger.info("retention: purged %d notifications older than %s", purged, older_than)
            except DatabaseUnavailable as error:
                if once:
                    raise
                logger.warning("retention: database unavailable, next pass later: %s", error)
            if once:
                break
            try:
                await asyncio.wait_for(stop.wait(), settings.RETENTION_INTERVAL_SECONDS)
            except TimeoutError:
                pass
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
        await engine.dispose()
    return purged
