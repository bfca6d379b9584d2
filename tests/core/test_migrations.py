"""Migrations that move data: what was committed before an upgrade is still there, in its
new shape, after it (and after a downgrade)."""

import asyncio
import json
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from alembic import command
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from services.core.events import NotificationPublic
from services.core.migrate import alembic_config, create_database
from tests.conftest import SERVER_URL, drop_database

GRADE = {
    "id": "1",
    "studentId": "s-1",
    "assignmentId": "hw-1",
    "grade": "A",
    "teacherComment": None,
    "courseId": None,
    "assignmentTitle": None,
    "publishedAt": "2026-11-21T08:00:00Z",
}


@pytest.fixture
def database_url() -> Iterator[str]:
    name = f"gradecast_test_{uuid.uuid4().hex[:12]}"
    url = f"{SERVER_URL}/{name}"
    asyncio.run(create_database(url))
    yield url
    asyncio.run(drop_database(name))


def sql(url: str, statement: str) -> list[Any]:
    async def run() -> list[Any]:
        engine = create_async_engine(url)
        try:
            async with engine.begin() as connection:
                result = await connection.execute(text(statement))
                return list(result.all()) if result.returns_rows else []
        finally:
            await engine.dispose()

    return asyncio.run(run())


def test_unsent_outbox_rows_keep_their_notifications_across_0005(database_url: str) -> None:
    config = alembic_config(database_url)
    command.upgrade(config, "0004")
    sql(
        database_url,
        """
        INSERT INTO notifications (tenant_id, student_id, seq, assignment_id, grade, published_at)
        VALUES ('default', 's-1', 1, 'hw-1', '"A"', '2026-11-21T08:00:00Z'),
               ('default', 's-2', 1, 'hw-1', '"B"', '2026-11-21T08:00:00Z')
    """,
    )
    body = json.dumps({"tenantId": "default", "notifications": [GRADE], "unread": {"s-1": 1}})
    sql(database_url, f"INSERT INTO outbox (routing_key, body) VALUES ('shard.3', '{body}')")

    command.upgrade(config, "0005")
    [(ids,)] = sql(database_url, "SELECT notification_ids FROM outbox")
    [(s1,)] = sql(database_url, "SELECT id FROM notifications WHERE student_id = 's-1'")
    assert ids == [s1]  # the one it carried, not the other student's

    command.downgrade(config, "0004")
    [(restored,)] = sql(database_url, "SELECT body FROM outbox")
    batch = json.loads(restored)  # version 0.1's message, which the code of 0004 sends
    assert batch["tenantId"] == "default"
    notifications = [NotificationPublic.model_validate(n) for n in batch["notifications"]]
    assert [n.model_dump(by_alias=True, mode="json") for n in notifications] == [GRADE]


def test_notifications_keep_their_rows_and_ids_across_0007(database_url: str) -> None:
    config = alembic_config(database_url)
    command.upgrade(config, "0006")
    sql(
        database_url,
        """
        INSERT INTO notifications (student_id, seq, assignment_id, grade, published_at)
        SELECT 's-1', seq, 'hw-' || seq, '"A"', now() - seq * interval '5 hours'
        FROM generate_series(1, 3) AS seq
    """,
    )

    command.upgrade(config, "0007")
    assert sql(
        database_url, "SELECT tableoid::regclass::text, count(*) FROM notifications GROUP BY 1"
    ) == [("notifications_default", 3)]
    [(new_id, partition)] = sql(
        database_url,
        """
        INSERT INTO notifications (student_id, seq, assignment_id, grade)
        VALUES ('s-1', 4, 'hw-4', '"B"') RETURNING id, tableoid::regclass::text
    """,
    )
    assert new_id == 4  # after the ids already given
    assert partition.startswith("notifications_p")  # this hour's partition

    command.downgrade(config, "0006")
    rows = sql(database_url, "SELECT id, seq FROM notifications ORDER BY id")
    assert rows == [(1, 1), (2, 2), (3, 3), (4, 4)]
    [(next_id,)] = sql(
        database_url,
        """
        INSERT INTO notifications (student_id, seq, assignment_id, grade)
        VALUES ('s-1', 5, 'hw-5', '"C"') RETURNING id
    """,
    )
    assert next_id == 5
