"""The relay loop: outbox rows their own request never sent go out later, rebuilt from the
notifications they name."""

import httpx
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from services.core.broker import routing_key, shard_of
from services.core.tenancy import Student
from tests.support import ServiceProcess, eventually, open_stream, token_for, unique

# As a publish commits them, but stale: as if its process died before sending.
STORE_UNSENT = text("""
    WITH sequenced AS (
        INSERT INTO student_sequences (tenant_id, student_id, last_seq, unread)
        VALUES ('default', :student, 1, 1)
    ), inserted AS (
        INSERT INTO notifications (tenant_id, student_id, seq, assignment_id, grade)
        VALUES ('default', :student, 1, 'hw-relayed', '"B+"')
        RETURNING id
    )
    INSERT INTO outbox (routing_key, notification_ids, created_at)
    SELECT :key, ARRAY[id], now() - interval '1 minute' FROM inserted
    UNION ALL  -- a row whose notification the retention worker purged since
    SELECT :key, ARRAY[-1::bigint], now() - interval '1 minute'
""")


async def test_unsent_rows_are_relayed_and_rows_of_purged_grades_dropped(
    client: httpx.AsyncClient, publisher: ServiceProcess, node_a: ServiceProcess, db: AsyncEngine
) -> None:
    student = unique()
    key = routing_key(shard_of(Student("default", student), 64))
    async with open_stream(client, node_a.url, student, token_for(student)) as stream:
        async with db.begin() as connection:
            await connection.execute(STORE_UNSENT, {"student": student, "key": key})
        event = await stream.next_event()
        assert (event.event, event.id) == ("grade", "1")
        assert event.json()["assignmentId"] == "hw-relayed"
        assert event.json()["grade"] == "B+"

    async def outbox_empty() -> bool:
        async with db.connect() as connection:
            rows = await connection.scalar(
                text("SELECT count(*) FROM outbox WHERE routing_key = :k"), {"k": key}
            )
        return rows == 0

    await eventually(outbox_empty)
