"""The retention worker against the run's Postgres, run as users run it."""

import asyncio
import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta

import pytest
from prometheus_client import REGISTRY
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from services.launch import GRADECAST
from services.retention import partitions
from services.retention.worker import purge_expired, record_floor
from tests.support import ROOT, unique

INSERT = text("""
    INSERT INTO notifications (student_id, seq, assignment_id, grade, published_at)
    SELECT :student, seq, 'hw', '1', :published_at
    FROM generate_series(CAST(:first AS bigint), CAST(:last AS bigint)) AS seq
""")


async def insert_aged(db: AsyncEngine, student: str, seqs: range, age: timedelta) -> None:
    """Notifications published `age` ago, written straight to the table."""
    params = {"student": student, "published_at": datetime.now(UTC) - age}
    async with db.begin() as connection:
        await connection.execute(INSERT, {**params, "first": seqs[0], "last": seqs[-1]})


async def read_first_two(db: AsyncEngine, student: str, *, last_seq: int, unread: int) -> None:
    """Seqs 1 and 2 read, and the student's sequence row as publishing left it."""
    async with db.begin() as connection:
        await connection.execute(
            text("UPDATE notifications SET read_at = now() WHERE student_id = :s AND seq < 3"),
            {"s": student},
        )
        await connection.execute(
            text(
                "INSERT INTO student_sequences (student_id, last_seq, unread)"
                " VALUES (:s, :last_seq, :unread)"
            ),
            {"s": student, "last_seq": last_seq, "unread": unread},
        )


async def seqs_of(db: AsyncEngine, student: str) -> list[int]:
    query = text("SELECT seq FROM notifications WHERE student_id = :s ORDER BY seq")
    async with db.connect() as connection:
        return list((await connection.scalars(query, {"s": student})).all())


def run_retention(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*GRADECAST, "retention", *args],
        env={**os.environ, **env},
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


async def test_once_purges_only_what_is_older_than_the_retention_window(
    db: AsyncEngine, service_env: dict[str, str]
) -> None:
    student = unique()
    await insert_aged(db, student, range(1, 8), timedelta(hours=30))
    await insert_aged(db, student, range(8, 11), timedelta(hours=20))

    # Batches of 3 over 7 expired rows: three batches, the last one short.
    env = {**service_env, "RETENTION_HOURS": "24", "RETENTION_BATCH_SIZE": "3"}
    result = run_retention(env, "--once")
    assert result.returncode == 0, result.stderr
    assert "purged 7 notifications" in result.stdout
    assert await seqs_of(db, student) == [8, 9, 10]

    again = run_retention(env, "--once")
    assert "purged 0 notifications" in again.stdout

    async with db.connect() as connection:
        floor = await connection.scalar(text("SELECT purged_before FROM retention_floor"))
    assert (
        timedelta(hours=23, minutes=59) < datetime.now(UTC) - floor < timedelta(hours=24, minutes=1)
    )


async def test_retention_hours_can_be_a_fraction_of_an_hour(
    db: AsyncEngine, service_env: dict[str, str]
) -> None:
    student = unique()
    await insert_aged(db, student, range(1, 3), timedelta(hours=2))
    env = {**service_env, "RETENTION_HOURS": str(10 / 3600)}
    result = run_retention(env, "--once")
    assert result.returncode == 0, result.stderr
    assert await seqs_of(db, student) == []


# Per student: seq 1 expired and unread, seq 2 expired and read, seq 3 retained and unread.
MANY_STUDENTS = text("""
    WITH students AS (
        SELECT CAST(:prefix AS text) || k AS student_id FROM generate_series(1, :count) AS k
    ), inserted AS (
        INSERT INTO notifications (student_id, seq, assignment_id, grade, published_at, read_at)
        SELECT student_id, seq, 'hw', '1',
               now() - CASE WHEN seq < 3 THEN interval '30 hours' ELSE interval '1 hour' END,
               CASE WHEN seq = 2 THEN now() END
        FROM students, generate_series(1, 3) AS seq
    )
    INSERT INTO student_sequences (student_id, last_seq, unread)
    SELECT student_id, 3, 2 FROM students
""")


