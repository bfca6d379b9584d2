"""Whole hours of notifications, dropped rather than deleted row by row (migration 0007).

An expired hour's partition is first detached, which takes its rows out of every query at
once. Then, in one transaction, its unread notifications are counted per student into
purged_unread and its table is dropped. Last, the counts are lowered from purged_unread in
batches of students. Until a student's batch has run, their unread count is higher than
what is retained, by what the hour held unread. Each step commits before the next, so a pass
that stops anywhere is finished by the next one: it finds the detached table by name, or the
counts still owed."""

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import ARRAY, String, TextClause, bindparam, text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from services.core.db import sqlstate, transaction

logger = logging.getLogger(__name__)

HOUR = timedelta(hours=1)
AHEAD = timedelta(hours=2)  # beyond the current hour: passes run every few minutes
# A DETACH waits for the transactions using the hour, and an ATTACH for those reading the
# default partition, and whatever comes after them waits behind (publishes included, and
# those batched with them): each gives up soon, and tries again a little later. Publishes
# take a few milliseconds each; with 100 ms, the slowest publish during a purge was 103 ms.
LOCK_TIMEOUT_MS = 50
LOCK_TRIES = 20
# Sequence rows locked at once while their counts go down: each batch's WAL is flushed
# ahead of the publishes that commit after it, so it is kept small.
STUDENTS_PER_BATCH = 200
OWED_PER_STEP = 2_000  # students recorded as owed per statement
# Seconds of pause per second of work: a dropped hour costs Postgres a quarter of a core
# meanwhile. A million notifications take about ten seconds.
PAUSE_PER_WORK = 3
LOCK_NOT_AVAILABLE, UNDEFINED_TABLE = "55P03", "42P01"

CREATE_AHEAD = text("""
    SELECT count(*) FILTER (WHERE notifications_partition(hour))
    FROM generate_series(now(), now() + :ahead, interval '1 hour') AS hour
""")

# The hourly partitions, attached or left detached by a pass that stopped, by name.
PARTITIONS = text("""
    SELECT c.relname AS name, i.inhrelid IS NOT NULL AS attached
    FROM pg_class AS c LEFT JOIN pg_inherits AS i ON i.inhrelid = c.oid
    WHERE c.relnamespace = current_schema()::regnamespace AND c.relkind = 'r'
      AND c.relname ~ '^notifications_p[0-9]{10}$'
    ORDER BY c.relname
""")

# A detached partition is counted a step at a time, with a pause after each (PAUSE_PER_WORK):
# on two cores, one statement busy for a tenth of a second holds up the publishes meanwhile.
# The steps' counts per student add up in temporary tables, and what is owed is recorded
# from their sums, OWED_PER_STEP students at a time.
PAGES_PER_STEP = 2_000  # of the table: about 170,000 notifications, 80 ms of a core
HOUR_COUNTS = text("""
    CREATE TEMPORARY TABLE hour_counts (
        tenant_id text, student_id text, notifications bigint, unread bigint
    ) ON COMMIT DROP
""")
PAGES = text(
    "SELECT pg_relation_size(CAST(:table AS regclass)) / current_setting('block_size')::int"
)
COUNT_STEP = """
    INSERT INTO hour_counts
    SELECT tenant_id, student_id, count(*), count(*) FILTER (WHERE read_at IS NULL)
    FROM {table}
    WHERE ctid >= format('(%s,0)', CAST(:first AS bigint))::tid
      AND ctid < format('(%s,0)', CAST(:last AS bigint))::tid
    GROUP BY tenant_id, student_id
"""
HOUR_OWED = text("""
    CREATE TEMPORARY TABLE hour_owed ON COMMIT DROP AS
    SELECT tenant_id, student_id, sum(unread) AS unread, row_number() OVER () AS n
    FROM hour_counts
    GROUP BY tenant_id, student_id
    HAVING sum(unread) > 0
""")
RECORD_OWED = text("""
    INSERT INTO purged_unread AS p (tenant_id, student_id, unread)
    SELECT tenant_id, student_id, unread FROM hour_owed WHERE n > :first AND n <= :last
    ON CONFLICT (tenant_id, student_id) DO UPDATE SET unread = p.unread + excluded.unread
""")
HOUR_TOTALS = text("""
    SELECT (SELECT coalesce(sum(notifications), 0) FROM hour_counts) AS notifications,
           (SELECT count(*) FROM hour_owed) AS students
""")

# A batch of students owed, in the primary key's order (no sort of the whole table), and
# their sequence rows locked in the order publishing locks them (see worker.TAKE_BATCH);
# SKIP LOCKED, so that two passes take different batches.
TAKE_OWED = text("""
    WITH batch AS MATERIALIZED (
        SELECT tenant_id, student_id FROM purged_unread
        ORDER BY tenant_id, student_id
        LIMIT :students
        FOR UPDATE SKIP LOCKED
    ), locked AS (
        SELECT 1 FROM student_sequences
        WHERE (tenant_id, student_id) IN (SELECT tenant_id, student_id FROM batch)
        ORDER BY tenant_id COLLATE "C", student_id COLLATE "C"
        FOR UPDATE
    )
    SELECT (SELECT array_agg(tenant_id) FROM batch) AS tenant_ids,
           (SELECT array_agg(student_id) FROM batch) AS student_ids,
           (SELECT count(*) FROM locked) AS locked
""")

