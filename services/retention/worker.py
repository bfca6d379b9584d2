"""Deletes notifications older than RETENTION_HOURS, in bounded batches with a commit each,
so publishing and streaming are never blocked behind one long delete."""

import asyncio
import logging
import signal
import time
from datetime import UTC, datetime, timedelta

from prometheus_client import start_http_server
from sqlalchemy import ARRAY, BigInteger, bindparam, delete, func, select, text
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from services.core.db import DatabaseUnavailable, create_engine, transaction
from services.core.metrics import RETENTION_FLOOR, RETENTION_PURGED
from services.core.models import IdempotencyKey, Notification, RetentionFloor
from services.core.settings import Settings

logger = logging.getLogger(__name__)

PROGRESS_EVERY_BATCHES = 10

# One batch, oldest first, and the sequence rows its purge will lower, locked: those of the
# students with an unread notification in it, since only their counts change (and nothing
# read turns unread again). Locked in byte order ("C"), whatever the database's collation:
# the order publishing sorts its recipients in, so that a purge and a batch publish never
# wait on each other in a cycle. The ids come back as one array and the locks as a count:
# a row each, back to this process, cost it a fifth of a core.
TAKE_BATCH = text("""
    WITH batch AS MATERIALIZED (
        SELECT id, tenant_id, student_id, read_at FROM notifications
        WHERE published_at < :older_than
        ORDER BY published_at
        LIMIT :batch_size
    ), locked AS (
        SELECT 1 FROM student_sequences
        WHERE (tenant_id, student_id) IN (
            SELECT tenant_id, student_id FROM batch WHERE read_at IS NULL
        )
        ORDER BY tenant_id COLLATE "C", student_id COLLATE "C"
        FOR UPDATE
    )
    SELECT (SELECT array_agg(id) FROM batch) AS ids, (SELECT count(*) FROM locked) AS locked
""")

# Deletes the batch and lowers its students' unread counts in one statement; how many
# were deleted.
PURGE = text("""
    WITH purged AS (
        DELETE FROM notifications WHERE id = ANY(:ids)
        RETURNING tenant_id, student_id, read_at
    ), unread AS (
        SELECT tenant_id, student_id, count(*) AS purged FROM purged
        WHERE read_at IS NULL
        GROUP BY tenant_id, student_id
    ), lowered AS (
        UPDATE student_sequences AS s SET unread = s.unread - unread.purged
        FROM unread
        WHERE s.tenant_id = unread.tenant_id AND s.student_id = unread.student_id
    )
    SELECT count(*) FROM purged
""").bindparams(bindparam("ids", type_=ARRAY(BigInteger)))


async def purge_expired(
    engine: AsyncEngine, *, older_than: datetime, batch_size: int, stop: asyncio.Event
) -> int:
    """How many notifications were deleted. Oldest first, so an interrupted pass leaves no
    hole in what is retained; `stop` is checked between batches. A complete pass records
    its cut-off as the retention floor."""
    expired = select(func.count()).where(Notification.published_at < older_than)
    async with transaction(engine, one_statement=True) as connection:
        expected = (await connection.scalar(expired)) or 0  # for the progress lines
    total, batches = 0, 0
    while not stop.is_set():
        async with transaction(engine) as connection:
            taken, deleted = await purge_batch(connection, older_than, batch_size)
        total, batches = total + deleted, batches + 1
        RETENTION_PURGED.inc(deleted)
        if batches % PROGRESS_EVERY_BATCHES == 0:
            share = min(100, 100 * total // max(expected, 1))
            logger.info(
                "retention: purged %d of %d expired notifications (%d%%)", total, expected, share
            )
        if taken < batch_size:
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


async def purge_batch(
    connection: AsyncConnection, older_than: datetime, batch_size: int
) -> tuple[int, int]:
    """Deletes one batch: how many rows it took, and how many of them it deleted (another
    pass may have got some first). The unread counts of its students go down by what was
    unread; their sequence rows are locked first, in order, as publishing and reading lock
    them. The batch goes back to Postgres as one array, not a parameter per row: a batch
    spans thousands of students, and an IN list that long is refused ("stack depth limit")."""
    taken = await connection.execute(
        TAKE_BATCH, {"older_than": older_than, "batch_size": batch_size}
    )
    ids = taken.one().ids
    if not ids:
        return 0, 0
    return len(ids), await connection.scalar(PURGE, {"ids": ids}) or 0


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
            started = time.monotonic()
            try:
                purged = await purge_expired(
                    engine,
                    older_than=older_than,
                    batch_size=settings.RETENTION_BATCH_SIZE,
                    stop=stop,
                )
                took = time.monotonic() - started
                logger.info(
                    "retention: purged %d notifications older than %s in %.1f s",
                    purged,
                    older_than,
                    took,
                )
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
