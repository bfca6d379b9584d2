"""Positions: one query for every stream that opens in the same turn of the event loop, or
while the last query was on its way."""

import asyncio

import pytest
from sqlalchemy import event, text
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.pool import NullPool

from services.core.db import DatabaseUnavailable, transaction
from services.core.tenancy import Student
from services.stream.history import Positions
from tests.support import free_port, unique


async def test_a_burst_of_reads_costs_one_query_and_each_gets_its_own_answer(
    db: AsyncEngine,
) -> None:
    known = [Student("default", unique()) for _ in range(5)]
    async with transaction(db) as connection:
        for number, student in enumerate(known, start=1):
            await connection.execute(
                text(
                    "INSERT INTO student_sequences (student_id, last_seq, unread) "
                    "VALUES (:s, :n, :u)"
                ),
                {"s": student.student_id, "n": number * 10, "u": number},
            )
    statements: list[str] = []
    event.listen(db.sync_engine, "before_cursor_execute",
                 lambda *args: statements.append(args[2]))  # fmt: skip
    unknown = [Student("default", unique()) for _ in range(300)]
    positions = Positions(db)
    answers = await asyncio.gather(*(positions.read(s) for s in [*known, *unknown, known[0]]))
    assert answers[:5] == [(10, 1), (20, 2), (30, 3), (40, 4), (50, 5)]
    assert set(answers[5:-1]) == {(0, 0)} and answers[-1] == (10, 1)
    assert sum("student_sequences" in statement for statement in statements) == 1


async def test_reads_that_come_while_one_is_in_flight_are_read_next_together(
    db: AsyncEngine,
) -> None:
    statements: list[str] = []
    event.listen(db.sync_engine, "before_cursor_execute",
                 lambda *args: statements.append(args[2]))  # fmt: skip
    positions = Positions(db)
    async with db.begin() as blocker:  # holds the first read in flight until it commits
        await blocker.execute(text("LOCK TABLE student_sequences IN ACCESS EXCLUSIVE MODE"))
        first = asyncio.create_task(positions.read(Student("default", unique())))
        await asyncio.sleep(0.05)
        assert positions.reading  # on its way, and held there by the lock
        later = []
        for _ in range(10):  # each in a turn of the event loop of its own
            later.append(asyncio.create_task(positions.read(Student("default", unique()))))
            await asyncio.sleep(0.01)
    assert await asyncio.gather(first, *later) == [(0, 0)] * 11
    reads = [statement for statement in statements if "wanted(tenant_id" in statement]
    assert len(reads) == 2


async def test_a_reader_that_leaves_does_not_cancel_the_others(db: AsyncEngine) -> None:
    positions = Positions(db)
    student = Student("default", unique())  # not "a": the fuzz tests may publish to that
    leaving = asyncio.create_task(positions.read(student))
    staying = asyncio.create_task(positions.read(student))
    await asyncio.sleep(0)
    leaving.cancel()
    assert await staying == (0, 0)


async def test_a_lost_database_reaches_every_reader() -> None:
    engine = create_async_engine(
        f"postgresql+asyncpg://postgres@127.0.0.1:{free_port()}/x", poolclass=NullPool
    )
    positions = Positions(engine)
    results = await asyncio.gather(
        *(positions.read(Student("default", f"s{i}")) for i in range(3)), return_exceptions=True
    )
    assert all(isinstance(result, DatabaseUnavailable) for result in results)
    await engine.dispose()
    with pytest.raises(DatabaseUnavailable):
        await positions.read(Student("default", "again"))