LOWER_OWED = text("""
    WITH owed AS (
        DELETE FROM purged_unread AS p
        USING unnest(:tenant_ids, :student_ids) AS batch(tenant_id, student_id)
        WHERE p.tenant_id = batch.tenant_id AND p.student_id = batch.student_id
        RETURNING p.tenant_id, p.student_id, p.unread
    )
    UPDATE student_sequences AS s SET unread = s.unread - owed.unread
    FROM owed
    WHERE s.tenant_id = owed.tenant_id AND s.student_id = owed.student_id
""").bindparams(
    bindparam("tenant_ids", type_=ARRAY(String)), bindparam("student_ids", type_=ARRAY(String))
)


@dataclass(frozen=True)
class Partition:
    name: str  # notifications_pYYYYMMDDHH, its first hour in UTC
    attached: bool

    @property
    def starts(self) -> datetime:
        hour = datetime.strptime(self.name.removeprefix("notifications_p"), "%Y%m%d%H")
        return hour.replace(tzinfo=UTC)

    @property
    def ends(self) -> datetime:
        return self.starts + HOUR


class Busy(Exception):
    """A lock could not be had in LOCK_TRIES tries."""


async def briefly_locking(
    engine: AsyncEngine, statement: TextClause, params: dict[str, Any] | None = None
) -> Any:
    """Runs a statement that takes a table's strongest lock, waiting LOCK_TIMEOUT_MS for it
    at a time; its scalar result, if it has one."""
    for attempt in range(1, LOCK_TRIES + 1):
        try:
            async with transaction(engine) as connection:
                await connection.execute(text(f"SET LOCAL lock_timeout = {LOCK_TIMEOUT_MS}"))
                result = await connection.execute(statement, params)
                return result.scalar() if result.returns_rows else None
        except DBAPIError as error:
            if sqlstate(error) != LOCK_NOT_AVAILABLE:
                raise
            await asyncio.sleep(0.05 * attempt)
    raise Busy()


async def create_ahead(engine: AsyncEngine) -> int:
    """Creates the partitions of this hour and the next ones that are missing; how many.
    While the default partition stays busy, none: the next pass tries again, well before
    the hours ahead begin."""
    try:
        return await briefly_locking(engine, CREATE_AHEAD, {"ahead": AHEAD}) or 0
    except Busy:
        logger.warning("retention: the default partition stayed busy: no hours created ahead")
        return 0


async def partitions(engine: AsyncEngine) -> list[Partition]:
    """Oldest first."""
    async with transaction(engine, one_statement=True) as connection:
        return [Partition(row.name, row.attached) for row in await connection.execute(PARTITIONS)]


async def detach(engine: AsyncEngine, partition: Partition) -> bool:
    """False if the lock could not be had (the next pass tries again) or another pass
    detached it first."""
    detach = text(f'ALTER TABLE notifications DETACH PARTITION "{partition.name}"')
    try:
        await briefly_locking(engine, detach)
    except Busy:
        logger.warning("retention: %s stayed busy: it and the hours after it wait", partition.name)
        return False
    except DBAPIError as error:
        if sqlstate(error) == UNDEFINED_TABLE:
            return False
        raise
    return True


async def drop(engine: AsyncEngine, partition: Partition) -> int:
    """Drops a detached partition once its unread notifications are recorded as owed, in
    one transaction; how many notifications it held (0 if another pass dropped it first)."""
    table = f'"{partition.name}"'
    try:
        async with transaction(engine) as connection:
            await connection.execute(text(f"LOCK TABLE {table} IN ACCESS EXCLUSIVE MODE"))
            dropped = await record_owed(connection, table)
            await connection.execute(text(f"DROP TABLE {table}"))
    except DBAPIError as error:
        if sqlstate(error) == UNDEFINED_TABLE:
            return 0
        raise
    return dropped


async def record_owed(connection: AsyncConnection, table: str) -> int:
    """Adds the table's unread notifications per student to purged_unread, paced; how many
    notifications it holds."""
    await connection.execute(HOUR_COUNTS)
    count_step = text(COUNT_STEP.format(table=table))
    pages = await connection.scalar(PAGES, {"table": table}) or 0
    for first in range(0, pages, PAGES_PER_STEP):
        async with paced():
            await connection.execute(count_step, {"first": first, "last": first + PAGES_PER_STEP})
    await connection.execute(HOUR_OWED)
    totals = (await connection.execute(HOUR_TOTALS)).one()
    for first in range(0, totals.students, OWED_PER_STEP):
        async with paced():
            await connection.execute(RECORD_OWED, {"first": first, "last": first + OWED_PER_STEP})
    return int(totals.notifications)


@asynccontextmanager
async def paced() -> AsyncIterator[None]:
    """A pause after the block, PAUSE_PER_WORK times as long as it took, to leave the cores
    to publishing meanwhile."""
    started = time.monotonic()
    yield
    await asyncio.sleep(PAUSE_PER_WORK * (time.monotonic() - started))


async def lower_unread(engine: AsyncEngine, stop: asyncio.Event) -> None:
    """Takes what dropped partitions owe off their students' unread counts."""
    while not stop.is_set():
        async with paced(), transaction(engine) as connection:
            batch = (await connection.execute(TAKE_OWED, {"students": STUDENTS_PER_BATCH})).one()
            if not batch.student_ids:
                return
            params = {"tenant_ids": batch.tenant_ids, "student_ids": batch.student_ids}
            await connection.execute(LOWER_OWED, params)
