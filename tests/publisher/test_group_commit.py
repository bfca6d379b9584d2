"""Publishes that arrive while Postgres is busy are stored together, in one statement, and
each still gets its own answer; a publish that fails does not fail those beside it."""

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from services.publisher.group_commit import IN_FLIGHT
from tests.support import (
    PUBLISHER_KEYS,
    ServiceProcess,
    eventually,
    grade_body,
    publish,
    samples,
    unique,
    value,
)

KEY = {"Authorization": f"Bearer {PUBLISHER_KEYS[0]}"}
# Publishes wait on it at their sequence upsert; reads go on.
LOCK = "LOCK TABLE student_sequences IN EXCLUSIVE MODE"
LOCK_WAITERS = text("""
    SELECT count(*) FROM pg_stat_activity
    WHERE datname = current_database() AND application_name = 'gradecast-publisher'
      AND wait_event_type = 'Lock'
""")


@asynccontextmanager
async def publishes_held(
    db: AsyncEngine, client: httpx.AsyncClient, url: str
) -> AsyncIterator[list[asyncio.Task[dict[str, Any]]]]:
    """Holds Postgres's lock until the block ends, with a publish in each batch in flight."""
    async with db.connect() as locker, locker.begin():
        await locker.execute(text(LOCK))
        in_flight = []
        for _ in range(IN_FLIGHT):  # one at a time: each is a batch of its own
            in_flight.append(asyncio.create_task(publish(client, url, grade_body(unique()))))
            await eventually(lambda: lock_waiters(db, len(in_flight)))
        yield in_flight
    for result in await asyncio.gather(*in_flight):
        assert result["notifications"][0]["id"] == "1"


async def lock_waiters(db: AsyncEngine, count: int) -> bool:
    async with db.connect() as connection:
        return await connection.scalar(LOCK_WAITERS) == count


WAITING = "gradecast_publish_waiting"
BATCHES = "gradecast_publish_batch_publishes_count"  # statements
BATCHED = "gradecast_publish_batch_publishes_sum"  # publishes they stored


async def metrics(client: httpx.AsyncClient, url: str) -> dict[str, float]:
    scraped = samples((await client.get(f"{url}/metrics")).text)
    return {name: value(scraped, name) for name in (WAITING, BATCHES, BATCHED)}


async def waiting(client: httpx.AsyncClient, url: str, count: int) -> bool:
    return (await metrics(client, url))[WAITING] == count


async def test_publishes_that_wait_for_postgres_are_stored_in_one_statement(
    client: httpx.AsyncClient, publisher: ServiceProcess, db: AsyncEngine
) -> None:
    before = await metrics(client, publisher.url)
    students = [unique() for _ in range(30)]
    repeated = students[0]  # its second grade waits for the batch after its first
    async with publishes_held(db, client, publisher.url):
        bodies = [grade_body(student) for student in [*students, repeated]]
        tasks = [asyncio.create_task(publish(client, publisher.url, body)) for body in bodies]
        await eventually(lambda: waiting(client, publisher.url, len(bodies)))
    results = await asyncio.gather(*tasks)

    after = await metrics(client, publisher.url)
    # The publishes held in flight, then one batch, then the repeated student's second.
    assert after[BATCHES] - before[BATCHES] == IN_FLIGHT + 2
    assert after[BATCHED] - before[BATCHED] == IN_FLIGHT + 31
    assert after[WAITING] == 0
    for student, result in zip([*students, repeated], results, strict=True):
        [notification] = result["notifications"]
        assert notification["studentId"] == student
    assert {r["notifications"][0]["id"] for r in (results[0], results[-1])} == {"1", "2"}

    async with db.connect() as connection:
        stored = await connection.execute(
            text("SELECT * FROM notifications WHERE student_id = ANY(:s)"), {"s": students}
        )
        assert {(row.student_id, row.seq, row.assignment_id) for row in stored} == {
            (student, int(result["notifications"][0]["id"]), body["assignmentId"])
            for student, result, body in zip([*students, repeated], results, bodies, strict=True)
        }


POISON = [  # a publish to this assignment fails in Postgres
    """
    CREATE FUNCTION refuse_poison() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        IF NEW.assignment_id = 'poison' THEN RAISE EXCEPTION 'poisoned'; END IF;
        RETURN NEW;
    END $$
    """,
    """
    CREATE TRIGGER refuse_poison BEFORE INSERT ON notifications
        FOR EACH ROW EXECUTE FUNCTION refuse_poison()
    """,
]


async def test_a_publish_that_fails_fails_alone(
    client: httpx.AsyncClient, publisher: ServiceProcess, db: AsyncEngine
) -> None:
    async with db.begin() as connection:
        for statement in POISON:
            await connection.execute(text(statement))
    try:
        students = [unique() for _ in range(6)]
        poisoned = unique()
        url = f"{publisher.url}/grades/publish"
        async with publishes_held(db, client, publisher.url):
            tasks = [
                asyncio.create_task(client.post(url, json=body, headers=KEY))
                for body in [
                    *(grade_body(student) for student in students[:3]),
                    grade_body(poisoned, assignmentId="poison"),
                    *(grade_body(student) for student in students[3:]),
                ]
            ]
            await eventually(lambda: waiting(client, publisher.url, len(tasks)))
        answers = await asyncio.gather(*tasks)
    finally:
        async with db.begin() as connection:
            await connection.execute(text("DROP TRIGGER refuse_poison ON notifications"))
            await connection.execute(text("DROP FUNCTION refuse_poison()"))

    assert [answer.status_code for answer in answers] == [201] * 3 + [500] + [201] * 3
    assert answers[3].json()["error"]["code"] == "internal_error"
    async with db.connect() as connection:
        for table, count in [("notifications", 6), ("student_sequences", 6)]:
            stored = text(f"SELECT count(*) FROM {table} WHERE student_id = ANY(:s)")
            assert await connection.scalar(stored, {"s": [*students, poisoned]}) == count