async def test_a_batch_spanning_thousands_of_students_lowers_each_unread_count(
    db: AsyncEngine, service_env: dict[str, str]
) -> None:
    prefix = unique() + "-"
    async with db.begin() as connection:
        await connection.execute(MANY_STUDENTS, {"prefix": prefix, "count": 10_000})

    result = run_retention(service_env, "--once")  # batches of 10,000: as many students
    assert result.returncode == 0, result.stderr

    query = text("""
        SELECT s.unread, array_agg(n.seq ORDER BY n.seq) AS seqs
        FROM student_sequences s JOIN notifications n USING (tenant_id, student_id)
        WHERE starts_with(s.student_id, :prefix)
        GROUP BY s.unread, s.student_id
    """)
    async with db.connect() as connection:
        rows = (await connection.execute(query, {"prefix": prefix})).all()
    assert len(rows) == 10_000
    assert {(row.unread, tuple(row.seqs)) for row in rows} == {(1, (3,))}


async def test_purging_only_read_notifications_leaves_the_unread_count(
    db: AsyncEngine, service_env: dict[str, str]
) -> None:
    student = unique()
    await insert_aged(db, student, range(1, 3), timedelta(hours=30))
    await insert_aged(db, student, range(3, 4), timedelta(hours=1))
    await read_first_two(db, student, last_seq=3, unread=1)

    result = run_retention(service_env, "--once")
    assert result.returncode == 0, result.stderr
    assert await seqs_of(db, student) == [3]
    async with db.connect() as connection:
        unread = await connection.scalar(
            text("SELECT unread FROM student_sequences WHERE student_id = :s"), {"s": student}
        )
    assert unread == 1


