"""The retention worker against the run's Postgres, run as users run it."""

import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

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


async def seqs_of(db: AsyncEngine, student: str) -> list[int]:
    query = text("SELECT seq FROM notifications WHERE student_id = :s ORDER BY seq")
    async with db.connect() as connection:
        return list((await connection.scalars(query, {"s": student})).all())


def run_retention(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "services.cli", "retention", *args],
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


async def test_retention_hours_can_be_seconds_worth(
    db: AsyncEngine, service_env: dict[str, str]
) -> None:
    student = unique()
    await insert_aged(db, student, range(1, 3), timedelta(seconds=30))
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
    async with db.begin() as connection:
        await connection.execute(
            text("UPDATE notifications SET read_at = now() WHERE student_id = :s AND seq < 3"),
            {"s": student},
        )
        await connection.execute(
            text("INSERT INTO student_sequences (student_id, last_seq, unread) VALUES (:s, 3, 1)"),
            {"s": student},
        )

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
