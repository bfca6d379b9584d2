"""Purges notifications older than RETENTION_HOURS: an hour that has expired whole is
dropped with its partition, and what the default partition holds is deleted in bounded
batches with a commit each, so publishing and streaming are never blocked behind one long
delete."""

import asyncio
import logging
import signal
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from prometheus_client import start_http_server
from sqlalchemy import ARRAY, BigInteger, String, bindparam, delete, func, text
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from services.core.db import DatabaseUnavailable, create_engine, transaction
from services.core.metrics import RETENTION_FLOOR, RETENTION_PURGED
from services.core.models import IdempotencyKey, RetentionFloor
from services.core.settings import Settings
from services.retention.partitions import (
    Partition,
    create_ahead,
    detach,
    drop,
    lower_unread,
    partitions,
)

logger = logging.getLogger(__name__)

PROGRESS_EVERY_BATCHES = 10

# One batch of the default partition, oldest first, and the sequence rows its purge will
# lower, locked: those of the students with an unread notification in it, since only their
# counts change (and nothing read turns unread again). Locked in byte order ("C"), whatever
# the database's collation: the order publishing sorts its recipients in, so that a purge
# and a batch publish never wait on each other in a cycle. The ids come back as one array
# and the locks as a count: a row each, back to this process, cost it a fifth of a core.
TAKE_BATCH = text("""
    WITH batch AS MATERIALIZED (
        SELECT id, tenant_id, student_id, read_at FROM notifications_default
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

# For the progress lines: the expired hours' sizes as of their last ANALYZE, which
# autovacuum keeps up to date, since counting them would cost the drop's scan once more.
COUNT_EXPIRED = text("""
    SELECT (SELECT count(*) FROM notifications_default WHERE published_at < :older_than)
         + (SELECT coalesce(sum(greatest(reltuples, 0)), 0)::bigint FROM pg_class
            WHERE relname = ANY(:tables) AND relnamespace = current_schema()::regnamespace)
""").bindparams(bindparam("tables", type_=ARRAY(String)))

# Deletes the batch and lowers its students' unread counts in one statement; how many
# were deleted.
PURGE = text("""
    WITH purged AS (
        DELETE FROM notifications_default WHERE id = ANY(:ids)
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


@dataclass
class Progress:
    """A pass's count, logged every PROGRESS_EVERY_BATCHES batches and after each hour
    dropped whole."""

    expected: int
    purged: int = 0
    batches: int = 0

    def add(self, purged: int, *, dropped: bool = False) -> None:
        RETENTION_PURGED.inc(purged)
        self.purged += purged
        self.batches += not dropped
        if dropped or self.batches % PROGRESS_EVERY_BATCHES == 0:
            share = min(100, 100 * self.purged // max(self.expected, 1))
            logger.info(
                "retention: purged %d of %d expired notifications (%d%%)",
                self.purged,
                self.expected,
                share,
            )


async def purge_expired(
    engine: AsyncEngine, *, older_than: datetime, batch_size: int, stop: asyncio.Event
) -> int:
    """How many notifications were purged: the hours that ended before the cut-off, dropped
    whole (services.retention.partitions), and what the default partition holds from before
    it, deleted row by row. A notification is kept RETENTION_HOURS, and at most an hour
    longer. Oldest first, so an interrupted pass leaves no hole in what is retained; `stop`
    is checked between steps. A complete pass records the retention floor."""
    await create_ahead(engine)
    hours = await partitions(engine)
    expired = [hour for hour in hours if hour.attached and hour.ends <= older_than]
    progress = Progress(expected=await count_expired(engine, older_than, expired))
    for hour in (hour for hour in hours if not hour.attached):  # by a pass that stopped
        if stop.is_set():
            return progress.purged
        progress.add(await drop(engine, hour), dropped=True)
    await lower_unread(engine, stop)
    for hour in expired:
        # What the default partition holds from before this hour goes first.
        await delete_rows(engine, hour.starts, batch_size, stop, progress)
        # A busy hour waits for the next pass, and so does everything after it: what is
        # retained never has a hole.
        if stop.is_set() or not await detach(engine, hour):
            return progress.purged
        progress.add(await drop(engine, hour), dropped=True)
        await lower_unread(engine, stop)
    await delete_rows(engine, older_than, batch_size, stop, progress)
    if not stop.is_set():
        await record_floor(engine, older_than)
    return progress.purged


async def count_expired(engine: AsyncEngine, older_than: datetime, hours: list[Partition]) -> int:
    params = {"older_than": older_than, "tables": [hour.name for hour in hours]}
    async with transaction(engine, one_statement=True) as connection:
        return await connection.scalar(COUNT_EXPIRED, params) or 0


async def record_floor(engine: AsyncEngine, older_than: datetime) -> None:
    """Everything published before the floor is gone: the cut-off, or the start of the
    oldest hour still retained, if earlier. Idempotency keys expire with it."""
    retained = [hour.starts for hour in await partitions(engine) if hour.attached]
    purged_before = min([older_than, *retained])
    async with transaction(engine) as connection:
        expired_keys = IdempotencyKey.created_at < older_than
        await connection.execute(delete(IdempotencyKey).where(expired_keys))
        floor = insert(RetentionFloor).values(id=1, purged_before=purged_before)
        kept = floor.on_conflict_do_update(  # it never moves back
            index_elements=[RetentionFloor.id],
            set_={"purged_before": func.greatest(RetentionFloor.purged_before, purged_before)},
        ).returning(RetentionFloor.purged_before)
        stored = (await connection.execute(kept)).scalar_one()
    RETENTION_FLOOR.set(stored.timestamp())


async def delete_rows(
    engine: AsyncEngine,
    older_than: datetime,
    batch_size: int,
    stop: asyncio.Event,
    progress: Progress,
) -> None:
    """Deletes what the default partition holds from before `older_than`, a batch per
    transaction."""
    while not stop.is_set():
        async with transaction(engine) as connection:
            taken, deleted = await purge_batch(connection, older_than, batch_size)
        progress.add(deleted)
        if taken < batch_size:
            return


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