def test_the_worker_does_not_import_the_web_stack() -> None:
    web = ("fastapi", "starlette", "uvicorn", "aio_pika")
    code = (
        "import sys, services.retention.worker, services.core.migrate;"
        f"print(sorted(m for m in {web!r} if m in sys.modules))"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


async def test_a_long_pass_reports_its_progress(
    db: AsyncEngine, service_env: dict[str, str]
) -> None:
    student = unique()
    await insert_aged(db, student, range(1, 41), timedelta(hours=48))
    env = {**service_env, "RETENTION_BATCH_SIZE": "2"}  # 20 batches: progress every 10
    result = run_retention(env, "--once")
    assert result.returncode == 0, result.stderr
    assert "retention: purged 20 of 40 expired notifications (50%)" in result.stderr
    assert "retention: purged 40 of 40 expired notifications (100%)" in result.stderr


async def partition_for(db: AsyncEngine, age: timedelta) -> str:
    """Creates the partition of the hour published `age` ago; its name."""
    at = datetime.now(UTC) - age
    async with db.begin() as connection:
        created = await connection.scalar(text("SELECT notifications_partition(:at)"), {"at": at})
    assert created, "an hour no other test writes to"
    return f"notifications_p{at:%Y%m%d%H}"


async def exists(db: AsyncEngine, table: str) -> bool:
    async with db.connect() as connection:
        return await connection.scalar(text("SELECT to_regclass(:t) IS NOT NULL"), {"t": table})


async def unread_of(db: AsyncEngine, student: str) -> int:
    query = text("SELECT unread FROM student_sequences WHERE student_id = :s")
    async with db.connect() as connection:
        return await connection.scalar(query, {"s": student})


async def seed_expired_hour(db: AsyncEngine, age: timedelta) -> tuple[str, str, str]:
    """A partition `age` old holding seqs 1 to 4 of two students, 1 and 2 read; seq 5 of
    each retained and unread. Their partition's name and the students."""
    partition = await partition_for(db, age)
    first, second = unique(), unique()
    for student in (first, second):
        await insert_aged(db, student, range(1, 5), age)
        await insert_aged(db, student, range(5, 6), timedelta(hours=1))
        await read_first_two(db, student, last_seq=5, unread=3)
    return partition, first, second


async def detach_by_hand(db: AsyncEngine, *tables: str) -> None:
    """As a pass that stopped right after detaching them leaves them."""
    async with db.begin() as connection:
        for table in tables:
            await connection.execute(text(f"ALTER TABLE notifications DETACH PARTITION {table}"))


async def without_hour_ahead(db: AsyncEngine) -> str:
    """The partition two hours ahead dropped (nothing is published in the future); its name."""
    table = f"notifications_p{datetime.now(UTC) + timedelta(hours=2):%Y%m%d%H}"
    async with db.begin() as connection:
        await connection.execute(text(f"DROP TABLE IF EXISTS {table}"))
    return table


async def test_an_expired_hour_is_dropped_whole_and_its_unread_counts_lowered(
    db: AsyncEngine, service_env: dict[str, str]
) -> None:
    partition, first, second = await seed_expired_hour(db, timedelta(hours=72))
    assert await exists(db, partition)

    result = run_retention(service_env, "--once")
    assert result.returncode == 0, result.stderr
    assert not await exists(db, partition)
    assert "purged 8 of" in result.stderr  # the hour's rows, logged as it is dropped
    for student in (first, second):
        assert await seqs_of(db, student) == [5]
        assert await unread_of(db, student) == 1  # seqs 3 and 4 were unread
    async with db.connect() as connection:
        assert await connection.scalar(text("SELECT count(*) FROM purged_unread")) == 0


async def test_a_pass_finishes_what_a_stopped_pass_left(
    db: AsyncEngine, service_env: dict[str, str]
) -> None:
    # One hour detached but not dropped, another dropped with its counts still owed.
    detached, first, second = await seed_expired_hour(db, timedelta(hours=96))
    dropped, third, fourth = await seed_expired_hour(db, timedelta(hours=120))
    await detach_by_hand(db, detached, dropped)
    async with db.begin() as connection:
        await connection.execute(
            text(f"""
                INSERT INTO purged_unread (tenant_id, student_id, unread)
                SELECT tenant_id, student_id, count(*) FROM {dropped}
                WHERE read_at IS NULL GROUP BY tenant_id, student_id
            """)
        )
        await connection.execute(text(f"DROP TABLE {dropped}"))

    result = run_retention(service_env, "--once")
    assert result.returncode == 0, result.stderr
    assert not await exists(db, detached)
    for student in (first, second, third, fourth):
        assert await seqs_of(db, student) == [5]
        assert await unread_of(db, student) == 1
    async with db.connect() as connection:
        assert await connection.scalar(text("SELECT count(*) FROM purged_unread")) == 0


async def test_a_stopped_pass_drops_no_more_of_what_an_earlier_one_left(
    db: AsyncEngine,
) -> None:
    left = [(await seed_expired_hour(db, timedelta(hours=hours)))[0] for hours in (192, 216)]
    await detach_by_hand(db, *left)
    cut_off, stop = datetime.now(UTC) - timedelta(hours=24), asyncio.Event()

    stop.set()  # SIGTERM, as the pass starts
    await purge_expired(db, older_than=cut_off, batch_size=100, stop=stop)
    assert all([await exists(db, table) for table in left])

    await purge_expired(db, older_than=cut_off, batch_size=100, stop=asyncio.Event())
    assert not any([await exists(db, table) for table in left])


async def test_a_pass_creates_the_partitions_of_the_hours_ahead(
    db: AsyncEngine, service_env: dict[str, str]
) -> None:
    table = await without_hour_ahead(db)

    result = run_retention(service_env, "--once")
    assert result.returncode == 0, result.stderr
    async with db.connect() as connection:
        parent = await connection.scalar(
            text(
                "SELECT inhparent::regclass::text FROM pg_inherits WHERE inhrelid = to_regclass(:t)"
            ),
            {"t": table},
        )
    assert parent == "notifications"


async def test_hours_ahead_wait_while_the_default_partition_is_read(
    db: AsyncEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    table = await without_hour_ahead(db)
    monkeypatch.setattr(partitions, "LOCK_TRIES", 1)

    # Attaching an hour locks the default partition: it must not queue this reader's
    # successors behind it for longer than its lock timeout.
    async with db.connect() as reader:
        await reader.execute(text("SELECT count(*) FROM notifications_default"))
        async with asyncio.timeout(10):
            assert await partitions.create_ahead(db) == 0
        assert not await exists(db, table)
        await reader.rollback()

    assert await partitions.create_ahead(db) >= 1
    assert await exists(db, table)


async def test_an_hour_is_kept_until_it_has_expired_whole(
    db: AsyncEngine, service_env: dict[str, str]
) -> None:
    partition = await partition_for(db, timedelta(hours=24))
    starts = partitions.Partition(partition, attached=True).starts
    student = unique()
    await insert_aged(db, student, range(1, 2), datetime.now(UTC) - starts)
    async with db.begin() as connection:  # the floor only rises: earlier tests set it
        await connection.execute(text("DELETE FROM retention_floor"))
    try:
        result = run_retention(service_env, "--once")
        assert result.returncode == 0, result.stderr
        assert await seqs_of(db, student) == [1]  # over 24 hours old, in an hour that is not
        async with db.connect() as connection:
            floor = await connection.scalar(text("SELECT purged_before FROM retention_floor"))
        assert floor == starts  # what is retained starts there
    finally:  # for the tests after this one, what is retained starts at the cut-off again
        async with db.begin() as connection:
            await connection.execute(text(f"DROP TABLE {partition}"))


async def test_the_floor_gauge_shows_the_stored_floor_which_never_moves_back(
    db: AsyncEngine,
) -> None:
    stored = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=1)
    upsert = """
        INSERT INTO retention_floor (id, purged_before) VALUES (1, :floor)
        ON CONFLICT (id) DO UPDATE SET purged_before = :floor
    """
    async with db.begin() as connection:
        await connection.execute(text(upsert), {"floor": stored})
    try:
        await record_floor(db, datetime.now(UTC) - timedelta(hours=48))
        gauge = REGISTRY.get_sample_value("gradecast_retention_floor_timestamp_seconds")
        assert gauge == stored.timestamp()
    finally:  # for the tests after this one, what is retained starts at the cut-off again
        async with db.begin() as connection:
            await connection.execute(text("DELETE FROM retention_floor"))


async def test_a_busy_hour_holds_back_the_hours_after_it(
    db: AsyncEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    busy, first, _ = await seed_expired_hour(db, timedelta(hours=168))
    later, second, _ = await seed_expired_hour(db, timedelta(hours=144))
    monkeypatch.setattr(partitions, "LOCK_TRIES", 1)
    cut_off = datetime.now(UTC) - timedelta(hours=24)

    async with db.connect() as reader:  # a replay still reading the older hour
        await reader.execute(text(f"SELECT count(*) FROM {busy}"))
        await purge_expired(db, older_than=cut_off, batch_size=100, stop=asyncio.Event())
        assert await exists(db, busy)
        assert await exists(db, later)  # dropping it would leave a hole in what is retained
        assert await seqs_of(db, second) == [1, 2, 3, 4, 5]
        await reader.rollback()

    await purge_expired(db, older_than=cut_off, batch_size=100, stop=asyncio.Event())
    assert not await exists(db, busy) and not await exists(db, later)
    assert await seqs_of(db, first) == [5] and await seqs_of(db, second) == [5]
